"""The statements that write a resource's rows, for SqlStore (sql.py): a version put in three
prepared statements, and new rows (current versions, index rows) in multi-row INSERTs.

May import SQLAlchemy and the storage schema; nothing of the service above storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, delete

from service.storage.index_rows import INDEX_KINDS, IndexRows
from service.storage.schema import INDEX_TABLES


def index_values(type_: str, id_: str, kind: str, row: Any) -> tuple[Any, ...]:
    """The column values of one index row, in the order of its table's columns below."""
    return (type_, id_, row.param, *(getattr(row, f) for f in INDEX_KINDS[kind].fields))


_INDEX_COLUMNS = {
    kind: ("res_type", "res_id", "param", *INDEX_KINDS[kind].fields) for kind in INDEX_TABLES
}
CURRENT_COLUMNS = (
    "res_type",
    "res_id",
    "version",
    "last_updated",
    "deleted",
    "method",
    "content",
    "seq",
)
# Rows go in as multi-row INSERTs of 1, 2, 4, ... 256 rows: a few statement texts per table,
# each prepared once, and a batch of AuditEvents (thousands of index rows) in a few dozen
# statements rather than one statement step per row.
_MOST_ROWS = 256
_INSERTS: dict[tuple[str, tuple[str, ...], str, int], str] = {}


def _insert_sql(table: str, columns: tuple[str, ...], mark: str, count: int) -> str:
    key = (table, columns, mark, count)
    found = _INSERTS.get(key)
    if found is None:
        row = "(" + ", ".join(mark for _ in columns) + ")"
        values = ", ".join(row for _ in range(count))
        found = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {values}"  # noqa: S608 - fixed names and marks only
        _INSERTS[key] = found
    return found


def insert_rows(
    conn: Connection,
    table: str,
    columns: tuple[str, ...],
    mark: str,
    rows: Sequence[tuple[Any, ...]],
) -> None:
    """Insert ``rows`` in a few multi-row statements (see ``_MOST_ROWS``)."""
    start = 0
    while start < len(rows):
        count = min(_MOST_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + count]
        conn.exec_driver_sql(
            _insert_sql(table, columns, mark, count), tuple(v for row in chunk for v in row)
        )
        start += count


def insert_index(conn: Connection, mark: str, kind: str, rows: Sequence[tuple[Any, ...]]) -> None:
    insert_rows(conn, INDEX_TABLES[kind].name, _INDEX_COLUMNS[kind], mark, rows)


# The statements of a put: insert the version (returning its sequence), insert the current
# row, or update it from the version it replaces; for sqlite3's marks and psycopg's.
_PUT_SQLITE = (
    "INSERT INTO resource_versions (res_type, res_id, version, last_updated, deleted, method,"
    " content) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
    "INSERT INTO resources (res_type, res_id, version, last_updated, deleted, method, content,"
    " seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "UPDATE resources SET version = ?, last_updated = ?, deleted = ?, method = ?, content = ?,"
    " seq = ? WHERE res_type = ? AND res_id = ? AND version = ?",
)
PUT = {"?": _PUT_SQLITE, "%s": tuple(q.replace("?", "%s") for q in _PUT_SQLITE)}


_DELETE_INDEX = {
    kind: delete(table).where(table.c.res_type == bindparam("t"), table.c.res_id == bindparam("i"))
    for kind, table in INDEX_TABLES.items()
}


def write_index(
    conn: Connection, mark: str, type_: str, id_: str, index: IndexRows, clear: bool
) -> None:
    """Write the index rows of a resource (one executemany per table that gets rows), first
    removing its old ones when ``clear``."""
    for kind in INDEX_TABLES:
        rows = index.of(kind)
        if clear:
            conn.execute(_DELETE_INDEX[kind], {"t": type_, "i": id_})
        if rows:
            insert_index(conn, mark, kind, [index_values(type_, id_, kind, r) for r in rows])
