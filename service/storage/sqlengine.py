"""Opening the SQL database: the engine with the settings SQLite and PostgreSQL each need, and
which driver failures are transient (the store answers those with StoreUnavailable).

May import SQLAlchemy (and through it the drivers); nothing of the service.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError

# Failures worth a 503 and a retry: the database is down, restarting, or busy. Anything else
# (a statement too large, a value the column cannot hold) would fail again the same way.
_TRANSIENT_SQLSTATES = ("08", "53", "57P")
_TRANSIENT_SQLITE = ("locked", "busy", "unable to open", "disk i/o")


def is_transient(exc: DBAPIError) -> bool:
    """Whether a driver error means "down or busy, retry" rather than "this will fail again"."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return sqlstate.startswith(_TRANSIENT_SQLSTATES) or sqlstate == "40001"
    if isinstance(exc, OperationalError):
        message = str(exc.orig).lower()
        return any(word in message for word in _TRANSIENT_SQLITE) or "connect" in message
    return False


def advisory_key(key: str) -> int:
    """The 64-bit PostgreSQL advisory-lock key of a lock name."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def engine_for(url: str, pool_size: int = 5) -> Engine:
    """Create an engine with the connection settings each database needs."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, connect_args={"timeout": 30})
        _configure_sqlite(engine)
        return engine
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=10,
        connect_args={"connect_timeout": 5},
    )


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's begin event below issue BEGIN itself (pysqlite would defer it).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Writers take the write lock up front, so two writers never deadlock upgrading a read
        # lock, and check-then-write sequences (conditional create) are atomic across processes.
        immediate = conn.get_execution_options().get("whatmatters_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def closer_of(engine: Engine) -> Callable[[], None]:
    """What closes ``engine``: its pooled connections at once, and from then on each
    connection as it is given back, rather than pooled. Without the second part a connection
    still in use when the engine closed (another thread's) would go back to the pool the
    close discarded, open until the garbage collector found it (psycopg then warns that it
    was deleted while open)."""
    closed = threading.Event()

    @event.listens_for(engine, "checkin")
    def _checkin(dbapi_connection: Any, record: Any) -> None:
        if closed.is_set() and dbapi_connection is not None:
            record.invalidate()  # closes it; the record connects again if taken again

    def close() -> None:
        closed.set()
        engine.dispose()

    return close


class SqliteWriters:
    """The writers of one SQLite database take turns here before their ``BEGIN IMMEDIATE``.

    SQLite lets one writer in at a time, and a writer that finds it taken waits in SQLite's
    busy handler, which sleeps 1 to 100 ms between tries: the threads of one process queued
    there behind each other, and under load one gunicorn worker's writers could keep the
    lock while the other's slept ever longer. Here threads of a process wait on a lock (the
    next one is woken as soon as it is free) and processes on an advisory lock of a file
    beside the database (``<database>-writers``), tried every half millisecond: fairer than the
    busy handler's growing sleeps, though not first come, first served. A process that does
    not take part (another tool on the same file) still meets SQLite's busy handler."""

    POLL_SECONDS = 0.0005

    def __init__(self, database: str | None) -> None:
        self._threads = threading.RLock()
        self._path = f"{database}-writers" if database and database != ":memory:" else None
        self._held = 0  # how deep the holding thread is (transactions may nest)
        self._file: int | None = None

    def acquire(self, timeout: float) -> bool:
        """Take the turn within ``timeout`` seconds; False when it could not be had. An
        OSError (the lock file cannot be opened or locked) leaves nothing held."""
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=timeout):
            return False
        try:
            taken = self._held > 0 or self._path is None or self._take_file(self._path, deadline)
        except BaseException:
            self._threads.release()
            raise
        if not taken:
            self._threads.release()
            return False
        self._held += 1
        return True

    def _take_file(self, path: str, deadline: float) -> bool:
        # created with the permissions the umask gives (another user's tool may share it)
        handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        os.close(handle)
                        return False
                    time.sleep(self.POLL_SECONDS)
                    continue
                self._file = handle
                return True
        except BaseException:
            os.close(handle)
            raise

    def release(self) -> None:
        """End the turn (the outermost release lets the next writer in)."""
        self._held -= 1
        try:
            if self._held == 0 and self._file is not None:
                handle, self._file = self._file, None
                try:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                finally:
                    os.close(handle)  # closing lets go of the lock in any case
        finally:
            self._threads.release()
