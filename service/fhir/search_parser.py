"""Search parameters to storage criteria: https://hl7.org/fhir/R4/search.html.

Covers the parameter types token, string, date, number, quantity, reference, uri and composite;
prefixes (eq ne gt lt ge le sa eb ap); the modifiers :missing :exact :contains :not :text
:above :below :identifier and type modifiers; chains, reverse chains (_has); _sort, _count,
_total, _include/_revinclude (with :iterate), _summary and _elements. Unknown or malformed
parameters are ignored with a warning, or refused (400) when the client asks for strict
handling and always in the criteria of conditional interactions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from urllib.parse import parse_qsl

from service.errors import BadRequest, Issue
from service.fhir.index_values import fold, parse_reference
from service.fhir.model import SUPPORTED_TYPES
from service.fhir.search_index import SearchParam, SearchParameters
from service.storage import (
    CompositeMatch,
    Criterion,
    HasCriterion,
    IdCriterion,
    LastUpdatedCriterion,
    Match,
    MissingCriterion,
    ParamCriterion,
    QuantityMatch,
    Query,
    RangeMatch,
    ReferenceMatch,
    SortKey,
    StringMatch,
    TokenMatch,
    UriMatch,
)
from service.validation.dates import date_range, now_micros

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb|ap)(?=[0-9+\-.])")
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_total",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_page_token",
        "_offset",
        "_format",
        "_pretty",
        "_contained",
        "_containedType",
    }
)
MAX_VALUES = 100
MAX_VALUE_LENGTH = 1000
SUMMARY_MODES = frozenset({"true", "false", "text", "data", "count"})
DEFAULT_MAX_CHAIN_DEPTH = 3


class Ignored(Exception):
    """A parameter that cannot be used; ignored with a warning unless handling is strict."""


class Invalid(Ignored):
    """A known parameter with a malformed value or an unsupported modifier: always a 400.

    Ignoring it would widen the search (patient=Patient/1, with a stray comma would return
    every patient's data), so it is refused even under lenient handling, as HAPI FHIR does.
    """


@dataclass(frozen=True)
class Include:
    """One _include or _revinclude: ``source_type:param[:target_type]``."""

    source_type: str
    param: str | None  # None for *
    target_type: str | None
    reverse: bool
    iterate: bool


@dataclass
class SearchRequest:
    """A parsed search: the query plus how to shape the result."""

    query: Query
    count: int
    warnings: list[Issue] = field(default_factory=list)
    total: bool = False
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: tuple[str, ...] | None = None
    page_token: str | None = None
    offset: int = 0
    used: list[tuple[str, str]] = field(default_factory=list)


def split_escaped(value: str, separator: str) -> list[str]:
    """Split on ``separator`` except where escaped with a backslash (search.html#escaping).

    Escapes are kept in the pieces, so they can be split again; ``_unescape`` the leaves.
    """
    parts: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == "\\" and index + 1 < len(value):
            current.append(value[index : index + 2])
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


def escape_value(text: str) -> str:
    """Escape ``\\``, ``|``, ``,`` and ``$`` in a search value: search.html#escaping."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")


def _unescape(value: str) -> str:
    return re.sub(r"\\([\\,$|])", r"\1", value)


def parse_query_string(query_string: str) -> list[tuple[str, str]]:
    """Split a URL query string into (name, value) pairs, keeping repeats and order."""
    try:
        return parse_qsl(query_string, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:
        raise BadRequest(f"The search criteria cannot be read: {exc}") from exc


class SearchParser:
    """Turns (name, value) pairs into a SearchRequest for one resource type."""

    def __init__(
        self, params: SearchParameters, base: str = "", max_depth: int = DEFAULT_MAX_CHAIN_DEPTH
    ) -> None:
        self.params = params
        self.base = base.rstrip("/")
        # chain links plus _has levels one parameter may take: each is a nested sub-query
        self.max_depth = max_depth

    # -- the whole request --------------------------------------------------------------------

    def parse(
        self,
        type_: str,
        pairs: Sequence[tuple[str, str]],
        *,
        strict: bool,
        default_count: int,
        max_count: int,
    ) -> SearchRequest:
        """Parse all parameters of a search of ``type_``."""
        criteria: list[Criterion] = []
        sort: tuple[SortKey, ...] = ()
        request = SearchRequest(query=Query(type_), count=default_count)
        for name, value in pairs:
            try:
                if name in RESULT_PARAMETERS or name.startswith(("_include", "_revinclude")):
                    sort = self._result_parameter(request, type_, name, value, max_count) or sort
                else:
                    criteria.append(self.criterion(type_, name, value))
                    request.used.append((name, value))
                    continue
                if name not in ("_page_token", "_offset", "_format", "_pretty"):
                    request.used.append((name, value))
            except Ignored as exc:
                if strict or isinstance(exc, Invalid):
                    raise BadRequest(str(exc), expression=(name,)) from exc
                request.warnings.append(
                    Issue("warning", "not-supported", f"{exc}; the parameter was ignored")
                )
        request.query = Query(
            type=type_,
            criteria=tuple(criteria),
            sort=sort,
        )
        return request

    def _result_parameter(
        self, request: SearchRequest, type_: str, name: str, value: str, max_count: int
    ) -> tuple[SortKey, ...] | None:
        if name == "_count":
            request.count = min(_whole(name, value), max_count)
        elif name == "_offset":
            request.offset = _whole(name, value)
        elif name == "_page_token":
            request.page_token = value
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise Invalid("_total must be none, estimate or accurate")
            request.total = value != "none"
        elif name == "_summary":
            if value not in SUMMARY_MODES:
                raise Invalid("_summary must be true, text, data, count or false")
            request.summary = None if value == "false" else value
        elif name == "_elements":
            request.elements = tuple(e.strip() for e in value.split(",") if e.strip())
        elif name == "_sort":
            return self._sort(type_, value)
        elif name.startswith(("_include", "_revinclude")):
            request.includes.extend(self._include(type_, name, value))
        elif name in ("_format", "_pretty"):
            pass
        else:
            raise Ignored(f"{name} is not supported")
        return None

    def _sort(self, type_: str, value: str) -> tuple[SortKey, ...]:
        keys = []
        for item in value.split(","):
            item = item.strip()
            descending = item.startswith("-")
            code = item.lstrip("-")
            if code in ("_id", "_lastUpdated"):
                keys.append(SortKey(code, code, descending))
                continue
            param = self.params.get(type_, code)
            if param is None or param.type == "composite":
                raise Ignored(f"_sort: {code!r} is not a sortable search parameter of {type_}")
            keys.append(SortKey(param.type, code, descending))
        return tuple(keys)

    def _include(self, type_: str, name: str, value: str) -> list[Include]:
        reverse = name.startswith("_revinclude")
        modifier = name.partition(":")[2]
        if modifier not in ("", "iterate", "recurse"):
            raise Ignored(f"{name}: only the :iterate modifier is supported")
        iterate = modifier in ("iterate", "recurse")
        if value == "*":
            if reverse:  # every resource stored here that refers to a match, by any parameter
                # (the audit trail aside: _revinclude=AuditEvent:entity asks for it by name)
                return [
                    Include(t, None, None, True, iterate)
                    for t in sorted(set(SUPPORTED_TYPES) - {"AuditEvent"})
                ]
            return [Include(type_, None, None, reverse, iterate)]
        pieces = value.split(":")
        if len(pieces) not in (2, 3):
            raise Ignored(f"{name}={value} must be Type:parameter or Type:parameter:TargetType")
        source, code = pieces[0], pieces[1]
        target = pieces[2] if len(pieces) == 3 else None
        if source not in SUPPORTED_TYPES:
            raise Ignored(f"{name}: {source!r} is not a resource type stored here")
        if code != "*":
            param = self.params.get(source, code)
            if param is None or param.type != "reference":
                raise Ignored(f"{name}: {source}:{code} is not a reference search parameter")
        if not reverse and not iterate and source != type_:
            # search.html#include: _include follows references of the matches themselves
            raise Ignored(
                f"{name}={value} follows {source} references, but this search finds {type_} "
                f"(add :iterate to follow them from included {source} resources)"
            )
        return [Include(source, None if code == "*" else code, target, reverse, iterate)]

    # -- one criterion ------------------------------------------------------------------------

    def criterion(self, type_: str, name: str, value: str) -> Criterion:
        """One search parameter as a criterion; raises Ignored if it cannot be used."""
        depth = name.count("_has:") + name.count(".")
        if depth > self.max_depth:
            raise Invalid(
                f"{name} chains {depth} levels (chained parameters and _has together); this "
                f"server allows at most {self.max_depth}"
            )
        if name.startswith("_has:"):
            return self._has(type_, name, value)
        head, dot, tail = name.partition(".")
        if dot:
            return self._chain(type_, head, tail, value)
        code, _, modifier = name.partition(":")
        if code == "_id":
            if modifier:
                raise Invalid(f"_id does not take the :{modifier} modifier")
            ids = tuple(v for v in (_unescape(x) for x in split_escaped(value, ",")) if v)
            if not ids:
                raise Ignored("_id needs a value")
            return IdCriterion(ids)
        if code == "_lastUpdated":
            if modifier:
                raise Invalid(f"_lastUpdated does not take the :{modifier} modifier")
            return LastUpdatedCriterion(tuple(_date_match(v) for v in split_escaped(value, ",")))
        param = self.params.get(type_, code)
        if param is None:
            raise Ignored(f"{code!r} is not a search parameter of {type_}")
        if modifier == "missing":
            if value not in ("true", "false"):
                raise Invalid(f"{name} must be true or false")
            return MissingCriterion(param.type, code, value == "true")
        if param.type == "reference" and modifier == "identifier":
            matches = tuple(_token_match(v) for v in split_escaped(value, ","))
            return ParamCriterion("token", f"{code}:identifier", matches)
        return self._param(param, modifier, value)

    def _param(self, param: SearchParam, modifier: str, value: str) -> ParamCriterion:
        kind = param.type
        # An empty part of a list (a stray comma) adds nothing to the OR; an empty value
        # leaves the parameter out, as it says nothing.
        values = [v for v in split_escaped(value, ",") if v != ""]
        if not values:
            raise Ignored(f"{param.code} has an empty value")
        if len(values) > MAX_VALUES or any(len(v) > MAX_VALUE_LENGTH for v in values):
            raise Invalid(
                f"{param.code} takes at most {MAX_VALUES} values of {MAX_VALUE_LENGTH} characters"
            )
        if any("\x00" in v for v in values):
            raise Invalid(f"{param.code} contains the character U+0000")
        negate = False
        matches: list[Match] = []
        if kind == "token":
            if modifier == "not":
                negate = True
            elif modifier == "text":
                matches = [TokenMatch(None, None, fold(_unescape(v))) for v in values]
            elif modifier:
                raise Invalid(f"The modifier :{modifier} is not supported for token {param.code}")
            matches = matches or [_token_match(v) for v in values]
        elif kind == "string":
            mode = {"": "prefix", "exact": "exact", "contains": "contains"}.get(modifier)
            if mode is None:
                raise Invalid(f"The modifier :{modifier} is not supported for string {param.code}")
            matches = [
                StringMatch(mode, _unescape(v) if mode == "exact" else fold(_unescape(v)))
                for v in values
            ]
        elif kind == "uri":
            mode = {"": "exact", "above": "above", "below": "below"}.get(modifier)
            if mode is None:
                raise Invalid(f"The modifier :{modifier} is not supported for uri {param.code}")
            matches = [UriMatch(mode, _unescape(v)) for v in values]
        elif kind in ("date", "number", "quantity", "composite"):
            if modifier:
                raise Invalid(f"The modifier :{modifier} is not supported for {kind} {param.code}")
            if kind == "date":
                matches = [_date_match(v) for v in values]
            elif kind == "number":
                matches = [_number_match(v) for v in values]
            elif kind == "quantity":
                matches = [_quantity_match(v) for v in values]
            else:
                matches = [self._composite_match(param, v) for v in values]
        elif kind == "reference":
            matches = [self._reference_match(param, modifier, v) for v in values]
        return ParamCriterion(kind, param.code, tuple(matches), negate)

    def _reference_match(self, param: SearchParam, modifier: str, value: str) -> ReferenceMatch:
        value = _unescape(value)
        if modifier and modifier not in SUPPORTED_TYPES and modifier[:1].isupper():
            raise Invalid(f"{modifier} is not a resource type stored here")
        if modifier and not modifier[:1].isupper():
            raise Invalid(f"The modifier :{modifier} is not supported for reference {param.code}")
        if self.base and value.startswith(self.base + "/"):
            value = value[len(self.base) + 1 :]
        type_, id_, url = parse_reference(value)
        if url is not None and type_ is None:
            if "/" not in value and ":" not in value:  # a bare id
                if modifier:
                    return ReferenceMatch(target_type=modifier, target_id=value)
                # Naming the possible target types lets the index serve the whole key.
                return ReferenceMatch(target_id=value, types=param.targets)
            # a canonical with |version matches that version only (search.html#versions)
            return ReferenceMatch(url=value)
        if url is not None:
            return ReferenceMatch(url=url)
        if modifier and type_ != modifier:
            raise Invalid(f"{value} is not a {modifier}")
        return ReferenceMatch(target_type=type_, target_id=id_)

    def _composite_match(self, param: SearchParam, value: str) -> CompositeMatch:
        parts = split_escaped(value, "$")
        if len(parts) != 2:
            raise Invalid(f"{param.code} needs code$value, e.g. http://loinc.org|1234-5$gt5")
        token = _token_match(parts[0])
        second = param.components[1].type
        match: TokenMatch | QuantityMatch | StringMatch | RangeMatch
        if second == "token":
            match = _token_match(parts[1])
        elif second == "quantity":
            match = _quantity_match(parts[1])
        elif second == "date":
            match = _date_match(parts[1])
        else:
            match = StringMatch("prefix", fold(_unescape(parts[1])))
        return CompositeMatch(token, match)

    def _chain(self, type_: str, head: str, tail: str, value: str) -> ParamCriterion:
        code, _, type_modifier = head.partition(":")
        param = self.params.get(type_, code)
        if param is None or param.type != "reference":
            raise Ignored(
                f"{code!r} is not a reference search parameter of {type_}, so it cannot be chained"
            )
        candidates = [type_modifier] if type_modifier else list(param.targets)
        matches = []
        for target in candidates:
            if target not in SUPPORTED_TYPES:
                continue
            try:
                chained = self.criterion(target, tail, value)
            except Ignored as exc:
                if type_modifier:
                    raise Invalid(str(exc)) from exc  # a known parameter, not followed
                continue
            matches.append(ReferenceMatch(types=(target,), chain=(chained,)))
        if not matches:
            # a known parameter the search cannot follow: ignoring it would widen the search
            # to every resource (chained through types not stored here, nothing could match)
            stored = [t for t in candidates if t in SUPPORTED_TYPES]
            if not stored:
                raise Invalid(
                    f"{type_}.{code} is chained through {', '.join(candidates) or 'no type'}, "
                    "which this server does not store; nothing here can match"
                )
            raise Invalid(f"No target of {type_}.{code} has the search parameter {tail!r}")
        return ParamCriterion("reference", code, tuple(matches))

    def _has(self, type_: str, name: str, value: str) -> HasCriterion:
        pieces = name.split(":", 3)
        # _has is known: a form of it the search cannot follow is refused, not ignored
        # (ignoring it would widen the search to every resource)
        if len(pieces) != 4:
            raise Invalid(f"{name} must be _has:Type:reference:parameter")
        _, source, ref_code, rest = pieces
        if source not in SUPPORTED_TYPES:
            raise Invalid(f"_has: {source!r} is not a resource type stored here")
        ref = self.params.get(source, ref_code)
        if ref is None or ref.type != "reference":
            raise Invalid(f"_has: {source}:{ref_code} is not a reference search parameter")
        try:
            inner = self.criterion(source, rest, value)
        except Ignored as exc:
            raise Invalid(f"_has: {exc}") from exc
        return HasCriterion(source, ref_code, (inner,))


def _whole(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError as exc:
        raise Invalid(f"{name} must be a whole number, not {value!r}") from exc
    if number < 0:
        raise Invalid(f"{name} must not be negative")
    return number


def _token_match(raw: str) -> TokenMatch:
    pieces = split_escaped(raw, "|")
    if len(pieces) == 1:
        code = _unescape(pieces[0])
        if not code:
            raise Invalid("A token needs a code")
        return TokenMatch(None, code)
    if len(pieces) != 2:
        raise Invalid(f"A token is code, system|code, |code or system|, not {raw!r}")
    system, code = _unescape(pieces[0]), _unescape(pieces[1])
    if not system and not code:
        raise Invalid("A token needs a system or a code")
    return TokenMatch(system, code or None)


def _split_prefix(value: str) -> tuple[str, str]:
    match = _PREFIX.match(value)
    if match:
        return match.group(1), value[2:]
    return "eq", value


def _date_match(value: str) -> RangeMatch:
    prefix, text = _split_prefix(value)
    span = date_range(text.replace(" ", "+"))
    if span is None:
        raise Invalid(f"{value!r} is not a FHIR date or dateTime")
    low, high = span
    if prefix == "ap":
        widen = max(abs(now_micros() - low) // 10, 86_400_000_000)
        return RangeMatch("ap", low - widen, high + widen)
    return RangeMatch(prefix, low, high)


def _number_range(prefix: str, text: str) -> RangeMatch:
    try:
        number = Decimal(text)
    except InvalidOperation as exc:
        raise Invalid(f"{text!r} is not a number") from exc
    if not number.is_finite() or not -300 <= number.adjusted() <= 300:
        raise Invalid(f"{text!r} is not a number this server can compare (|exponent| > 300)")
    value = float(number)
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb((exponent if isinstance(exponent, int) else 0) - 1)
    if prefix in ("eq", "ne"):
        # search.html#number: 100 means [99.5, 100.5), the upper edge left out; the stores
        # compare with both edges in, so the upper one is the float just below it
        upper = math.nextafter(float(number + half), -math.inf)
        return RangeMatch(prefix, float(number - half), upper)
    if prefix == "ap":
        spread = abs(value) * 0.1
        return RangeMatch("ap", value - spread, value + spread)
    return RangeMatch(prefix, value, value)


def _number_match(value: str) -> RangeMatch:
    prefix, text = _split_prefix(value)
    return _number_range(prefix, text)


def _quantity_match(value: str) -> QuantityMatch:
    pieces = split_escaped(value, "|")
    if len(pieces) not in (1, 3):
        raise Invalid(f"A quantity is [prefix]number|system|code, not {value!r}")
    prefix, text = _split_prefix(pieces[0])
    system = _unescape(pieces[1]) if len(pieces) == 3 and pieces[1] else None
    code = _unescape(pieces[2]) if len(pieces) == 3 and pieces[2] else None
    return QuantityMatch(_number_range(prefix, text), system, code)


def parse_conditional(parser: SearchParser, type_: str, criteria: str) -> Query:
    """Parse the criteria of a conditional interaction (strict; at least one criterion)."""
    head, mark, tail = criteria.partition("?")
    # "Patient?identifier=..." names the type; a "?" after the first "=" is part of a value.
    if mark and "=" not in head:
        prefix: str | None = head
        text = tail
    else:
        prefix = None
        text = criteria
    if prefix and prefix.rstrip("/").rsplit("/", 1)[-1] != type_:
        raise BadRequest(f"The criteria {criteria!r} do not search {type_}")
    pairs = [(k, v) for k, v in parse_query_string(text) if k not in ("_format", "_pretty")]
    if not pairs:
        raise BadRequest("Conditional criteria must name at least one search parameter")
    for name, _ in pairs:
        if name in RESULT_PARAMETERS or name.startswith(("_include", "_revinclude")):
            raise BadRequest(f"{name} cannot be used in conditional criteria")
    request = parser.parse(type_, pairs, strict=True, default_count=2, max_count=2)
    # Two matches are enough to tell one from several.
    return Query(type=type_, criteria=request.query.criteria)
