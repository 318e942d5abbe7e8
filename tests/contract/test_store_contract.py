"""The Store contract: the same behaviour from MemoryStore and SqlStore (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.storage import (
    HistoryQuery,
    Query,
    Store,
    StoredResource,
    TokenCriterion,
    TokenRow,
    VersionConflict,
)
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from tests.conftest import wipe


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest, sql_store: SqlStore) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        wipe(sql_store)
        yield sql_store


def _version(id_: str, version: int, deleted: bool = False, type_: str = "Goal") -> StoredResource:
    return StoredResource(
        type_,
        id_,
        version,
        1_000_000 * version,
        deleted,
        None if deleted else f'{{"v":{version}}}',
        "PUT",
    )


def test_put_then_read_and_vread(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_version("a", 1), None)
        tx.put(_version("a", 2), 1)
    with store.transaction(write=False) as tx:
        current = tx.read("Goal", "a")
        assert current is not None
        assert current.version == 2
        assert current.content == '{"v":2}'
        first = tx.vread("Goal", "a", 1)
        assert first is not None
        assert first.content == '{"v":1}'
        assert tx.read("Goal", "b") is None


def test_put_with_stale_replaces_raises_version_conflict(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_version("a", 1), None)
    with pytest.raises(VersionConflict), store.transaction() as tx:
        tx.put(_version("a", 2), 5)
    with pytest.raises(VersionConflict), store.transaction() as tx:
        tx.put(_version("a", 1), None)


def _write_then_fail(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_version("a", 1), None, [TokenRow("identifier", "s", "1")])
        raise RuntimeError("boom")


def test_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        _write_then_fail(store)
    with store.transaction(write=False) as tx:
        assert tx.read("Goal", "a") is None
        assert tx.search(Query("Goal")).resources == []
        assert tx.history(HistoryQuery()) == []


def test_search_by_token_forms(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_version("a", 1), None, [TokenRow("identifier", "s", "1")])
        tx.put(_version("b", 1), None, [TokenRow("identifier", None, "1")])
        tx.put(_version("c", 1), None, [TokenRow("identifier", "s", "2")])

    def ids(*values: tuple[str | None, str | None]) -> list[str]:
        query = Query("Goal", tokens=(TokenCriterion("identifier", values),))
        with store.transaction(write=False) as tx:
            return sorted(r.id for r in tx.search(query).resources)

    assert ids(("s", "1")) == ["a"]
    assert ids((None, "1")) == ["a", "b"]
    assert ids(("", "1")) == ["b"]
    assert ids(("s", None)) == ["a", "c"]
    assert ids(("s", "1"), ("s", "2")) == ["a", "c"]


def test_search_skips_deleted_and_counts_total(store: Store) -> None:
    with store.transaction() as tx:
        for id_ in "abc":
            tx.put(_version(id_, 1), None, [TokenRow("identifier", "s", "1")])
        tx.put(_version("b", 2, deleted=True), 1)
    with store.transaction(write=False) as tx:
        result = tx.search(Query("Goal", count=1), with_total=True)
        assert result.total == 2
        assert len(result.resources) == 1
        assert sorted(r.id for r in tx.search(Query("Goal", ids=("a", "b"))).resources) == ["a"]


def test_history_is_newest_first_and_pages_by_sequence(store: Store) -> None:
    with store.transaction() as tx:
        tx.put(_version("a", 1), None)
        tx.put(_version("b", 1, type_="Patient"), None)
        tx.put(_version("a", 2), 1)
    with store.transaction(write=False) as tx:
        everything = tx.history(HistoryQuery())
        assert [(r.type, r.id, r.version) for r in everything] == [
            ("Goal", "a", 2),
            ("Patient", "b", 1),
            ("Goal", "a", 1),
        ]
        goals = tx.history(HistoryQuery(type="Goal"))
        assert [r.version for r in goals] == [2, 1]
        older = tx.history(HistoryQuery(before_seq=everything[1].seq))
        assert [(r.id, r.version) for r in older] == [("a", 1)]
        recent = tx.history(HistoryQuery(since_us=2_000_000))
        assert [(r.id, r.version) for r in recent] == [("a", 2)]
