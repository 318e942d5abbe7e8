"""$record-what-matters: one conversation (read by conversation.py) becomes WMTY Statements,
WMTY Personal Goals, a new version of the setting's WMTY Priorities List and a Provenance, in
one transaction. Every generated resource claims and must meet its WMTY profile.
"""

from __future__ import annotations

import uuid
from typing import Any

from service.fhir.search_parser import escape_value
from service.priorities.codes import (
    CARE_SETTING,
    CARE_SETTING_TYPE,
    CARE_SETTING_TYPES,
    DATA_OPERATION,
    GOAL_ACCEPTANCE,
    GOAL_IDS,
    GOAL_PRIORITY,
    GOAL_PROFILE,
    LIST_IDS,
    LIST_ORDER,
    LIST_PROFILE,
    LOINC,
    PRIORITIES_CODE,
    PROVENANCE_ROLES,
    STATEMENT_CODE,
    STATEMENT_IDS,
    STATEMENT_PROFILE,
    SURVEY,
    WHAT_MATTERS,
    coding,
)
from service.priorities.conversation import NAMESPACE, PRIORITIES, Conversation, Item
from service.priorities.items import setting_key


def list_identifier(patient_id: str, setting: dict[str, Any] | None) -> dict[str, str]:
    """The identifier of a patient's priorities List in one care setting."""
    return {"system": LIST_IDS, "value": f"{patient_id}|{setting_key(setting)}"}


def build_transaction(
    conversation: Conversation,
    patient_id: str,
    now: str,
    current_list: dict[str, Any] | None,
    known: dict[str, str] | None = None,
    updates: dict[str, dict[str, Any]] | None = None,
) -> tuple[dict[str, Any], dict[int, str]]:
    """The transaction Bundle that records ``conversation``, and which input each entry is from.

    ``current_list`` is the setting's current priorities List, if any: its items not named in
    the new ranking stay, after the ranked ones, so nothing is dropped silently. ``known``
    maps the keys of items stored already (found by identifier) to their references: they are
    not written again, and the List names them by those references; ``updates`` are the next
    versions of stored goals whose status changes (``goal_status_updates``).
    """
    patient = {"reference": f"Patient/{patient_id}"}
    recorded = conversation.recorded or now
    today = recorded[:10]
    performer = conversation.recorder or patient
    setting_extensions = _setting_extensions(conversation)
    entries: list[dict[str, Any]] = []
    origins: dict[int, str] = {}
    full_urls: dict[str, str] = {}
    statements = [i for i in conversation.items if i.kind == "statement"]
    known = known or {}
    for item in conversation.items:
        full_urls[item.key] = known.get(item.key) or f"urn:uuid:{uuid.uuid4()}"
    for item in conversation.items:
        if item.key in (updates or {}):
            changed = (updates or {})[item.key]
            origins[len(entries)] = item.where
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                    "resource": changed,
                    "request": {
                        "method": "PUT",
                        "url": f"Goal/{changed['id']}",
                        "ifMatch": f'W/"{changed.get("meta", {}).get("versionId", "")}"',
                    },
                }
            )
            continue
        if item.key in known:
            continue  # stored already: the List and goals refer to it as it is
        words = _words(item)
        identifier = item_identifier(item, patient_id, conversation.setting)
        if item.kind == "statement":
            resource = _statement(item, words, identifier, patient, performer, recorded)
            type_ = "Observation"
        else:
            addresses = [{"reference": full_urls.get(key, key)} for key, _ in item.addresses] or [
                {"reference": full_urls[s.key]} for s in statements
            ]
            resource = _goal(item, words, identifier, patient, today, addresses)
            type_ = "Goal"
        if setting_extensions:
            resource["extension"] = [*resource.get("extension", []), *setting_extensions]
        # the patient's own only (as the lookups before the transaction)
        search = f"identifier={token(identifier)}&patient=Patient/{patient_id}"
        origins[len(entries)] = item.where
        entries.append(
            {
                "fullUrl": full_urls[item.key],
                "resource": resource,
                "request": {"method": "POST", "url": type_, "ifNoneExist": search},
            }
        )
    order = ranking_order(conversation, full_urls, current_list)
    texts = {full_urls[i.key]: _words(i) for i in conversation.items}
    priorities = _priorities_list(
        conversation, patient_id, patient, recorded, order, texts, setting_extensions
    )
    list_url = f"urn:uuid:{uuid.uuid4()}"
    if current_list is not None:
        priorities["id"] = current_list["id"]
        request = {
            "method": "PUT",
            "url": f"List/{current_list['id']}",
            "ifMatch": f'W/"{current_list["meta"]["versionId"]}"',
        }
    else:
        request = {"method": "POST", "url": "List"}
    entries.append({"fullUrl": list_url, "resource": priorities, "request": request})
    origins[len(entries) - 1] = "Parameters"
    targets = [{"reference": e["fullUrl"]} for e in entries]
    entries.append(
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": _provenance(conversation, patient, targets, now),
            "request": {"method": "POST", "url": "Provenance"},
        }
    )
    origins[len(entries) - 1] = "Parameters"
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}, origins


GOAL_ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"


def goal_status_updates(
    conversation: Conversation, found: dict[str, dict[str, Any]], today: str
) -> dict[str, dict[str, Any]]:
    """The stored goals whose status the conversation changes, as their next versions, by key.

    A goal recorded again with another ``status`` (``completed``, ``cancelled``...) or
    ``status-reason`` keeps its words and everything else; ``statusDate`` says when the
    status changed and a completed goal is ``achieved`` (R4 Goal.achievementStatus).
    """
    updates: dict[str, dict[str, Any]] = {}
    for item in conversation.items:
        stored = found.get(item.key)
        if item.kind != "goal" or stored is None:
            continue
        status = item.parts.get("status", (None, ""))[0]
        reason = item.parts.get("status-reason", (None, ""))[0]
        changed = dict(stored)
        if status is not None:
            changed["lifecycleStatus"] = status
        if reason is not None:
            changed["statusReason"] = reason
        if status == "completed":
            changed["achievementStatus"] = {
                "coding": [coding(GOAL_ACHIEVEMENT, "achieved", "Achieved")]
            }
        if changed == stored:
            continue
        changed["statusDate"] = today
        # the version it changes stays in meta.versionId: the update is If-Match on it
        changed["meta"] = {
            k: v for k, v in (stored.get("meta") or {}).items() if k in ("profile", "versionId")
        }
        updates[item.key] = changed
    return updates


def item_identifier(item: Item, patient_id: str, setting: dict[str, Any] | None) -> dict[str, Any]:
    """The identifier a statement or goal is written with: given, or derived from its words."""
    identifier = item.parts.get("identifier", (None, ""))[0]
    if isinstance(identifier, dict) and identifier.get("value"):
        return identifier
    system = STATEMENT_IDS if item.kind == "statement" else GOAL_IDS
    seed = "\x1f".join((patient_id, setting_key(setting), item.kind, _words(item)))
    return {"system": system, "value": f"urn:uuid:{uuid.uuid5(NAMESPACE, seed)}"}


def list_entries(priorities: dict[str, Any]) -> list[str]:
    """The references a priorities List ranks, in order (deleted entries left out)."""
    return [
        str(e["item"]["reference"])
        for e in priorities.get("entry", [])
        if isinstance(e.get("item"), dict) and e["item"].get("reference") and not e.get("deleted")
    ]


def ranking_order(
    conversation: Conversation, refs: dict[str, str], current_list: dict[str, Any] | None
) -> list[str]:
    """The new ranking: the ranked items, the others of this conversation, then the items of
    the setting's current List the conversation does not name (nothing is dropped)."""
    ranked = [refs.get(key, key) for key, _ in conversation.ranking or []]
    order = ranked + [refs[i.key] for i in conversation.items if refs[i.key] not in ranked]
    if current_list is not None:
        order += list_entries(current_list)
    return list(dict.fromkeys(order))  # an item appears once (wmty-list-1)


def token(identifier: dict[str, Any]) -> str:
    """An identifier as a token search value, escaped as search.html#escaping says."""

    value = escape_value(str(identifier["value"]))
    system = identifier.get("system")
    return f"{escape_value(str(system))}|{value}" if system else value


def _words(item: Item) -> str:
    text = item.parts.get("text" if item.kind == "statement" else "description")
    return str(text[0]) if text else ""


def _setting_extensions(conversation: Conversation) -> list[dict[str, Any]]:
    extensions: list[dict[str, Any]] = []
    if conversation.setting:
        extensions.append({"url": CARE_SETTING, "valueReference": conversation.setting})
    if conversation.setting_type:
        extensions.append(
            {
                "url": CARE_SETTING_TYPE,
                "valueCoding": coding(CARE_SETTING_TYPES, conversation.setting_type),
            }
        )
    return extensions


def _statement(
    item: Item,
    words: str,
    identifier: dict[str, Any],
    patient: dict[str, Any],
    performer: dict[str, Any],
    recorded: str,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [STATEMENT_PROFILE]},
        "identifier": [identifier],
        "status": "final",
        "category": [SURVEY, WHAT_MATTERS],
        "code": {
            "coding": [coding(LOINC, STATEMENT_CODE, "Care experience preference")],
            "text": "What matters to you?",
        },
        "subject": patient,
        "effectiveDateTime": item.parts.get("effective", (recorded, ""))[0],
        "performer": [performer],
    }
    code = item.parts.get("code", (None, ""))[0]
    if isinstance(code, dict) and code.get("coding"):
        # the patient's words stay the text of the coded answer (wmty-stmt-1)
        resource["valueCodeableConcept"] = {"coding": code["coding"], "text": words}
    else:
        resource["valueString"] = words
    return resource


def _goal(
    item: Item,
    words: str,
    identifier: dict[str, Any],
    patient: dict[str, Any],
    today: str,
    addresses: list[dict[str, Any]],
) -> dict[str, Any]:
    status = item.parts.get("status", ("active", ""))[0]
    resource: dict[str, Any] = {
        "resourceType": "Goal",
        "meta": {"profile": [GOAL_PROFILE]},
        "identifier": [identifier],
        "lifecycleStatus": status,
        "category": [WHAT_MATTERS],
        "description": {"text": words},
        "subject": patient,
        "startDate": item.parts.get("start", (today, ""))[0],
        "expressedBy": item.parts.get("expressed-by", (patient, ""))[0],
        "addresses": addresses,
    }
    reason = item.parts.get("status-reason", (None, ""))[0]
    if reason:
        resource["statusReason"] = reason
    priority = item.parts.get("priority", (None, ""))[0]
    if priority:
        code = PRIORITIES[priority]
        display = f"{priority.capitalize()} Priority"
        resource["priority"] = {"coding": [coding(GOAL_PRIORITY, code, display)]}
    target = item.parts.get("target-date", (None, ""))[0]
    if target:
        resource["target"] = [{"dueDate": target}]
    acceptance = item.parts.get("acceptance", (None, ""))[0]
    if acceptance:
        resource["extension"] = [
            {
                "url": GOAL_ACCEPTANCE,
                "extension": [
                    {"url": "individual", "valueReference": patient},
                    {"url": "status", "valueCode": acceptance},
                ],
            }
        ]
    return resource


def _priorities_list(
    conversation: Conversation,
    patient_id: str,
    patient: dict[str, Any],
    recorded: str,
    order: list[str],
    texts: dict[str, str],
    setting_extensions: list[dict[str, Any]],
) -> dict[str, Any]:
    recorder = conversation.recorder
    source_types = ("Practitioner", "PractitionerRole", "Patient", "Device")
    if recorder and str(recorder.get("reference", "")).split("/", 1)[0] in source_types:
        source = recorder
    elif recorder:
        # List.source cannot be a RelatedPerson in R4; the Provenance keeps the reference
        source = {"display": str(recorder.get("display") or recorder.get("reference"))}
    else:
        source = patient
    items = "".join(f"<li>{_escape(texts.get(ref, ref))}</li>" for ref in order)
    resource: dict[str, Any] = {
        "resourceType": "List",
        "meta": {"profile": [LIST_PROFILE]},
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ol>{items}</ol></div>',
        },
        "identifier": [list_identifier(patient_id, conversation.setting)],
        "status": "current",
        "mode": "working",
        "title": "What matters to me",
        "code": {"coding": [coding(LOINC, PRIORITIES_CODE)]},
        "subject": patient,
        "date": recorded,
        "source": source,
        "orderedBy": {"coding": [coding(LIST_ORDER, "priority", "Sorted by Priority")]},
    }
    if setting_extensions:
        resource["extension"] = list(setting_extensions)
    if order:
        resource["entry"] = [{"item": {"reference": ref}} for ref in order]
    return resource


def _provenance(
    conversation: Conversation,
    patient: dict[str, Any],
    targets: list[dict[str, Any]],
    now: str,
) -> dict[str, Any]:
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [coding(PROVENANCE_ROLES, "author", "Author")]},
            "who": conversation.recorder or patient,
        },
        {
            "type": {"coding": [coding(PROVENANCE_ROLES, "informant", "Informant")]},
            "who": patient,
        },
    ]
    setting = conversation.setting or {}
    if str(setting.get("reference", "")).startswith("Organization/") or (
        setting and not setting.get("reference")
    ):
        agents.append(
            {
                "type": {"coding": [coding(PROVENANCE_ROLES, "custodian", "Custodian")]},
                "who": setting,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": targets,
        "recorded": now,
        "activity": {"coding": [coding(DATA_OPERATION, "CREATE", "create")]},
        "agent": agents,
    }
    if str(setting.get("reference", "")).startswith("Location/"):
        resource["location"] = setting
    return resource


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
