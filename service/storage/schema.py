"""The database schema of SqlStore and its migrations (append-only, applied under a lock)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    inspect,
    text,
)

metadata = MetaData()
_SEQ = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

resource_versions = Table(
    "resource_versions",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", Text, nullable=True),
    UniqueConstraint("res_type", "res_id", "version", name="uq_resource_versions_version"),
    Index("ix_resource_versions_type_seq", "res_type", "seq"),
    Index("ix_resource_versions_id_seq", "res_type", "res_id", "seq"),
)

resources = Table(
    "resources",
    metadata,
    Column("res_type", String(64), primary_key=True),
    Column("res_id", String(64), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("last_updated", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("method", String(8), nullable=False),
    Column("content", Text, nullable=True),
    Index("ix_resources_type_updated", "res_type", "last_updated", "seq"),
)

search_token = Table(
    "search_token",
    metadata,
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("param", String(100), nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=False),
    Column("text", Text, nullable=True),
    Index("ix_search_token_lookup", "res_type", "param", "code", "system"),
    Index("ix_search_token_resource", "res_type", "res_id"),
)


def _index_table(name: str, *columns: Column[object], lookup: tuple[str, ...]) -> Table:
    return Table(
        name,
        metadata,
        Column("res_type", String(64), nullable=False),
        Column("res_id", String(64), nullable=False),
        Column("param", String(100), nullable=False),
        *columns,
        Index(f"ix_{name}_lookup", "res_type", "param", *lookup),
        Index(f"ix_{name}_resource", "res_type", "res_id"),
    )


search_string = _index_table(
    "search_string",
    Column("norm", Text, nullable=False),
    Column("exact", Text, nullable=False),
    lookup=("norm",),
)
search_date = _index_table(
    "search_date",
    Column("low", BigInteger, nullable=False),
    Column("high", BigInteger, nullable=False),
    lookup=("low", "high"),
)
search_number = _index_table(
    "search_number",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    lookup=("low", "high"),
)
search_quantity = _index_table(
    "search_quantity",
    Column("low", Float, nullable=False),
    Column("high", Float, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    lookup=("low", "high"),
)
search_reference = _index_table(
    "search_reference",
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("url", Text, nullable=True),
    lookup=("target_type", "target_id"),
)
search_uri = _index_table(
    "search_uri",
    Column("value", Text, nullable=False),
    lookup=("value",),
)
search_composite = _index_table(
    "search_composite",
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=False),
    Column("value_system", Text, nullable=True),
    Column("value_code", Text, nullable=True),
    Column("low", Float, nullable=True),
    Column("high", Float, nullable=True),
    Column("text", Text, nullable=True),
    lookup=("code",),
)
Index(
    "ix_search_reference_url",
    search_reference.c.res_type,
    search_reference.c.param,
    search_reference.c.url,
)

saved_search = Table(
    "saved_search",
    metadata,
    Column("search_id", String(64), primary_key=True),
    Column("created", BigInteger, nullable=False),
    Column("total", Integer, nullable=False),
    Index("ix_saved_search_created", "created"),
)
saved_search_result = Table(
    "saved_search_result",
    metadata,
    Column("search_id", String(64), primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
)
reindex_progress = Table(
    "reindex_progress",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("last_type", String(64), nullable=True),
    Column("last_id", String(64), nullable=True),
    Column("done", Integer, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", _SEQ, primary_key=True, autoincrement=True),
    Column("destination", String(200), nullable=False),
    Column("group_key", String(200), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("event_number", BigInteger, nullable=True),
    Column("state", String(12), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt", BigInteger, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("delivered", BigInteger, nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("requeued", BigInteger, nullable=True),
    Index("ix_outbox_state_id", "state", "id"),
    Index("ix_outbox_destination_state", "destination", "state"),
)
counters = Table(
    "counters",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# one row: the identifier this installation names itself by when it exchanges resources
# (generated once, by the migration that makes the table; see instance_id in sql.py)
instance_identity = Table(
    "instance_identity",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(200), nullable=False),
)
INSTANCE_ID_KEY = "instance-id"

INDEX_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "number": search_number,
    "quantity": search_quantity,
    "reference": search_reference,
    "uri": search_uri,
    "composite": search_composite,
}

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
)

_MIGRATION_TABLES = [resource_versions, resources, search_token]


def _initial_schema(conn: Connection) -> None:
    metadata.create_all(conn, tables=_MIGRATION_TABLES)


def _search_indexes(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("search_token")}
    if "text" not in columns:
        conn.execute(text("ALTER TABLE search_token ADD COLUMN text TEXT"))
    metadata.create_all(
        conn,
        tables=[
            search_string,
            search_date,
            search_number,
            search_quantity,
            search_reference,
            search_uri,
            search_composite,
            saved_search,
            saved_search_result,
            reindex_progress,
        ],
    )


def _outbox(conn: Connection) -> None:
    metadata.create_all(conn, tables=[outbox, counters])


def _instance_identity(conn: Connection) -> None:
    columns = {c["name"] for c in inspect(conn).get_columns("outbox")}
    if "requeued" not in columns:
        conn.execute(text("ALTER TABLE outbox ADD COLUMN requeued BIGINT"))
    metadata.create_all(conn, tables=[instance_identity])
    conn.execute(instance_identity.insert().values(name=INSTANCE_ID_KEY, value=str(uuid.uuid4())))


# Append-only: a released migration never changes; a schema change is a new entry. Migration 2
# needs `whatmatters reindex` on a database that already holds resources.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "resources, versions and token index", _initial_schema),
    (2, "index tables for every search parameter type, saved searches", _search_indexes),
    (3, "transactional outbox for partners and subscriptions, counters", _outbox),
    (
        4,
        "the instance identifier this installation is known by in exchanges; outbox requeue time",
        _instance_identity,
    ),
]
