"""MemoryStore: the Store port in process memory, for unit tests and the contract suite."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

from service.storage import (
    HistoryQuery,
    Query,
    SearchResult,
    StoredResource,
    TokenRow,
    VersionConflict,
)


@dataclass
class _State:
    versions: dict[tuple[str, str], list[StoredResource]] = field(default_factory=dict)
    tokens: dict[tuple[str, str], list[TokenRow]] = field(default_factory=dict)
    log: list[StoredResource] = field(default_factory=list)
    seq: int = 0

    def copy(self) -> _State:
        return _State(
            versions={k: list(v) for k, v in self.versions.items()},
            tokens=dict(self.tokens),
            log=list(self.log),
            seq=self.seq,
        )


class MemoryTransaction:
    """A transaction over a private copy of the state, published on commit."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version, or None."""
        versions = self.state.versions.get((type_, id_))
        return versions[-1] if versions else None

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version, or None."""
        for item in self.state.versions.get((type_, id_), []):
            if item.version == version:
                return item
        return None

    def put(
        self, resource: StoredResource, replaces: int | None, tokens: Sequence[TokenRow] = ()
    ) -> None:
        """Store a new version if ``replaces`` is still current."""
        key = (resource.type, resource.id)
        current = self.read(*key)
        if (current.version if current else None) != replaces:
            raise VersionConflict(f"{resource.type}/{resource.id} changed")
        self.state.seq += 1
        stored = replace(resource, seq=self.state.seq)
        self.state.versions.setdefault(key, []).append(stored)
        self.state.log.append(stored)
        self.state.tokens[key] = [] if resource.deleted else list(tokens)

    def search(self, query: Query, with_total: bool = False) -> SearchResult:
        """Match current resources on ids and token rows."""
        matches: list[StoredResource] = []
        for (type_, id_), versions in self.state.versions.items():
            current = versions[-1]
            if type_ != query.type or current.deleted:
                continue
            if query.ids is not None and id_ not in query.ids:
                continue
            rows = self.state.tokens.get((type_, id_), [])
            if all(
                any(
                    row.param == crit.param
                    and (code is None or row.code == code)
                    and (system is None or (row.system or "") == system)
                    for row in rows
                    for system, code in crit.values
                )
                for crit in query.tokens
            ):
                matches.append(current)
        matches.sort(key=lambda r: (r.last_updated_us, r.seq))
        page = matches[query.offset : query.offset + query.count]
        return SearchResult(page, len(matches) if with_total else None)

    def history(self, query: HistoryQuery) -> list[StoredResource]:
        """Return versions newest first."""
        out: list[StoredResource] = []
        for item in reversed(self.state.log):
            if query.type is not None and item.type != query.type:
                continue
            if query.id is not None and item.id != query.id:
                continue
            if query.since_us is not None and item.last_updated_us < query.since_us:
                continue
            if query.before_seq is not None and item.seq >= query.before_seq:
                continue
            out.append(item)
            if len(out) >= query.count:
                break
        return out

    def lock(self, key: str) -> None:
        """Nothing to do: write transactions already run one at a time."""


class MemoryStore:
    """The Store port in memory; write transactions are serialised by one lock."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[MemoryTransaction]:
        """Run a block on a copy of the state and publish it only if the block succeeds."""
        with self._lock:
            tx = MemoryTransaction(self._state.copy() if write else self._state)
            yield tx
            if write:
                self._state = tx.state

    def migrate(self) -> list[str]:
        """Nothing to migrate in memory."""
        return []

    def check(self) -> None:
        """Memory is always reachable."""

    def close(self) -> None:
        """Nothing to release."""
