"""The outbox on SQL: queueing deliveries inside a write, and the worker's claims on them (the
ready head of each group, leases, new states): ``tx.outbox`` of a ``SqlTransaction``.

May import SQLAlchemy and the storage schema; nothing above ``service.storage``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update

from service.storage.outbox import UNDELIVERED, OutboxRow
from service.storage.schema import outbox

_OUTBOX_COLUMNS = {
    "created_us": "created",
    "next_attempt_us": "next_attempt",
    "lease_until_us": "lease_until",
    "delivered_us": "delivered",
    "requeued_us": "requeued",
}


def _outbox_values(row: OutboxRow) -> dict[str, Any]:
    values = {_OUTBOX_COLUMNS.get(name, name): value for name, value in vars(row).items()}
    if not row.id:
        del values["id"]
    return values


_ROW_FIELDS = tuple(OutboxRow.__dataclass_fields__)


def _outbox_row(record: Any) -> OutboxRow:
    fields = {name: getattr(record, _OUTBOX_COLUMNS.get(name, name)) for name in _ROW_FIELDS}
    return OutboxRow(**fields)


class SqlOutbox:
    """The outbox of a SQL transaction, on its connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def add(self, rows: Sequence[OutboxRow]) -> None:
        """Queue deliveries in this transaction."""
        if rows:
            self._conn.execute(insert(outbox), [_outbox_values(row) for row in rows])

    def rows(
        self,
        states: Sequence[str] | None = None,
        destination: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int = 1000,
        group_key: str | None = None,
        after: int = 0,
    ) -> list[OutboxRow]:
        """Return outbox rows in id order."""
        statement = select(outbox).where(outbox.c.id > after).order_by(outbox.c.id).limit(limit)
        if group_key is not None:
            statement = statement.where(outbox.c.group_key == group_key)
        if states is not None:
            statement = statement.where(outbox.c.state.in_(list(states)))
        if destination is not None:
            statement = statement.where(outbox.c.destination == destination)
        if ids is not None:
            statement = statement.where(outbox.c.id.in_(list(ids)))
        return [_outbox_row(r) for r in self._conn.execute(statement)]

    def heads(self, now: int, limit: int = 1) -> list[OutboxRow]:
        """Return the ready head row of each group, oldest first."""
        undelivered = outbox.c.state.in_(list(UNDELIVERED))
        heads = (
            select(func.min(outbox.c.id).label("id"))
            .where(undelivered)
            .group_by(outbox.c.destination, outbox.c.group_key)
            .subquery()
        )
        statement = (
            select(outbox)
            .join(heads, heads.c.id == outbox.c.id)
            .where(
                or_(
                    and_(outbox.c.state == "pending", outbox.c.next_attempt <= now),
                    and_(outbox.c.state == "inflight", outbox.c.lease_until < now),
                )
            )
            .order_by(outbox.c.id)
            .limit(limit)
        )
        return [_outbox_row(r) for r in self._conn.execute(statement)]

    def save(self, row: OutboxRow, owner: str | None = None) -> bool:
        """Store a row's new state (only under ``owner``'s lease when given)."""
        values = _outbox_values(row)
        statement = update(outbox).where(outbox.c.id == row.id).values(**values)
        if owner is not None:
            statement = statement.where(outbox.c.lease_owner == owner)
        return bool(self._conn.execute(statement).rowcount)

    def summary(self) -> list[tuple[str, str, int, int]]:
        """Return (destination, state, rows, oldest created_us)."""
        statement = (
            select(outbox.c.destination, outbox.c.state, func.count(), func.min(outbox.c.created))
            .group_by(outbox.c.destination, outbox.c.state)
            .order_by(outbox.c.destination, outbox.c.state)
        )
        return [(r[0], r[1], int(r[2]), int(r[3])) for r in self._conn.execute(statement)]
