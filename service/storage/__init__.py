"""The Store port: versioned FHIR resources with history and search indexes.

Every resource version is kept. A write names the version it replaces, so two writers racing on
one resource cannot both win (``VersionConflict``); the FHIR core maps that to 412 or retries.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol


class StorageError(Exception):
    """The database failed in a way the caller cannot fix by changing the request."""


class StoreUnavailable(StorageError):
    """The database cannot be reached right now; the request may be retried."""


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
    """A token index row: the resource matches ``param=system|code``."""

    param: str
    system: str | None
    code: str


@dataclass(frozen=True)
class TokenCriterion:
    """Match resources with any of ``values`` for one token parameter (OR within, AND across)."""

    param: str
    # (system, code): system None means any system and "" means no system (the |code form);
    # code None means any code of the system (the system| form).
    values: tuple[tuple[str | None, str | None], ...]


@dataclass(frozen=True)
class Query:
    """A search within one resource type, answered from the index tables only."""

    type: str
    ids: tuple[str, ...] | None = None
    tokens: tuple[TokenCriterion, ...] = ()
    count: int = 50
    offset: int = 0


@dataclass(frozen=True)
class HistoryQuery:
    """Versions of the whole system, one type, or one resource, newest first."""

    type: str | None = None
    id: str | None = None
    since_us: int | None = None
    before_seq: int | None = None  # keeps paging stable while writes continue
    count: int = 50


@dataclass
class SearchResult:
    """The current versions that matched, and how many matched in all when asked for."""

    resources: list[StoredResource] = field(default_factory=list)
    total: int | None = None


class Transaction(Protocol):
    """One database transaction: everything it writes commits together or not at all."""

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version (which may be a deletion), or None if never written."""

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version of a resource, or None."""

    def put(
        self,
        resource: StoredResource,
        replaces: int | None,
        tokens: Sequence[TokenRow] = (),
    ) -> None:
        """Store a new version; ``replaces`` is the current version it supersedes (None: new).

        Raises VersionConflict if the current version is no longer ``replaces``.
        """

    def search(self, query: Query, with_total: bool = False) -> SearchResult:
        """Return current, non-deleted resources matching ``query``."""

    def history(self, query: HistoryQuery) -> list[StoredResource]:
        """Return versions newest first."""

    def lock(self, key: str) -> None:
        """Serialise transactions that use the same key (e.g. a conditional create)."""


class Store(Protocol):
    """Where resources live: MemoryStore for tests, SqlStore for SQLite and PostgreSQL."""

    def transaction(self, write: bool = True) -> AbstractContextManager[Transaction]:
        """Open a transaction; it commits when the block ends and rolls back on an exception."""

    def migrate(self) -> list[str]:
        """Create or upgrade the schema; return the migrations applied."""

    def check(self) -> None:
        """Raise StoreUnavailable if the database cannot answer."""

    def close(self) -> None:
        """Release connections."""


def iter_tokens(values: Iterator[TokenRow]) -> list[TokenRow]:
    """Drop duplicate token rows, keeping their first order."""
    seen: set[TokenRow] = set()
    out: list[TokenRow] = []
    for row in values:
        if row not in seen:
            seen.add(row)
            out.append(row)
    return out
