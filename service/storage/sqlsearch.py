"""Translate search criteria into SQL over the index tables (never over resource bodies).

The most selective criterion drives the query as ``res_id IN (SELECT res_id FROM <index>
WHERE res_type = ? AND param = ? AND ...)``, served by the index's (res_type, param, value)
B-tree; every other criterion is a correlated ``EXISTS`` probe on the index's (res_type,
res_id) key. SQLite materialises each IN list, so a broad criterion (category=what-matters)
written as IN would cost time in proportion to the whole table rather than to one patient.

The SQL is built as text with driver placeholders: composing SQLAlchemy expressions for every
search cost more than running the query. ``SqlSearches`` (``tx.searches`` of a SQL transaction)
runs it: a page after (or before) a cursor, among the resources first written by the search's
bound, or, for a ``_sort`` a cursor cannot follow, from the matches kept when it began.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, delete, insert, select

from service.storage import (
    INDEX_KINDS,
    CompositeMatch,
    Criterion,
    HasCriterion,
    IdCriterion,
    LastUpdatedCriterion,
    Match,
    MissingCriterion,
    ParamCriterion,
    QuantityMatch,
    Query,
    RangeMatch,
    ReferenceMatch,
    SortKey,
    StringMatch,
    TokenMatch,
    UriMatch,
    Window,
)
from service.storage.schema import INDEX_TABLES, saved_search, saved_search_result

TABLES = {kind: table.name for kind, table in INDEX_TABLES.items()}
_TOP = "\U0010ffff"  # above every character: [v, v + _TOP) holds the strings starting with v


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _uri_prefixes(value: str) -> list[str]:
    scheme, sep, rest = value.partition("://")
    if not sep:
        return [value]
    pieces = rest.split("/")
    return [f"{scheme}://" + "/".join(pieces[: i + 1]) for i in range(len(pieces))]


# How well a criterion narrows a search, best first: the driver of the query is the best one.
def _rank(criterion: Criterion) -> int:
    if isinstance(criterion, IdCriterion):
        return 0
    if isinstance(criterion, ParamCriterion) and not criterion.negate:
        if criterion.kind == "reference":
            specific = all(
                isinstance(m, ReferenceMatch) and (m.target_id or m.url or m.chain)
                for m in criterion.matches
            )
            return 1 if specific else 5
        if criterion.kind == "token":
            specific = all(
                isinstance(m, TokenMatch) and m.code is not None for m in criterion.matches
            )
            return 2 if specific else 5
        if criterion.kind in ("string", "uri", "composite"):
            return 3
        return 4
    if isinstance(criterion, HasCriterion):
        return 4
    return 9  # negations, :missing and _lastUpdated never drive


def _driver(criteria: Sequence[Criterion]) -> int | None:
    ranked = [(_rank(c), i) for i, c in enumerate(criteria)]
    if not ranked:
        return None
    rank, index = min(ranked)
    return index if rank < 9 else None


@dataclass
class SqlBuilder:
    """Accumulates SQL text and its parameters for one statement."""

    placeholder: str  # "?" (sqlite3) or "%s" (psycopg)
    params: list[Any] = field(default_factory=list)
    aliases: int = 0

    def p(self, value: Any) -> str:
        """A placeholder bound to ``value``."""
        self.params.append(value)
        return self.placeholder

    def alias(self, prefix: str) -> str:
        """A fresh table alias."""
        self.aliases += 1
        return f"{prefix}{self.aliases}"

    # -- matches on one index row (alias i) -----------------------------------------------

    def range(self, match: RangeMatch, low: str, high: str) -> str:
        """Compare a stored range [low, high] with the search range (search.html#prefix)."""
        op = match.op
        if op == "gt":
            return f"{high} > {self.p(match.high)}"
        if op == "lt":
            return f"{low} < {self.p(match.low)}"
        if op == "sa":
            return f"{low} > {self.p(match.high)}"
        if op == "eb":
            return f"{high} < {self.p(match.low)}"
        if op == "ap":
            return f"({low} <= {self.p(match.high)} AND {high} >= {self.p(match.low)})"
        # Placeholders must be created in the order they appear in the text.
        if op == "ge":
            first = f"{high} > {self.p(match.high)}"
        elif op == "le":
            first = f"{low} < {self.p(match.low)}"
        elif op in ("eq", "ne"):
            first = ""
        else:
            raise ValueError(f"unknown prefix {op}")
        inside = f"({low} >= {self.p(match.low)} AND {high} <= {self.p(match.high)})"
        if op == "eq":
            return inside
        if op == "ne":
            return f"NOT {inside}"
        return f"({first} OR {inside})"

    def token(self, i: str, match: TokenMatch, prefix: str = "") -> str:
        """A token match on columns ``{prefix}system`` and ``{prefix}code``."""
        if match.text is not None:
            return f"({i}.text >= {self.p(match.text)} AND {i}.text < {self.p(match.text + _TOP)})"
        parts = []
        if match.code is not None:
            parts.append(f"{i}.{prefix}code = {self.p(match.code)}")
        if match.system == "":
            parts.append(f"{i}.{prefix}system IS NULL")
        elif match.system is not None:
            parts.append(f"{i}.{prefix}system = {self.p(match.system)}")
        return "(" + " AND ".join(parts) + ")" if parts else "1 = 1"

    def string(self, i: str, match: StringMatch, norm: str = "norm") -> str:
        """A string match: prefix (a range, so the B-tree serves it), exact or contains."""
        if match.mode == "exact":
            return f"{i}.exact = {self.p(match.value)}"
        if match.mode == "contains":
            pattern = "%" + _escape_like(match.value) + "%"
            return f"{i}.{norm} LIKE {self.p(pattern)} ESCAPE '\\'"
        return (
            f"({i}.{norm} >= {self.p(match.value)} AND {i}.{norm} < {self.p(match.value + _TOP)})"
        )

    def match(self, i: str, match: Match) -> str:
        """The condition one match puts on index row ``i``."""
        if isinstance(match, TokenMatch):
            return self.token(i, match)
        if isinstance(match, StringMatch):
            return self.string(i, match)
        if isinstance(match, QuantityMatch):
            parts = [self.range(match.range, f"{i}.low", f"{i}.high")]
            if match.system is not None:
                parts.append(f"{i}.system = {self.p(match.system)}")
            if match.code is not None:
                parts.append(f"{i}.code = {self.p(match.code)}")
            return "(" + " AND ".join(parts) + ")"
        if isinstance(match, RangeMatch):
            return self.range(match, f"{i}.low", f"{i}.high")
        if isinstance(match, UriMatch):
            return self.uri(i, match)
        if isinstance(match, CompositeMatch):
            return self.composite(i, match)
        return self.reference(i, match)

    def uri(self, i: str, match: UriMatch) -> str:
        """uri: exact, :below (value or under it) or :above (value's parents)."""
        if match.mode == "below":
            # substr, not LIKE: SQLite's LIKE ignores case, and URIs are case-sensitive
            under = match.value + "/"
            return (
                f"({i}.value = {self.p(match.value)} OR substr({i}.value, 1, "
                f"{self.p(len(under))}) = {self.p(under)})"
            )
        if match.mode == "above":
            marks = ", ".join(self.p(v) for v in _uri_prefixes(match.value))
            return f"{i}.value IN ({marks})"
        return f"{i}.value = {self.p(match.value)}"

    def composite(self, i: str, match: CompositeMatch) -> str:
        """The token part and the value part of a composite row."""
        parts = [self.token(i, match.token)]
        value = match.value
        if isinstance(value, TokenMatch):
            parts.append(self.token(i, value, prefix="value_"))
        elif isinstance(value, QuantityMatch):
            parts.append(self.range(value.range, f"{i}.low", f"{i}.high"))
            if value.system is not None:
                parts.append(f"{i}.value_system = {self.p(value.system)}")
            if value.code is not None:
                parts.append(f"{i}.value_code = {self.p(value.code)}")
        elif isinstance(value, RangeMatch):
            parts.append(self.range(value, f"{i}.low", f"{i}.high"))
        else:
            parts.append(self.string(i, value, norm="text"))
        return "(" + " AND ".join(parts) + ")"

    def reference(self, i: str, match: ReferenceMatch) -> str:
        """A local target, a URL, or a chain into the target's own criteria."""
        if match.chain:
            target = self.alias("t")
            head = (
                f"({i}.target_type = {self.p(match.types[0])} AND {i}.target_id IN "
                f"(SELECT {target}.res_id FROM resources {target} WHERE {target}.res_type = "
                f"{self.p(match.types[0])} AND {target}.deleted = {self.p(False)}"
            )
            conditions = self.conditions(match.types[0], target, match.chain)
            return head + "".join(f" AND {c}" for c in conditions) + "))"
        parts = []
        if match.url is not None:
            parts.append(f"{i}.url = {self.p(match.url)}")
        if match.target_type is not None:
            parts.append(f"{i}.target_type = {self.p(match.target_type)}")
        elif match.types:
            marks = ", ".join(self.p(t) for t in match.types)
            parts.append(f"{i}.target_type IN ({marks})")
        if match.target_id is not None:
            parts.append(f"{i}.target_id = {self.p(match.target_id)}")
        return "(" + " AND ".join(parts) + ")" if parts else "1 = 1"

    # -- criteria on a resource (alias r) ---------------------------------------------------

    def conditions(self, type_: str, r: str, criteria: Sequence[Criterion]) -> list[str]:
        """The WHERE conditions that apply ``criteria`` to resources ``r`` of ``type_``."""
        driver = _driver(criteria)
        out: list[str] = []
        for position, criterion in enumerate(criteria):
            drive = position == driver
            if isinstance(criterion, IdCriterion):
                if not criterion.ids:
                    out.append("1 = 0")
                else:
                    marks = ", ".join(self.p(v) for v in criterion.ids)
                    out.append(f"{r}.res_id IN ({marks})")
            elif isinstance(criterion, LastUpdatedCriterion):
                column = f"{r}.last_updated"
                alternatives = [
                    self.range(m, column, f"({column} + 999)") for m in criterion.matches
                ]
                out.append("(" + " OR ".join(alternatives) + ")")
            elif isinstance(criterion, ParamCriterion):
                out.append(self._param(type_, r, criterion, drive))
            elif isinstance(criterion, MissingCriterion):
                i = self.alias("i")
                probe = (
                    f"EXISTS (SELECT 1 FROM {TABLES[criterion.kind]} {i} WHERE {i}.res_type = "
                    f"{self.p(type_)} AND {i}.res_id = {r}.res_id AND {i}.param = "
                    f"{self.p(criterion.param)})"
                )
                out.append(f"NOT {probe}" if criterion.missing else probe)
            elif isinstance(criterion, HasCriterion):
                out.append(self._has(type_, r, criterion, drive))
        return out

    def _param(self, type_: str, r: str, criterion: ParamCriterion, drive: bool) -> str:
        table = TABLES[criterion.kind]
        i = self.alias("i")
        if drive and not criterion.negate:
            head = (
                f"{r}.res_id IN (SELECT {i}.res_id FROM {table} {i} WHERE {i}.res_type = "
                f"{self.p(type_)} AND {i}.param = {self.p(criterion.param)}"
            )
        else:
            head = (
                f"EXISTS (SELECT 1 FROM {table} {i} WHERE {i}.res_type = {self.p(type_)} AND "
                f"{i}.res_id = {r}.res_id AND {i}.param = {self.p(criterion.param)}"
            )
        matches = " OR ".join(self.match(i, m) for m in criterion.matches)
        clause = f"{head} AND ({matches}))"
        return f"NOT {clause}" if criterion.negate else clause

    def _has(self, type_: str, r: str, criterion: HasCriterion, drive: bool) -> str:
        ref = self.alias("h")
        source = self.alias("s")
        # Placeholders are created in text order: the reference row first, then the sources.
        where = (
            f"{ref}.res_type = {self.p(criterion.source_type)} AND {ref}.param = "
            f"{self.p(criterion.param)} AND {ref}.target_type = {self.p(type_)}"
        )
        sources = (
            f"SELECT {source}.res_id FROM resources {source} WHERE {source}.res_type = "
            f"{self.p(criterion.source_type)} AND {source}.deleted = {self.p(False)}"
        )
        sources += "".join(
            f" AND {c}" for c in self.conditions(criterion.source_type, source, criterion.criteria)
        )
        if drive:
            return (
                f"{r}.res_id IN (SELECT {ref}.target_id FROM search_reference {ref} WHERE "
                f"{where} AND {ref}.res_id IN ({sources}))"
            )
        return (
            f"EXISTS (SELECT 1 FROM search_reference {ref} WHERE {where} AND "
            f"{ref}.target_id = {r}.res_id AND {ref}.res_id IN ({sources}))"
        )

    def sort_term(self, r: str, key: SortKey) -> str:
        """One ORDER BY term; resources without a value sort last either way."""
        if key.kind == "_id":
            column = f"{r}.res_id"
        elif key.kind == "_lastUpdated":
            column = f"{r}.last_updated"
        else:
            i = self.alias("o")
            aggregate = "MAX" if key.descending else "MIN"
            value = INDEX_KINDS[key.kind].sort_field
            # a concept with text only has a token row with no code: it has no code to sort by
            sorted_by = f"NULLIF({i}.{value}, '')" if key.kind == "token" else f"{i}.{value}"
            column = (
                f"(SELECT {aggregate}({sorted_by}) FROM {TABLES[key.kind]} {i}"
                f" WHERE {i}.res_type = {r}.res_type AND {i}.res_id = {r}.res_id AND {i}.param"
                f" = {self.p(key.param)})"
            )
        return f"{column} {'DESC' if key.descending else 'ASC'} NULLS LAST"


def select_sql(
    query: Query,
    placeholder: str,
    columns: str,
    limit: int | None,
    window: Window | None = None,
) -> tuple[str, list[Any]]:
    """SQL and parameters selecting ``columns`` of the current resources matching ``query``
    (within ``window``: see ``Window``)."""
    b = SqlBuilder(placeholder)
    where = [f"r.res_type = {b.p(query.type)}", f"r.deleted = {b.p(False)}"]
    where += b.conditions(query.type, "r", query.criteria)
    backward = False
    if window is not None:
        if window.as_of is not None:
            # first written by the bound: the current version is, or an earlier one was
            where.append(
                f"(r.seq <= {b.p(window.as_of)} OR EXISTS (SELECT 1 FROM resource_versions v"
                " WHERE v.res_type = r.res_type AND v.res_id = r.res_id AND v.seq <= "
                f"{b.p(window.as_of)}))"
            )
        descending = bool(query.sort) and query.sort[0].descending
        if window.after is not None:
            where.append(f"r.res_id {'<' if descending else '>'} {b.p(window.after)}")
        elif window.before is not None:
            where.append(f"r.res_id {'>' if descending else '<'} {b.p(window.before)}")
            backward = True
    sql = f"SELECT {columns} FROM resources r WHERE " + " AND ".join(where)
    if limit is not None:
        if window is not None:
            # ordered by id alone (pages_by_cursor): the id is unique
            descending = bool(query.sort) and query.sort[0].descending
            order = ["r.res_id DESC" if descending != backward else "r.res_id ASC"]
        else:
            order = [b.sort_term("r", key) for key in query.sort] + ["r.res_id ASC"]
        sql += " ORDER BY " + ", ".join(order)
        sql += f" LIMIT {int(limit)}"
        if window is not None and window.offset and not backward:
            sql += f" OFFSET {int(window.offset)}"
    return sql, b.params


def find_tokens_sql(placeholder: str, count: int) -> str:
    """SQL finding which of ``count`` token codes current resources hold (values bound)."""
    marks = ", ".join(placeholder for _ in range(count))
    return (
        "SELECT t.system, t.code, t.res_id FROM search_token t"
        " JOIN resources r ON r.res_type = t.res_type AND r.res_id = t.res_id"
        f" WHERE t.res_type = {placeholder} AND t.param = {placeholder}"
        f" AND t.code IN ({marks}) AND r.deleted = {placeholder}"
    )


def read_many_sql(placeholder: str, count: int) -> str:
    """SQL reading the current versions of ``count`` ids of one type (values bound)."""
    marks = ", ".join(placeholder for _ in range(count))
    return (
        "SELECT res_type, res_id, version, last_updated, deleted, content, method, seq"
        f" FROM resources WHERE res_type = {placeholder} AND deleted = {placeholder}"
        f" AND res_id IN ({marks})"
    )


def param_mark(dialect: str) -> str:
    """The driver's parameter mark."""
    return "?" if dialect == "sqlite" else "%s"


class SqlSearches:
    """Searches and kept search results, on the transaction's connection."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        self._conn = conn
        self._dialect = dialect

    def keys(self, query: Query, limit: int, window: Window | None = None) -> list[tuple[str, str]]:
        """Return the keys of the first ``limit`` matches (in ``window``), in query order."""
        sql, params = select_sql(
            query, param_mark(self._dialect), "r.res_type, r.res_id", limit, window
        )
        rows = self._conn.exec_driver_sql(sql, tuple(params))
        found = [(row[0], row[1]) for row in rows]
        if window is not None and window.before is not None:
            found.reverse()  # taken backward from the id, given in query order
        return found

    def count(self, query: Query, as_of: int | None = None) -> int:
        """Return how many resources match ``query`` (first written by ``as_of``)."""
        window = None if as_of is None else Window(as_of=as_of)
        sql, params = select_sql(query, param_mark(self._dialect), "COUNT(*)", None, window)
        return int(self._conn.exec_driver_sql(sql, tuple(params)).scalar_one())

    def horizon(self) -> int:
        """The latest write sequence (the primary key's largest value: one index probe)."""
        found = self._conn.exec_driver_sql("SELECT MAX(seq) FROM resource_versions").scalar()
        return int(found or 0)

    def save(self, search_id: str, keys: Sequence[tuple[str, str]], created_us: int) -> None:
        """Keep the ordered matches of a search; drop searches older than a day."""
        stale = select(saved_search.c.search_id).where(
            saved_search.c.created < created_us - 86_400_000_000
        )
        self._conn.execute(
            delete(saved_search_result).where(saved_search_result.c.search_id.in_(stale))
        )
        self._conn.execute(
            delete(saved_search).where(saved_search.c.created < created_us - 86_400_000_000)
        )
        self._conn.execute(
            insert(saved_search).values(search_id=search_id, created=created_us, total=len(keys))
        )
        for start in range(0, len(keys), 1000):
            self._conn.execute(
                insert(saved_search_result),
                [
                    {"search_id": search_id, "position": start + i, "res_type": t, "res_id": r}
                    for i, (t, r) in enumerate(keys[start : start + 1000])
                ],
            )

    def saved(
        self, search_id: str, offset: int, count: int
    ) -> tuple[list[tuple[str, str]], int] | None:
        """Return one page of a kept search and its total, or None if it is gone."""
        total = self._conn.execute(
            select(saved_search.c.total).where(saved_search.c.search_id == search_id)
        ).scalar_one_or_none()
        if total is None:
            return None
        rows = self._conn.execute(
            select(saved_search_result.c.res_type, saved_search_result.c.res_id)
            .where(
                saved_search_result.c.search_id == search_id,
                saved_search_result.c.position >= offset,
                saved_search_result.c.position < offset + count,
            )
            .order_by(saved_search_result.c.position)
        )
        return [(r.res_type, r.res_id) for r in rows], int(total)

    def explain(self, query: Query, limit: int = 50) -> list[str]:
        """Return the database's plan for ``query`` (used by the index-usage tests)."""
        sql, params = select_sql(query, param_mark(self._dialect), "r.res_type, r.res_id", limit)
        prefix = "EXPLAIN QUERY PLAN " if self._dialect == "sqlite" else "EXPLAIN "
        rows = self._conn.exec_driver_sql(prefix + sql, tuple(params)).all()
        return [" ".join(str(c) for c in row) for row in rows]
