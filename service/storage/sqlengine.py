"""Opening the SQL database: the engine with the settings SQLite and PostgreSQL each need, and
which driver failures are transient (the store answers those with StoreUnavailable).

May import SQLAlchemy (and through it the drivers); nothing of the service.
"""

from __future__ import annotations

import hashlib
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
