"""The Store port: versioned FHIR resources with history and search indexes.

Every resource version is kept. A write names the version it replaces, so two writers racing on
one resource cannot both win (``VersionConflict``); the FHIR core maps that to 412 or retries.

A ``Store`` opens ``Transaction``s. A transaction is made of small ports, one per job, that all
commit together: ``tx.resources`` (versions and history), ``tx.index`` (index rows and the
look-ups on them), ``tx.searches`` (searches and kept results), ``tx.outbox`` (queued
deliveries), ``tx.counters``, ``tx.jobs`` (progress of reindex) and ``tx.locks``.

This package is the port and its two implementations: ``MemoryStore`` (memory.py) and
``SqlStore`` (sql.py, on SQLAlchemy Core: the engine in sqlengine.py, the tables and migrations
in schema.py, search SQL in sqlsearch.py, outbox SQL in sqloutbox.py). The errors a store raises
(``StorageError``, ``StoreUnavailable``) are defined in ``service.errors``, so callers above the
FHIR core can handle them without importing storage.

May import: SQLAlchemy and psycopg, ``service.errors`` and ``service.config``; never the FHIR
core or anything above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from typing import Any, Protocol

from service.errors import StorageError as StorageError
from service.errors import StoreUnavailable as StoreUnavailable
from service.storage.outbox import OutboxRow


class VersionConflict(Exception):
    """Another writer changed the resource since it was read."""


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource; ``content`` is the JSON text served as it was stored."""

    type: str
    id: str
    version: int
    last_updated_us: int  # microseconds since the Unix epoch, UTC
    deleted: bool
    content: str | None  # None for a deletion
    method: str = "PUT"  # the HTTP method that made this version, for history bundles
    seq: int = 0  # global write sequence; orders history and keeps paging stable


@dataclass(frozen=True)
class TokenRow:
    """A token index row: the resource matches ``param=system|code``; ``text`` serves :text."""

    param: str
    system: str | None
    code: str
    text: str | None = None  # normalised display or CodeableConcept.text


@dataclass(frozen=True)
class StringRow:
    """A string index row: ``norm`` is case- and accent-folded, ``exact`` as written."""

    param: str
    norm: str
    exact: str


@dataclass(frozen=True)
class RangeRow:
    """A date (microseconds) or number row: the value is the range [low, high]."""

    param: str
    low: float
    high: float


@dataclass(frozen=True)
class QuantityRow:
    """A quantity row: the value range plus its unit system and code."""

    param: str
    low: float
    high: float
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceRow:
    """A reference row: a local target (type and id) or an absolute or canonical URL."""

    param: str
    target_type: str | None
    target_id: str | None
    url: str | None = None


@dataclass(frozen=True)
class UriRow:
    """A uri row."""

    param: str
    value: str


@dataclass(frozen=True)
class CompositeRow:
    """A two-part composite row (e.g. Observation code-value-quantity): a token and a value."""

    param: str
    system: str | None
    code: str
    value_system: str | None = None
    value_code: str | None = None
    low: float | None = None
    high: float | None = None
    text: str | None = None


@dataclass
class IndexRows:
    """Every index row of one resource version, written with it in one transaction."""

    tokens: list[TokenRow] = field(default_factory=list)
    strings: list[StringRow] = field(default_factory=list)
    dates: list[RangeRow] = field(default_factory=list)
    numbers: list[RangeRow] = field(default_factory=list)
    quantities: list[QuantityRow] = field(default_factory=list)
    references: list[ReferenceRow] = field(default_factory=list)
    uris: list[UriRow] = field(default_factory=list)
    composites: list[CompositeRow] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        """The rows of one parameter type (token, string, date, ...)."""
        rows: list[Any] = getattr(self, INDEX_KINDS[kind].rows)
        return rows


@dataclass(frozen=True)
class IndexKind:
    """How one search parameter type is kept: where its rows are, and what they hold."""

    rows: str  # the IndexRows attribute
    fields: tuple[str, ...]  # the row's values besides param (also the table's columns)
    sort_field: str  # what _sort orders by (the smallest or largest of a resource's rows)


def _values(row_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(row_type) if f.name != "param")


INDEX_KINDS = {
    "token": IndexKind("tokens", _values(TokenRow), "code"),
    "string": IndexKind("strings", _values(StringRow), "norm"),
    "date": IndexKind("dates", _values(RangeRow), "low"),
    "number": IndexKind("numbers", _values(RangeRow), "low"),
    "quantity": IndexKind("quantities", _values(QuantityRow), "low"),
    "reference": IndexKind("references", _values(ReferenceRow), "target_id"),
    "uri": IndexKind("uris", _values(UriRow), "value"),
    "composite": IndexKind("composites", _values(CompositeRow), "code"),
}


# -- search criteria: what a query asks of the index (built by the FHIR core) -----------------


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


@dataclass(frozen=True)
class Evidence:
    """Resources of ``type`` matching ``criteria`` that name a subject through the reference
    parameter ``link`` (e.g. Observations whose ``patient`` is the Patient)."""

    type: str
    link: str
    criteria: tuple[Criterion, ...] = ()


@dataclass(frozen=True)
class Repeat:
    """Subjects with a record (any of ``records``, dated by their ``date`` parameter's low end)
    inside [``start_us``, ``end_us``] that follows an earlier record by at most ``within_us``."""

    records: tuple[Evidence, ...]
    date: str
    start_us: int
    end_us: int
    within_us: int


@dataclass(frozen=True)
class CohortQuery:
    """Subjects of ``subject_type`` in age-like bands, members through ``members``, each with
    a stratum per value of ``stratum_param`` on its members' evidence, and boolean flags.

    ``bands`` are (label, bound), oldest first: a subject is in the first band whose
    ``band_param`` date ends before the bound; a subject in no band is not counted. Evidence
    without a ``stratum_param`` value gives the stratum ``""``, only
    to a subject with no other stratum. A flag is true when any of its
    evidence names the subject (or, for a ``Repeat``, when a record repeats in time).
    ``subjects`` restricts the count to those ids.
    """

    subject_type: str
    band_param: str
    bands: tuple[tuple[str, int], ...]
    members: tuple[Evidence, ...]
    stratum_param: str
    flags: tuple[tuple[Evidence, ...] | Repeat, ...] = ()
    subjects: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CohortCount:
    """How many subjects share a stratum (None: every stratum, each subject once), a band and
    the flag values."""

    stratum: str | None
    band: str
    flags: tuple[bool, ...]
    count: int


@dataclass(frozen=True)
class CohortMember:
    """One subject of a cohort: its band, its strata and its flags."""

    id: str
    band: str
    strata: tuple[str, ...]
    flags: tuple[bool, ...]


class Resources(Protocol):
    """Resource versions: read them, write the next one, walk their history."""

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version (which may be a deletion), or None if never written."""

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version of a resource, or None."""

    def read_many(self, keys: Sequence[Key]) -> list[StoredResource]:
        """Return the current, non-deleted versions of the given resources."""

    def put(
        self,
        resource: StoredResource,
        replaces: int | None,
        index: IndexRows | None = None,
    ) -> None:
        """Store a new version with its index rows; ``replaces`` is the current version it
        supersedes (None: new).

        Raises VersionConflict if the current version is no longer ``replaces``.
        """

    def insert_new(self, items: Sequence[tuple[StoredResource, IndexRows]]) -> None:
        """Store first versions of many new resources at once (bulk loading).

        Raises VersionConflict if any of them exists already.
        """

    def matching(
        self, query: Query, limit: int, window: Window
    ) -> tuple[list[StoredResource], bool]:
        """Return the current versions of the first ``limit`` matches of ``query`` within
        ``window`` (a query ``pages_by_cursor``), in query order, read with the search in one
        statement, and whether more matches follow (for a window ``before`` an id: precede)."""

    def current_keys(self, after: Key | None, limit: int) -> list[Key]:
        """Return current, non-deleted resource keys in key order after ``after``."""

    def history(self, query: HistoryQuery) -> list[StoredResource]:
        """Return versions newest first."""


class Index(Protocol):
    """The index rows of current versions: rebuilt by reindexing, followed by _include and
    _revinclude, looked up by identifier."""

    def replace(self, type_: str, id_: str, rows: IndexRows) -> None:
        """Replace the index rows of the current version (reindexing)."""

    def references_from(self, keys: Sequence[Key], param: str | None) -> list[Key]:
        """Return local targets referenced by the given resources (through ``param``)."""

    def referencing(self, source_type: str, param: str | None, keys: Sequence[Key]) -> list[Key]:
        """Return resources of ``source_type`` that reference any of ``keys``."""

    def find_tokens(
        self, type_: str, param: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Current resources of ``type_`` whose ``param`` holds one of the (system, code)
        pairs: each pair found, with the id of one resource holding it (bulk identifier
        look-ups, one query per batch)."""


class Searches(Protocol):
    """Searches answered from the index; a cursor (``Window``) pages those ordered by id, and
    kept matches page the others (``_sort`` on a value an update may change)."""

    def keys(self, query: Query, limit: int, window: Window | None = None) -> list[Key]:
        """Return the (type, id) of the first ``limit`` matches, in query order; with a
        ``window`` (only for a query ``pages_by_cursor``), the matches it takes (in query
        order, also when it takes the page ``before`` an id)."""

    def count(self, query: Query, as_of: int | None = None) -> int:
        """Return how many current resources match ``query`` (first written by ``as_of``)."""

    def horizon(self) -> int:
        """The latest write sequence: the ``as_of`` of a search beginning now."""

    def cohort_counts(self, query: CohortQuery) -> list[CohortCount]:
        """Count the subjects of a cohort by stratum, band and flags, in the database."""

    def cohort_members(self, query: CohortQuery) -> list[CohortMember]:
        """The subjects of a cohort, in id order."""

    def save(self, search_id: str, keys: Sequence[Key], created_us: int) -> None:
        """Keep the ordered matches of a search so that its pages stay stable."""

    def saved(self, search_id: str, offset: int, count: int) -> tuple[list[Key], int] | None:
        """Return a page of a kept search and its total, or None if it expired."""


class Outbox(Protocol):
    """Deliveries to partners and subscribers, written with the change that makes them."""

    def add(self, rows: Sequence[OutboxRow]) -> None:
        """Queue deliveries; they commit with the transaction's writes or not at all."""

    def rows(
        self,
        states: Sequence[str] | None = None,
        destination: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int = 1000,
        group_key: str | None = None,
        after: int = 0,
    ) -> list[OutboxRow]:
        """Return outbox rows in id order, filtered by state, destination, ids and group,
        from the row after ``after`` (paging)."""

    def heads(self, now: int, limit: int = 1) -> list[OutboxRow]:
        """Return the oldest undelivered (pending or inflight) row of each group, where that
        row may be taken now (pending and due, or inflight with its lease run out), oldest
        first. Groups whose head waits are left out whatever their depth."""

    def save(self, row: OutboxRow, owner: str | None = None) -> bool:
        """Store a row's new state by id; with ``owner``, only while that worker holds its
        lease. Return whether the row was saved."""

    def summary(self) -> list[tuple[str, str, int, int]]:
        """Return (destination, state, rows, oldest created_us) per destination and state."""


class Counters(Protocol):
    """Named counters (a subscription's event number, a channel's last heartbeat)."""

    def next(self, name: str, step: int = 1) -> int:
        """Add ``step`` to a named counter and return it (step 0 reads it)."""


class Jobs(Protocol):
    """The progress of resumable jobs such as reindex and Bulk Data exports."""

    def progress(self, name: str) -> tuple[Key | None, int] | None:
        """Return (last key, count done) of a job, or None."""

    def set_progress(self, name: str, last: Key | None, done: int | None) -> None:
        """Record a job's progress; ``done`` None forgets the job."""


class Locks(Protocol):
    """Locks held until the transaction ends."""

    def hold(self, key: str) -> None:
        """Serialise transactions that use the same key (e.g. a conditional create)."""


class Transaction(Protocol):
    """One database transaction: everything it writes commits together or not at all.

    Its parts, one per job, share the transaction.
    """

    @property
    def resources(self) -> Resources:
        """Resource versions and their history."""

    @property
    def index(self) -> Index:
        """Index rows and the look-ups on them."""

    @property
    def searches(self) -> Searches:
        """Searches and kept search results."""

    @property
    def outbox(self) -> Outbox:
        """Queued deliveries."""

    @property
    def counters(self) -> Counters:
        """Named counters."""

    @property
    def jobs(self) -> Jobs:
        """Progress of resumable jobs."""

    @property
    def locks(self) -> Locks:
        """Locks held to the end of the transaction."""


class Store(Protocol):
    """Where resources live: MemoryStore for tests, SqlStore for SQLite and PostgreSQL."""

    def transaction(self, write: bool = True) -> AbstractContextManager[Transaction]:
        """Open a transaction; it commits when the block ends and rolls back on an exception."""

    def migrate(self) -> list[str]:
        """Create or upgrade the schema; return the migrations applied."""

    def pending_migrations(self) -> list[int]:
        """The schema migrations not applied yet (empty: the schema is current)."""

    def instance_id(self) -> str:
        """The stable identifier of this installation (a UUID), made once with its database."""

    def check(self) -> None:
        """Raise StoreUnavailable if the database cannot answer."""

    def close(self) -> None:
        """Release connections."""
