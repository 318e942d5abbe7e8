"""Search criteria: parse FHIR search parameters into a storage Query.

https://hl7.org/fhir/R4/search.html. This first version supports ``_id`` and ``identifier``
(token); the CapabilityStatement lists exactly these. Criteria used by conditional interactions
are always parsed strictly, because an ignored parameter would widen the match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from service.errors import BadRequest, Issue
from service.fhir.model import IDENTIFIER_TYPES
from service.storage import Query, TokenCriterion

# Parameters that shape the result rather than select resources.
RESULT_PARAMETERS = frozenset({"_count", "_total", "_offset", "_format", "_pretty"})


def supported_parameters(type_: str) -> dict[str, str]:
    """The search parameters this server answers for a type, with their FHIR types."""
    params = {"_id": "token"}
    if type_ in IDENTIFIER_TYPES:
        params["identifier"] = "token"
    return params


@dataclass
class ParsedSearch:
    """A query plus what the client should be told about parameters that were not used."""

    query: Query
    warnings: list[Issue] = field(default_factory=list)
    total: bool = False
    used: list[tuple[str, str]] = field(default_factory=list)


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on ``separator`` except where escaped with a backslash (search.html#escaping)."""
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value) and value[index + 1] in "\\,$|":
            current.append(value[index + 1])
            index += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    parts.append("".join(current))
    return parts


def _token(raw: str, name: str) -> tuple[str | None, str | None]:
    pieces = split_escaped(raw, "|")
    if len(pieces) == 1:
        if not pieces[0]:
            raise BadRequest(f"Search parameter {name} has an empty value")
        return None, pieces[0]
    if len(pieces) != 2:
        raise BadRequest(f"Search parameter {name} must be code, system|code or |code")
    system, code = pieces
    if not system and not code:
        raise BadRequest(f"Search parameter {name} has an empty value")
    return system, (code or None)


def parse_query_string(query_string: str) -> list[tuple[str, str]]:
    """Split a URL query string into (name, value) pairs, keeping repeats and order."""
    try:
        return parse_qsl(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise BadRequest(f"The search criteria cannot be read: {exc}") from exc


def parse_search(
    type_: str,
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    default_count: int,
    max_count: int,
) -> ParsedSearch:
    """Turn search parameters into a Query; unknown ones are errors if strict, else warnings."""
    supported = supported_parameters(type_)
    ids: set[str] | None = None
    tokens: list[TokenCriterion] = []
    warnings: list[Issue] = []
    used: list[tuple[str, str]] = []
    count = default_count
    offset = 0
    total = False
    for name, value in params:
        if name == "_count":
            count = _whole(name, value, minimum=0)
            count = min(count, max_count)
            used.append((name, str(count)))
            continue
        if name == "_offset":
            offset = _whole(name, value, minimum=0)
            continue
        if name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise BadRequest("_total must be none, estimate or accurate")
            total = value != "none"
            used.append((name, value))
            continue
        if name in ("_format", "_pretty"):
            continue
        base, _, modifier = name.partition(":")
        if base not in supported or modifier:
            message = (
                f"The search parameter {name!r} is not supported for {type_}"
                if base not in supported
                else f"The modifier :{modifier} is not supported for {base}"
            )
            if strict:
                raise BadRequest(message, expression=(name,))
            warnings.append(Issue("warning", "not-supported", message + "; it was ignored"))
            continue
        if base == "_id":
            values = {v for v in split_escaped(value, ",") if v}
            if not values:
                raise BadRequest("Search parameter _id has an empty value")
            ids = values if ids is None else ids & values
        else:
            alternatives = tuple(_token(v, base) for v in split_escaped(value, ","))
            tokens.append(TokenCriterion(base, alternatives))
        used.append((name, value))
    query = Query(
        type=type_,
        ids=tuple(sorted(ids)) if ids is not None else None,
        tokens=tuple(tokens),
        count=count,
        offset=offset,
    )
    return ParsedSearch(query=query, warnings=warnings, total=total, used=used)


def parse_conditional(type_: str, criteria: str, max_count: int) -> Query:
    """Parse the criteria of a conditional interaction (strict; at least one criterion)."""
    text = criteria.split("?", 1)[1] if "?" in criteria else criteria
    prefix = criteria.split("?", 1)[0] if "?" in criteria else None
    if prefix and prefix.rstrip("/").rsplit("/", 1)[-1] != type_:
        raise BadRequest(f"The criteria {criteria!r} do not search {type_}")
    params = [(k, v) for k, v in parse_query_string(text) if k not in ("_format", "_pretty")]
    if not params:
        raise BadRequest("Conditional criteria must name at least one search parameter")
    for name, _ in params:
        if name in RESULT_PARAMETERS:
            raise BadRequest(f"{name} cannot be used in conditional criteria")
    parsed = parse_search(type_, params, strict=True, default_count=2, max_count=max_count)
    # Two matches are enough to tell one from several.
    return Query(type=type_, ids=parsed.query.ids, tokens=parsed.query.tokens, count=2)


def _whole(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a whole number, not {value!r}") from exc
    if number < minimum:
        raise BadRequest(f"{name} must be at least {minimum}")
    return number
