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
