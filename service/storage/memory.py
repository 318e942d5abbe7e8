"""MemoryStore: the Store port in process memory, for unit tests and the contract suite.

A transaction's parts (``MemoryResources``, ``MemorySearches``, ...) share one private copy
of the state. It answers searches from the same IndexRows the SQL store keeps, with the same
semantics.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from service.storage import (
    INDEX_KINDS,
    CohortCount,
    CohortMember,
    CohortQuery,
    CompositeMatch,
    Criterion,
    HasCriterion,
    HistoryQuery,
    IdCriterion,
    IndexRows,
    Key,
    LastUpdatedCriterion,
    Match,
    MissingCriterion,
    ParamCriterion,
    QuantityMatch,
    Query,
    RangeMatch,
    ReferenceMatch,
    SortKey,
    StoredResource,
    StringMatch,
    TokenMatch,
    UriMatch,
    VersionConflict,
    Window,
)
from service.storage.memcohort import MemoryCohorts
from service.storage.outbox import UNDELIVERED, OutboxRow


def in_range(match: RangeMatch, low: float, high: float) -> bool:
    """The same prefix semantics as the SQL store (search.html#prefix)."""
    inside = low >= match.low and high <= match.high
    return {
        "eq": inside,
        "ne": not inside,
        "gt": high > match.high,
        "lt": low < match.low,
        "ge": high > match.high or inside,
        "le": low < match.low or inside,
        "sa": low > match.high,
        "eb": high < match.low,
        "ap": low <= match.high and high >= match.low,
    }[match.op]


def _token(match: TokenMatch, system: str | None, code: str | None, text: str | None) -> bool:
    if match.text is not None:
        return text is not None and text.startswith(match.text)
    if match.code is not None and code != match.code:
        return False
    if match.system == "":
        return system is None
    return match.system is None or system == match.system


def _string(match: StringMatch, norm: str | None, exact: str | None) -> bool:
    if match.mode == "exact":
        return exact == match.value
    if norm is None:
        return False
    if match.mode == "contains":
        return match.value in norm
    return norm.startswith(match.value)


def _uri(match: UriMatch, value: str) -> bool:
    if match.mode == "below":
        return value == match.value or value.startswith(match.value + "/")
    if match.mode == "above":
        return match.value == value or match.value.startswith(value + "/")
    return value == match.value


@dataclass
class _State:
    versions: dict[Key, list[StoredResource]] = field(default_factory=dict)
    index: dict[Key, IndexRows] = field(default_factory=dict)
    log: list[StoredResource] = field(default_factory=list)
    saved: dict[str, list[Key]] = field(default_factory=dict)
    jobs: dict[str, tuple[Key | None, int]] = field(default_factory=dict)
    seq: int = 0
    outbox: dict[int, OutboxRow] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def copy(self) -> _State:
        return _State(
            versions={k: list(v) for k, v in self.versions.items()},
            index=dict(self.index),
            log=list(self.log),
            saved=dict(self.saved),
            jobs=dict(self.jobs),
            seq=self.seq,
            outbox=dict(self.outbox),
            counters=dict(self.counters),
        )


def _current(state: _State, type_: str) -> Iterator[StoredResource]:
    """The current, non-deleted versions of ``type_``."""
    for (t, _), versions in state.versions.items():
        if t == type_ and not versions[-1].deleted:
            yield versions[-1]


def _read(state: _State, type_: str, id_: str) -> StoredResource | None:
    versions = state.versions.get((type_, id_))
    return versions[-1] if versions else None


class MemoryResources:
    """Resource versions in memory."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version, or None."""
        return _read(self.state, type_, id_)

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version, or None."""
        for item in self.state.versions.get((type_, id_), []):
            if item.version == version:
                return item
        return None

    def read_many(self, keys: Sequence[Key]) -> list[StoredResource]:
        """Return current, non-deleted versions in the order given."""
        out = []
        for key in keys:
            current = _read(self.state, *key)
            if current is not None and not current.deleted:
                out.append(current)
        return out

    def put(
        self, resource: StoredResource, replaces: int | None, index: IndexRows | None = None
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
        self.state.index[key] = IndexRows() if resource.deleted else index or IndexRows()

    def insert_new(self, items: Sequence[tuple[StoredResource, IndexRows]]) -> None:
        """Store many new resources."""
        for resource, index in items:
            self.put(resource, None, index)

    def matching(
        self, query: Query, limit: int, window: Window
    ) -> tuple[list[StoredResource], bool]:
        """Return a page of matches (see MemorySearches.keys) and whether more follow."""
        keys = MemorySearches(self.state).keys(query, limit + 1, window)
        if window.before is not None:
            more, keys = len(keys) > limit, keys[-limit:] if limit else []
        else:
            more, keys = len(keys) > limit, keys[:limit]
        return self.read_many(keys), more

    def current_keys(self, after: Key | None, limit: int) -> list[Key]:
        """Return current keys in order after ``after``."""
        keys = sorted(k for k, v in self.state.versions.items() if not v[-1].deleted)
        if after is not None:
            keys = [k for k in keys if k > after]
        return keys[:limit]

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


class MemoryIndex:
    """Index rows in memory."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def replace(self, type_: str, id_: str, rows: IndexRows) -> None:
        """Replace the index rows of a resource."""
        self.state.index[(type_, id_)] = rows

    def find_tokens(
        self, type_: str, param: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Which (system, code) pairs current resources of ``type_`` hold in ``param``."""
        wanted = set(pairs)
        found: dict[tuple[str, str], str] = {}
        for resource in _current(self.state, type_):
            for row in self.state.index.get((resource.type, resource.id), IndexRows()).tokens:
                pair = (row.system or "", row.code)
                if row.param == param and pair in wanted and pair not in found:
                    found[pair] = resource.id
        return found

    def references_from(self, keys: Sequence[Key], param: str | None) -> list[Key]:
        """Return local targets referenced by the given resources."""
        out: list[Key] = []
        for key in keys:
            for row in self.state.index.get(key, IndexRows()).references:
                if (param is None or row.param == param) and row.target_id and row.target_type:
                    target = (row.target_type, row.target_id)
                    if target not in out:
                        out.append(target)
        return out

    def referencing(self, source_type: str, param: str | None, keys: Sequence[Key]) -> list[Key]:
        """Return resources of ``source_type`` referencing any of ``keys``."""
        wanted = set(keys)
        out: list[Key] = []
        for source in _current(self.state, source_type):
            rows = self.state.index.get((source.type, source.id), IndexRows()).references
            if any(
                (param is None or r.param == param) and (r.target_type, r.target_id) in wanted
                for r in rows
            ):
                out.append((source.type, source.id))
        return out


class MemorySearches:
    """Searches over the index rows in memory, with the same semantics as SQL."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def keys(self, query: Query, limit: int, window: Window | None = None) -> list[Key]:
        """Return the first ``limit`` matching keys (in ``window``) in query order."""
        found = [(r.type, r.id) for r in self._sorted(query, window)]
        if window is None:
            return found[:limit]
        descending = bool(query.sort) and query.sort[0].descending
        if window.after is not None:
            found = [
                k for k in found if (k[1] < window.after if descending else k[1] > window.after)
            ]
        elif window.before is not None:
            found = [
                k for k in found if (k[1] > window.before if descending else k[1] < window.before)
            ]
            return found[-limit:] if limit else []
        return found[window.offset : window.offset + limit]

    def count(self, query: Query, as_of: int | None = None) -> int:
        """Return how many resources match (first written by ``as_of``)."""
        return len(self._sorted(query, None if as_of is None else Window(as_of=as_of)))

    def horizon(self) -> int:
        """The latest write sequence."""
        return self.state.seq

    def cohort_counts(self, query: CohortQuery) -> list[CohortCount]:
        """Count a cohort's subjects (memcohort.py)."""
        return MemoryCohorts(self.state.versions, self.state.index, self._matches).counts(query)

    def cohort_members(self, query: CohortQuery) -> list[CohortMember]:
        """A cohort's subjects (memcohort.py)."""
        return MemoryCohorts(self.state.versions, self.state.index, self._matches).members(query)

    def save(self, search_id: str, keys: Sequence[Key], created_us: int) -> None:
        """Keep the ordered matches of a search."""
        self.state.saved[search_id] = list(keys)

    def saved(self, search_id: str, offset: int, count: int) -> tuple[list[Key], int] | None:
        """Return one page of a kept search."""
        keys = self.state.saved.get(search_id)
        if keys is None:
            return None
        return keys[offset : offset + count], len(keys)

    def _matches(self, type_: str, stored: StoredResource, criteria: Sequence[Criterion]) -> bool:
        rows = self.state.index.get((type_, stored.id), IndexRows())
        return all(self._criterion(type_, stored, rows, c) for c in criteria)

    def _criterion(
        self, type_: str, stored: StoredResource, rows: IndexRows, criterion: Criterion
    ) -> bool:
        if isinstance(criterion, IdCriterion):
            return stored.id in criterion.ids
        if isinstance(criterion, LastUpdatedCriterion):
            lu = stored.last_updated_us
            return any(in_range(m, lu, lu + 999) for m in criterion.matches)
        if isinstance(criterion, MissingCriterion):
            present = any(r.param == criterion.param for r in rows.of(criterion.kind))
            return present != criterion.missing
        if isinstance(criterion, HasCriterion):
            for source in _current(self.state, criterion.source_type):
                source_rows = self.state.index.get((source.type, source.id), IndexRows())
                points_here = any(
                    r.param == criterion.param
                    and r.target_type == type_
                    and r.target_id == stored.id
                    for r in source_rows.references
                )
                if points_here and self._matches(source.type, source, criterion.criteria):
                    return True
            return False
        assert isinstance(criterion, ParamCriterion)
        candidates = [r for r in rows.of(criterion.kind) if r.param == criterion.param]
        hit = any(self._match(row, m) for row in candidates for m in criterion.matches)
        return not hit if criterion.negate else hit

    def _match(self, row: Any, match: Match) -> bool:
        if isinstance(match, TokenMatch):
            return _token(match, row.system, row.code, row.text)
        if isinstance(match, StringMatch):
            return _string(match, row.norm, row.exact)
        if isinstance(match, QuantityMatch):
            return (
                in_range(match.range, row.low, row.high)
                and (match.system is None or row.system == match.system)
                and (match.code is None or row.code == match.code)
            )
        if isinstance(match, RangeMatch):
            return in_range(match, row.low, row.high)
        if isinstance(match, UriMatch):
            return _uri(match, row.value)
        if isinstance(match, CompositeMatch):
            return self._composite(row, match)
        return self._reference(row, match)

    def _composite(self, row: Any, match: CompositeMatch) -> bool:
        if not _token(match.token, row.system, row.code, None):
            return False
        value = match.value
        if isinstance(value, TokenMatch):
            return _token(value, row.value_system, row.value_code, None)
        if isinstance(value, QuantityMatch):
            return (
                row.low is not None
                and in_range(value.range, row.low, row.high)
                and (value.system is None or row.value_system == value.system)
                and (value.code is None or row.value_code == value.code)
            )
        if isinstance(value, RangeMatch):
            return row.low is not None and in_range(value, row.low, row.high)
        return _string(value, row.text, None)

    def _reference(self, row: Any, match: ReferenceMatch) -> bool:
        if match.chain:
            if row.target_type not in match.types or row.target_id is None:
                return False
            target = _read(self.state, row.target_type, row.target_id)
            return (
                target is not None
                and not target.deleted
                and self._matches(row.target_type, target, match.chain)
            )
        return (
            (match.url is None or row.url == match.url)
            and (match.target_type is None or row.target_type == match.target_type)
            and (match.target_id is None or row.target_id == match.target_id)
            and (not match.types or row.target_type in match.types)
        )

    def _sorted(self, query: Query, window: Window | None = None) -> list[StoredResource]:
        as_of = None if window is None else window.as_of
        found = [
            r
            for r in _current(self.state, query.type)
            if self._matches(query.type, r, query.criteria)
            and (as_of is None or self.state.versions[(r.type, r.id)][0].seq <= as_of)
        ]
        found.sort(key=lambda r: r.id)
        for key in reversed(query.sort):
            found.sort(key=lambda r, key=key: self._sort_value(query.type, r, key))  # type: ignore[misc]
        return found

    def _sort_value(self, type_: str, stored: StoredResource, key: SortKey) -> tuple[int, Any]:
        if key.kind == "_id":
            value: Any = stored.id
        elif key.kind == "_lastUpdated":
            value = stored.last_updated_us
        else:
            rows = self.state.index.get((type_, stored.id), IndexRows())
            values = [
                getattr(r, INDEX_KINDS[key.kind].sort_field)
                for r in rows.of(key.kind)
                if r.param == key.param
            ]
            values = [v for v in values if v is not None and v != ""]  # as NULLIF in SQL
            if not values:
                return (1, 0)  # resources without a value sort last either way
            value = max(values) if key.descending else min(values)
        if key.descending:
            return (0, _Reversed(value))
        return (0, value)


class MemoryOutbox:
    """The outbox in memory."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def add(self, rows: Sequence[OutboxRow]) -> None:
        """Queue deliveries in this transaction."""
        for row in rows:
            id_ = max(self.state.outbox, default=0) + 1
            self.state.outbox[id_] = replace(row, id=id_)

    def rows(
        self,
        states: Sequence[str] | None = None,
        destination: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int = 1000,
        group_key: str | None = None,
        after: int = 0,
    ) -> list[OutboxRow]:
        """Return outbox rows in id order."""
        rows = [
            row
            for _, row in sorted(self.state.outbox.items())
            if row.id > after
            and (states is None or row.state in states)
            and (destination is None or row.destination == destination)
            and (ids is None or row.id in ids)
            and (group_key is None or row.group_key == group_key)
        ]
        return rows[:limit]

    def heads(self, now: int, limit: int = 1) -> list[OutboxRow]:
        """Return the ready head row of each group, oldest first."""
        heads: dict[tuple[str, str], OutboxRow] = {}
        for _, row in sorted(self.state.outbox.items()):
            if row.state in UNDELIVERED:
                heads.setdefault((row.destination, row.group_key), row)
        ready = [row for row in heads.values() if row.ready(now)]
        return sorted(ready, key=lambda row: row.id)[:limit]

    def save(self, row: OutboxRow, owner: str | None = None) -> bool:
        """Store a row's new state (only under ``owner``'s lease when given)."""
        current = self.state.outbox.get(row.id)
        if current is None or (owner is not None and current.lease_owner != owner):
            return False
        self.state.outbox[row.id] = row
        return True

    def summary(self) -> list[tuple[str, str, int, int]]:
        """Return (destination, state, rows, oldest created_us)."""
        groups: dict[tuple[str, str], list[int]] = {}
        for row in self.state.outbox.values():
            groups.setdefault((row.destination, row.state), []).append(row.created_us)
        return [(d, s, len(c), min(c)) for (d, s), c in sorted(groups.items())]


class MemoryCounters:
    """Named counters in memory."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def next(self, name: str, step: int = 1) -> int:
        """Add ``step`` to a named counter and return its new value."""
        self.state.counters[name] = self.state.counters.get(name, 0) + step
        return self.state.counters[name]


class MemoryJobs:
    """Job progress in memory."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def progress(self, name: str) -> tuple[Key | None, int] | None:
        """Return a job's progress."""
        return self.state.jobs.get(name)

    def set_progress(self, name: str, last: Key | None, done: int | None) -> None:
        """Record or forget a job's progress."""
        if done is None:
            self.state.jobs.pop(name, None)
        else:
            self.state.jobs[name] = (last, done)


class MemoryLocks:
    """Locks in memory."""

    def hold(self, key: str) -> None:
        """Nothing to do: write transactions already run one at a time."""


class MemoryTransaction:
    """A transaction over a private copy of the state, published on commit."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.resources = MemoryResources(state)
        self.index = MemoryIndex(state)
        self.searches = MemorySearches(state)
        self.outbox = MemoryOutbox(state)
        self.counters = MemoryCounters(state)
        self.jobs = MemoryJobs(state)
        self.locks = MemoryLocks()


class _Reversed:
    """Wraps a value so that sorting ascending orders it descending."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Reversed) -> bool:
        result: bool = self.value > other.value
        return result

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


class MemoryStore:
    """The Store port in memory; write transactions are serialised by one lock."""

    def __init__(self) -> None:
        self._state = _State()
        self._lock = threading.RLock()
        self._instance_id = str(uuid.uuid4())

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[MemoryTransaction]:
        """Run a block on a copy of the state and publish it only if the block succeeds."""
        with self._lock:
            tx = MemoryTransaction(self._state.copy() if write else self._state)
            yield tx
            if write:
                self._state = tx.state

    def pending_migrations(self) -> list[int]:
        """Nothing: memory has no schema."""
        return []

    def migrate(self) -> list[str]:
        """Nothing to migrate in memory."""
        return []

    def instance_id(self) -> str:
        """This store's identifier, made with it (it lives as long as the store)."""
        return self._instance_id

    def check(self) -> None:
        """Memory is always reachable."""

    def close(self) -> None:
        """Nothing to release."""
