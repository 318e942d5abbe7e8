"""Search parameters and the index rows they give a resource.

The definitions are the official R4 SearchParameters (vendored) plus any SearchParameter
resources in the profiles folder. Each expression is compiled once per resource type with
fhirpathpy and the R4 model; ``where(resolve() is X)`` (which fhirpathpy cannot run) becomes a
filter on the reference's type. https://hl7.org/fhir/R4/searchparameter.html
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models

from service.fhir.model import SUPPORTED_TYPES
from service.storage import (
    CompositeRow,
    IndexRows,
    QuantityRow,
    RangeRow,
    ReferenceRow,
    StringRow,
    TokenRow,
    UriRow,
)
from service.validation.dates import date_range

R4_MODEL = models["r4"]
_COMPILED: dict[str, SearchParameters] = {}
PARAM_TYPES = frozenset(
    {"token", "string", "date", "number", "quantity", "reference", "uri", "composite"}
)
_RESOLVE = re.compile(r"\.where\(resolve\(\) is (\w+)\)")
_AS_CALL = re.compile(r"^(\w+)\.as\((\w+)\)$")
# Parameters answered from the resources table or by the search machinery itself.
SPECIAL = frozenset({"_id", "_lastUpdated"})
UNSUPPORTED = frozenset({"_text", "_content", "_query", "_filter", "_list", "_has", "_type"})


def fold(text: str) -> str:
    """Case- and accent-insensitive form used by string search (search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


@dataclass(frozen=True)
class Component:
    """One component of a composite parameter: its type and relative expression."""

    type: str
    paths: tuple[tuple[str, str | None], ...]  # (element, as-type) alternatives


@dataclass
class SearchParam:
    """A search parameter as it applies to one resource type."""

    code: str
    type: str
    url: str
    targets: tuple[str, ...] = ()
    evaluators: list[tuple[Callable[..., list[Any]], str | None]] = field(default_factory=list)
    # The top-level element each evaluator starts from ("" when it cannot be told): an
    # evaluator whose element is absent from a resource is skipped, which makes indexing
    # several times faster for the sparse resources clinical systems send.
    roots: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the FHIRPath each evaluator runs
    components: tuple[Component, ...] = ()

    def evaluate(
        self, resource: dict[str, Any], strict: bool = False
    ) -> list[tuple[Any, str | None]]:
        """The values of this parameter in ``resource``, each with its required target type.

        fhirpathpy raises bare Exceptions on data it cannot walk; a write must not fail for
        that, so the parameter then has no value (``strict`` re-raises, for tests).
        """
        out: list[tuple[Any, str | None]] = []
        for (evaluator, target_type), root in zip(self.evaluators, self.roots, strict=True):
            if root and not _present(resource, root):
                continue
            try:
                values = evaluator(resource)
            except Exception:
                if strict:
                    raise
                values = []
            out.extend((value, target_type) for value in values)
        return out


_SIMPLE_PATH = re.compile(r"^(\w+)((?:\.\w+)+)$")


def _compile(expression: str, type_: str) -> Callable[..., list[Any]]:
    """Compile with fhirpathpy, or to a plain walk for a simple dotted path (most of them).

    The walk gives the same values as fhirpathpy for paths such as ``Patient.name.given`` or
    ``Observation.effective`` (a choice element) in a fraction of the time.
    """
    stripped = expression.strip()
    if stripped == type_:
        return lambda resource: [resource]  # composite parameters start at the resource
    match = _SIMPLE_PATH.match(_of_type_as_path(stripped))
    if match is None or match.group(1) != type_:
        compiled: Callable[..., list[Any]] = compile_fhirpath(expression, R4_MODEL)
        return compiled
    steps = tuple(match.group(2).split(".")[1:])

    def walk(resource: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [resource]
        for step in steps:
            found: list[Any] = []
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                if step in node:
                    values = [node[step]]
                else:
                    values = [
                        v
                        for k, v in node.items()
                        if k.startswith(step) and k[len(step) : len(step) + 1].isupper()
                    ]
                for value in values:
                    found.extend(value if isinstance(value, list) else [value])
            nodes = found
        return [n for n in nodes if n is not None]

    return walk


_OF_TYPE = re.compile(r"^\((\w+(?:\.\w+)*)\.(\w+)\.ofType\(([A-Za-z]+)\)\)((?:\.\w+)*)$")


def _of_type_as_path(expression: str) -> str:
    """``(Observation.value.ofType(Quantity)).code`` as the path ``Observation.valueQuantity.code``.

    A choice element's JSON name is the element name plus the type name, so the walk reads the
    one key that holds that type (R4 choice types have no subtypes to include).
    """
    match = _OF_TYPE.match(expression)
    if match is None:
        return expression
    head, element, type_name, tail = match.groups()
    return f"{head}.{element}{type_name[0].upper()}{type_name[1:]}{tail}"


_ROOT = re.compile(r"^\(*(\w+)\.(\w+)")


def _root_element(expression: str, type_: str) -> str:
    """The first element below the resource that ``expression`` reads, or "" if unclear."""
    match = _ROOT.match(expression.strip())
    if match is None or match.group(1) != type_:
        return ""
    name = match.group(2)
    return name if name[:1].islower() else ""


def _present(resource: dict[str, Any], root: str) -> bool:
    if root in resource or "_" + root in resource:
        return True
    # choice elements: value -> valueQuantity, deceased -> deceasedDateTime ...
    return any(
        key.startswith(root) and key[len(root) : len(root) + 1].isupper() for key in resource
    )


def _as_to_of_type(expression: str) -> str:
    """Make R4 expressions runnable by fhirpathpy.

    They apply ``as`` to collections (Observation.component.value as Quantity), which FHIRPath
    only allows on one item; ``ofType`` is the collection-safe equivalent.
    """
    expression = re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expression)
    # fhirpathpy has no hasExtension(); this is its definition in FHIRPath terms.
    expression = re.sub(
        r"hasExtension\(('[^']*')\)", r"extension.where(url = \1).exists()", expression
    )
    return re.sub(r"\s+as\s+(\w+)", r".ofType(\1)", expression)


def _parts_for(expression: str, type_: str) -> list[str]:
    parts = []
    depth = 0
    current: list[str] = []
    for ch in expression:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    mine = []
    for part in parts:
        bare = part.lstrip("(")
        if bare.startswith("Resource.") or bare.startswith("DomainResource."):
            part = part.replace("DomainResource.", f"{type_}.", 1).replace(
                "Resource.", f"{type_}.", 1
            )
            bare = part.lstrip("(")
        if bare == type_ or bare.startswith(type_ + ".") or bare.startswith(type_ + " "):
            mine.append(part)
    return mine


def _component_paths(expression: str) -> tuple[tuple[str, str | None], ...]:
    paths: list[tuple[str, str | None]] = []
    for part in expression.split("|"):
        part = part.strip()
        match = _AS_CALL.match(part)
        if match:
            paths.append((match.group(1), match.group(2)))
        else:
            paths.append((part, None))
    return tuple(paths)


class SearchParameters:
    """Every search parameter of every stored resource type, compiled."""

    def __init__(self, definitions: Iterable[dict[str, Any]]) -> None:
        by_url: dict[str, dict[str, Any]] = {}
        for sp in definitions:
            by_url[sp["url"]] = sp
        self._by_url = by_url
        self._params: dict[str, dict[str, SearchParam]] = {t: {} for t in SUPPORTED_TYPES}
        for sp in by_url.values():
            self._add(sp)

    def _add(self, sp: dict[str, Any]) -> None:
        kind = sp.get("type")
        expression = sp.get("expression")
        code = sp.get("code")
        if kind not in PARAM_TYPES or not expression or not code or code in UNSUPPORTED:
            return
        if code in SPECIAL:
            return  # answered from the resources table
        for type_ in SUPPORTED_TYPES:
            bases = sp.get("base", [])
            if type_ not in bases and "Resource" not in bases and "DomainResource" not in bases:
                continue
            parts = _parts_for(expression, type_)
            if not parts:
                continue
            param = SearchParam(
                code=code,
                type=kind,
                url=sp["url"],
                targets=tuple(sp.get("target", [])),
            )
            for part in parts:
                resolved = _RESOLVE.search(part)
                target_type = resolved.group(1) if resolved else None
                text = _as_to_of_type(_RESOLVE.sub("", part))
                param.evaluators.append((_compile(text, type_), target_type))
                param.roots.append(_root_element(text, type_))
                param.texts.append(text)
            if kind == "composite":
                components = []
                for comp in sp.get("component", []):
                    definition = self._by_url.get(comp.get("definition", ""), {})
                    components.append(
                        Component(
                            type=definition.get("type", "token"),
                            paths=_component_paths(comp.get("expression", "")),
                        )
                    )
                if len(components) != 2 or components[0].type != "token":
                    continue  # only token + value composites are indexed
                param.components = tuple(components)
            self._params[type_][code] = param

    @classmethod
    def shared(cls, definitions: list[dict[str, Any]]) -> SearchParameters:
        """Compile once per process for the same definitions (compiling takes a while)."""
        key = json.dumps(definitions, sort_keys=True)
        found = _COMPILED.get(key)
        if found is None:
            found = cls(definitions)
            _COMPILED[key] = found
        return found

    def for_type(self, type_: str) -> dict[str, SearchParam]:
        """The parameters of a resource type, by code."""
        return self._params.get(type_, {})

    def get(self, type_: str, code: str) -> SearchParam | None:
        """One parameter of a type, or None."""
        return self._params.get(type_, {}).get(code)

    def references(self, resource: dict[str, Any], codes: Iterable[str]) -> list[ReferenceRow]:
        """The reference rows of some of a resource's parameters (only those are evaluated)."""
        rows = IndexRows()
        for code in codes:
            param = self.get(resource["resourceType"], code)
            if param is not None and param.type == "reference":
                for value, target_type in param.evaluate(resource):
                    _add_rows(rows, param, value, target_type)
        return rows.references

    def index(self, resource: dict[str, Any]) -> IndexRows:
        """All index rows of a resource."""
        rows = IndexRows()
        for param in self.for_type(resource["resourceType"]).values():
            for value, target_type in param.evaluate(resource):
                _add_rows(rows, param, value, target_type)
        _dedupe(rows)
        return rows


# B-tree entries must stay small (PostgreSQL refuses index rows over about 2.7 kB); longer
# values are not indexed for exact and prefix matching, only stored in full where a column is
# not part of an index key.
MAX_INDEXED = 1000


def _fits(*values: str | None) -> bool:
    return all(v is None or len(v) <= MAX_INDEXED for v in values)


def _dedupe(rows: IndexRows) -> None:
    for name in (
        "tokens",
        "strings",
        "dates",
        "numbers",
        "quantities",
        "references",
        "uris",
        "composites",
    ):
        seen: set[Any] = set()
        unique = []
        for row in getattr(rows, name):
            if row not in seen:
                seen.add(row)
                unique.append(row)
        setattr(rows, name, unique)


def _add_rows(rows: IndexRows, param: SearchParam, value: Any, target_type: str | None) -> None:
    kind = param.type
    code = param.code
    if kind == "token":
        rows.tokens.extend(
            TokenRow(code, s, c, t[:MAX_INDEXED] if t else t)
            for s, c, t in tokens_of(value)
            if _fits(s, c)
        )
    elif kind == "string":
        rows.strings.extend(StringRow(code, fold(s)[:MAX_INDEXED], s) for s in strings_of(value))
    elif kind == "date":
        span = dates_of(value)
        if span is not None:
            rows.dates.append(RangeRow(code, span[0], span[1]))
    elif kind == "number":
        number = _number(value)
        if number is not None:
            rows.numbers.append(RangeRow(code, number, number))
    elif kind == "quantity":
        for low, high, system, unit in quantities_of(value):
            rows.quantities.append(QuantityRow(code, low, high, system, unit))
    elif kind == "reference":
        for row in references_of(code, value, target_type):
            if isinstance(row, ReferenceRow):
                if _fits(row.url):
                    rows.references.append(row)
            elif _fits(row.system, row.code):
                rows.tokens.append(row)
    elif kind == "uri":
        if isinstance(value, str) and value and _fits(value):
            rows.uris.append(UriRow(code, value))
    elif kind == "composite" and isinstance(value, dict):
        rows.composites.extend(composites_of(param, value))


def tokens_of(value: Any) -> list[tuple[str | None, str, str | None]]:
    """(system, code, folded text) triples of a token value (Coding, CodeableConcept, ...)."""
    if isinstance(value, bool):
        return [(None, "true" if value else "false", None)]
    if isinstance(value, str):
        return [(None, value, None)] if value else []
    if isinstance(value, int | float | Decimal):
        return [(None, str(value), None)]
    if not isinstance(value, dict):
        return []
    if "coding" in value or ("text" in value and "code" not in value and "value" not in value):
        text = value.get("text")
        folded = fold(text) if isinstance(text, str) else None
        out: list[tuple[str | None, str, str | None]] = []
        for coding in value.get("coding", []):
            if isinstance(coding, dict):
                for system, code, display in tokens_of(coding):
                    out.append((system, code, folded or display))
        return out
    if "code" in value and isinstance(value["code"], str):  # Coding
        display = value.get("display")
        return [(value.get("system"), value["code"], fold(display) if display else None)]
    if "value" in value and isinstance(value["value"], str):  # Identifier, ContactPoint
        type_text = (
            value.get("type", {}).get("text") if isinstance(value.get("type"), dict) else None
        )
        return [(value.get("system"), value["value"], fold(type_text) if type_text else None)]
    return []


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")
_SKIP_KEYS = frozenset({"use", "system", "url", "reference", "id", "type", "period"})


def strings_of(value: Any) -> list[str]:
    """The strings a string parameter matches (HumanName and Address parts, or any text)."""
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, dict):
        return []
    if any(k in value for k in ("family", "given")) or (
        "text" in value and not any(k in value for k in _ADDRESS_PARTS[1:])
    ):
        keys: tuple[str, ...] = _NAME_PARTS
    elif any(k in value for k in _ADDRESS_PARTS):
        keys = _ADDRESS_PARTS
    else:
        keys = tuple(k for k in value if k not in _SKIP_KEYS)
    out: list[str] = []
    for key in keys:
        item = value.get(key)
        for element in item if isinstance(item, list) else [item]:
            if isinstance(element, str) and element:
                out.append(element)
            elif isinstance(element, dict):
                out.extend(strings_of(element))
    return out


def dates_of(value: Any) -> tuple[int, int] | None:
    """The microsecond range a date, dateTime, instant or Period covers."""
    if isinstance(value, str):
        return date_range(value)
    if isinstance(value, dict) and ("start" in value or "end" in value):
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        low = start[0] if start else -(2**62)
        high = end[1] if end else 2**62
        return low, high
    return None


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None  # beyond a double: not indexed
    return None


def quantities_of(value: Any) -> list[tuple[float, float, str | None, str | None]]:
    """(low, high, system, code) of a Quantity or Range."""
    if not isinstance(value, dict):
        return []
    number = _number(value.get("value"))
    if number is not None:
        code = value.get("code") or value.get("unit")
        out = [(number, number, value.get("system"), code)]
        if value.get("unit") and value.get("code") and value["unit"] != value["code"]:
            out.append((number, number, None, value["unit"]))
        return out
    if "low" in value or "high" in value:
        low = value.get("low") or {}
        high = value.get("high") or {}
        lo = _number(low.get("value"))
        hi = _number(high.get("value"))
        unit = low.get("code") or high.get("code") or low.get("unit") or high.get("unit")
        system = low.get("system") or high.get("system")
        return [
            (
                lo if lo is not None else float("-1e300"),
                hi if hi is not None else float("1e300"),
                system,
                unit,
            )
        ]
    return []


def parse_reference(reference: str) -> tuple[str | None, str | None, str | None]:
    """Split a reference into (type, id, url): relative refs give a type and id."""
    text = reference.split("/_history/", 1)[0]
    pieces = text.split("/")
    local = "://" not in text and not text.startswith(("urn:", "#")) and len(pieces) == 2
    if local and len(pieces[0]) <= 64 and len(pieces[1]) <= 64:
        return pieces[0], pieces[1], None
    if "://" in text and len(pieces) >= 2:
        type_, id_ = pieces[-2], pieces[-1]
        if type_[:1].isupper() and len(type_) <= 64 and len(id_) <= 64:
            return type_, id_, text
    return None, None, text


def references_of(code: str, value: Any, target_type: str | None) -> list[ReferenceRow | TokenRow]:
    """Reference rows (and :identifier token rows) of a Reference or canonical value."""
    out: list[ReferenceRow | TokenRow] = []
    if isinstance(value, str):  # canonical
        out.append(ReferenceRow(code, None, None, value.split("|", 1)[0]))
        return out
    if not isinstance(value, dict):
        return out
    reference = value.get("reference")
    if isinstance(reference, str) and not reference.startswith("#"):
        type_, id_, url = parse_reference(reference)
        if target_type is None or type_ == target_type:
            out.append(ReferenceRow(code, type_, id_, url))
    identifier = value.get("identifier")
    if (
        isinstance(identifier, dict)
        and isinstance(identifier.get("value"), str)
        and (target_type is None or value.get("type") in (None, target_type))
    ):
        out.append(TokenRow(f"{code}:identifier", identifier.get("system"), identifier["value"]))
    return out


def _component_values(component: Component, node: dict[str, Any]) -> list[Any]:
    values: list[Any] = []
    for element, as_type in component.paths:
        key = element if as_type is None else element + as_type[0].upper() + as_type[1:]
        item = node.get(key)
        if item is None:
            continue
        values.extend(item if isinstance(item, list) else [item])
    return values


def composites_of(param: SearchParam, node: dict[str, Any]) -> list[CompositeRow]:
    """Composite rows: every token of the first component with every value of the second."""
    return [r for r in _composites(param, node) if _fits(r.system, r.code)]


def _composites(param: SearchParam, node: dict[str, Any]) -> list[CompositeRow]:
    first, second = param.components
    rows: list[CompositeRow] = []
    for code_value in _component_values(first, node):
        for system, code, _ in tokens_of(code_value):
            for value in _component_values(second, node):
                if second.type == "token":
                    for v_system, v_code, _ in tokens_of(value):
                        rows.append(CompositeRow(param.code, system, code, v_system, v_code))
                elif second.type == "quantity":
                    for low, high, v_system, unit in quantities_of(value):
                        rows.append(
                            CompositeRow(param.code, system, code, v_system, unit, low, high)
                        )
                elif second.type == "date":
                    span = dates_of(value)
                    if span is not None:
                        rows.append(
                            CompositeRow(param.code, system, code, None, None, span[0], span[1])
                        )
                elif second.type == "string":
                    for text in strings_of(value):
                        rows.append(
                            CompositeRow(
                                param.code, system, code, None, None, None, None, fold(text)
                            )
                        )
    return rows
