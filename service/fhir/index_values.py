"""The index rows a search parameter's values give: tokens, strings, dates, numbers,
quantities, references, uris and composites, as search.html defines each type's matching.

search_index.py finds the values (each parameter's expression); this module turns them into
rows, the same way whichever way the values were found (``SearchParameters.index_values``).
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

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

# whether an absolute URL lies on this server's FHIR base (Config.is_own_url)
OwnBase = Callable[[str], bool]


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


class Indexed(Protocol):
    """What a parameter needs to be to give rows (``search_index.SearchParam`` is one)."""

    code: str
    type: str
    components: tuple[Component, ...]


# B-tree entries must stay small (PostgreSQL refuses index rows over about 2.7 kB); longer
# values are not indexed for exact and prefix matching, only stored in full where a column is
# not part of an index key.
MAX_INDEXED = 1000


def _fits(first: str | None, second: str | None = None) -> bool:
    return (first is None or len(first) <= MAX_INDEXED) and (
        second is None or len(second) <= MAX_INDEXED
    )


def dedupe(rows: IndexRows) -> None:
    """Drop repeated rows (two parameters' paths may find the same value)."""
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
        found = getattr(rows, name)
        if len(found) > 1:
            setattr(rows, name, list(dict.fromkeys(found)))


def add_rows(
    rows: IndexRows,
    param: Indexed,
    value: Any,
    target_type: str | None,
    own: OwnBase | None = None,
) -> None:
    """Add the rows of one value of ``param`` (of ``target_type`` only, for a reference;
    ``own`` tells this server's absolute URLs from others', see ``references_of``)."""
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
        for row in references_of(code, value, target_type, own):
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
        # :text finds a concept by its text or by any coding's display (search.html, token
        # modifiers): a coding whose display says more than the text gives a row for each, and a
        # concept with text only (a patient's own words) a row with no system and no code
        text = value.get("text")
        folded = fold(text) if isinstance(text, str) and text.strip() else None
        out: list[tuple[str | None, str, str | None]] = []
        for coding in value.get("coding", []):
            if isinstance(coding, dict):
                for system, code, display in tokens_of(coding):
                    out.append((system, code, folded or display))
                    if folded is not None and display is not None and display != folded:
                        out.append((system, code, display))
        if not out and folded is not None:
            out.append((None, "", folded))
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


def references_of(
    code: str, value: Any, target_type: str | None, own: OwnBase | None = None
) -> list[ReferenceRow | TokenRow]:
    """Reference rows (and :identifier token rows) of a Reference or canonical value.

    An absolute URL that ``own`` does not call this server's names a resource elsewhere: its
    row holds the URL only, so it is found by that URL and never as the local resource of the
    same type and id (references.html §2.3.0). Without ``own`` every such URL counts as local.
    """
    out: list[ReferenceRow | TokenRow] = []
    if isinstance(value, str):  # canonical: found by its url, and by url|version if it has one
        unversioned, bar, _ = value.partition("|")
        out.append(ReferenceRow(code, None, None, unversioned))
        if bar:
            out.append(ReferenceRow(code, None, None, value))
        return out
    if not isinstance(value, dict):
        return out
    reference = value.get("reference")
    if isinstance(reference, str) and reference.startswith("#"):
        # a contained resource: no type or id to search by, but the element has a value
        # (:missing=false finds it, :missing=true does not); its type is not known here, so
        # a parameter for one target type only does not count it
        if target_type is None and len(reference) > 1:
            out.append(ReferenceRow(code, None, None, reference))
    elif isinstance(reference, str):
        type_, id_, url = parse_reference(reference)
        if target_type is None or type_ == target_type:
            if url is not None and type_ is not None and own is not None and not own(url):
                type_ = id_ = None  # another server's resource
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


def composites_of(param: Indexed, node: dict[str, Any]) -> list[CompositeRow]:
    """Composite rows: every token of the first component with every value of the second."""
    return [r for r in _composites(param, node) if _fits(r.system, r.code)]


def _composites(param: Indexed, node: dict[str, Any]) -> list[CompositeRow]:
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
