"""Subscription notification Bundles, after the Subscriptions R5 Backport IG (STU 1.1).

Pure functions, no I/O: the handshake, heartbeat and event-notification Bundles the rest-hook
channel sends, and the ``$status`` answer. What a Subscription is, its topic and its filters
are in ``subscriptions.py``.

The IG pages these functions follow (STU 1.1, https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/):

- notifications.html and StructureDefinition-backport-subscription-notification-r4.html: every
  notification is a ``history`` Bundle whose first entry is a Parameters resource;
- StructureDefinition-backport-subscription-status-r4.html: the Parameters (string event counts);
- payloads.html: what ``empty``, ``id-only`` and ``full-resource`` notifications carry;
- channels.html#rest-hook: the handshake and heartbeats;
- OperationDefinition-backport-subscription-status.html: ``$status`` answers a ``searchset``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from service.exchange.subscriptions import (
    CONTENT_CODES,
    NOTIFICATION_PROFILE,
    NOTIFICATION_TYPES,
    STATUS_PROFILE,
    SUBSCRIPTION_STATUSES,
    TOPIC_URL,
)


def _now() -> str:
    """Return the current UTC instant in FHIR form."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _status_parameters(
    subscription_url: str,
    status: str,
    notification_type: str,
    events_since_start: int | str,
    *,
    topic: bool,
    event: list[dict[str, Any]] | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """Build the backport-subscription-status-r4 Parameters of one notification.

    https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-subscription-status-r4.html:
    event counts are valueString, ``topic`` SHOULD NOT be present for ``empty`` payloads.
    """
    if status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"unknown Subscription.status {status!r}")
    if notification_type not in NOTIFICATION_TYPES:
        raise ValueError(f"unknown notification type {notification_type!r}")
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": subscription_url}}
    ]
    if topic:
        parameters.append({"name": "topic", "valueCanonical": TOPIC_URL})
    parameters += [
        {"name": "status", "valueCode": status},
        {"name": "type", "valueCode": notification_type},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    if event is not None:
        parameters.append({"name": "notification-event", "part": event})
    if error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error}})
    identifier = str(uuid.uuid4())
    return {
        "resourceType": "Parameters",
        "id": identifier,
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def _notification(
    subscription_url: str, parameters: dict[str, Any], timestamp: str
) -> dict[str, Any]:
    """Wrap status Parameters in a ``history`` Bundle, entry[0] answering ``$status``.

    https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/notifications.html: bdl-3 and bdl-4 need
    request and response on every entry; entry[0] matches a request to ``$status``.
    """
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": timestamp,
        "entry": [
            {
                "fullUrl": f"urn:uuid:{parameters['id']}",
                "resource": parameters,
                "request": {"method": "GET", "url": f"{subscription_url}/$status"},
                "response": {"status": "200"},
            }
        ],
    }


def handshake_bundle(
    subscription_url: str,
    status: str,
    events_since_start: int | str,
    now_iso: str,
    *,
    content: str = "id-only",
) -> dict[str, Any]:
    """Build the ``handshake`` notification sent to a new rest-hook endpoint.

    https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/channels.html#rest-hook and
    Bundle-r4-notification-handshake.html (status ``requested``, no notification-event).
    """
    parameters = _status_parameters(
        subscription_url, status, "handshake", events_since_start, topic=content != "empty"
    )
    return _notification(subscription_url, parameters, now_iso)


def heartbeat_bundle(
    subscription_url: str,
    status: str,
    events_since_start: int | str,
    now_iso: str,
    *,
    content: str = "id-only",
    error: str | None = None,
) -> dict[str, Any]:
    """Build the ``heartbeat`` notification sent when nothing else was sent for a period.

    https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-heartbeat-period.html
    and Bundle-r4-notification-heartbeat.html (no notification-event).
    """
    parameters = _status_parameters(
        subscription_url,
        status,
        "heartbeat",
        events_since_start,
        topic=content != "empty",
        error=error,
    )
    return _notification(subscription_url, parameters, now_iso)


_INTERACTIONS = {
    "create": ("POST", "201"),
    "update": ("PUT", "200"),
    "delete": ("DELETE", "204"),
}


def event_bundle(
    subscription_url: str,
    status: str,
    events_since_start: int | str,
    event_number: int | str,
    timestamp: str,
    focus_url: str,
    focus_resource: dict[str, Any] | None,
    content: str,
    *,
    interaction: str | None = None,
    now_iso: str | None = None,
    error: str | None = None,
) -> dict[str, Any]:
    """Build an ``event-notification`` for one event on ``focus_url``.

    Payloads (https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/payloads.html): ``empty`` has
    no focus and no other entry; ``id-only`` has the focus reference and an entry with fullUrl,
    request and response but no resource; ``full-resource`` adds the resource to that entry.
    The entry's request follows ``interaction`` (create POST, update PUT, delete DELETE) or is a
    GET of the resource, which notifications.html allows.
    """
    if content not in CONTENT_CODES:
        raise ValueError(f"unknown payload content {content!r}")
    event: list[dict[str, Any]] = [
        {"name": "event-number", "valueString": str(event_number)},
        {"name": "timestamp", "valueInstant": timestamp},
    ]
    if content != "empty":
        event.append({"name": "focus", "valueReference": {"reference": focus_url}})
    parameters = _status_parameters(
        subscription_url,
        status,
        "event-notification",
        events_since_start,
        topic=content != "empty",
        event=event,
        error=error,
    )
    bundle = _notification(subscription_url, parameters, now_iso or timestamp)
    if content != "empty":
        bundle["entry"].append(_focus_entry(focus_url, focus_resource, content, interaction))
    return bundle


def _focus_entry(
    focus_url: str, resource: dict[str, Any] | None, content: str, interaction: str | None
) -> dict[str, Any]:
    """Build the history entry of the focus resource (request and response per bdl-3/bdl-4)."""
    relative = "/".join(focus_url.rstrip("/").split("/")[-2:])
    if interaction is None:
        method, code = "GET", "200"
    elif interaction in _INTERACTIONS:
        method, code = _INTERACTIONS[interaction]
    else:
        raise ValueError(f"unknown interaction {interaction!r}")
    url = relative.split("/", 1)[0] if method == "POST" else relative
    response: dict[str, Any] = {"status": code}
    meta = resource.get("meta") if isinstance(resource, dict) else None
    if isinstance(meta, dict) and method != "DELETE":
        if meta.get("versionId"):
            response["etag"] = f'W/"{meta["versionId"]}"'
        if meta.get("lastUpdated"):
            response["lastModified"] = meta["lastUpdated"]
    entry: dict[str, Any] = {"fullUrl": focus_url}
    if content == "full-resource" and resource is not None and method != "DELETE":
        entry["resource"] = resource
    entry["request"] = {"method": method, "url": url}
    entry["response"] = response
    return entry


def status_bundle(
    subscription_url: str,
    status: str,
    events_since_start: int | str,
    error: str | None,
    *,
    content: str = "id-only",
    now_iso: str | None = None,
) -> dict[str, Any]:
    """Build the ``$status`` answer: a ``searchset`` with one query-status Parameters.

    https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/OperationDefinition-backport-subscription-status.html
    and Bundle-r4-notification-error.html (an ``error`` parameter when the subscription failed).
    """
    parameters = _status_parameters(
        subscription_url,
        status,
        "query-status",
        events_since_start,
        topic=content != "empty",
        error=error,
    )
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": "searchset",
        "timestamp": now_iso or _now(),
        "total": 1,
        "link": [{"relation": "self", "url": f"{subscription_url}/$status"}],
        "entry": [
            {
                "fullUrl": f"urn:uuid:{parameters['id']}",
                "resource": parameters,
                "search": {"mode": "match"},
            }
        ],
    }
