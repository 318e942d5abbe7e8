"""Search criteria as the stores take them: matches per parameter type, criteria, sort keys,
the query, its paging window, and history queries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TokenMatch:
    """system None: any; "": none. code None: any. text: prefix of the folded text instead."""

    system: str | None
    code: str | None
    text: str | None = None


@dataclass(frozen=True)
class StringMatch:
    """mode: prefix (on the folded value), exact (as written) or contains (folded)."""

    mode: str
    value: str


@dataclass(frozen=True)
class RangeMatch:
    """A comparison of the stored range with the search range [low, high].

    op is one of eq ne gt lt ge le sa eb ap (https://hl7.org/fhir/R4/search.html#prefix);
    for ap the core has already widened [low, high].
    """

    op: str
    low: float
    high: float


@dataclass(frozen=True)
class QuantityMatch:
    """A range comparison plus the unit (system None: any; code matches code or unit)."""

    range: RangeMatch
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceMatch:
    """A local target, a URL, or (chained) any target of ``types`` matching ``chain``."""

    target_type: str | None = None
    target_id: str | None = None
    url: str | None = None
    types: tuple[str, ...] = ()
    chain: tuple[Criterion, ...] = ()


@dataclass(frozen=True)
class UriMatch:
    """mode: exact, above (the stored uri is a prefix of value) or below (value is a prefix)."""

    mode: str
    value: str


@dataclass(frozen=True)
class CompositeMatch:
    """The token part and the value part of a composite parameter."""

    token: TokenMatch
    value: TokenMatch | QuantityMatch | StringMatch | RangeMatch


Match = (
    TokenMatch
    | StringMatch
    | RangeMatch
    | QuantityMatch
    | ReferenceMatch
    | UriMatch
    | CompositeMatch
)


@dataclass(frozen=True)
class ParamCriterion:
    """One search parameter: any of ``matches`` (OR); ``negate`` for :not (none of them)."""

    kind: str  # token string date number quantity reference uri composite
    param: str
    matches: tuple[Match, ...]
    negate: bool = False


@dataclass(frozen=True)
class MissingCriterion:
    """:missing=true (no index row for the parameter) or :missing=false (at least one)."""

    kind: str
    param: str
    missing: bool


@dataclass(frozen=True)
class IdCriterion:
    """_id: the resource id is one of ``ids``."""

    ids: tuple[str, ...]


@dataclass(frozen=True)
class LastUpdatedCriterion:
    """_lastUpdated compared as a date range (microseconds)."""

    matches: tuple[RangeMatch, ...]


@dataclass(frozen=True)
class HasCriterion:
    """_has: the resource is referenced through ``param`` by a ``source_type`` matching all."""

    source_type: str
    param: str
    criteria: tuple[Criterion, ...]


Criterion = ParamCriterion | MissingCriterion | IdCriterion | LastUpdatedCriterion | HasCriterion


@dataclass(frozen=True)
class SortKey:
    """Sort by a parameter (kind says which index) or by _id / _lastUpdated."""

    kind: str  # token string date number quantity reference uri _id _lastUpdated
    param: str
    descending: bool = False


@dataclass(frozen=True)
class Query:
    """A search within one resource type, answered from the index tables only."""

    type: str
    criteria: tuple[Criterion, ...] = ()
    sort: tuple[SortKey, ...] = ()


@dataclass(frozen=True)
class Window:
    """Which part of a search's matches a page takes, without anything kept between pages.

    ``as_of`` is the write sequence when the search began: resources first written after it
    are left out (a resource changed since still counts, at its place). ``after`` / ``before``
    is the id of the last (first) match of the previous (next) page, for a query ordered by
    ``_id`` (ascending or descending); ``before`` takes the page before that id, in query
    order. ``offset`` skips matches, for a first page asked for with ``_offset``.
    """

    as_of: int | None = None
    after: str | None = None
    before: str | None = None
    offset: int = 0


def pages_by_cursor(query: Query) -> bool:
    """Whether pages of ``query`` can be taken by a cursor: its order is the resource id
    (no ``_sort``, or ``_sort`` led by ``_id``), which no write changes. Other orders sort on
    values an update may change, so their matches are kept instead (``Searches.save``)."""
    return not query.sort or query.sort[0].kind == "_id"


@dataclass(frozen=True)
class HistoryQuery:
    """Versions of the whole system, one type, or one resource, newest first."""

    type: str | None = None
    id: str | None = None
    since_us: int | None = None
    before_seq: int | None = None  # keeps paging stable while writes continue
    count: int = 50


Key = tuple[str, str]  # (resource type, id)


# -- cohorts: subjects counted by what other resources say of them (quality measures) --------
