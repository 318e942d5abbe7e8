"""The outbox queue: claim a group of rows, hold its lease, settle each row, back off.

Rows are delivered per group (one patient at one destination) in id order; a worker claims
the ready head of the oldest deliverable group under a lease of its own, renews it before each
row and settles each row under it, so no row is delivered by two workers at once and a worker
that lost its lease cannot overwrite what the next one did. Failed rows wait out an exponential
backoff with full jitter (honouring Retry-After) and go dead once they are old and tried enough.

The transaction-level functions (``claim``, ``renew``, ``retry``, ``discard``) run inside a
store transaction; ``OutboxQueue`` opens those transactions for the worker.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.fhir.interactions import FhirService
from service.storage import Transaction
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")
CLAIM_LOCK = "whatmatters-outbox-claim"
HANDSHAKE_ATTEMPTS = 3
MIN_ATTEMPTS_BEFORE_GIVING_UP = 5  # an old row put back in the queue gets a fair chance


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter, capped; rows older than ``give_up`` go dead."""

    base_seconds: float = 1.0
    cap_seconds: float = 300.0
    give_up_seconds: float = 3 * 24 * 3600.0
    max_retry_after: float = 3600.0

    def delay(self, attempts: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait before attempt ``attempts + 1``."""
        ceiling = min(self.cap_seconds, self.base_seconds * 2 ** max(attempts - 1, 0))
        wait = rng.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        return wait


# -- in a transaction ------------------------------------------------------------------------


def choose_group(rows: Sequence[OutboxRow], now: int, limit: int) -> list[OutboxRow]:
    """The ready head of the oldest group whose earlier rows are all delivered.

    ``rows`` are the undelivered rows (pending or inflight) in id order. A group whose oldest
    row is waiting (backoff, or leased by another worker) is skipped as a whole, which keeps
    each patient's changes in order at each destination.
    """
    blocked: set[tuple[str, str]] = set()
    chosen: list[OutboxRow] = []
    group: tuple[str, str] | None = None
    for row in rows:
        key = (row.destination, row.group_key)
        if group is not None:
            if key != group:
                continue
            if not row.ready(now) or len(chosen) >= limit:
                break
            chosen.append(row)
            continue
        if key in blocked:
            continue
        if row.ready(now):
            group = key
            chosen.append(row)
        else:
            blocked.add(key)
    return chosen


def claim(tx: Transaction, owner: str, now: int, lease_us: int, limit: int) -> list[OutboxRow]:
    """Lease the oldest deliverable group to ``owner`` (one claimer at a time).

    The store names each group's head row, so a deep group, or many groups waiting out a
    backoff, never hide a group that is ready behind them. ``owner`` is a token of this claim
    alone: a worker that lost its lease cannot settle the rows of the next one.
    """
    tx.locks.hold(CLAIM_LOCK)
    heads = tx.outbox.heads(now, 1)
    if not heads:
        return []
    head = heads[0]
    rows = tx.outbox.rows(
        states=("pending", "inflight"),
        destination=head.destination,
        group_key=head.group_key,
        limit=limit,
    )
    leased = []
    for row in choose_group(rows, now, limit):
        taken = replace(row, state="inflight", lease_owner=owner, lease_until_us=now + lease_us)
        tx.outbox.save(taken)
        leased.append(taken)
    return leased


def renew(tx: Transaction, rows: Sequence[OutboxRow], owner: str, until: int) -> bool:
    """Extend ``owner``'s lease on rows it still holds; False when any was taken over."""
    held = tx.outbox.rows(states=("inflight",), ids=[row.id for row in rows], limit=len(rows))
    if len(held) != len(rows) or any(row.lease_owner != owner for row in held):
        return False
    return all(tx.outbox.save(replace(row, lease_until_us=until), owner=owner) for row in held)


def retry(
    tx: Transaction, now: int, ids: Sequence[int] | None, destination: str | None
) -> list[OutboxRow]:
    """Put dead and blocked (or discarded, when named by id) rows back in the queue, due now,
    with the rows their groups held blocked behind them.

    The attempts already made are kept (the row's history stays true); giving up is counted
    from now, so a row put back gets a fair chance.
    """
    tx.locks.hold(CLAIM_LOCK)  # one at a time with claims: a claim never writes over it
    states = ("dead", "discarded", "blocked") if ids else ("dead", "blocked")
    chosen = tx.outbox.rows(states=states, destination=destination, ids=ids, limit=100_000)
    groups = {(row.destination, row.group_key) for row in chosen}
    held = [
        row
        for destination_, group in groups
        for row in tx.outbox.rows(
            states=("blocked",), destination=destination_, group_key=group, limit=100_000
        )
    ]
    changed = []
    for row in {row.id: row for row in [*chosen, *held]}.values():
        again = replace(
            row,
            state="pending",
            next_attempt_us=now,
            lease_owner=None,
            lease_until_us=0,
            requeued_us=now,
        )
        tx.outbox.save(again)
        changed.append(again)
    return sorted(changed, key=lambda row: row.id)


def discard(tx: Transaction, ids: Sequence[int] | None, destination: str | None) -> list[OutboxRow]:
    """Give up dead (or, named by id, undelivered) rows; they stay listed as discarded.

    A worker holding the lease of a discarded row cannot settle it any more (the lease owner is
    cleared), so the row stays discarded even if its delivery was under way.
    """
    # one at a time with claims: a claim that read the row as pending before this commits
    # would otherwise write it back as in flight (PostgreSQL runs the two side by side)
    tx.locks.hold(CLAIM_LOCK)
    states = ("dead", "pending", "inflight") if ids else ("dead",)
    changed = []
    for row in tx.outbox.rows(states=states, destination=destination, ids=ids, limit=100_000):
        gone = replace(row, state="discarded", lease_owner=None)
        tx.outbox.save(gone)
        changed.append(gone)
    return changed


# https://hl7.org/fhir/R4/valueset-issue-type.html, by the HTTP status that refused the row
_ISSUE_CODES = {
    400: "invalid",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    412: "conflict",
}


def outcome_json(reason: str, status: int | None = None, transient: bool = False) -> str:
    """An OperationOutcome of our own for a row's reason (when the destination sent none)."""
    code = "transient" if transient else _ISSUE_CODES.get(status or 0, "processing")
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": reason}],
        },
        ensure_ascii=False,
    )


# -- for a worker ----------------------------------------------------------------------------


class OutboxQueue:
    """The queue as a worker uses it: each call is one transaction of the FHIR store.

    ``on_dead(row, reason)`` is told of each row that went dead (a subscription turns to
    ``error``); ``clock`` is asked at each call, so a test may move it.
    """

    def __init__(
        self,
        fhir: FhirService,
        *,
        lease_us: int,
        backoff: Backoff,
        batch: int,
        clock: Callable[[], int],
        rng: Callable[[], random.Random],
        on_dead: Callable[[OutboxRow, str], None],
    ) -> None:
        self.fhir = fhir
        self.lease_us = lease_us
        self.backoff = backoff
        self.batch = batch
        self.clock = clock
        self.rng = rng
        self.on_dead = on_dead

    def due(self, now: int) -> bool:
        """Whether some group has a row ready now."""
        return bool(self.fhir.read_only(lambda tx: tx.outbox.heads(now, 1)))

    def claim(self, owner: str, now: int) -> list[OutboxRow]:
        """Lease the oldest deliverable group (up to a batch of rows) to ``owner``."""
        rows: list[OutboxRow] = self.fhir.run(
            lambda tx: claim(tx, owner, now, self.lease_us, self.batch)
        )
        return rows

    def renew(self, rows: Sequence[OutboxRow], owner: str) -> bool:
        """Extend the lease on ``rows``; False when another worker took them over."""
        until = self.clock() + self.lease_us
        held: bool = self.fhir.run(lambda tx: renew(tx, rows, owner, until))
        return held

    def settle(self, row: OutboxRow, owner: str | None) -> bool:
        """Save a row under the lease it was claimed with; False when the lease was lost."""
        saved: bool = self.fhir.run(lambda tx: tx.outbox.save(row, owner=owner))
        if not saved:  # the lease ran out and another worker took the row over
            log.warning("outbox row %s was taken over by another worker", row.id)
        return saved

    def done(self, row: OutboxRow, owner: str, *, attempted: bool = True) -> bool:
        """The row is delivered (``attempted``: by this attempt, not by an earlier row)."""
        attempts = row.attempts + 1 if attempted else row.attempts
        return self.settle(
            replace(row, state="done", delivered_us=self.clock(), attempts=attempts), owner
        )

    def discarded(self, row: OutboxRow, owner: str, reason: str) -> bool:
        """Set the row aside: it has nothing left to deliver."""
        return self.settle(
            replace(row, state="discarded", lease_owner=None, last_error=outcome_json(reason)),
            owner,
        )

    def blocked(self, row: OutboxRow, dead: OutboxRow, exc: Exception) -> bool:
        """The row waits for a resource whose own row is dead or discarded."""
        reason = (
            f"{exc}: waiting for row #{dead.id} ({dead.res_type}/{dead.res_id}), which is "
            f"{dead.state}; `whatmatters outbox retry --id {dead.id}` sends both"
        )
        log.warning("outbox row %s is blocked by row %s", row.id, dead.id)
        return self.settle(
            replace(
                row,
                state="blocked",
                attempts=row.attempts + 1,
                lease_owner=None,
                lease_until_us=0,
                last_error=outcome_json(reason, transient=True),
            ),
            row.lease_owner,
        )

    def retry_later(self, row: OutboxRow, exc: Exception) -> bool:
        """Back the row off (its group waits with it), or give it up when tried enough."""
        attempts = row.attempts + 1
        status = getattr(exc, "status", None)
        now = self.clock()
        if row.kind == "handshake" and attempts >= HANDSHAKE_ATTEMPTS:
            return self.dead(row, f"the handshake failed {attempts} times: {exc}", status)
        since = row.requeued_us or row.created_us  # an operator's retry restarts the clock
        if (
            now - since > self.backoff.give_up_seconds * 1_000_000
            and attempts >= MIN_ATTEMPTS_BEFORE_GIVING_UP
        ):
            return self.dead(row, f"gave up after {attempts} attempts: {exc}", status)
        delay = self.backoff.delay(attempts, getattr(exc, "retry_after", None), self.rng())
        log.info("delivery of outbox row %s will be retried in %.1f s", row.id, delay)
        return self.settle(
            replace(
                row,
                state="pending",
                attempts=attempts,
                next_attempt_us=now + int(delay * 1_000_000),
                lease_owner=None,
                lease_until_us=0,
                last_status=status,
                last_error=outcome_json(str(exc), status, transient=True),
            ),
            row.lease_owner,
        )

    def dead(self, row: OutboxRow, reason: str, status: int | None, outcome: Any = None) -> bool:
        """Park the row with the destination's OperationOutcome (or one saying ``reason``)."""
        log.warning("outbox row %s is dead: HTTP %s", row.id, status)
        settled = self.settle(
            replace(
                row,
                state="dead",
                attempts=row.attempts + 1,
                lease_owner=None,
                last_status=status,
                last_error=(
                    json.dumps(outcome, ensure_ascii=False)
                    if outcome is not None
                    else outcome_json(reason, status)
                ),
            ),
            row.lease_owner,
        )
        if settled:
            self.on_dead(row, reason)
        return settled

    def release(self, rows: Sequence[OutboxRow]) -> None:
        """Give back the lease on rows not attempted (they keep their place in the group)."""
        for row in rows:
            self.settle(
                replace(row, state="pending", lease_owner=None, lease_until_us=0), row.lease_owner
            )

    def dead_dependency(self, row: OutboxRow, waits_for: tuple[str, str]) -> OutboxRow | None:
        """The dead (or discarded) earlier row of the resource ``row`` waits for, if any: it
        cannot arrive until an operator retries it."""
        type_, id_ = waits_for
        dead = self.fhir.read_only(
            lambda tx: tx.outbox.rows(
                states=("dead", "discarded"),
                destination=row.destination,
                group_key=row.group_key,
                limit=10_000,
            )
        )
        found = [r for r in dead if (r.res_type, r.res_id) == (type_, id_) and r.id < row.id]
        return found[-1] if found else None
