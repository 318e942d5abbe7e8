"""AuditEvent for every access (R4 auditevent.html, after the IHE Basic Audit Log Patterns):
who (the token's user and client, the network address), what (the interaction and the
resources touched), when, and the outcome."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.fhir.access import Access, agent_reference

AUDIT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
# AuditEvent.action: Create, Read, Update, Delete, Execute
ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "search-type": "E",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "transaction": "E",
    "batch": "E",
    "operation": "E",
}


@dataclass(frozen=True)
class RequestSeen:
    """What one HTTP request did, as the API layer saw it."""

    interaction: str
    method: str
    path: str
    query: str
    status: int
    address: str | None


def outcome_code(status: int) -> str:
    """AuditEvent.outcome: 0 success, 4 minor failure (refused), 8 serious failure (ours)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def audit_event(
    request: RequestSeen,
    access: Access | None,
    entities: Sequence[tuple[str, str]],
    recorded: str,
    observer: str,
) -> dict[str, Any]:
    """The AuditEvent of one request."""
    who = agent_reference(access) if access is not None else {"display": "no valid token"}
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": AGENT_TYPE, "code": "humanuser"}]},
        "who": who,
        "requestor": True,
    }
    if request.address:
        agent["network"] = {"address": request.address, "type": "2"}
    agents = [agent]
    if access is not None and access.client_id:
        agents.append(
            {
                "type": {"coding": [{"system": AGENT_TYPE, "code": "dataprocessor"}]},
                "who": {"display": f"client {access.client_id}"},
                "requestor": False,
            }
        )
    items: list[dict[str, Any]] = []
    patients = {access.patient} if access is not None and access.patient else set()
    for type_, id_ in entities:
        if type_ == "Patient":
            patients.add(id_)
        else:
            items.append(
                {
                    "what": {"reference": f"{type_}/{id_}"},
                    "type": {"system": ENTITY_TYPE, "code": "2"},
                    "role": {"system": OBJECT_ROLE, "code": "4"},
                }
            )
    items[:0] = [
        {
            "what": {"reference": f"Patient/{patient}"},
            "type": {"system": ENTITY_TYPE, "code": "1"},
            "role": {"system": OBJECT_ROLE, "code": "1"},
        }
        for patient in sorted(patients)
    ]
    if request.query:
        items.append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "role": {"system": OBJECT_ROLE, "code": "24"},  # query
                "query": base64.b64encode(request.query.encode("utf-8")).decode("ascii"),
            }
        )
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": AUDIT_TYPE, "code": "rest", "display": "RESTful Operation"},
        "subtype": [{"system": RESTFUL_INTERACTION, "code": request.interaction}],
        "action": ACTIONS.get(request.interaction, "E"),
        "recorded": recorded,
        "outcome": outcome_code(request.status),
        "outcomeDesc": f"HTTP {request.status} to {request.method} {request.path}",
        "agent": agents,
        "source": {"observer": {"display": observer}},
    }
    if items:
        event["entity"] = items
    return event


# what audit_event writes, and so all that audit_index_values reads
_EVENT_KEYS = frozenset(
    {
        "resourceType",
        "id",
        "meta",
        "type",
        "subtype",
        "action",
        "recorded",
        "outcome",
        "outcomeDesc",
        "agent",
        "source",
        "entity",
    }
)
_AGENT_KEYS = frozenset({"type", "who", "requestor", "network"})
_ENTITY_KEYS = frozenset({"what", "type", "role", "query"})
_SERVER_META = frozenset({"versionId", "lastUpdated"})


def audit_index_values(event: dict[str, Any]) -> list[tuple[str, Any, str | None]] | None:
    """What each R4 AuditEvent search parameter finds in an event of the shape ``audit_event``
    makes, as (parameter code, value, required target type), for
    ``SearchParameters.index_values``; None for any other shape (index it the general way).

    A request's AuditEvent is stored with every request, so its index rows are worth making
    without running the 22 parameters' expressions; the values are the ones those expressions
    give (tests/fhir/test_audit_index.py compares the rows both ways)."""
    if not _EVENT_KEYS.issuperset(event) or not _SERVER_META.issuperset(event.get("meta", {})):
        return None
    source = event.get("source")
    if not isinstance(source, dict) or set(source) != {"observer"}:
        return None
    values: list[tuple[str, Any, str | None]] = [
        ("type", event.get("type"), None),
        ("action", event.get("action"), None),
        ("date", event.get("recorded"), None),
        ("outcome", event.get("outcome"), None),
        ("source", source["observer"], None),
    ]
    values.extend(("subtype", coding, None) for coding in event.get("subtype", []))
    for agent in event.get("agent", []):
        if not isinstance(agent, dict) or not _AGENT_KEYS.issuperset(agent):
            return None
        who = agent.get("who")
        values.extend((("agent", who, None), ("patient", who, "Patient")))
        network = agent.get("network")
        if isinstance(network, dict):
            values.append(("address", network.get("address"), None))
    for item in event.get("entity", []):
        if not isinstance(item, dict) or not _ENTITY_KEYS.issuperset(item):
            return None
        what = item.get("what")
        values.extend((("entity", what, None), ("patient", what, "Patient")))
        values.extend(
            (("entity-type", item.get("type"), None), ("entity-role", item.get("role"), None))
        )
    return [(code, value, target) for code, value, target in values if value is not None]
