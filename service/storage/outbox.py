"""Outbox rows: what the exchange worker still has to deliver, kept with the writes that made them.

A write that concerns a partner or a subscriber adds its outbox rows in the same transaction, so
a change is never stored without its delivery, nor delivered without being stored.
"""

from __future__ import annotations

from dataclasses import dataclass

# pending: waiting (maybe until next_attempt_us); inflight: leased by a worker until lease_until_us;
# done: delivered; dead: refused by the destination, kept with its reason until retried or
# discarded; discarded: given up by an operator (kept for the record); blocked: waiting for a
# resource whose own row is dead (its group waits with it until that row is retried).
OUTBOX_STATES = ("pending", "inflight", "done", "dead", "discarded", "blocked")
UNDELIVERED = ("pending", "inflight", "blocked")  # what holds a group's later rows back


@dataclass(frozen=True)
class OutboxRow:
    """One delivery: a resource version, a deletion or a notification, to one destination."""

    destination: str  # "partner:NAME" or "subscription:ID"
    group_key: str  # rows of one group are delivered in id order (one patient at one destination)
    kind: str  # resource, delete, handshake, notification
    res_type: str
    res_id: str
    version: int
    created_us: int
    id: int = 0  # assigned by the store
    event_number: int | None = None
    state: str = "pending"
    attempts: int = 0
    next_attempt_us: int = 0
    lease_owner: str | None = None
    lease_until_us: int = 0
    delivered_us: int | None = None
    last_status: int | None = None
    last_error: str | None = None  # the destination's OperationOutcome (JSON) or the reason
    requeued_us: int | None = (
        None  # when an operator last put it back (retry): give-up counts from there
    )

    def ready(self, now: int) -> bool:
        """Whether a worker may take the row now: pending and due, or inflight with its
        lease run out (``SqlOutbox.heads`` says the same in SQL)."""
        if self.state == "pending":
            return self.next_attempt_us <= now
        return self.state == "inflight" and self.lease_until_us < now


MAX_ROW_ID = 2**63 - 1  # the id column is 64-bit


def parse_row_id(text: str) -> int | None:
    """An outbox row id from text (the CLI and the admin endpoint), or None when it is not a
    whole number from 1 to MAX_ROW_ID."""
    text = text.strip()
    if not text.isdigit() or len(text) > 19 or not 1 <= int(text) <= MAX_ROW_ID:
        return None
    return int(text)
