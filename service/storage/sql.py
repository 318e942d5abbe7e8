"""SqlStore: the Store port on SQLAlchemy Core, for SQLite (embedded default) and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    create_engine,
    delete,
    event,
    exists,
    func,
    insert,
    or_,
    select,
    text,
    true,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from service.storage import (
    HistoryQuery,
    Query,
    SearchResult,
    StorageError,
    StoredResource,
    StoreUnavailable,
    TokenRow,
    VersionConflict,
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
    Index("ix_search_token_lookup", "res_type", "param", "code", "system"),
    Index("ix_search_token_resource", "res_type", "res_id"),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("description", Text, nullable=False),
)

_MIGRATION_TABLES = [resource_versions, resources, search_token]


def _initial_schema(conn: Connection) -> None:
    metadata.create_all(conn, tables=_MIGRATION_TABLES)


# Append-only: a released migration never changes; a schema change is a new entry.
MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "resources, versions and token index", _initial_schema),
]


def _advisory_key(key: str) -> int:
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


# Built once: composing these clauses per call costs more than running them.
_READ_CURRENT = select(resources).where(
    resources.c.res_type == bindparam("t"), resources.c.res_id == bindparam("i")
)
_READ_VERSION = select(resource_versions).where(
    resource_versions.c.res_type == bindparam("t"),
    resource_versions.c.res_id == bindparam("i"),
    resource_versions.c.version == bindparam("v"),
)


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


class SqlTransaction:
    """One database transaction on a SQLAlchemy connection."""

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

    def put(
        self, resource: StoredResource, replaces: int | None, tokens: Sequence[TokenRow] = ()
    ) -> None:
        """Store a new version if ``replaces`` is still the current one."""
        values = {
            "version": resource.version,
            "last_updated": resource.last_updated_us,
            "deleted": resource.deleted,
            "method": resource.method,
            "content": resource.content,
        }
        key = {"res_type": resource.type, "res_id": resource.id}
        try:
            seq = self._conn.execute(
                insert(resource_versions).values(**key, **values).returning(resource_versions.c.seq)
            ).scalar_one()
            if replaces is None:
                self._conn.execute(insert(resources).values(**key, **values, seq=seq))
            else:
                changed = self._conn.execute(
                    update(resources)
                    .where(
                        resources.c.res_type == resource.type,
                        resources.c.res_id == resource.id,
                        resources.c.version == replaces,
                    )
                    .values(**values, seq=seq)
                ).rowcount
                if changed != 1:
                    raise VersionConflict(f"{resource.type}/{resource.id} changed")
        except IntegrityError as exc:
            raise VersionConflict(f"{resource.type}/{resource.id} changed") from exc
        self._conn.execute(
            delete(search_token).where(
                search_token.c.res_type == resource.type, search_token.c.res_id == resource.id
            )
        )
        if tokens and not resource.deleted:
            self._conn.execute(
                insert(search_token),
                [{**key, "param": t.param, "system": t.system, "code": t.code} for t in tokens],
            )

    def search(self, query: Query, with_total: bool = False) -> SearchResult:
        """Match current resources using the index tables only."""
        conditions = [resources.c.res_type == query.type, resources.c.deleted.is_(False)]
        if query.ids is not None:
            conditions.append(resources.c.res_id.in_(query.ids))
        for criterion in query.tokens:
            alternatives = []
            for system, code in criterion.values:
                match = [] if code is None else [search_token.c.code == code]
                if system == "":
                    match.append(search_token.c.system.is_(None))
                elif system is not None:
                    match.append(search_token.c.system == system)
                alternatives.append(and_(true(), *match))
            conditions.append(
                exists().where(
                    search_token.c.res_type == resources.c.res_type,
                    search_token.c.res_id == resources.c.res_id,
                    search_token.c.param == criterion.param,
                    or_(*alternatives),
                )
            )
        statement = (
            select(resources)
            .where(*conditions)
            .order_by(resources.c.last_updated, resources.c.seq)
            .limit(query.count)
            .offset(query.offset)
        )
        found = [_row_to_resource(r) for r in self._conn.execute(statement)]
        total = None
        if with_total:
            total = self._conn.execute(
                select(func.count()).select_from(resources).where(*conditions)
            ).scalar_one()
        return SearchResult(found, total)

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

    def lock(self, key: str) -> None:
        """Serialise transactions on ``key`` (SQLite writers are serialised already)."""
        if self._dialect == "postgresql":
            self._conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _advisory_key(key)})


class SqlStore:
    """The Store port on SQLite or PostgreSQL."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect.name

    @classmethod
    def from_url(cls, url: str, pool_size: int = 5) -> SqlStore:
        """Connect to the database named by a SQLAlchemy URL."""
        return cls(engine_for(url, pool_size))

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[SqlTransaction]:
        """Run a block in one database transaction."""
        try:
            with self.engine.connect() as conn:
                if write:
                    conn = conn.execution_options(whatmatters_write=True)
                with conn.begin():
                    yield SqlTransaction(conn, self.dialect)
        except (OperationalError, DBAPIError) as exc:
            if isinstance(exc, IntegrityError):
                raise VersionConflict(str(exc.orig)) from exc
            if exc.connection_invalidated or isinstance(exc, OperationalError):
                raise StoreUnavailable("The database is not reachable") from exc
            raise StorageError("The database rejected the operation") from exc

    def migrate(self) -> list[str]:
        """Apply the migrations not yet applied, under a lock so several workers may race."""
        applied: list[str] = []
        with self.transaction(write=True) as tx:
            tx.lock("whatmatters-schema-migration")
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

    def schema_current(self) -> bool:
        """Whether every migration has been applied."""
        with self.transaction(write=False) as tx:
            done = set(tx._conn.execute(select(schema_migrations.c.version)).scalars())
        return all(version in done for version, _, _ in MIGRATIONS)

    def check(self) -> None:
        """Raise StoreUnavailable if the database does not answer."""
        with self.transaction(write=False) as tx:
            tx._conn.execute(text("SELECT 1"))

    def close(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()
