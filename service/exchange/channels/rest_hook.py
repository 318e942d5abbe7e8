"""The rest-hook channel: Subscription notifications, after the Subscriptions R5 Backport IG.

A new Subscription (``requested``) gets a handshake, and turns ``active`` when it succeeds;
each event of the what-matters-changed topic that reaches it becomes one event-notification,
read as the subscriber (a notification carries only what its creator may read now); a quiet
subscription gets a heartbeat each period, once across every worker process. A subscription
whose row goes dead turns to ``error``. The notification Bundles come from
``service/exchange/notifications.py``; HTTP goes through ``client.HookClient``.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

from service.errors import FhirError, Forbidden
from service.exchange.channels import Refused, Retry, Skipped, check
from service.exchange.destinations import Destination
from service.exchange.feed import ACTIVE_SUBSCRIPTIONS
from service.exchange.notifications import event_bundle, handshake_bundle, heartbeat_bundle
from service.exchange.partner_client import HookClient, Unreachable
from service.exchange.subscriptions import (
    SubscriptionSpec,
    address_refusal,
    ended,
    endpoint_host,
    parse_subscription,
    with_status,
)
from service.fhir.access import subscriber_access
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import instant
from service.storage import StoredResource
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")


def resolve_host(host: str) -> list[str]:
    """The addresses the system resolver gives ``host`` (none when it gives none: the HTTP
    client then reports the failure)."""
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []
    return [str(item[4][0]) for item in found]


NOTIFY_TIMEOUT_CAP = 60.0  # seconds; a subscriber's backport-timeout is honoured up to this


class RestHook:
    """Delivers subscriptions' rows: handshakes and event notifications; sends heartbeats."""

    coalesces = False  # each event is a notification of its own

    def __init__(
        self,
        fhir: FhirService,
        base_url: str,
        hooks: HookClient,
        clock: Callable[[], int],
        endpoint_allow: Sequence[str] = (),
        resolve: Callable[[str], list[str]] | None = None,
    ) -> None:
        self.fhir = fhir
        self.base_url = base_url
        self.hooks = hooks
        self.clock = clock
        # WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW, and how a host name is resolved
        self.endpoint_allow = tuple(endpoint_allow)
        self.resolve = resolve or resolve_host
        self.last_contact: dict[str | None, float] = {}  # by subscription id

    def gave_up(self, row: OutboxRow, reason: str) -> None:
        """Only a subscription this server is serving turns to error; one the client
        switched off stays off."""
        serving = "requested" if row.kind == "handshake" else "active"
        self._set_subscription_status(
            Destination.parse(row.destination).name, "error", reason, only_from=serving
        )

    def _current(self, type_: str, id_: str) -> StoredResource | None:
        return self.fhir.read_only(lambda tx: tx.resources.read(type_, id_))

    def deliver(self, row: OutboxRow) -> int | None:
        """Send the row's handshake or event notification (the subscription as it is now)."""
        sub_id = Destination.parse(row.destination).name
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
            self.post(spec, handshake_bundle(url, "requested", events, now, content=spec.content))
            self._set_subscription_status(sub_id, "active", None, only_from="requested")
            return None
        if spec.status != "active":
            raise Skipped(f"Subscription/{sub_id} is {spec.status}; the event is not sent")
        # read as the subscriber: a notification carries only what its creator may read now
        try:
            with self.fhir.session(Actor.client(subscriber_access(resource))) as session:
                focus = session.tx.resources.vread(row.res_type, row.res_id, row.version)
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
        self.post(spec, bundle)
        return None

    def post(self, spec: SubscriptionSpec, bundle: dict[str, Any]) -> None:
        """POST a notification to the subscriber's endpoint, with its own headers; refused
        when the endpoint's name now resolves into this server's own network."""
        host = endpoint_host(spec.endpoint)
        refusal = address_refusal(host, self.resolve(host), self.endpoint_allow)
        if refusal is not None:
            raise Refused(f"notification to {spec.endpoint}: {refusal}")
        headers = {"Content-Type": spec.payload_mime}
        for header in spec.headers:
            name, _, value = header.partition(":")
            if name.strip():
                headers[name.strip()] = value.strip()
        answer = self.hooks.post(
            spec.endpoint,
            json.dumps(bundle, ensure_ascii=False).encode("utf-8"),
            headers,
            min(float(spec.timeout_seconds), NOTIFY_TIMEOUT_CAP),
        )
        check(answer, f"notification to {spec.endpoint}")
        self.last_contact[spec.id] = time.monotonic()

    def _events(self, sub_id: str) -> int:
        return self.fhir.run(
            lambda tx: tx.counters.next(Destination.subscription(sub_id).format(), 0)
        )

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
            tx.locks.hold(name)
            last = tx.counters.next(name, 0)
            if now - last < period:
                return False
            tx.counters.next(name, now - last)
            return True

        due: bool = self.fhir.run(take)
        return due

    def heartbeats(self) -> None:
        """Send a heartbeat to each active subscription quiet for its heartbeat period."""
        subscriptions = self.fhir.read_only(
            lambda tx: tx.resources.read_many(tx.searches.keys(ACTIVE_SUBSCRIPTIONS, 1000))
        )
        for stored in subscriptions:
            try:
                spec = parse_subscription(json.loads(stored.content or "{}"))
            except ValueError:
                continue
            if not spec.heartbeat_seconds or spec.status != "active" or spec.id is None:
                continue
            if ended(spec, self.clock()):
                continue  # nothing after Subscription.end, heartbeats neither
            last = self.last_contact.setdefault(spec.id, time.monotonic())
            if time.monotonic() - last < spec.heartbeat_seconds:
                continue
            if not self._heartbeat_due(spec.id, spec.heartbeat_seconds):
                self.last_contact[spec.id] = time.monotonic()  # another process sent it
                continue
            url = f"{self.base_url}/Subscription/{spec.id}"
            bundle = heartbeat_bundle(
                url, "active", self._events(spec.id), instant(self.clock()), content=spec.content
            )
            try:
                self.post(spec, bundle)
            except (Retry, Refused, Unreachable) as exc:
                log.info("heartbeat to Subscription/%s failed: %s", spec.id, type(exc).__name__)
                self.last_contact[spec.id] = time.monotonic()
