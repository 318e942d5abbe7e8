"""The outbox worker: delivers queued changes to partners and subscribers, at least once.

At-least-once delivery with an exactly-once effect: each row carries the current state of its
resource, written at the partner by conditional create or update on the resource identifier, so
a redelivery after a crash or a lost acknowledgement changes nothing. Timeouts, 408, 429 and 5xx
are retried with exponential backoff and full jitter, honouring Retry-After; 400, 403, 404, 409,
412, 422 and other refusals park the row as dead with the partner's OperationOutcome.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import requests

from service.errors import FhirError, Forbidden, describe_exception
from service.exchange.client import Answer, PartnerClient, Unreachable
from service.exchange.outbox import (
    ACTIVE_SUBSCRIPTIONS,
    claim,
    is_local,
    renew,
)
from service.exchange.partners import Partner
from service.exchange.subscriptions import (
    event_bundle,
    handshake_bundle,
    heartbeat_bundle,
    parse_subscription,
    with_status,
)
from service.exchange.summary import SummaryItem, summary_pdf, summary_text
from service.fhir.access import subscriber_access
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import (
    INSTANCE_EXTENSION,
    ORIGIN_TAG_SYSTEM,
    SUPPORTED_TYPES,
    instance_uri,
    instant,
    now_us,
    origin_of,
)
from service.fhir.search import escape_value
from service.storage import StoredResource
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")
URI_SYSTEM = "urn:ietf:rfc:3986"
RETRIED_STATUSES = frozenset({408, 429})
HANDSHAKE_ATTEMPTS = 3
MIN_ATTEMPTS_BEFORE_GIVING_UP = 5  # an old row put back in the queue gets a fair chance
NOTIFY_TIMEOUT_CAP = 60.0  # seconds; a subscriber's backport-timeout is honoured up to this
SUMMARY_TYPES = ("Goal", "Observation", "List")
NO_IDENTIFIER_TYPES = frozenset({"Provenance"})  # R4 gives them no identifier element
Summariser = Callable[[str], tuple[str | None, list[SummaryItem]]]


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


@dataclass(frozen=True)
class Capability:
    """What a partner's CapabilityStatement says it accepts, per resource type."""

    types: dict[str, dict[str, Any]]
    usable: bool = True  # False: no CapabilityStatement with a server rest part came back
    instance: str | None = None  # the partner's instance identifier, when it publishes one
    base: str | None = None  # implementation.url: the base the partner says it serves at

    def holds(self, type_: str) -> bool:
        """Whether the partner can hold resources of the type (it accepts writes of it)."""
        return self.writes(type_)

    def writes(self, type_: str) -> bool:
        """Whether the partner accepts creates of the type."""
        codes = {i.get("code") for i in self.types.get(type_, {}).get("interaction", [])}
        return "create" in codes or "update" in codes

    def updates(self, type_: str) -> bool:
        """Whether the partner accepts updates of the type (PUT)."""
        codes = {i.get("code") for i in self.types.get(type_, {}).get("interaction", [])}
        return "update" in codes

    def flag(self, type_: str, name: str) -> bool:
        """A conditional flag (conditionalCreate, conditionalUpdate) of the type."""
        value = self.types.get(type_, {}).get(name)
        return value is True or value in ("single", "multiple")


def capability_of(body: Any) -> Capability:
    """The server resources of a CapabilityStatement, the instance it names and its base.

    Anything but a CapabilityStatement with a server ``rest`` part (an empty Bundle, an HTML
    page, nothing) is not usable: without it nothing can be written there knowingly.
    """
    types: dict[str, dict[str, Any]] = {}
    if not isinstance(body, dict) or body.get("resourceType") != "CapabilityStatement":
        return Capability(types, usable=False)
    servers = [
        rest
        for rest in body.get("rest") or []
        if isinstance(rest, dict) and rest.get("mode", "server") == "server"
    ]
    for rest in servers:
        for resource in rest.get("resource") or []:
            if isinstance(resource, dict) and isinstance(resource.get("type"), str):
                types[resource["type"]] = resource
    implementation = body.get("implementation")
    implementation = implementation if isinstance(implementation, dict) else {}
    instance = None
    extensions = implementation.get("extension")
    for extension in extensions if isinstance(extensions, list) else []:
        if not isinstance(extension, dict) or extension.get("url") != INSTANCE_EXTENSION:
            continue
        value = extension.get("valueUri")
        if isinstance(value, str):
            instance = value.removeprefix("urn:uuid:")
    base = implementation.get("url")
    return Capability(
        types,
        usable=bool(servers),
        instance=instance,
        base=base.rstrip("/") if isinstance(base, str) else None,
    )


class Worker:
    """Leases outbox groups and delivers them; several may run at once, in threads or processes."""

    def __init__(
        self,
        fhir: FhirService,
        partners: Sequence[Partner],
        base_url: str,
        clients: Callable[[Partner], PartnerClient],
        *,
        summarise: Summariser | None = None,
        lease_seconds: float = 60.0,
        backoff: Backoff = Backoff(),
        batch: int = 10,
        clock: Callable[[], int] = now_us,
        capability_ttl: float = 600.0,
        lookup_ttl: float = 300.0,
        learned: Callable[[Partner, str], None] | None = None,
    ) -> None:
        self.fhir = fhir
        self.partners = {p.destination: p for p in partners}
        self.base_url = base_url.rstrip("/")
        self.summarise = summarise
        # renewed before each row: it needs to outlive one row's partner calls, not a group's.
        # A row slower than the lease may be sent again by the worker that takes it over, which
        # the idempotent writes (and the subscribers' event numbers) make harmless.
        self.lease_us = int(lease_seconds * 1_000_000)
        self.backoff = backoff
        self.batch = batch
        self.clock = clock
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.rng = random.Random()
        self.capability_ttl = capability_ttl
        self._clients = clients
        self._client_cache: dict[str, PartnerClient] = {}
        self._capabilities: dict[str, tuple[float, Capability]] = {}
        # what a partner's search found, kept a short while: a retry resumes where the last
        # attempt stopped instead of repeating every look-up, and a List whose items are all
        # known costs one request
        self.lookup_ttl = lookup_ttl
        self._found: dict[tuple[str, str, str, str], tuple[float, str]] = {}
        self._learned = learned
        self._last_contact: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads = threading.local()  # a requests.Session per thread (they are not shared)

    # -- the loop --------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Lease one group and deliver it; return how many rows were handled."""
        now = self.clock()
        if not self.fhir.read_only(lambda tx: tx.outbox_heads(now, 1)):
            return 0
        owner = f"{self.owner}-{uuid.uuid4().hex[:12]}"  # this claim's lease, no other
        rows = self.fhir.run(lambda tx: claim(tx, owner, now, self.lease_us, self.batch))
        if rows:
            self.deliver_group(rows)
        return len(rows)

    def drain(self, timeout: float = 30.0) -> int:
        """Deliver until nothing is due (tests and one-shot runs); return rows handled."""
        handled = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run_once()
            if not done:
                break
            handled += done
        return handled

    @property
    def instance_id(self) -> str:
        """This installation's identifier, stamped on what it originates."""
        return self.fhir.instance_id

    def check_partners(self) -> None:
        """Read each partner's CapabilityStatement once, at start-up, and say what is wrong:
        none at all, a base URL the partner does not call its own, or this very instance."""
        for partner in self.partners.values():
            try:
                capability = self._capability(self._client(partner))
            except (Retry, Refused, Unreachable) as exc:
                log.warning(
                    "partner %s: its CapabilityStatement could not be read (%s); deliveries "
                    "wait until it can",
                    partner.name,
                    type(exc).__name__,
                )
                continue
            if not capability.usable:
                log.warning(
                    "partner %s publishes no usable CapabilityStatement at %s/metadata; its "
                    "rows go dead until it does",
                    partner.name,
                    partner.base_url,
                )
            if capability.base and capability.base != partner.base_url:
                log.warning(
                    "partner %s calls its base %s, the partners file says %s",
                    partner.name,
                    capability.base,
                    partner.base_url,
                )
            if capability.instance == self.instance_id:
                log.warning("partner %s is this instance itself; nothing is sent", partner.name)

    def serve_forever(self, stop: threading.Event, threads: int = 2, poll: float = 0.5) -> None:
        """Deliver in ``threads`` threads until ``stop`` is set; send heartbeats."""
        try:
            self.check_partners()
        except Exception as exc:  # noqa: BLE001 - a check; delivery must start regardless
            log.error("checking the partners failed: %s", describe_exception(exc))

        def loop(heartbeats: bool) -> None:
            while not stop.is_set():
                try:
                    if heartbeats:
                        self.heartbeats()
                    if not self.run_once():
                        stop.wait(poll)
                # the database may be down; the loop must outlive it
                except Exception as exc:  # noqa: BLE001 - logged without its message
                    log.error("outbox delivery failed; trying again: %s", describe_exception(exc))
                    stop.wait(max(poll, 1.0))

        workers = [
            threading.Thread(target=loop, args=(n == 0,), name=f"outbox-{n}", daemon=True)
            for n in range(max(threads, 1))
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    # -- one group ---------------------------------------------------------------------------------

    def deliver_group(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver leased rows in order; stop the group at the first row that must wait.

        Before each row the lease is renewed; a worker that finds its lease gone (it was too
        slow and another worker took the group) stops at once, so no row is sent twice.
        """
        if not rows:
            return
        owner = rows[0].lease_owner or ""
        # each row sends its resource's current state: a later row of the same resource whose
        # version was sent already has nothing left to send. (Skipping the earlier row instead
        # would leave the rows between, which may refer to the resource, waiting for it.)
        sent: dict[tuple[str, str, str], int] = {}
        for position, row in enumerate(rows):
            if not self._renew(rows[position:], owner):
                log.warning("the lease on outbox row %s was lost; stopping its group", row.id)
                return
            key = (row.res_type, row.res_id, row.kind)
            if row.destination.startswith("partner:") and sent.get(key, 0) >= row.version:
                if not self._settle(replace(row, state="done", delivered_us=self.clock()), owner):
                    return
                continue
            try:
                version = self.deliver(row)
                if version is not None:
                    sent[key] = version
            except (Retry, Unreachable) as exc:
                dead = self._dead_dependency(row, exc)
                if dead is not None:
                    self._blocked(row, dead, exc)
                else:
                    self._retry(row, exc)
                self._release(rows[position + 1 :])  # keep the group's order: they wait too
                return
            except Skipped as exc:
                settled = self._settle(
                    replace(
                        row, state="discarded", lease_owner=None, last_error=_outcome(str(exc))
                    ),
                    owner,
                )
            except Refused as exc:
                settled = self._dead(row, str(exc), exc.status, exc.outcome)
            except FhirError as exc:  # our own data cannot be sent as it is
                settled = self._dead(row, str(exc), None)
            # a bug or the database: wait, do not lose the row
            except Exception as exc:  # noqa: BLE001 - logged without its message
                log.error("outbox row %s failed unexpectedly: %s", row.id, describe_exception(exc))
                self._retry(row, Retry(f"{type(exc).__name__} while delivering"))
                self._release(rows[position + 1 :])
                return
            else:
                settled = self._settle(
                    replace(
                        row, state="done", delivered_us=self.clock(), attempts=row.attempts + 1
                    ),
                    owner,
                )
            if not settled:
                return

    def deliver(self, row: OutboxRow) -> int | None:
        """Deliver one row (raises Retry, Unreachable or Refused); return the version of the
        resource a partner now holds (its current state is what is sent), if any."""
        if row.destination.startswith("subscription:"):
            self._deliver_subscription(row)
            return None
        partner = self.partners.get(row.destination)
        if partner is None:
            raise Refused(f"{row.destination} is no longer in the partners file")
        client = self._client(partner)
        current = self._current(row.res_type, row.res_id)
        if current is None:
            return None
        capability = self._capability(client)
        if not capability.usable:
            raise Refused(
                f"{partner.name} has no usable CapabilityStatement at {partner.base_url}/metadata "
                f"(FHIR R4 http.html#capabilities); {row.res_type}/{row.res_id} is not sent to a "
                "server that does not say what it accepts"
            )
        self._not_back_to_origin(partner, capability, row, current)
        documents_only = (
            not capability.writes(row.res_type)
            and row.res_type in SUMMARY_TYPES
            and capability.writes("DocumentReference")
        )
        if current.deleted:
            if documents_only:
                # the summary is written again without what was deleted
                last = self.fhir.read_only(
                    lambda tx: tx.vread(row.res_type, row.res_id, row.version - 1)
                )
                if last is not None and last.content is not None:
                    self._send_summary(client, capability, json.loads(last.content), row)
            elif capability.writes(row.res_type):
                self._send_delete(client, row)
            else:
                raise Skipped(f"{partner.name} accepts no {row.res_type} writes")
            return current.version
        content = json.loads(current.content or "{}")
        if documents_only:
            self._send_summary(client, capability, content, row)
            return current.version
        if not capability.writes(row.res_type):
            if row.res_type in SUMMARY_TYPES or row.res_type == "Provenance":
                # nothing it accepts carries this: set aside, saying so (never "done")
                raise Skipped(
                    f"{partner.name} accepts no {row.res_type} writes"
                    + ("" if row.res_type == "Provenance" else " and no DocumentReference")
                )
            raise Refused(f"{partner.name} accepts no {row.res_type} writes")
        self._send_resource(client, capability, row.res_type, content, current.version)
        return current.version

    def _not_back_to_origin(
        self, partner: Partner, capability: Capability, row: OutboxRow, current: StoredResource
    ) -> None:
        """A resource never goes back to the instance that originated it (by identity, not
        by URL: the partners file may name it by any alias)."""
        if capability.instance is None:
            return
        stored = current
        if current.deleted:
            before = self.fhir.read_only(
                lambda tx: tx.vread(row.res_type, row.res_id, row.version - 1)
            )
            if before is None:
                return
            stored = before
        content = json.loads(stored.content or "{}")
        origin = origin_of(content) or self.instance_id
        if origin == capability.instance:
            raise Skipped(
                f"{row.res_type}/{row.res_id} came from {partner.name} (instance {origin}); "
                "it is not sent back"
            )

    def _dead_dependency(self, row: OutboxRow, exc: Exception) -> OutboxRow | None:
        """The dead row of the resource ``row`` waits for, if that is why it waits: it
        cannot arrive until an operator retries it."""
        if not isinstance(exc, Waiting):
            return None
        type_, id_ = exc.waits_for
        dead = self.fhir.read_only(
            lambda tx: tx.outbox_rows(
                states=("dead", "discarded"),
                destination=row.destination,
                group_key=row.group_key,
                limit=10_000,
            )
        )
        found = [r for r in dead if (r.res_type, r.res_id) == (type_, id_) and r.id < row.id]
        return found[-1] if found else None

    def _blocked(self, row: OutboxRow, dead: OutboxRow, exc: Exception) -> bool:
        reason = (
            f"{exc}: waiting for row #{dead.id} ({dead.res_type}/{dead.res_id}), which is "
            f"{dead.state}; `whatmatters outbox retry --id {dead.id}` sends both"
        )
        log.warning("outbox row %s is blocked by row %s", row.id, dead.id)
        return self._settle(
            replace(
                row,
                state="blocked",
                attempts=row.attempts + 1,
                lease_owner=None,
                lease_until_us=0,
                last_error=_outcome(reason, transient=True),
            ),
            row.lease_owner,
        )

    def _retry(self, row: OutboxRow, exc: Exception) -> bool:
        attempts = row.attempts + 1
        status = getattr(exc, "status", None)
        now = self.clock()
        if row.kind == "handshake" and attempts >= HANDSHAKE_ATTEMPTS:
            return self._dead(row, f"the handshake failed {attempts} times: {exc}", status)
        since = row.requeued_us or row.created_us  # an operator's retry restarts the clock
        if (
            now - since > self.backoff.give_up_seconds * 1_000_000
            and attempts >= MIN_ATTEMPTS_BEFORE_GIVING_UP
        ):
            return self._dead(row, f"gave up after {attempts} attempts: {exc}", status)
        delay = self.backoff.delay(attempts, getattr(exc, "retry_after", None), self.rng)
        log.info("delivery of outbox row %s will be retried in %.1f s", row.id, delay)
        return self._settle(
            replace(
                row,
                state="pending",
                attempts=attempts,
                next_attempt_us=now + int(delay * 1_000_000),
                lease_owner=None,
                lease_until_us=0,
                last_status=status,
                last_error=_outcome(str(exc), status, transient=True),
            ),
            row.lease_owner,
        )

    def _dead(self, row: OutboxRow, reason: str, status: int | None, outcome: Any = None) -> bool:
        log.warning("outbox row %s is dead: HTTP %s", row.id, status)
        settled = self._settle(
            replace(
                row,
                state="dead",
                attempts=row.attempts + 1,
                lease_owner=None,
                last_status=status,
                last_error=(
                    json.dumps(outcome, ensure_ascii=False)
                    if outcome is not None
                    else _outcome(reason, status)
                ),
            ),
            row.lease_owner,
        )
        if settled and row.destination.startswith("subscription:"):
            # only a subscription this server is serving turns to error; one the client
            # switched off stays off
            serving = "requested" if row.kind == "handshake" else "active"
            self._set_subscription_status(
                row.destination.split(":", 1)[1], "error", reason, only_from=serving
            )
        return settled

    def _renew(self, rows: Sequence[OutboxRow], owner: str) -> bool:
        until = self.clock() + self.lease_us
        held: bool = self.fhir.run(lambda tx: renew(tx, rows, owner, until))
        return held

    def _release(self, rows: Sequence[OutboxRow]) -> None:
        for row in rows:
            self._settle(
                replace(row, state="pending", lease_owner=None, lease_until_us=0), row.lease_owner
            )

    def _settle(self, row: OutboxRow, owner: str | None) -> bool:
        """Save a row under the lease it was claimed with; False when the lease was lost."""
        saved = self.fhir.run(lambda tx: tx.outbox_save(row, owner=owner))
        if not saved:  # the lease ran out and another worker took the row over
            log.warning("outbox row %s was taken over by another worker", row.id)
        return saved

    # -- partners ---------------------------------------------------------------------------------

    def _client(self, partner: Partner) -> PartnerClient:
        with self._lock:
            if partner.name not in self._client_cache:
                self._client_cache[partner.name] = self._clients(partner)
            return self._client_cache[partner.name]

    def _capability(self, client: PartnerClient) -> Capability:
        name = client.partner.name
        cached = self._capabilities.get(name)
        if cached is not None and time.monotonic() - cached[0] < self.capability_ttl:
            return cached[1]
        answer = check(client.request("GET", "metadata"), f"{name} CapabilityStatement")
        capability = capability_of(answer.body)
        self._capabilities[name] = (time.monotonic(), capability)
        if capability.instance is not None and self._learned is not None:
            self._learned(client.partner, capability.instance)
        return capability

    def _current(self, type_: str, id_: str) -> StoredResource | None:
        return self.fhir.read_only(lambda tx: tx.read(type_, id_))

    def _send_resource(
        self,
        client: PartnerClient,
        capability: Capability,
        type_: str,
        content: dict[str, Any],
        version: int,
    ) -> str:
        """Write the resource at the partner idempotently; return the partner's id."""
        param, token = self._key(type_, content)
        found = self._write_resource(client, capability, type_, content, version, param, token)
        self._remember(client, type_, param, token, found)
        return found

    def _write_resource(
        self,
        client: PartnerClient,
        capability: Capability,
        type_: str,
        content: dict[str, Any],
        version: int,
        param: str,
        token: str,
    ) -> str:
        body = self._outbound(client, type_, content)
        criteria = urlencode({param: token})
        what = f"{type_} {param}={token} to {client.partner.name}"
        if version == 1 and capability.flag(type_, "conditionalCreate"):
            answer = check(
                client.request("POST", type_, body, {"If-None-Exist": criteria}), f"create {what}"
            )
            return _id_of(answer, type_)
        if capability.flag(type_, "conditionalUpdate"):
            answer = check(
                client.request("PUT", f"{type_}?{criteria}", body), f"conditional update {what}"
            )
            return _id_of(answer, type_)
        existing = self._find(client, type_, param, token)
        if existing is None:
            return _id_of(check(client.request("POST", type_, body), f"create {what}"), type_)
        if not capability.updates(type_):
            if version == 1:
                return existing  # a redelivery of the first version: it is there already
            raise Refused(
                f"{client.partner.name} accepts creates of {type_} but no updates; "
                f"the change to {type_} {param}={token} cannot be delivered"
            )
        body["id"] = existing
        check(client.request("PUT", f"{type_}/{existing}", body), f"update {what}")
        return existing

    def _send_delete(self, client: PartnerClient, row: OutboxRow) -> None:
        last = self.fhir.read_only(lambda tx: tx.vread(row.res_type, row.res_id, row.version - 1))
        if last is None or last.content is None:
            return
        param, token = self._key(row.res_type, json.loads(last.content))
        existing = self._find(client, row.res_type, param, token)
        self._remember(client, row.res_type, param, token, None)
        if existing is not None:
            check(
                client.request("DELETE", f"{row.res_type}/{existing}"),
                f"delete {row.res_type} {param}={token} at {client.partner.name}",
            )

    def _find(self, client: PartnerClient, type_: str, param: str, token: str) -> str | None:
        """The partner's id of the resource with ``param=token``, if it holds one.

        ``Prefer: handling=strict`` asks the partner to refuse a parameter it does not know
        (https://hl7.org/fhir/R4/search.html#errors) rather than answer with everything, and
        each match is checked here as well.
        """
        key = (client.partner.name, type_, param, token)
        known = self._found.get(key)
        if known is not None and time.monotonic() - known[0] < self.lookup_ttl:
            return known[1]
        answer = check(
            client.request(
                "GET", type_, headers={"Prefer": "handling=strict"}, params={param: token}
            ),
            f"search {type_} {param}={token} at {client.partner.name}",
        )
        body = answer.body if isinstance(answer.body, dict) else {}
        ids = [
            str(e["resource"]["id"])
            for e in body.get("entry") or []
            if isinstance(e, dict)
            and isinstance(e.get("resource"), dict)
            and e["resource"].get("resourceType") == type_
            and e["resource"].get("id")
            and (e.get("search") or {}).get("mode", "match") == "match"
            and _has_key(e["resource"], param, token)
        ]
        if len(ids) > 1:
            raise Refused(
                f"{client.partner.name} holds {len(ids)} {type_} with {param}={token}; "
                "one is needed"
            )
        if ids:
            self._remember(client, type_, param, token, ids[0])
        return ids[0] if ids else None

    def _remember(
        self, client: PartnerClient, type_: str, param: str, token: str, found: str | None
    ) -> None:
        key = (client.partner.name, type_, param, token)
        if found is None:
            self._found.pop(key, None)
        else:
            self._found[key] = (time.monotonic(), found)

    def _source(self, type_: str, content: dict[str, Any]) -> str:
        """Where the resource comes from: the source it arrived with (relayed), else a URI
        naming this instance and the resource (``urn:uuid:<instance>#Goal/12``), which no
        URL alias changes."""
        source = (content.get("meta") or {}).get("source")
        if (
            isinstance(source, str)
            and source
            and not is_local(content, self.instance_id, tuple(self.partners.values()))
        ):
            return source
        return f"{instance_uri(self.instance_id)}#{type_}/{content['id']}"

    def _key(self, type_: str, content: dict[str, Any]) -> tuple[str, str]:
        """The search that finds the resource at a partner: its identifier, or (for types
        without one, such as Provenance) its ``_source``."""
        if type_ in NO_IDENTIFIER_TYPES:
            return "_source", self._source(type_, content)
        return "identifier", identifier_token(*_identifier(self._identified(type_, content)))

    def _identified(self, type_: str, content: dict[str, Any]) -> dict[str, Any]:
        """The resource with an identifier: its own, else one naming it at this service."""
        if type_ in NO_IDENTIFIER_TYPES or _has_identifier(content):
            return content
        url = f"{self.base_url}/{type_}/{content['id']}"
        return {**content, "identifier": [{"system": URI_SYSTEM, "value": url}]}

    def _outbound(
        self, client: PartnerClient, type_: str, content: dict[str, Any]
    ) -> dict[str, Any]:
        """The resource as the partner should hold it: identified, sourced, references
        pointing at the partner's own resources."""
        body = self._identified(type_, content)
        meta = {k: v for k, v in (body.get("meta") or {}).items() if k == "profile"}
        # meta.source names where the resource comes from, and the tag the instance that
        # originated it: no partner ever sends it back there
        meta["source"] = self._source(type_, content)
        meta["tag"] = [
            {"system": ORIGIN_TAG_SYSTEM, "code": origin_of(content) or self.instance_id}
        ]
        body = {k: v for k, v in body.items() if k not in ("id", "meta")}
        body["meta"] = meta
        rewritten: dict[str, Any] = self._rewrite(client, body, {})
        return rewritten

    def _rewrite(self, client: PartnerClient, value: Any, cache: dict[str, Any]) -> Any:
        if isinstance(value, list):
            return [self._rewrite(client, item, cache) for item in value]
        if not isinstance(value, dict):
            return value
        ref = value.get("reference")
        if isinstance(ref, str):
            local = self._local(ref)
            if local is not None:
                if ref not in cache:
                    cache[ref] = self._partner_reference(client, *local)
                replaced = {k: v for k, v in value.items() if k != "reference"}
                rewritten = {**replaced, **cache[ref]}
                if not {"reference", "identifier", "display"} & set(rewritten):
                    rewritten["display"] = ref  # a reference keeps at least what it said
                return rewritten
        return {k: self._rewrite(client, v, cache) for k, v in value.items()}

    def _local(self, ref: str) -> tuple[str, str] | None:
        if ref.startswith(self.base_url + "/"):
            ref = ref[len(self.base_url) + 1 :]
        parts = ref.split("/")
        if len(parts) == 2 and parts[0][:1].isupper() and "?" not in ref and ":" not in ref:
            return parts[0], parts[1]
        return None

    def _partner_reference(self, client: PartnerClient, type_: str, id_: str) -> dict[str, Any]:
        partner = client.partner
        stored = self._current(type_, id_) if type_ in SUPPORTED_TYPES else None
        if stored is None or stored.deleted or stored.content is None:
            # nothing here the partner could follow (a Practitioner, say): the reference
            # keeps its display, never a URL that dangles
            return {}
        content = json.loads(stored.content)
        if type_ == "Patient":
            identifier = partner.knows_patient(content)
            if identifier is None:
                raise Refused(f"Patient/{id_} has no identifier in a system {partner.name} uses")
            found = self._find(client, "Patient", "identifier", identifier_token(*identifier))
            if found is None:
                if "Patient" not in partner.send_types:
                    raise Waiting(
                        f"{partner.name} has no Patient with identifier "
                        f"{identifier[0]}|{identifier[1]} yet",
                        ("Patient", id_),
                    )
                capability = self._capability(client)
                found = self._send_resource(client, capability, "Patient", content, 1)
            return {"reference": f"Patient/{found}"}
        if type_ not in partner.send_types or not self._capability(client).holds(type_):
            # the partner does not hold this type (or is not sent it): no search for it there;
            # the reference names it by its identifier (Reference.identifier), which stays true
            if type_ in NO_IDENTIFIER_TYPES:
                return {"reference": f"{self.base_url}/{type_}/{id_}"}
            system, value = _identifier(self._identified(type_, content))
            return {"type": type_, "identifier": {"system": system, "value": value}}
        found = self._find(client, type_, *self._key(type_, content))
        if found is None:
            raise Waiting(f"{type_}/{id_} is not at {partner.name} yet", (type_, id_))
        return {"reference": f"{type_}/{found}"}

    def _send_summary(
        self,
        client: PartnerClient,
        capability: Capability,
        content: dict[str, Any],
        row: OutboxRow,
    ) -> None:
        """Send the patient's "What matters to me" DocumentReference (text and PDF).

        A partner that updates documents keeps one, replaced in place; a partner that only
        creates them gets a new document per change (identified by the outbox row, so a
        redelivery still writes it once)."""
        if self.summarise is None:
            raise Refused(f"{client.partner.name} takes documents only and no summary is wired")
        patient = _subject_id(content)
        if patient is None:
            return
        name, items = self.summarise(patient)
        generated = instant(self.clock())
        text = summary_text(name, items, generated)
        pdf = summary_pdf(name, items, generated)
        replaced_in_place = capability.updates("DocumentReference") or capability.flag(
            "DocumentReference", "conditionalUpdate"
        )
        name_of = f"{self.base_url}/Patient/{patient}#what-matters"
        if not replaced_in_place:
            name_of += f"-{row.id}"
        key = uuid.uuid5(uuid.NAMESPACE_URL, name_of)
        document = {
            "resourceType": "DocumentReference",
            "id": f"summary-{patient}",
            "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{key}"}],
            "status": "current",
            "type": {"text": "What matters to me"},
            "subject": {"reference": f"Patient/{patient}"},
            "date": generated,
            "description": "What matters to me: the patient's priorities in their own words",
            "content": [
                {"attachment": _attachment("text/plain; charset=utf-8", text.encode("utf-8"))},
                {"attachment": _attachment("application/pdf", pdf)},
            ],
        }
        self._send_resource(
            client, capability, "DocumentReference", document, 2 if replaced_in_place else 1
        )

    # -- subscriptions ---------------------------------------------------------------------------

    def _deliver_subscription(self, row: OutboxRow) -> None:
        sub_id = row.destination.split(":", 1)[1]
        stored = self._current("Subscription", sub_id)
        if stored is None or stored.deleted or stored.content is None:
            raise Skipped(f"Subscription/{sub_id} no longer exists")
        resource = json.loads(stored.content)
        spec = parse_subscription(resource)
        url = f"{self.base_url}/Subscription/{sub_id}"
        now = instant(self.clock())
        if row.kind == "handshake":
            if spec.status != "requested":
                raise Skipped(f"Subscription/{sub_id} is {spec.status}; no handshake is due")
            events = self._events(sub_id)
            self._post(spec, handshake_bundle(url, "requested", events, now, content=spec.content))
            self._set_subscription_status(sub_id, "active", None, only_from="requested")
            return
        if spec.status != "active":
            raise Skipped(f"Subscription/{sub_id} is {spec.status}; the event is not sent")
        # read as the subscriber: a notification carries only what its creator may read now
        try:
            with self.fhir.session(Actor.client(subscriber_access(resource))) as session:
                focus = session.tx.vread(row.res_type, row.res_id, row.version)
        except Forbidden as exc:
            raise Skipped(
                f"Subscription/{sub_id}'s access does not reach {row.res_type}/{row.res_id}"
            ) from exc
        focus_resource = None
        interaction = "create" if row.version == 1 else "update"
        if focus is not None and focus.content is not None:
            focus_resource = json.loads(focus.content)
        elif focus is not None and focus.deleted:
            interaction = "delete"
        number = row.event_number or 0
        bundle = event_bundle(
            url,
            "active",
            number,
            number,
            now,
            f"{self.base_url}/{row.res_type}/{row.res_id}",
            focus_resource,
            spec.content,
            interaction=interaction,
        )
        self._post(spec, bundle)

    def _post(self, spec: Any, bundle: dict[str, Any]) -> None:
        headers = {"Content-Type": spec.payload_mime}
        for header in spec.headers:
            name, _, value = header.partition(":")
            if name.strip():
                headers[name.strip()] = value.strip()
        try:
            response = self._session().post(
                spec.endpoint,
                data=json.dumps(bundle, ensure_ascii=False).encode("utf-8"),
                headers=headers,
                timeout=min(float(spec.timeout_seconds), NOTIFY_TIMEOUT_CAP),
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise Unreachable(f"POST {spec.endpoint}: {type(exc).__name__}") from exc
        check(
            Answer(
                response.status_code,
                {k.lower(): v for k, v in response.headers.items()},
                None,
                response.text[:2000],
            ),
            f"notification to {spec.endpoint}",
        )
        self._last_contact[spec.id] = time.monotonic()

    def _events(self, sub_id: str) -> int:
        return self.fhir.run(lambda tx: tx.next_counter(f"subscription:{sub_id}", 0))

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._threads, "session", None)
        if session is None:
            session = self._threads.session = requests.Session()
        return session

    def _set_subscription_status(
        self, sub_id: str, status: str, error: str | None, only_from: str
    ) -> None:
        """Move a subscription from ``only_from`` to ``status`` unless a client changed it
        meanwhile (the update is conditional on the version read: If-Match)."""
        stored = self._current("Subscription", sub_id)
        if stored is None or stored.deleted or stored.content is None:
            return
        resource = json.loads(stored.content)
        if resource.get("status") != only_from:
            return
        try:
            self.fhir.perform(
                Actor.server(),
                lambda s: s.update(
                    "Subscription",
                    sub_id,
                    with_status(resource, status, error),
                    if_match=stored.version,
                ),
                retry=False,
            )
        except FhirError as exc:  # 412: the client wrote first, and its word stands
            log.info("Subscription/%s changed meanwhile: %s", sub_id, type(exc).__name__)

    def _heartbeat_due(self, sub_id: str, period: int) -> bool:
        """Take the subscription's heartbeat turn for this period, once across every worker
        process: the shared counter holds when the last heartbeat went (seconds)."""
        now = int(self.clock() // 1_000_000)
        name = f"heartbeat:{sub_id}"

        def take(tx: Any) -> bool:
            tx.lock(name)
            last = tx.next_counter(name, 0)
            if now - last < period:
                return False
            tx.next_counter(name, now - last)
            return True

        due: bool = self.fhir.run(take)
        return due

    def heartbeats(self) -> None:
        """Send a heartbeat to each active subscription quiet for its heartbeat period."""
        subscriptions = self.fhir.read_only(
            lambda tx: tx.read_many(tx.search_keys(ACTIVE_SUBSCRIPTIONS, 1000))
        )
        for stored in subscriptions:
            try:
                spec = parse_subscription(json.loads(stored.content or "{}"))
            except ValueError:
                continue
            if not spec.heartbeat_seconds or spec.status != "active" or spec.id is None:
                continue
            last = self._last_contact.setdefault(spec.id, time.monotonic())
            if time.monotonic() - last < spec.heartbeat_seconds:
                continue
            if not self._heartbeat_due(spec.id, spec.heartbeat_seconds):
                self._last_contact[spec.id] = time.monotonic()  # another process sent it
                continue
            url = f"{self.base_url}/Subscription/{spec.id}"
            bundle = heartbeat_bundle(
                url, "active", self._events(spec.id), instant(self.clock()), content=spec.content
            )
            try:
                self._post(spec, bundle)
            except (Retry, Refused, Unreachable) as exc:
                log.info("heartbeat to Subscription/%s failed: %s", spec.id, type(exc).__name__)
                self._last_contact[spec.id] = time.monotonic()


def identifier_token(system: str, value: str) -> str:
    """The ``identifier`` search value for one identifier (search.html#escaping)."""
    return f"{escape_value(system)}|{escape_value(value)}"


# https://hl7.org/fhir/R4/valueset-issue-type.html, by the HTTP status that refused the row
_ISSUE_CODES = {
    400: "invalid",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    412: "conflict",
}


def _outcome(reason: str, status: int | None = None, transient: bool = False) -> str:
    """An OperationOutcome of our own for a row's reason (when the partner sent none)."""
    code = "transient" if transient else _ISSUE_CODES.get(status or 0, "processing")
    return json.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": reason}],
        },
        ensure_ascii=False,
    )


def _is_outcome(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"


def _has_identifier(content: dict[str, Any]) -> bool:
    return any(
        isinstance(i, dict) and i.get("system") and i.get("value")
        for i in content.get("identifier") or []
    )


def _has_key(resource: dict[str, Any], param: str, token: str) -> bool:
    """Whether a resource the partner returned really has the searched identifier or source."""
    if param == "_source":
        return bool((resource.get("meta") or {}).get("source") == token)
    return any(
        isinstance(i, dict)
        and i.get("system")
        and i.get("value")
        and identifier_token(str(i["system"]), str(i["value"])) == token
        for i in resource.get("identifier") or []
    )


def _identifier(content: dict[str, Any]) -> tuple[str, str]:
    for item in content.get("identifier") or []:
        if isinstance(item, dict) and item.get("system") and item.get("value"):
            return str(item["system"]), str(item["value"])
    raise Refused("the resource has no identifier to write it idempotently")


def _id_of(answer: Answer, type_: str) -> str:
    body = answer.body if isinstance(answer.body, dict) else {}
    if body.get("resourceType") == type_ and body.get("id"):
        return str(body["id"])
    location = answer.headers.get("location") or answer.headers.get("content-location") or ""
    parts = location.split("/")
    if type_ in parts and parts.index(type_) + 1 < len(parts):
        return parts[parts.index(type_) + 1]
    raise Retry(f"the partner did not say which {type_} it stored (no body, no Location)")


def _subject_id(content: dict[str, Any]) -> str | None:
    ref = (content.get("subject") or {}).get("reference")
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return ref.split("/", 1)[1]
    return None


def _attachment(content_type: str, data: bytes) -> dict[str, Any]:
    return {
        "contentType": content_type,
        "data": base64.b64encode(data).decode("ascii"),
        "title": "What matters to me",
    }
