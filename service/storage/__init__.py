"""The Store port: versioned FHIR resources with history and search indexes.

Every resource version is kept. A write names the version it replaces, so two writers racing on
one resource cannot both win (``VersionConflict``); the FHIR core maps that to 412 or retries.

A ``Store`` opens ``Transaction``s. A transaction is made of small ports, one per job, that all
commit together: ``tx.resources`` (versions and history), ``tx.index`` (index rows and the
look-ups on them), ``tx.searches`` (searches and kept results), ``tx.outbox`` (queued
deliveries), ``tx.counters``, ``tx.jobs`` (progress of reindex and exports) and
``tx.locks``. The values they take and give live beside: index_rows.py (the rows a resource
gives), queries.py (criteria, queries, paging windows), cohorts.py (a measure's populations).

This package is the port and its two implementations: ``MemoryStore`` (memory.py) and
``SqlStore`` (sql.py, on SQLAlchemy Core: the engine in sqlengine.py, the tables and migrations
in schema.py, search SQL in sqlsearch.py, cohort SQL in sqlcohort.py, outbox SQL in
sqloutbox.py; memcohort.py for the memory store). The errors a store raises
(``StorageError``, ``StoreUnavailable``) are defined in ``service.errors``, so callers above the
FHIR core can handle them without importing storage.

May import: SQLAlchemy and psycopg, ``service.errors`` and ``service.config``; never the FHIR
core or anything above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from service.errors import StorageError as StorageError
from service.errors import StoreUnavailable as StoreUnavailable
from service.storage.cohorts import (
    CohortCount as CohortCount,
)
from service.storage.cohorts import (
    CohortMember as CohortMember,
)
from service.storage.cohorts import (
    CohortQuery as CohortQuery,
)
from service.storage.cohorts import (
    Evidence as Evidence,
)
from service.storage.cohorts import (
    Repeat as Repeat,
)
from service.storage.index_rows import (
    INDEX_KINDS as INDEX_KINDS,
)
from service.storage.index_rows import (
    CompositeRow as CompositeRow,
)
from service.storage.index_rows import (
    IndexKind as IndexKind,
)
from service.storage.index_rows import (
    IndexRows as IndexRows,
)
from service.storage.index_rows import (
    QuantityRow as QuantityRow,
)
from service.storage.index_rows import (
    RangeRow as RangeRow,
)
from service.storage.index_rows import (
    ReferenceRow as ReferenceRow,
)
from service.storage.index_rows import (
    StringRow as StringRow,
)
from service.storage.index_rows import (
    TokenRow as TokenRow,
)
from service.storage.index_rows import (
    UriRow as UriRow,
)
from service.storage.outbox import OutboxRow
from service.storage.queries import (
    CompositeMatch as CompositeMatch,
)
from service.storage.queries import (
    Criterion as Criterion,
)
from service.storage.queries import (
    HasCriterion as HasCriterion,
)
from service.storage.queries import (
    HistoryQuery as HistoryQuery,
)
from service.storage.queries import (
    IdCriterion as IdCriterion,
)
from service.storage.queries import (
    Key as Key,
)
from service.storage.queries import (
    LastUpdatedCriterion as LastUpdatedCriterion,
)
from service.storage.queries import (
    Match as Match,
)
from service.storage.queries import (
    MissingCriterion as MissingCriterion,
)
from service.storage.queries import (
    ParamCriterion as ParamCriterion,
)
from service.storage.queries import (
    QuantityMatch as QuantityMatch,
)
from service.storage.queries import (
    Query as Query,
)
from service.storage.queries import (
    RangeMatch as RangeMatch,
)
from service.storage.queries import (
    ReferenceMatch as ReferenceMatch,
)
from service.storage.queries import (
    SortKey as SortKey,
)
from service.storage.queries import (
    StringMatch as StringMatch,
)
from service.storage.queries import (
    TokenMatch as TokenMatch,
)
from service.storage.queries import (
    UriMatch as UriMatch,
)
from service.storage.queries import (
    Window as Window,
)
from service.storage.queries import (
    pages_by_cursor as pages_by_cursor,
)


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
