"""The statements that write a resource's rows, for SqlStore (sql.py): a version put in three
prepared statements, and new rows (current versions, index rows) in multi-row INSERTs.

May import SQLAlchemy and the storage schema; nothing of the service above storage.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from operator import attrgetter
from typing import Any

from sqlalchemy import Connection, bindparam, delete

from service.errors import StorageError, StoreUnavailable
from service.storage import StoredResource, VersionConflict
from service.storage.index_rows import INDEX_KINDS, IndexRows
from service.storage.schema import INDEX_TABLES


def index_values(type_: str, id_: str, kind: str, row: Any) -> tuple[Any, ...]:
    """The column values of one index row, in the order of its table's columns below."""
    return (type_, id_, *_ROW_VALUES[kind](row))


# each kind's row values (param first) as one tuple, read in C
_ROW_VALUES = {kind: attrgetter("param", *INDEX_KINDS[kind].fields) for kind in INDEX_KINDS}


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
# On SQLite rows go in as multi-row INSERTs of 1, 2, 4, ... 256 rows: a few statement texts
# per table, each prepared once, and a batch of AuditEvents (thousands of index rows) in a few
# dozen statements rather than one statement step per row.
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
    """Insert ``rows`` in a few multi-row statements (see ``_MOST_ROWS``) on SQLite; on
    PostgreSQL by one executemany of the one-row statement, which psycopg sends as a pipeline
    (it parses a statement's text for its markers in Python, and caches that only for short
    texts: a 256-row statement cost it about 5 ms each time)."""
    if mark == "%s":
        conn.exec_driver_sql(_insert_sql(table, columns, mark, 1), list(rows))
        return
    start = 0
    while start < len(rows):
        count = min(_MOST_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + count]
        conn.exec_driver_sql(
            _insert_sql(table, columns, mark, count), tuple(chain.from_iterable(chunk))
        )
        start += count


def insert_index(conn: Connection, mark: str, kind: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert index rows of one kind: on PostgreSQL by COPY when there are many (a batch of
    AuditEvents: psycopg's pipelined executemany spends about 15 us of Python per row, COPY
    writes rows in C); else as ``insert_rows``."""
    table, columns = INDEX_TABLES[kind].name, _INDEX_COLUMNS[kind]
    if mark == "%s" and len(rows) >= _COPY_FROM:
        _copy(conn, table, columns, rows)
    else:
        insert_rows(conn, table, columns, mark, rows)


_COPY_FROM = 64  # rows; below that, one pipelined executemany costs no more


def _copy(
    conn: Connection, table: str, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """COPY rows into a table (PostgreSQL), in the connection's open transaction. The index
    tables have no unique keys, so a failure here is the database's, not the data's."""
    import psycopg

    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except psycopg.OperationalError as exc:
        raise StoreUnavailable("The database is not reachable") from exc
    except psycopg.Error as exc:
        raise StorageError("The database rejected the operation") from exc


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


_VERSION_COLUMNS = CURRENT_COLUMNS[:-1]
_MOST_PARAMETERS = 30_000  # psycopg sends at most 65,535 per statement


def create_on_postgresql(
    type_: str, id_: str, values: tuple[Any, ...], index: IndexRows
) -> tuple[str, tuple[Any, ...]] | None:
    """A new resource's version, current row and index rows as one PostgreSQL statement (data-
    modifying WITH queries: one round trip instead of one per table), with its parameters;
    None when it would take too many parameters (then the statements go one by one)."""
    columns = ", ".join(_VERSION_COLUMNS)
    marks = ", ".join("%s" for _ in _VERSION_COLUMNS)
    version = f"INSERT INTO resource_versions ({columns}) VALUES ({marks}) RETURNING seq"  # noqa: S608 - fixed names and marks only
    parts = [f"v AS ({version})"]
    params: list[Any] = list(values)
    for number, kind in enumerate(INDEX_TABLES):
        rows = index.of(kind)
        if not rows:
            continue
        row_marks = "(" + ", ".join("%s" for _ in _INDEX_COLUMNS[kind]) + ")"
        table, names = INDEX_TABLES[kind].name, ", ".join(_INDEX_COLUMNS[kind])
        inserted = f"INSERT INTO {table} ({names}) VALUES {', '.join(row_marks for _ in rows)}"  # noqa: S608 - fixed names and marks only
        parts.append(f"i{number} AS ({inserted})")
        params.extend(v for row in rows for v in index_values(type_, id_, kind, row))
    params.extend(values)
    if len(params) > _MOST_PARAMETERS:
        return None
    sql = (
        f"WITH {', '.join(parts)} INSERT INTO resources ({', '.join(CURRENT_COLUMNS)})"  # noqa: S608 - fixed names and marks only
        f" SELECT {marks}, seq FROM v"
    )
    return sql, tuple(params)


COPY_ITEMS = 8  # new resources from which copy_new_versions is worth its extra round trip


def copy_new_versions(conn: Connection, items: Sequence[tuple[StoredResource, IndexRows]]) -> None:
    """The version and current rows of many new resources, on PostgreSQL: their sequence
    numbers taken from the sequence in one statement, then both tables filled by COPY (the
    multi-row INSERT ... RETURNING it replaces had psycopg parse thousands of markers)."""
    import psycopg

    driver = conn.connection.driver_connection
    assert isinstance(driver, psycopg.Connection)
    columns = ", ".join(CURRENT_COLUMNS)
    try:
        with driver.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('resource_versions', 'seq'))"
                " FROM generate_series(1, %s)",
                (len(items),),
            )
            seqs = sorted(int(row[0]) for row in cursor.fetchall())
            rows = [
                (r.type, r.id, r.version, r.last_updated_us, r.deleted, r.method, r.content, seq)
                for (r, _), seq in zip(items, seqs, strict=True)
            ]
            for table in ("resource_versions", "resources"):
                with cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
                    for row in rows:
                        copy.write_row(row)
    except psycopg.errors.UniqueViolation as exc:
        raise VersionConflict("a resource of the batch exists already") from exc
    except psycopg.OperationalError as exc:
        raise StoreUnavailable("The database is not reachable") from exc
    except psycopg.Error as exc:
        raise StorageError("The database rejected the operation") from exc
