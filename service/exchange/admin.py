"""Outbox administration: the operator's one use case, for the CLI and the admin endpoint.

``whatmatters outbox status|retry|discard`` and ``/admin/outbox`` (GET, ``/retry``,
``/discard``) both call ``OutboxAdmin``: what is queued per destination and state, the rows
themselves, putting dead and blocked rows back, giving rows up, and a subscription's event
count (``$status``). The row ids, the states and the destination of a partner are read here
too, so neither caller knows how the store keeps them.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.exchange import queue
from service.exchange.destinations import Destination
from service.fhir.interactions import FhirService
from service.storage.outbox import MAX_ROW_ID, OUTBOX_STATES, OutboxRow, parse_row_id

__all__ = [
    "MAX_ROW_ID",
    "OUTBOX_STATES",
    "NoSelection",
    "OutboxAdmin",
    "QueueLine",
    "Selection",
    "parse_row_id",
    "reason_text",
    "row_json",
]


class NoSelection(ValueError):
    """Discarding needs rows named (ids or a destination), or everything asked for."""


@dataclass(frozen=True)
class Selection:
    """The rows an operator names: ids and/or a destination (None: every row)."""

    ids: tuple[int, ...] | None = None
    destination: str | None = None

    @classmethod
    def of(
        cls,
        ids: Sequence[int] | None = None,
        partner: str | None = None,
        destination: str | None = None,
    ) -> Selection:
        """A selection by ids, by partner name, or by a destination as the store writes it."""
        named = Destination.partner(partner).format() if partner else destination
        return cls(tuple(ids) if ids else None, named)

    @property
    def empty(self) -> bool:
        """Whether the selection names no rows in particular."""
        return self.ids is None and self.destination is None


@dataclass(frozen=True)
class QueueLine:
    """One line of the queue's summary: rows per destination and state."""

    destination: str
    state: str
    rows: int
    oldest_us: int


class OutboxAdmin:
    """What an operator can see and do with the outbox; each call is one transaction."""

    def __init__(self, fhir: FhirService) -> None:
        self.fhir = fhir

    def summary(self) -> list[QueueLine]:
        """Rows per destination and state."""
        lines = self.fhir.read_only(lambda tx: tx.outbox.summary())
        return [QueueLine(*line) for line in lines]

    def rows(
        self,
        selection: Selection,
        states: Sequence[str] | None = None,
        limit: int = 1000,
        after: int = 0,
    ) -> list[OutboxRow]:
        """The selected rows in these states, in queue order, from the row after ``after``."""
        rows: list[OutboxRow] = self.fhir.read_only(
            lambda tx: tx.outbox.rows(
                states=states,
                destination=selection.destination,
                ids=selection.ids,
                limit=limit,
                after=after,
            )
        )
        return rows

    def retry(self, selection: Selection) -> list[OutboxRow]:
        """Put the selected dead and blocked rows back in the queue (see ``queue.retry``)."""
        changed: list[OutboxRow] = self.fhir.run(
            lambda tx: queue.retry(tx, self.fhir.clock(), selection.ids, selection.destination)
        )
        return changed

    def discard(self, selection: Selection, everything: bool = False) -> list[OutboxRow]:
        """Give up the selected rows (see ``queue.discard``); an empty selection discards
        only when ``everything`` is asked for (NoSelection otherwise)."""
        if selection.empty and not everything:
            raise NoSelection("name the rows to discard")
        changed: list[OutboxRow] = self.fhir.run(
            lambda tx: queue.discard(tx, selection.ids, selection.destination)
        )
        return changed

    def subscription_events(self, subscription_id: str) -> int:
        """How many events the subscription has had since it started (``$status``)."""
        destination = Destination.subscription(subscription_id).format()
        events: int = self.fhir.run(lambda tx: tx.counters.next(destination, 0))
        return events


def row_json(row: OutboxRow) -> dict[str, Any]:
    """A row as the admin endpoint shows it."""
    shown = {k: v for k, v in vars(row).items() if v is not None}
    if row.last_error is not None:
        with contextlib.suppress(ValueError):  # a reason written as plain text
            shown["last_error"] = json.loads(row.last_error)
    return shown


def reason_text(error: str | None) -> str:
    """A row's reason on one line, as the CLI prints it: the OperationOutcome's diagnostics."""
    if not error:
        return "-"
    try:
        outcome = json.loads(error)
        return "; ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue", []))
    except ValueError:
        return error
