"""Closing a store while another thread still uses one of its connections (a gunicorn worker
shutting down while the audit trail's timer stores a batch; a test retiring its application):
the connection is closed when that thread gives it back, not returned to the pool the close
discarded and left open until the garbage collector finds it."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

import pytest
from sqlalchemy import text

from service.storage.sql import SqlStore


def _is_closed(driver: Any) -> bool:
    if isinstance(driver, sqlite3.Connection):
        try:
            driver.execute("SELECT 1")
        except sqlite3.ProgrammingError:  # "Cannot operate on a closed database."
            return True
        return False
    return bool(driver.closed)  # psycopg


@pytest.mark.usefixtures("sql_store")  # the database exists, migrated
def test_a_connection_in_use_when_the_store_closes_is_closed_when_given_back(
    database_url: str,
) -> None:
    store = SqlStore.from_url(database_url)
    inside, release = threading.Event(), threading.Event()
    drivers: list[Any] = []
    failures: list[BaseException] = []

    def hold() -> None:
        try:
            with store.transaction(write=False) as tx:
                drivers.append(tx._conn.connection.driver_connection)
                inside.set()
                release.wait(10)
                tx._conn.execute(text("SELECT 1"))  # still usable until given back
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    assert inside.wait(10)
    assert not _is_closed(drivers[0])
    store.close()
    release.set()
    thread.join(10)
    assert not failures, failures
    assert _is_closed(drivers[0])


@pytest.mark.usefixtures("sql_store")
def test_a_closed_store_still_answers_and_keeps_no_connection_open(database_url: str) -> None:
    """What comes after close() (an AuditEvent stored one by one at exit) is still stored, on a
    connection closed as soon as it is given back."""
    store = SqlStore.from_url(database_url)
    store.check()
    store.close()
    with store.transaction(write=False) as tx:
        driver = tx._conn.connection.driver_connection
        assert tx._conn.execute(text("SELECT 1")).scalar() == 1
    assert _is_closed(driver)
