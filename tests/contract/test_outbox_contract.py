"""The outbox part of the Store contract, on MemoryStore and SqlStore (SQLite or PostgreSQL):
rows commit or roll back with the transaction's writes, leases guard settling, counters count."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.exchange.queue import choose_group, claim, discard, renew, retry
from service.storage import Store, StoredResource
from service.storage.outbox import OutboxRow


def row(group: str, res_id: str, destination: str = "partner:gp", **changes: object) -> OutboxRow:
    base = OutboxRow(destination, group, "resource", "Goal", res_id, 1, created_us=1_000)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_rows_commit_with_the_write_and_get_increasing_ids(store: Store) -> None:
    with store.transaction() as tx:
        tx.resources.put(StoredResource("Goal", "g1", 1, 1, False, "{}"), None)
        tx.outbox.add([row("Patient/a", "g1"), row("Patient/a", "g2")])
    with store.transaction(write=False) as tx:
        rows = tx.outbox.rows()
    assert [(r.res_id, r.state) for r in rows] == [("g1", "pending"), ("g2", "pending")]
    assert rows[0].id < rows[1].id


def _add_then_fail(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add([row("Patient/a", "g1")])
        raise RuntimeError("the write failed after the row was added")


def _count_then_fail(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.counters.next("subscription:s1") == 3
        raise RuntimeError("rolled back")


def test_rows_roll_back_with_a_failed_write(store: Store) -> None:
    with pytest.raises(RuntimeError):
        _add_then_fail(store)
    with store.transaction(write=False) as tx:
        assert tx.outbox.rows() == []


def test_rows_filter_by_state_destination_and_id(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            [
                row("Patient/a", "g1"),
                row("Patient/a", "g2", state="dead"),
                row("Patient/b", "g3", destination="partner:care-home"),
            ]
        )
    with store.transaction(write=False) as tx:
        everything = tx.outbox.rows()
        assert [r.res_id for r in tx.outbox.rows(states=["dead"])] == ["g2"]
        assert [r.res_id for r in tx.outbox.rows(destination="partner:care-home")] == ["g3"]
        assert [r.res_id for r in tx.outbox.rows(ids=[everything[0].id])] == ["g1"]
        assert len(tx.outbox.rows(limit=2)) == 2


def test_save_under_a_lease_fails_once_the_lease_moved_on(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add([row("Patient/a", "g1")])
    with store.transaction() as tx:
        [leased] = claim(tx, "worker-1", now=5_000, lease_us=1_000, limit=10)
    assert leased.state == "inflight"
    # the lease ran out; another worker takes the row over
    with store.transaction() as tx:
        [taken] = claim(tx, "worker-2", now=7_000, lease_us=1_000, limit=10)
    assert taken.lease_owner == "worker-2"
    with store.transaction() as tx:
        assert not tx.outbox.save(replace(leased, state="done"), owner="worker-1")
        assert tx.outbox.save(replace(taken, state="done"), owner="worker-2")
    with store.transaction(write=False) as tx:
        assert [r.state for r in tx.outbox.rows()] == ["done"]


def test_claim_takes_one_group_in_order_and_skips_groups_that_wait(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            [
                row("Patient/a", "a1", next_attempt_us=9_000),  # backing off: a waits
                row("Patient/b", "b1"),
                row("Patient/a", "a2"),
                row("Patient/b", "b2"),
            ]
        )
    with store.transaction() as tx:
        leased = claim(tx, "w", now=5_000, lease_us=60_000_000, limit=10)
    assert [r.res_id for r in leased] == ["b1", "b2"]
    with store.transaction() as tx:
        assert claim(tx, "w2", now=5_000, lease_us=60_000_000, limit=10) == []
        later = claim(tx, "w2", now=10_000, lease_us=60_000_000, limit=10)
    assert [r.res_id for r in later] == ["a1", "a2"]


def test_a_ready_group_behind_hundreds_of_waiting_rows_is_claimed(store: Store) -> None:
    # 600 groups back off (a partner is down); one patient at another partner is ready
    waiting = [row(f"Patient/w{n}", f"w{n}", next_attempt_us=90_000) for n in range(600)]
    deep = [row("Patient/deep", f"d{n}", next_attempt_us=90_000) for n in range(20)]
    ready = row("Patient/r", "r1", destination="partner:care-home")
    with store.transaction() as tx:
        tx.outbox.add([*waiting, *deep, ready])
    with store.transaction(write=False) as tx:
        heads = tx.outbox.heads(5_000, 10)
    assert [r.res_id for r in heads] == ["r1"]
    with store.transaction() as tx:
        leased = claim(tx, "w", now=5_000, lease_us=1_000, limit=10)
    assert [r.res_id for r in leased] == ["r1"]


def test_heads_are_each_groups_oldest_undelivered_row(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            [
                row("Patient/a", "a1", state="done"),
                row("Patient/a", "a2", state="dead"),
                row("Patient/a", "a3"),
                row("Patient/a", "a4"),
                row("Patient/b", "b1", state="inflight", lease_until_us=4_000),  # lease over
                row("Patient/c", "c1", state="inflight", lease_until_us=9_000),  # still leased
                row("Patient/c", "c2"),
            ]
        )
    with store.transaction(write=False) as tx:
        assert [r.res_id for r in tx.outbox.heads(5_000, 10)] == ["a3", "b1"]
        assert [r.res_id for r in tx.outbox.heads(5_000, 1)] == ["a3"]
        group = tx.outbox.rows(states=["pending"], group_key="Patient/a", destination="partner:gp")
        assert [r.res_id for r in group] == ["a3", "a4"]


def test_renew_extends_only_the_lease_still_held(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add([row("Patient/a", "a1"), row("Patient/a", "a2")])
    with store.transaction() as tx:
        leased = claim(tx, "w1", now=5_000, lease_us=1_000, limit=10)
    with store.transaction() as tx:
        assert renew(tx, leased, "w1", 50_000)
    with store.transaction(write=False) as tx:
        assert [r.lease_until_us for r in tx.outbox.rows()] == [50_000, 50_000]
        assert tx.outbox.heads(10_000, 10) == []  # renewed: nobody may take it over
    with store.transaction() as tx:
        taken = claim(tx, "w2", now=60_000, lease_us=1_000, limit=10)
    assert [r.lease_owner for r in taken] == ["w2", "w2"]
    with store.transaction() as tx:
        assert not renew(tx, leased, "w1", 90_000)
        assert not renew(tx, leased[1:], "w1", 90_000)
    with store.transaction(write=False) as tx:
        assert [r.lease_until_us for r in tx.outbox.rows()] == [61_000, 61_000]


def test_retry_and_discard_touch_only_what_they_name(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            [
                row("Patient/a", "g1", state="dead", attempts=3),
                row("Patient/a", "g2", state="dead", destination="partner:care-home"),
                row("Patient/a", "g3"),
            ]
        )
    with store.transaction() as tx:
        again = retry(tx, 50_000, None, "partner:gp")
    # the attempts made are kept; the give-up clock restarts at the retry
    assert [(r.res_id, r.state, r.attempts, r.next_attempt_us, r.requeued_us) for r in again] == [
        ("g1", "pending", 3, 50_000, 50_000)
    ]
    with store.transaction() as tx:
        gone = discard(tx, None, None)
    assert [r.res_id for r in gone] == ["g2"]
    with store.transaction(write=False) as tx:
        states = {r.res_id: r.state for r in tx.outbox.rows()}
        summary = tx.outbox.summary()
    assert states == {"g1": "pending", "g2": "discarded", "g3": "pending"}
    assert summary == [
        ("partner:care-home", "discarded", 1, 1_000),
        ("partner:gp", "pending", 2, 1_000),
    ]


def test_a_blocked_row_holds_its_group_until_its_dead_dependency_is_retried(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add(
            [
                row("Patient/a", "g1", state="dead"),
                row("Patient/a", "l1", state="blocked"),
                row("Patient/a", "p1"),
                row("Patient/b", "g9"),
            ]
        )
    with store.transaction(write=False) as tx:
        # the blocked head keeps Patient/a's later row waiting; Patient/b goes on
        assert [r.res_id for r in tx.outbox.heads(10_000, 10)] == ["g9"]
    with store.transaction() as tx:
        dead = tx.outbox.rows(states=("dead",))
        again = retry(tx, 20_000, [r.id for r in dead], None)
    assert [(r.res_id, r.state) for r in again] == [("g1", "pending"), ("l1", "pending")]
    with store.transaction(write=False) as tx:
        assert [r.res_id for r in tx.outbox.heads(30_000, 10)] == ["g1", "g9"]


def test_rows_page_after_an_id(store: Store) -> None:
    with store.transaction() as tx:
        tx.outbox.add([row("Patient/a", f"g{n}") for n in range(5)])
    with store.transaction(write=False) as tx:
        first = tx.outbox.rows(limit=2)
        rest = tx.outbox.rows(after=first[-1].id)
    assert [r.res_id for r in first + rest] == [f"g{n}" for n in range(5)]


def test_counters_count_from_one_and_roll_back(store: Store) -> None:
    with store.transaction() as tx:
        assert tx.counters.next("subscription:s1") == 1
        assert tx.counters.next("subscription:s1") == 2
        assert tx.counters.next("subscription:s2", 0) == 0
    with pytest.raises(RuntimeError):
        _count_then_fail(store)
    with store.transaction() as tx:
        assert tx.counters.next("subscription:s1", 0) == 2


def test_choose_group_respects_leases_of_other_workers() -> None:
    leased = row("Patient/a", "a1", state="inflight", lease_until_us=10_000, id=1)
    waiting = row("Patient/a", "a2", id=2)
    other = row("Patient/b", "b1", id=3)
    assert choose_group([leased, waiting, other], 5_000, 10) == [other]
    # an expired lease is taken over, with the rest of its group
    assert choose_group([leased, waiting, other], 20_000, 10) == [leased, waiting]
