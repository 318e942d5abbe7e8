"""The Store contract: the same behaviour from MemoryStore and SqlStore (SQLite or PostgreSQL)."""

from __future__ import annotations

import pytest

from service.storage import (
    HistoryQuery,
    IdCriterion,
    IndexRows,
    ParamCriterion,
    Query,
    Store,
    StoredResource,
    TokenMatch,
    TokenRow,
    VersionConflict,
)


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
        tx.resources.put(_version("a", 1), None)
        tx.resources.put(_version("a", 2), 1)
    with store.transaction(write=False) as tx:
        current = tx.resources.read("Goal", "a")
        assert current is not None
        assert current.version == 2
        assert current.content == '{"v":2}'
        first = tx.resources.vread("Goal", "a", 1)
        assert first is not None
        assert first.content == '{"v":1}'
        assert tx.resources.read("Goal", "b") is None


def test_put_with_stale_replaces_raises_version_conflict(store: Store) -> None:
    with store.transaction() as tx:
        tx.resources.put(_version("a", 1), None)
    with pytest.raises(VersionConflict), store.transaction() as tx:
        tx.resources.put(_version("a", 2), 5)
    with pytest.raises(VersionConflict), store.transaction() as tx:
        tx.resources.put(_version("a", 1), None)


def _write_then_fail(store: Store) -> None:
    with store.transaction() as tx:
        tx.resources.put(_version("a", 1), None, _tokens(("s", "1")))
        raise RuntimeError("boom")


def test_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        _write_then_fail(store)
    with store.transaction(write=False) as tx:
        assert tx.resources.read("Goal", "a") is None
        assert tx.searches.keys(Query("Goal"), 10) == []
        assert tx.resources.history(HistoryQuery()) == []


def _tokens(*pairs: tuple[str | None, str]) -> IndexRows:
    return IndexRows(tokens=[TokenRow("identifier", s, c) for s, c in pairs])


def test_search_by_token_forms(store: Store) -> None:
    with store.transaction() as tx:
        tx.resources.put(_version("a", 1), None, _tokens(("s", "1")))
        tx.resources.put(_version("b", 1), None, _tokens((None, "1")))
        tx.resources.put(_version("c", 1), None, _tokens(("s", "2")))

    def ids(*values: tuple[str | None, str | None]) -> list[str]:
        matches = tuple(TokenMatch(s, c) for s, c in values)
        query = Query("Goal", criteria=(ParamCriterion("token", "identifier", matches),))
        with store.transaction(write=False) as tx:
            return sorted(k[1] for k in tx.searches.keys(query, 100))

    assert ids(("s", "1")) == ["a"]
    assert ids((None, "1")) == ["a", "b"]
    assert ids(("", "1")) == ["b"]
    assert ids(("s", None)) == ["a", "c"]
    assert ids(("s", "1"), ("s", "2")) == ["a", "c"]


def test_search_skips_deleted_and_counts_total(store: Store) -> None:
    with store.transaction() as tx:
        for id_ in "abc":
            tx.resources.put(_version(id_, 1), None, _tokens(("s", "1")))
        tx.resources.put(_version("b", 2, deleted=True), 1)
    with store.transaction(write=False) as tx:
        assert tx.searches.count(Query("Goal")) == 2
        assert tx.searches.keys(Query("Goal"), 1) == [("Goal", "a")]
        by_id = Query("Goal", criteria=(IdCriterion(("a", "b")),))
        assert tx.searches.keys(by_id, 10) == [("Goal", "a")]
        assert [
            r.id for r in tx.resources.read_many([("Goal", "c"), ("Goal", "b"), ("Goal", "a")])
        ] == [
            "c",
            "a",
        ]


def test_history_is_newest_first_and_pages_by_sequence(store: Store) -> None:
    with store.transaction() as tx:
        tx.resources.put(_version("a", 1), None)
        tx.resources.put(_version("b", 1, type_="Patient"), None)
        tx.resources.put(_version("a", 2), 1)
    with store.transaction(write=False) as tx:
        everything = tx.resources.history(HistoryQuery())
        assert [(r.type, r.id, r.version) for r in everything] == [
            ("Goal", "a", 2),
            ("Patient", "b", 1),
            ("Goal", "a", 1),
        ]
        goals = tx.resources.history(HistoryQuery(type="Goal"))
        assert [r.version for r in goals] == [2, 1]
        older = tx.resources.history(HistoryQuery(before_seq=everything[1].seq))
        assert [(r.id, r.version) for r in older] == [("a", 1)]
        recent = tx.resources.history(HistoryQuery(since_us=2_000_000))
        assert [(r.id, r.version) for r in recent] == [("a", 2)]


@pytest.mark.parametrize("size", [3, 40])  # PostgreSQL copies 8 resources and 64 index rows on
def test_insert_new_stores_a_batch_with_its_index_rows(store: Store, size: int) -> None:
    batch = [
        (_version(f"n{i:02d}", 1, type_="Goal"), _tokens(("s", str(i % 5)), (None, "all")))
        for i in range(size)
    ]
    with store.transaction() as tx:
        tx.resources.insert_new(batch)
    with store.transaction(write=False) as tx:
        stored = tx.resources.read_many([("Goal", f"n{i:02d}") for i in range(size)])
        assert [(r.id, r.version, r.content) for r in stored] == [
            (f"n{i:02d}", 1, '{"v":1}') for i in range(size)
        ]
        all_of_them = Query(
            "Goal", criteria=(ParamCriterion("token", "identifier", (TokenMatch(None, "all"),)),)
        )
        assert tx.searches.count(all_of_them) == size
        history = tx.resources.history(HistoryQuery(type="Goal"))
        assert sorted(r.id for r in history) == [f"n{i:02d}" for i in range(size)]
    with store.transaction() as tx:  # a batch's resources are ordinary ones afterwards
        tx.resources.put(_version("n00", 2), 1)


@pytest.mark.parametrize("size", [3, 40])
def test_insert_new_refuses_a_batch_naming_a_resource_that_exists(store: Store, size: int) -> None:
    with store.transaction() as tx:
        tx.resources.put(_version("n01", 1), None)
    batch = [(_version(f"n{i:02d}", 1), _tokens(("s", "x"))) for i in range(size)]
    with pytest.raises(VersionConflict), store.transaction() as tx:
        tx.resources.insert_new(batch)
    with store.transaction(write=False) as tx:  # nothing of the batch was kept
        assert tx.searches.count(Query("Goal")) == 1
        assert tx.resources.read("Goal", "n02") is None
