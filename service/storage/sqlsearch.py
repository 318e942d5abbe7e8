"""Translate search criteria into SQL over the index tables (never over resource bodies).

Each criterion becomes ``res_id IN (SELECT res_id FROM <index> WHERE res_type = :type AND
param = :param AND ...)``: an uncorrelated subquery that both SQLite and PostgreSQL drive from
the index's (res_type, param, value) B-tree, then look up by primary key.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select, Table, and_, false, func, not_, or_, select, true

from service.storage import (
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
)
from service.storage.schema import INDEX_TABLES, resources, search_reference

_SORT_COLUMNS = {
    "token": "code",
    "string": "norm",
    "date": "low",
    "number": "low",
    "quantity": "low",
    "reference": "target_id",
    "uri": "value",
    "composite": "code",
}


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def range_condition(
    match: RangeMatch, low: ColumnElement[Any], high: ColumnElement[Any]
) -> ColumnElement[bool]:
    """Compare a stored range [low, high] with the search range (search.html#prefix)."""
    s_low, s_high = match.low, match.high
    inside = and_(low >= s_low, high <= s_high)
    op = match.op
    if op == "eq":
        return inside
    if op == "ne":
        return not_(inside)
    if op == "gt":
        return high > s_high
    if op == "lt":
        return low < s_low
    if op == "ge":
        return or_(high > s_high, inside)
    if op == "le":
        return or_(low < s_low, inside)
    if op == "sa":
        return low > s_high
    if op == "eb":
        return high < s_low
    if op == "ap":
        return and_(low <= s_high, high >= s_low)
    raise ValueError(f"unknown prefix {op}")


def _token(table: Table, match: TokenMatch, prefix: str = "") -> ColumnElement[bool]:
    system = table.c[prefix + "system"]
    code = table.c[prefix + "code"]
    parts: list[ColumnElement[bool]] = []
    if match.text is not None:
        column = table.c["text"]
        return and_(column >= match.text, column < match.text + "\U0010ffff")
    if match.code is not None:
        parts.append(code == match.code)
    if match.system == "":
        parts.append(system.is_(None))
    elif match.system is not None:
        parts.append(system == match.system)
    return and_(true(), *parts)


def _string(table: Table, match: StringMatch, norm: str = "norm") -> ColumnElement[bool]:
    if match.mode == "exact":
        return table.c["exact"] == match.value
    column = table.c[norm]
    if match.mode == "contains":
        return column.like(f"%{_escape_like(match.value)}%", escape="\\")
    # A range on the folded value, so the B-tree serves the prefix match on both databases.
    return and_(column >= match.value, column < match.value + "\U0010ffff")


def _quantity(table: Table, match: QuantityMatch) -> ColumnElement[bool]:
    parts = [range_condition(match.range, table.c.low, table.c.high)]
    if match.system is not None:
        parts.append(table.c.system == match.system)
    if match.code is not None:
        parts.append(table.c.code == match.code)
    return and_(*parts)


def _uri(table: Table, match: UriMatch) -> ColumnElement[bool]:
    column = table.c.value
    if match.mode == "below":
        return or_(
            column == match.value, column.like(_escape_like(match.value) + "/%", escape="\\")
        )
    if match.mode == "above":
        prefixes = _uri_prefixes(match.value)
        return column.in_(prefixes)
    return column == match.value


def _uri_prefixes(value: str) -> list[str]:
    scheme, sep, rest = value.partition("://")
    if not sep:
        return [value]
    pieces = rest.split("/")
    return [f"{scheme}://" + "/".join(pieces[: i + 1]) for i in range(len(pieces))]


def _composite(table: Table, match: CompositeMatch) -> ColumnElement[bool]:
    parts = [_token(table, match.token)]
    value = match.value
    if isinstance(value, TokenMatch):
        parts.append(_token(table, value, prefix="value_"))
    elif isinstance(value, QuantityMatch):
        parts.append(range_condition(value.range, table.c.low, table.c.high))
        if value.system is not None:
            parts.append(table.c.value_system == value.system)
        if value.code is not None:
            parts.append(table.c.value_code == value.code)
    elif isinstance(value, RangeMatch):
        parts.append(range_condition(value, table.c.low, table.c.high))
    else:
        parts.append(_string(table, value, norm="text"))
    return and_(*parts)


class SearchSql:
    """Builds the SELECT for a Query."""

    def match(self, kind: str, table: Table, match: Match) -> ColumnElement[bool]:
        """The condition one match puts on its index table."""
        if isinstance(match, TokenMatch):
            return _token(table, match)
        if isinstance(match, StringMatch):
            return _string(table, match)
        if isinstance(match, QuantityMatch):
            return _quantity(table, match)
        if isinstance(match, RangeMatch):
            return range_condition(match, table.c.low, table.c.high)
        if isinstance(match, UriMatch):
            return _uri(table, match)
        if isinstance(match, CompositeMatch):
            return _composite(table, match)
        return self._reference(table, match)

    def _reference(self, table: Table, match: ReferenceMatch) -> ColumnElement[bool]:
        if match.chain:
            target = resources.alias()
            chained = select(target.c.res_id).where(
                target.c.res_type.in_(match.types),
                target.c.deleted.is_(False),
                *self.conditions(match.types[0], target, match.chain),
            )
            return and_(table.c.target_type.in_(match.types), table.c.target_id.in_(chained))
        parts: list[ColumnElement[bool]] = []
        if match.url is not None:
            parts.append(table.c.url == match.url)
        if match.target_type is not None:
            parts.append(table.c.target_type == match.target_type)
        if match.target_id is not None:
            parts.append(table.c.target_id == match.target_id)
        if match.types:
            parts.append(table.c.target_type.in_(match.types))
        return and_(true(), *parts)

    def _ids_matching(self, type_: str, criterion: ParamCriterion) -> Select[Any]:
        table = INDEX_TABLES[criterion.kind]
        return select(table.c.res_id).where(
            table.c.res_type == type_,
            table.c.param == criterion.param,
            or_(*(self.match(criterion.kind, table, m) for m in criterion.matches)),
        )

    def conditions(
        self, type_: str, alias: Any, criteria: Sequence[Criterion]
    ) -> list[ColumnElement[bool]]:
        """The WHERE conditions that apply ``criteria`` to the resources ``alias``."""
        out: list[ColumnElement[bool]] = []
        for criterion in criteria:
            if isinstance(criterion, IdCriterion):
                out.append(alias.c.res_id.in_(criterion.ids) if criterion.ids else false())
            elif isinstance(criterion, LastUpdatedCriterion):
                column = alias.c.last_updated
                out.append(
                    or_(*(range_condition(m, column, column + 999) for m in criterion.matches))
                )
            elif isinstance(criterion, ParamCriterion):
                subquery = self._ids_matching(type_, criterion)
                out.append(
                    alias.c.res_id.not_in(subquery)
                    if criterion.negate
                    else alias.c.res_id.in_(subquery)
                )
            elif isinstance(criterion, MissingCriterion):
                table = INDEX_TABLES[criterion.kind]
                present = select(table.c.res_id).where(
                    table.c.res_type == type_, table.c.param == criterion.param
                )
                out.append(
                    alias.c.res_id.not_in(present)
                    if criterion.missing
                    else alias.c.res_id.in_(present)
                )
            elif isinstance(criterion, HasCriterion):
                out.append(alias.c.res_id.in_(self._has(type_, criterion)))
        return out

    def _has(self, type_: str, criterion: HasCriterion) -> Select[Any]:
        source = resources.alias()
        sources = select(source.c.res_id).where(
            source.c.res_type == criterion.source_type,
            source.c.deleted.is_(False),
            *self.conditions(criterion.source_type, source, criterion.criteria),
        )
        ref = search_reference
        return select(ref.c.target_id).where(
            ref.c.res_type == criterion.source_type,
            ref.c.param == criterion.param,
            ref.c.target_type == type_,
            ref.c.res_id.in_(sources),
        )

    def order(self, query: Query, alias: Any) -> list[Any]:
        """ORDER BY terms: the requested keys, then a stable tie-breaker."""
        terms: list[Any] = []
        for key in query.sort:
            terms.append(self._sort_term(query.type, alias, key))
        terms.append(alias.c.res_id)
        return terms

    def _sort_term(self, type_: str, alias: Any, key: SortKey) -> Any:
        if key.kind == "_id":
            column: Any = alias.c.res_id
        elif key.kind == "_lastUpdated":
            column = alias.c.last_updated
        else:
            table = INDEX_TABLES[key.kind]
            value = table.c[_SORT_COLUMNS[key.kind]]
            aggregate = func.max(value) if key.descending else func.min(value)
            column = (
                select(aggregate)
                .where(
                    table.c.res_type == alias.c.res_type,
                    table.c.res_id == alias.c.res_id,
                    table.c.param == key.param,
                )
                .scalar_subquery()
            )
        return column.desc().nulls_last() if key.descending else column.asc().nulls_last()

    def select_matches(self, query: Query, columns: Sequence[Any]) -> Select[Any]:
        """SELECT ``columns`` of the current, non-deleted resources matching ``query``."""
        alias = resources
        return select(*columns).where(
            alias.c.res_type == query.type,
            alias.c.deleted.is_(False),
            *self.conditions(query.type, alias, query.criteria),
        )
