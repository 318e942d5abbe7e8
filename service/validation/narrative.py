"""The narrative rules txt-1 and txt-2: https://hl7.org/fhir/R4/narrative.html#xhtml.

txt-1: the XHTML uses only the basic HTML formatting elements and attributes the page lists, with
no scripts, forms, event attributes or ``javascript:`` links. txt-2: it has some non-whitespace
content (text or an image). A link to ``#name`` inside the narrative should name an anchor of
the narrative (a warning, since a reader only loses the jump).
"""

from __future__ import annotations

import re
from html.entities import name2codepoint
from html.parser import HTMLParser
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from service.errors import Issue

XHTML_NS = "http://www.w3.org/1999/xhtml"
_XML_ENTITIES = frozenset({"amp", "lt", "gt", "quot", "apos"})
_NAMED = re.compile(r"&([A-Za-z][A-Za-z0-9]*);")

ELEMENTS = frozenset(
    [
        "p",
        "br",
        "div",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "a",
        "span",
        "b",
        "em",
        "i",
        "strong",
        "small",
        "big",
        "tt",
        "dfn",
        "q",
        "var",
        "abbr",
        "acronym",
        "cite",
        "blockquote",
        "hr",
        "address",
        "bdo",
        "kbd",
        "sub",
        "sup",
        "ul",
        "ol",
        "li",
        "dl",
        "dt",
        "dd",
        "pre",
        "table",
        "caption",
        "colgroup",
        "col",
        "thead",
        "tr",
        "tfoot",
        "tbody",
        "th",
        "td",
        "code",
        "samp",
        "img",
        "map",
        "area",
    ]
)
# attributes any element may carry, and those only some may
ATTRIBUTES = frozenset(
    [
        "title",
        "style",
        "class",
        "id",
        "lang",
        "xml:lang",
        "dir",
        "accesskey",
        "tabindex",
        "rowspan",
        "colspan",
        "span",
        "width",
        "height",
        "align",
        "valign",
        "char",
        "charoff",
        "abbr",
        "axis",
        "headers",
        "scope",
        "summary",
        "rules",
        "frame",
        "border",
        "cellspacing",
        "cellpadding",
        "xmlns",
    ]
)
ELEMENT_ATTRIBUTES = {
    "a": frozenset({"href", "name"}),
    "img": frozenset({"src", "alt", "usemap", "ismap"}),
    "blockquote": frozenset({"cite"}),
    "q": frozenset({"cite"}),
    "area": frozenset({"shape", "coords", "href", "alt", "nohref", "name"}),
    "map": frozenset({"name"}),
    "ol": frozenset({"start", "type"}),
    "ul": frozenset({"type"}),
    "li": frozenset({"value"}),
}


def _numeric(match: re.Match[str]) -> str:
    name = match.group(1)
    if name in _XML_ENTITIES or name not in name2codepoint:
        return match.group(0)
    return f"&#{name2codepoint[name]};"


def xhtml_problem(div: str) -> str | None:
    """Why a Narrative.div is not a well-formed XHTML fragment whose one root is a <div> in
    the XHTML namespace (narrative.html#xhtml, json.html#xhtml), or None. HTML's named
    entities (``&nbsp;``) are taken, as the HL7 reference validator takes them; a document
    type declaration is not (it could define entities)."""
    try:
        root = fromstring(_NAMED.sub(_numeric, div.strip()), forbid_dtd=True)
    except DefusedXmlException:
        return "must not hold a document type or entity declaration"
    except ParseError as exc:
        line, column = exc.position
        where = f"line {line}, column {column + 1}" if line > 1 else f"character {column + 1}"
        reason = str(exc).split(":", 1)[0].removeprefix("not well-formed (").rstrip(")")
        return f"is not well-formed XHTML ({reason} at {where})"
    if root.tag != f"{{{XHTML_NS}}}div":
        if root.tag == "div":
            return f'must declare the XHTML namespace on its <div> (xmlns="{XHTML_NS}")'
        return "must be one <div> element in the XHTML namespace"
    return None


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.anchors: set[str] = set()
        self.links: list[str] = []
        self.content = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ELEMENTS:
            self.problems.append(f"the element <{tag}> is not allowed")
        if tag == "img":
            self.content = True
        allowed = ELEMENT_ATTRIBUTES.get(tag, frozenset())
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"the event attribute {name} on <{tag}> is not allowed")
            elif name not in ATTRIBUTES and name not in allowed:
                self.problems.append(f"the attribute {name} on <{tag}> is not allowed")
            text = (value or "").strip().lower()
            if name in ("href", "src") and text.startswith(("javascript:", "vbscript:")):
                self.problems.append(f"a script URL in {name} on <{tag}> is not allowed")
            if name in ("id", "name") and value:
                self.anchors.add(value)
            if name == "href" and value and value.startswith("#") and len(value) > 1:
                self.links.append(value[1:])

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.content = True


def narrative_issues(div: str, expr: str, only_txt1: bool = False) -> list[Issue]:
    """The txt-1 and txt-2 issues of a Narrative.div, and its broken internal links; with
    ``only_txt1`` the txt-1 issue alone (the write path: what could run in a reader)."""
    reader = _Reader()
    reader.feed(div)
    reader.close()
    issues: list[Issue] = []
    if reader.problems:
        found = "; ".join(dict.fromkeys(reader.problems))
        issues.append(
            Issue("error", "invariant", f"txt-1: The narrative's XHTML: {found}", (expr,))
        )
    if only_txt1:
        return issues
    if not reader.content:
        issues.append(
            Issue(
                "error",
                "invariant",
                "txt-2: The narrative SHALL have some non-whitespace content",
                (expr,),
            )
        )
    for link in dict.fromkeys(reader.links):
        if link not in reader.anchors:
            issues.append(
                Issue(
                    "warning",
                    "value",
                    f"The narrative links to #{link}, which names nothing in the narrative",
                    (expr,),
                )
            )
    return issues
