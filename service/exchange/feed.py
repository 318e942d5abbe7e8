"""The transactional outbox feed: which writes go to which partner or subscriber.

``OutboxFeed`` listens to every write of the FHIR core and adds outbox rows in the writing
transaction (the exchange promises in the README, "How it fits together"). The queue
(``service/exchange/queue.py``) leases them to the worker; ``admin.py`` is the operator's view.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from service.errors import Forbidden, Unprocessable
from service.exchange.destinations import Destination
from service.exchange.partners import Partner
from service.exchange.subscriptions import (
    SubscriptionInvalid,
    ended,
    endpoint_refusal,
    matches,
    parse_subscription,
    patient_reference,
    readable_types,
    topic_event,
)
from service.fhir.access import Access, owner_of, require_reads, subscriber_access
from service.fhir.interactions import Change
from service.fhir.model import instance_uri, origin_of
from service.storage import ParamCriterion, Query, TokenMatch, Transaction
from service.storage.outbox import OutboxRow

ACTIVE_SUBSCRIPTIONS = Query(
    "Subscription", (ParamCriterion("token", "status", (TokenMatch(None, "active"),)),)
)


CLIENT_STATUSES = ("requested", "off")


def subscription_destination(id_: str) -> str:
    """The outbox destination of a subscription."""
    return Destination.subscription(id_).format()


class OutboxFeed:
    """Adds outbox rows for each write that concerns a partner or an active subscription."""

    def __init__(
        self,
        partners: Sequence[Partner],
        clock: Callable[[], int],
        instance_id: Callable[[], str],
        endpoint_allow: Sequence[str] = (),
    ) -> None:
        self.partners = tuple(p for p in partners if p.send_types)
        self.clock = clock
        self.instance_id = instance_id
        self.endpoint_allow = tuple(endpoint_allow)
        # partners' instance identifiers, as their CapabilityStatements publish them (learnt
        # by the worker): nothing is queued back to the instance it came from
        self.partner_instances: dict[str, str] = {}

    def learn(self, partner: Partner, instance_id: str) -> None:
        """Remember the instance identifier a partner publishes."""
        self.partner_instances[partner.name] = instance_id

    def changed(self, tx: Transaction, change: Change) -> None:
        """Queue the deliveries of one write, in its transaction."""
        now = self.clock()
        content = change.content if change.content is not None else change.previous
        rows: list[OutboxRow] = []
        if change.type == "Subscription" and change.content is not None:
            rows += self._subscription_written(tx, change, now)
        topic = content is not None and topic_event(change.type, content)
        # whose record it is matters to partners and subscriptions only (and may cost a read:
        # a Provenance's target)
        patient_ref = (
            self._patient_of(tx, change.type, change.id, content)
            if self.partners or topic
            else None
        )
        kind = "resource" if change.content is not None else "delete"
        if patient_ref is not None and self.partners:
            patient = _read_json(tx, "Patient", patient_ref.split("/", 1)[1])
            local = content is None or is_local(content, self.instance_id(), self.partners)
            origin = origin_of(content or {})
            for partner in self.partners:
                if patient is None or not partner.sends(change.type, content):
                    continue
                if not local and partner.send_origin == "local":
                    continue  # governance: a partner's data is not relayed unless asked for
                if origin is not None and origin == self.partner_instances.get(partner.name):
                    continue
                if _from_partner(content, partner) or partner.knows_patient(patient) is None:
                    continue
                rows.append(_row(partner.destination, patient_ref, kind, change, now))
        if topic:
            rows += self._notifications(tx, change, patient_ref, now)
        tx.outbox.add(rows)

    def _patient_of(
        self, tx: Transaction, type_: str, id_: str, content: dict[str, Any] | None
    ) -> str | None:
        if type_ == "Patient":
            return f"Patient/{id_}"
        if content is None:
            return None
        if type_ == "Provenance":
            # a Provenance belongs to the patient of the first resource it is about
            for target in content.get("target") or []:
                ref = target.get("reference") if isinstance(target, dict) else None
                if isinstance(ref, str) and ref.count("/") == 1:
                    target_type, target_id = ref.split("/")
                    found = _read_json(tx, target_type, target_id)
                    if found is not None:
                        return patient_reference(target_type, found)
            return None
        return patient_reference(type_, content)

    def _subscription_written(self, tx: Transaction, change: Change, now: int) -> list[OutboxRow]:
        """Check a Subscription write; a client's request (re)starts with a handshake.

        The Backport IG (https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/components.html)
        and R4 Subscription.status give the client ``requested`` and ``off``; the server sets
        ``active`` once the handshake succeeded and ``error`` when delivery fails. A client may
        keep the status it has while it edits anything but the channel.
        """
        assert change.content is not None
        try:
            spec = parse_subscription(change.content)
        except SubscriptionInvalid as exc:
            raise Unprocessable(str(exc), expression=(exc.expression,)) from exc
        # the worker itself writes a Subscription's status (active after the handshake, error
        # when delivery fails), as the server; any other write follows the client's rules
        if change.actor.origin == "server":
            return []
        # whoever writes a Subscription must be able to read what it would be sent
        access = change.actor.access
        require_reads(access, readable_types(spec), "A Subscription to what-matters-changed")
        before = _version_json(tx, change.type, change.id, change.version - 1)
        same_channel = before is not None and before.get("channel") == change.content.get("channel")
        refusal = endpoint_refusal(spec.endpoint, self.endpoint_allow)
        if refusal is not None and not same_channel:
            raise Unprocessable(refusal, expression=("Subscription.channel.endpoint",))
        status = change.content.get("status")
        kept = same_channel and before is not None and before.get("status") == status
        if status not in CLIENT_STATUSES and not kept:
            raise Unprocessable(
                f"Subscription.status {status!r} is set by this server: a client asks for "
                "'requested' (the server activates it after a successful handshake) or 'off'",
                expression=("Subscription.status",),
            )
        if status in ("requested", "active") and ended(spec, now):
            raise Unprocessable(
                f"Subscription.end {spec.end} has passed: a Subscription gets nothing after its "
                "end (R4: the time for the server to turn it off). Give a later end, or none",
                expression=("Subscription.end",),
            )
        if status != "requested":
            return []
        destination = subscription_destination(change.id)
        return [_row(destination, destination, "handshake", change, now)]

    def _notifications(
        self, tx: Transaction, change: Change, patient_ref: str | None, now: int
    ) -> list[OutboxRow]:
        rows = []
        for stored in tx.resources.read_many(tx.searches.keys(ACTIVE_SUBSCRIPTIONS, 1000)):
            try:
                spec = parse_subscription(json.loads(stored.content or "{}"))
            except SubscriptionInvalid:
                continue  # stored before a rule tightened; it gets no events
            if spec.status != "active" or ended(spec, now):
                continue
            if not matches(spec, change.type, patient_ref):
                continue
            if not _may_read(subscriber_access(json.loads(stored.content or "{}")), change):
                continue  # the subscriber's access does not reach this change
            destination = subscription_destination(stored.id)
            event = tx.counters.next(destination)
            rows.append(
                replace(
                    _row(destination, destination, "notification", change, now),
                    event_number=event,
                )
            )
        return rows


def _may_read(access: Access | None, change: Change) -> bool:
    """Whether a subscriber with ``access`` may read the changed resource (with a patient/
    grant: only when it is that patient's own)."""
    if access is None:
        return True
    content = change.content if change.content is not None else change.previous
    try:
        patient = access.reach(change.type, "r")
    except Forbidden:
        return False
    return patient is None or (content is not None and owner_of(change.type, content) == patient)


def _row(destination: str, group: str, kind: str, change: Change, now: int) -> OutboxRow:
    return OutboxRow(
        destination=destination,
        group_key=group,
        kind=kind,
        res_type=change.type,
        res_id=change.id,
        version=change.version,
        created_us=now,
        next_attempt_us=now,
    )


def _read_json(tx: Transaction, type_: str, id_: str) -> dict[str, Any] | None:
    stored = tx.resources.read(type_, id_)
    if stored is None or stored.deleted or stored.content is None:
        return None
    loaded: dict[str, Any] = json.loads(stored.content)
    return loaded


def _version_json(tx: Transaction, type_: str, id_: str, version: int) -> dict[str, Any] | None:
    if version < 1:
        return None
    stored = tx.resources.vread(type_, id_, version)
    if stored is None or stored.deleted or stored.content is None:
        return None
    loaded: dict[str, Any] = json.loads(stored.content)
    return loaded


def is_local(content: dict[str, Any], instance_id: str, partners: Sequence[Partner] = ()) -> bool:
    """Whether this instance originated the resource: it carries no other instance's origin
    tag, and no meta.source naming another instance or one of the partners (an import)."""
    origin = origin_of(content)
    if origin is not None:
        return origin == instance_id
    source = (content.get("meta") or {}).get("source")
    if not isinstance(source, str):
        return True
    if source.startswith("urn:uuid:") and source.split("#", 1)[0] != instance_uri(instance_id):
        return False
    return not any(_from_partner(content, partner) for partner in partners)


def _from_partner(content: dict[str, Any] | None, partner: Partner) -> bool:
    """Whether the resource came from this partner (meta.source): never echo it back."""
    source = ((content or {}).get("meta") or {}).get("source")
    return isinstance(source, str) and (
        source == partner.base_url or source.startswith(partner.base_url + "/")
    )
