"""Delivery channels: how one outbox row reaches its destination, and how a channel fails.

A channel delivers one row: ``deliver(row)`` returns the version of the resource the destination
now holds (None when that does not apply) or raises

- ``Retry`` (or ``Waiting``, or the client's ``Unreachable``): not now; the queue backs off;
- ``Refused``: the destination refused it; retrying the same thing cannot help (dead);
- ``Skipped``: there is nothing left to deliver; the row is set aside as discarded.

The channels: ``partner_sync`` (a partner holds the resources themselves), ``documents`` (a
partner that takes only the patient's "What matters to me" DocumentReference) and ``rest_hook``
(Subscription notifications). Each talks HTTP through ``service.exchange.partner_client``
only. A new channel implements ``Channel`` and is named by a destination kind in the worker.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from service.exchange.partner_client import Answer
from service.storage.outbox import OutboxRow

RETRIED_STATUSES = frozenset({408, 429})


class Retry(Exception):
    """Delivery failed for now; try again after a backoff (or the partner's Retry-After)."""

    def __init__(self, reason: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status


class Waiting(Retry):
    """The row refers to a resource the partner does not hold yet (its own row comes first)."""

    def __init__(self, reason: str, waits_for: tuple[str, str]):
        super().__init__(reason)
        self.waits_for = waits_for


class Refused(Exception):
    """The destination refused the delivery; retrying the same thing cannot help."""

    def __init__(self, reason: str, status: int | None = None, outcome: Any = None):
        super().__init__(reason)
        self.status = status
        self.outcome = outcome  # the destination's own OperationOutcome, kept as it came


class Skipped(Exception):
    """The row has nothing left to deliver (its subscription was switched off); it is set
    aside as discarded with the reason, and the group goes on."""


class Channel(Protocol):
    """Delivers the rows of one kind of destination."""

    # whether a later row of a resource whose version was sent already is done without a
    # call (each row sends the resource's current state)
    coalesces: bool

    def deliver(self, row: OutboxRow) -> int | None:
        """Deliver one row; return the version the destination now holds, if that applies."""

    def gave_up(self, row: OutboxRow, reason: str) -> None:
        """Told when a row of this channel went dead (after the queue saved it)."""


def check(answer: Answer, what: str) -> Answer:
    """Raise Retry or Refused unless the answer is a success."""
    if 200 <= answer.status < 300:
        return answer
    detail = json.dumps(answer.body, ensure_ascii=False) if answer.body else answer.text
    reason = f"{what}: HTTP {answer.status}" + (f": {detail}" if detail else "")
    if answer.status in RETRIED_STATUSES or answer.status >= 500:
        raise Retry(reason, answer.retry_after(), answer.status)
    outcome = answer.body if _is_outcome(answer.body) else None
    raise Refused(reason, answer.status, outcome)


def _is_outcome(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
