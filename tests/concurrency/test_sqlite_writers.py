"""SQLite lets one writer in at a time: the writers of one process queue on the store's own
lock (woken as soon as the one before commits), those of other processes on an advisory lock
of a file beside the database, instead of sleeping in SQLite's busy handler; readers are never
held up by them, and a writer that cannot get in within the wait is answered "unavailable,
retry" rather than left hanging."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.storage import StoreUnavailable
from service.storage import sql as sql_module
from service.storage.sql import SqlStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqlStore]:
    made = SqlStore.from_url(f"sqlite:///{tmp_path / 'writers.db'}")
    made.migrate()
    yield made
    made.close()


def test_the_writers_of_one_process_all_get_in_one_after_another(store: SqlStore) -> None:
    failures: list[BaseException] = []
    inside = 0
    most_inside = 0
    guard = threading.Lock()

    def bump() -> None:
        nonlocal inside, most_inside
        try:
            for _ in range(25):
                with store.transaction(write=True) as tx:
                    with guard:
                        inside += 1
                        most_inside = max(most_inside, inside)
                    tx.counters.next("writers")
                    with guard:
                        inside -= 1
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert most_inside == 1
    with store.transaction(write=True) as tx:
        assert tx.counters.next("writers", 0) == 8 * 25


def test_a_writer_waits_its_turn_within_a_bound_and_readers_do_not_wait(
    store: SqlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "WRITER_WAIT_SECONDS", 0.3)
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.transaction(write=True) as tx:
            tx.counters.next("held")
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with store.transaction(write=False) as tx:
            assert tx.resources.read("Goal", "none") is None  # a reader gets in at once
        with (
            pytest.raises(StoreUnavailable, match="busy with other writes"),
            store.transaction(write=True) as tx,
        ):
            tx.counters.next("blocked")
    finally:
        release.set()
        holder.join()
    with store.transaction(write=True) as tx:  # the next writer gets in once it is free
        assert tx.counters.next("held") == 2


def test_writers_of_another_process_take_turns_through_the_file_beside_the_database(
    store: SqlStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "WRITER_WAIT_SECONDS", 0.3)
    # what another worker process holds while it writes: the advisory lock of that file
    other = os.open(tmp_path / "writers.db-writers", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        with (
            pytest.raises(StoreUnavailable, match="busy with other writes"),
            store.transaction(write=True) as tx,
        ):
            tx.counters.next("blocked")
        with store.transaction(write=False) as tx:  # readers do not take turns
            assert tx.resources.read("Goal", "none") is None
        fcntl.flock(other, fcntl.LOCK_UN)
        with store.transaction(write=True) as tx:  # its turn over, this process writes
            assert tx.counters.next("after") == 1
    finally:
        os.close(other)


def test_a_writers_lock_file_that_cannot_be_used_refuses_the_write_and_holds_nothing(
    store: SqlStore, tmp_path: Path
) -> None:
    blocker = tmp_path / "writers.db-writers"
    blocker.unlink(missing_ok=True)
    blocker.mkdir()  # where the lock file should be: cannot be opened as a file
    with (
        pytest.raises(StoreUnavailable, match="writers lock"),
        store.transaction(write=True) as tx,
    ):
        tx.counters.next("refused")
    blocker.rmdir()
    done: list[int] = []

    def write_elsewhere() -> None:  # another thread: nothing of the failure is still held
        with store.transaction(write=True) as tx:
            done.append(tx.counters.next("after"))

    thread = threading.Thread(target=write_elsewhere)
    thread.start()
    thread.join(10)
    assert done == [1]
