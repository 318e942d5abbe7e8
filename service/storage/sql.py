"""SqlStore: the Store port on SQLAlchemy Core, for SQLite (embedded default) and PostgreSQL.

Here: the transaction and its parts for resources and their versions (``SqlResources``), index
rows (``SqlIndex``), counters, reindex progress and locks; and migrations. The engine's settings
are in sqlengine.py, the outbox part in sqloutbox.py and the searches part (with its SQL) in
sqlsearch.py.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    and_,
    bindparam,
    delete,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from service.storage import (
    HistoryQuery,
    IndexRows,
    Query,
    StorageError,
    StoredResource,
    StoreUnavailable,
    VersionConflict,
    Window,
)
from service.storage.schema import (
    INDEX_TABLES,
    INSTANCE_ID_KEY,
    MIGRATIONS,
    counters,
    instance_identity,
    metadata,
    reindex_progress,
    resource_versions,
    resources,
    schema_migrations,
    search_reference,
)
from service.storage.sqlcohort import SqlCohortSearches
from service.storage.sqlengine import (
    SqliteWriters,
    advisory_key,
    closer_of,
    engine_for,
    is_transient,
)
from service.storage.sqloutbox import SqlOutbox
from service.storage.sqlrows import (
    COPY_ITEMS,
    CURRENT_COLUMNS,
    PUT,
    copy_new_versions,
    create_on_postgresql,
    index_values,
    insert_index,
    insert_rows,
    write_index,
)
from service.storage.sqlsearch import (
    find_tokens_sql,
    param_mark,
    read_many_sql,
    select_sql,
)

# Built once: composing these clauses per call costs more than running them.
_READ_CURRENT = select(resources).where(
    resources.c.res_type == bindparam("t"), resources.c.res_id == bindparam("i")
)
_READ_VERSION = select(resource_versions).where(
    resource_versions.c.res_type == bindparam("t"),
    resource_versions.c.res_id == bindparam("i"),
    resource_versions.c.version == bindparam("v"),
)


def _by_type(keys: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for type_, id_ in keys:
        grouped.setdefault(type_, []).append(id_)
    return grouped


def _row_to_resource(row: Any) -> StoredResource:
    return StoredResource(
        type=row.res_type,
        id=row.res_id,
        version=row.version,
        last_updated_us=row.last_updated,
        deleted=bool(row.deleted),
        content=row.content,
        method=row.method,
        seq=row.seq,
    )


class SqlResources:
    """Resource versions and their history, on the transaction's connection."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version, or None."""
        row = self._conn.execute(_READ_CURRENT, {"t": type_, "i": id_}).first()
        return _row_to_resource(row) if row else None

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version, or None."""
        row = self._conn.execute(_READ_VERSION, {"t": type_, "i": id_, "v": version}).first()
        return _row_to_resource(row) if row else None

    def read_many(self, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
        """Return the current, non-deleted versions of ``keys``, in the order given."""
        found: dict[tuple[str, str], StoredResource] = {}
        mark = param_mark(self._dialect)
        for type_, ids in _by_type(keys).items():
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                sql = read_many_sql(mark, len(chunk))
                for row in self._conn.exec_driver_sql(sql, (type_, False, *chunk)):
                    found[(row[0], row[1])] = StoredResource(
                        type=row[0],
                        id=row[1],
                        version=row[2],
                        last_updated_us=row[3],
                        deleted=bool(row[4]),
                        content=row[5],
                        method=row[6],
                        seq=row[7],
                    )
        return [found[k] for k in keys if k in found]

    def matching(
        self, query: Query, limit: int, window: Window
    ) -> tuple[list[StoredResource], bool]:
        """Return a page of matches with their content, read by the search itself."""
        columns = (
            "r.res_type, r.res_id, r.version, r.last_updated, r.deleted, r.content, r.method, r.seq"
        )
        sql, params = select_sql(query, param_mark(self._dialect), columns, limit + 1, window)
        found = [
            StoredResource(row[0], row[1], row[2], row[3], bool(row[4]), row[5], row[6], row[7])
            for row in self._conn.exec_driver_sql(sql, tuple(params))
        ]
        more = len(found) > limit
        found = found[:limit]
        if window.before is not None:
            found.reverse()  # taken backward from the id, given in query order
        return found, more

    def put(
        self, resource: StoredResource, replaces: int | None, index: IndexRows | None = None
    ) -> None:
        """Store a new version if ``replaces`` is still the current one: three statements
        (the version, the current row, the index rows per table), prepared once."""
        mark = param_mark(self._dialect)
        values = (
            resource.type,
            resource.id,
            resource.version,
            resource.last_updated_us,
            resource.deleted,
            resource.method,
            resource.content,
        )
        rows = IndexRows() if resource.deleted else index or IndexRows()
        insert_version, insert_current, update_current = PUT[mark]
        try:
            if replaces is None and self._dialect == "postgresql":
                one = create_on_postgresql(resource.type, resource.id, values, rows)
                if one is not None:
                    self._conn.exec_driver_sql(*one)
                    return
            seq = self._conn.exec_driver_sql(insert_version, values).scalar_one()
            if replaces is None:
                self._conn.exec_driver_sql(insert_current, (*values, seq))
            else:
                changed = self._conn.exec_driver_sql(
                    update_current, (*values[2:], seq, resource.type, resource.id, replaces)
                ).rowcount
                if changed != 1:
                    raise VersionConflict(f"{resource.type}/{resource.id} changed")
        except IntegrityError as exc:
            raise VersionConflict(f"{resource.type}/{resource.id} changed") from exc
        # A resource written for the first time has no index rows to remove.
        write_index(self._conn, mark, resource.type, resource.id, rows, clear=replaces is not None)

    def insert_new(self, items: Sequence[tuple[StoredResource, IndexRows]]) -> None:
        """Store many new resources with a few multi-row statements."""
        if not items:
            return
        mark = param_mark(self._dialect)
        if self._dialect == "postgresql" and len(items) >= COPY_ITEMS:
            copy_new_versions(self._conn, items)
        else:
            self._insert_new_versions(items, mark)
        for kind in INDEX_TABLES:
            rows = [
                index_values(r.type, r.id, kind, row)
                for r, index in items
                for row in index.of(kind)
            ]
            if rows:
                insert_index(self._conn, mark, kind, rows)

    def _insert_new_versions(
        self, items: Sequence[tuple[StoredResource, IndexRows]], mark: str
    ) -> None:
        version_rows = [
            {
                "res_type": r.type,
                "res_id": r.id,
                "version": r.version,
                "last_updated": r.last_updated_us,
                "deleted": r.deleted,
                "method": r.method,
                "content": r.content,
            }
            for r, _ in items
        ]
        try:
            returned = self._conn.execute(
                insert(resource_versions).returning(
                    resource_versions.c.res_type,
                    resource_versions.c.res_id,
                    resource_versions.c.seq,
                ),
                version_rows,
            ).all()
            seqs = {(row.res_type, row.res_id): row.seq for row in returned}
            current = [
                (*row.values(), seqs[(row["res_type"], row["res_id"])]) for row in version_rows
            ]
            insert_rows(self._conn, resources.name, CURRENT_COLUMNS, mark, current)
        except IntegrityError as exc:
            raise VersionConflict("a resource of the batch exists already") from exc

    def current_keys(self, after: tuple[str, str] | None, limit: int) -> list[tuple[str, str]]:
        """Return current, non-deleted keys in (type, id) order after ``after``."""
        conditions: list[ColumnElement[bool]] = [resources.c.deleted.is_(False)]
        if after is not None:
            conditions.append(
                or_(
                    resources.c.res_type > after[0],
                    and_(resources.c.res_type == after[0], resources.c.res_id > after[1]),
                )
            )
        statement = (
            select(resources.c.res_type, resources.c.res_id)
            .where(*conditions)
            .order_by(resources.c.res_type, resources.c.res_id)
            .limit(limit)
        )
        return [(r.res_type, r.res_id) for r in self._conn.execute(statement)]

    def history(self, query: HistoryQuery) -> list[StoredResource]:
        """Return versions newest first."""
        table = resource_versions
        conditions = []
        if query.type is not None:
            conditions.append(table.c.res_type == query.type)
        if query.id is not None:
            conditions.append(table.c.res_id == query.id)
        if query.since_us is not None:
            conditions.append(table.c.last_updated >= query.since_us)
        if query.before_seq is not None:
            conditions.append(table.c.seq < query.before_seq)
        statement = select(table).where(*conditions).order_by(table.c.seq.desc()).limit(query.count)
        return [_row_to_resource(r) for r in self._conn.execute(statement)]


class SqlIndex:
    """Index rows and the look-ups on them, on the transaction's connection."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    def replace(self, type_: str, id_: str, rows: IndexRows) -> None:
        """Replace every index row of a resource."""
        write_index(self._conn, param_mark(self._dialect), type_, id_, rows, clear=True)

    def find_tokens(
        self, type_: str, param: str, pairs: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Which (system, code) pairs current resources of ``type_`` hold in ``param``.

        One query per batch on the token lookup index (res_type, param, code, system); its
        shape does not depend on table statistics, which a long ingest leaves stale.
        """
        found: dict[tuple[str, str], str] = {}
        mark = param_mark(self._dialect)
        unique = list(dict.fromkeys(pairs))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            codes = list(dict.fromkeys(code for _, code in chunk))
            sql = find_tokens_sql(mark, len(codes))
            wanted = set(chunk)
            rows = self._conn.exec_driver_sql(sql, (type_, param, *codes, False))
            for system, code, res_id in rows:
                pair = (system or "", code)
                if pair in wanted and pair not in found:
                    found[pair] = res_id
        return found

    def references_from(
        self, keys: Sequence[tuple[str, str]], param: str | None
    ) -> list[tuple[str, str]]:
        """Return the local targets the given resources reference (through ``param``)."""
        ref = search_reference
        out: list[tuple[str, str]] = []
        for type_, ids in _by_type(keys).items():
            conditions = [ref.c.res_type == type_, ref.c.res_id.in_(ids)]
            conditions.append(ref.c.target_id.is_not(None))
            out += self._references(ref.c.target_type, ref.c.target_id, conditions, param)
        return out

    def referencing(
        self, source_type: str, param: str | None, keys: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """Return resources of ``source_type`` that reference any of ``keys``."""
        ref = search_reference
        out: list[tuple[str, str]] = []
        for type_, ids in _by_type(keys).items():
            conditions = [ref.c.res_type == source_type, ref.c.target_type == type_]
            conditions.append(ref.c.target_id.in_(ids))
            out += self._references(ref.c.res_type, ref.c.res_id, conditions, param)
        return out

    def _references(
        self, type_column: Any, id_column: Any, conditions: list[Any], param: str | None
    ) -> list[tuple[str, str]]:
        if param is not None:
            conditions.append(search_reference.c.param == param)
        statement = select(type_column, id_column).where(*conditions).distinct()
        return [(row[0], row[1]) for row in self._conn.execute(statement)]


class SqlCounters:
    """Named counters, on the transaction's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def next(self, name: str, step: int = 1) -> int:
        """Add ``step`` to a named counter and return its new value."""
        bumped = self._conn.execute(
            update(counters)
            .where(counters.c.name == name)
            .values(value=counters.c.value + step)
            .returning(counters.c.value)
        ).scalar_one_or_none()
        if bumped is None:
            # a racing first insert fails on the key and the caller's transaction is retried
            self._conn.execute(insert(counters).values(name=name, value=step))
            return step
        return int(bumped)


class SqlJobs:
    """Job progress (reindex), on the transaction's connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def progress(self, name: str) -> tuple[tuple[str, str] | None, int] | None:
        """Return a job's (last key, done), or None."""
        row = self._conn.execute(
            select(reindex_progress).where(reindex_progress.c.name == name)
        ).first()
        if row is None:
            return None
        last = (row.last_type, row.last_id) if row.last_type is not None else None
        return last, int(row.done)

    def set_progress(self, name: str, last: tuple[str, str] | None, done: int | None) -> None:
        """Record a job's progress, or forget it when ``done`` is None."""
        self._conn.execute(delete(reindex_progress).where(reindex_progress.c.name == name))
        if done is not None:
            self._conn.execute(
                insert(reindex_progress).values(
                    name=name,
                    last_type=last[0] if last else None,
                    last_id=last[1] if last else None,
                    done=done,
                )
            )


class SqlLocks:
    """Transaction-scoped locks: advisory locks on PostgreSQL."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    def hold(self, key: str) -> None:
        """Serialise transactions on ``key`` (SQLite writers are serialised already)."""
        if self._dialect == "postgresql":
            self._conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": advisory_key(key)})


# as long as SQLite waits for a lock another process holds (sqlengine.py: busy_timeout)
WRITER_WAIT_SECONDS = 30.0


class SqlTransaction:
    """One database transaction on a SQLAlchemy connection; its parts share the connection."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self.resources = SqlResources(conn, dialect)
        self.index = SqlIndex(conn, dialect)
        self.searches = SqlCohortSearches(conn, dialect)
        self.outbox = SqlOutbox(conn)
        self.counters = SqlCounters(conn)
        self.jobs = SqlJobs(conn)
        self.locks = SqlLocks(conn, dialect)


def _instance_id(conn: Any) -> str | None:
    found = conn.execute(
        select(instance_identity.c.value).where(instance_identity.c.name == INSTANCE_ID_KEY)
    ).scalar_one_or_none()
    return None if found is None else str(found)


class SqlStore:
    """The Store port on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name
        # SQLite lets one writer in at a time: writers take turns here (sqlengine.py)
        self._writers = SqliteWriters(engine.url.database) if self.dialect == "sqlite" else None
        self._close = closer_of(engine)
        # a store dropped without close() (an app built and let go) still closes its pooled
        # connections, rather than leaving them to the driver's garbage collection
        weakref.finalize(self, self._close)

    @classmethod
    def from_url(cls, url: str, pool_size: int = 5) -> SqlStore:
        """Connect to the database named by a SQLAlchemy URL."""
        return cls(engine_for(url, pool_size))

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[SqlTransaction]:
        """Run a block in one database transaction."""
        writers = self._writers if write else None
        try:
            if writers is not None and not writers.acquire(timeout=WRITER_WAIT_SECONDS):
                raise StoreUnavailable("The database is busy with other writes; retry")
        except OSError as exc:  # the writers' lock file beside the database
            raise StoreUnavailable("The database's writers lock cannot be taken") from exc
        try:
            with self._transaction(write) as tx:
                yield tx
        finally:
            if writers is not None:
                writers.release()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[SqlTransaction]:
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(whatmatters_write=True)
                with conn.begin():
                    yield SqlTransaction(conn, self.dialect)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise VersionConflict(str(exc.orig)) from exc
            if exc.connection_invalidated or is_transient(exc):
                raise StoreUnavailable("The database is not reachable") from exc
            raise StorageError("The database rejected the operation") from exc

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied, under a lock so several workers may race."""
        applied: list[str] = []
        with self.transaction(write=True) as tx:
            tx.locks.hold("whatmatters-schema-migration")
            conn = tx._conn
            metadata.create_all(conn, tables=[schema_migrations])
            done = set(conn.execute(select(schema_migrations.c.version)).scalars())
            for version, description, step in MIGRATIONS:
                if version in done:
                    continue
                step(conn)
                conn.execute(
                    insert(schema_migrations).values(version=version, description=description)
                )
                applied.append(f"{version}: {description}")
        return applied

    def pending_migrations(self) -> list[int]:
        """The migrations this code knows and the database has not applied yet."""
        with self.transaction(write=False) as tx:
            conn = tx._conn
            if not inspect(conn).has_table("schema_migrations"):
                return [version for version, _, _ in MIGRATIONS]
            done = set(conn.execute(select(schema_migrations.c.version)).scalars())
        return [version for version, _, _ in MIGRATIONS if version not in done]

    def instance_id(self) -> str:
        """The identifier this installation was given when its schema was made (migration 4);
        made now, once, if the row was removed since."""
        with self.transaction(write=False) as tx:
            found = _instance_id(tx._conn)
        if found is not None:
            return found
        with self.transaction(write=True) as tx:
            tx.locks.hold("whatmatters-instance-id")
            found = _instance_id(tx._conn)
            if found is None:
                found = str(uuid.uuid4())
                tx._conn.execute(
                    insert(instance_identity).values(name=INSTANCE_ID_KEY, value=found)
                )
        return found

    def check(self) -> None:
        """Raise StoreUnavailable if the database does not answer."""
        with self.transaction(write=False) as tx:
            tx._conn.execute(text("SELECT 1"))

    def close(self) -> None:
        """Close pooled connections, and from now on each connection as it is given back (one
        another thread still used, or one taken later, e.g. for an AuditEvent at exit)."""
        self._close()
