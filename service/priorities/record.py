"""$record-what-matters: one conversation becomes WMTY Statements, WMTY Personal Goals, a new
version of the setting's WMTY Priorities List and a Provenance, in one transaction.

The input is a Parameters resource (OperationDefinition ``record-what-matters`` in
``profiles/``). Every generated resource claims and must meet its WMTY profile; anything wrong
in the input is a 422 whose issue names the parameter (``Parameters.parameter[2].part[1]``).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.errors import Issue, Unprocessable
from service.fhir.search import escape_value
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

PRIORITIES = {"high": "high-priority", "medium": "medium-priority", "low": "low-priority"}
ACCEPTANCE = ("agree", "disagree", "pending")
LIFECYCLE = (
    "proposed",
    "planned",
    "accepted",
    "active",
    "on-hold",
    "completed",
    "cancelled",
    "rejected",
)
SETTING_TYPES = ("hospital", "primary-care", "care-home", "community", "outpatient", "other")
_NAMESPACE = uuid.UUID("0f3c2a54-5b1e-4f0e-9a43-7d0c6f1e2b9a")  # ids derived from content
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_PARAMETERS = (
    "statement",
    "goal",
    "ranking",
    "recorder",
    "setting",
    "setting-type",
    "recorded",
    "patient-identifier",
)
_STATEMENT_PARTS = ("key", "text", "code", "identifier", "effective")
_GOAL_PARTS = (
    "key",
    "description",
    "priority",
    "target-date",
    "start",
    "expressed-by",
    "acceptance",
    "addresses",
    "identifier",
    "status",
    "status-reason",
)


@dataclass
class Item:
    """A statement or goal of the conversation, and where in the input it came from."""

    kind: str  # statement | goal
    key: str
    where: str  # Parameters.parameter[i]
    parts: dict[str, tuple[Any, str]] = field(default_factory=dict)  # name -> (value, where)
    addresses: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Conversation:
    """A parsed $record-what-matters input."""

    items: list[Item]
    ranking: list[tuple[str, str]] | None  # (key or reference, where)
    recorder: dict[str, Any] | None
    setting: dict[str, Any] | None
    setting_type: str | None
    recorded: str | None
    patient_identifier: dict[str, Any] | None


class _Problems:
    def __init__(self) -> None:
        self.issues: list[Issue] = []

    def add(self, where: str, message: str, code: str = "invalid") -> None:
        self.issues.append(Issue("error", code, message, (where,)))

    def raise_if_any(self) -> None:
        if self.issues:
            raise Unprocessable(
                "The $record-what-matters input cannot be recorded: "
                + self.issues[0].diagnostics
                + (f" (and {len(self.issues) - 1} more)" if len(self.issues) > 1 else ""),
                issues=self.issues,
            )


def _value(parameter: dict[str, Any]) -> tuple[str | None, Any]:
    for key, value in parameter.items():
        if key.startswith("value"):
            return key[5:], value
    if "part" in parameter:
        return "part", parameter["part"]
    return None, None


def parse_conversation(body: Any) -> Conversation:
    """Read the operation's Parameters; raise Unprocessable naming every bad parameter."""
    problems = _Problems()
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        problems.add("Parameters", "The input must be a Parameters resource")
        problems.raise_if_any()
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        problems.add("Parameters.parameter", "Parameters.parameter must be a list")
        problems.raise_if_any()
    conversation = Conversation([], None, None, None, None, None, None)
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name not in _PARAMETERS:
            problems.add(
                f"{where}.name",
                f"Unknown parameter {name!r}; this operation takes {', '.join(_PARAMETERS)}",
            )
            continue
        kind, value = _value(parameter)
        if name in ("statement", "goal"):
            if kind != "part" or not isinstance(value, list):
                problems.add(where, f"'{name}' needs parts (text, ...)")
                continue
            item = _item(name, value, where, len(conversation.items), problems)
            conversation.items.append(item)
        elif name == "ranking":
            if kind != "part" or not isinstance(value, list):
                problems.add(where, "'ranking' needs 'item' parts in rank order")
                continue
            conversation.ranking = []
            for p_index, part in enumerate(value):
                part_where = f"{where}.part[{p_index}]"
                p_kind, p_value = _value(part) if isinstance(part, dict) else (None, None)
                if not isinstance(part, dict) or part.get("name") != "item":
                    problems.add(part_where, "'ranking' takes only 'item' parts")
                elif p_kind == "String" and isinstance(p_value, str) and p_value:
                    conversation.ranking.append((p_value, part_where))
                elif (
                    p_kind == "Reference" and isinstance(p_value, dict) and p_value.get("reference")
                ):
                    conversation.ranking.append((str(p_value["reference"]), part_where))
                else:
                    problems.add(
                        part_where,
                        "A ranking item is the key of a statement or goal (valueString) or a "
                        "reference to a stored one (valueReference)",
                    )
        elif name in ("recorder", "setting"):
            if (
                kind != "Reference"
                or not isinstance(value, dict)
                or not (value.get("reference") or value.get("display"))
            ):
                problems.add(where, f"'{name}' is a valueReference with a reference or display")
                continue
            allowed = (
                ("Practitioner", "PractitionerRole", "RelatedPerson", "Patient")
                if name == "recorder"
                else ("Organization", "Location")
            )
            target = str(value.get("reference", ""))
            if target and target.split("/", 1)[0] not in allowed:
                problems.add(
                    f"{where}.valueReference",
                    f"'{name}' refers to {' or '.join(allowed)}, not {target}",
                )
                continue
            setattr(conversation, name, value)
        elif name == "setting-type":
            if kind != "Code" or value not in SETTING_TYPES:
                problems.add(
                    f"{where}.valueCode",
                    f"'setting-type' is a valueCode, one of {', '.join(SETTING_TYPES)}",
                )
                continue
            conversation.setting_type = value
        elif name == "recorded":
            if kind != "DateTime" or not isinstance(value, str):
                problems.add(where, "'recorded' is a valueDateTime")
                continue
            conversation.recorded = value
        elif name == "patient-identifier":
            if kind != "Identifier" or not isinstance(value, dict) or not value.get("value"):
                problems.add(where, "'patient-identifier' is a valueIdentifier with a value")
                continue
            conversation.patient_identifier = value
    if not conversation.items:
        problems.add("Parameters", "Nothing to record: give at least one 'statement' or 'goal'")
    keys: dict[str, Item] = {}
    for item in conversation.items:
        if item.key in keys:
            problems.add(item.where, f"The key {item.key!r} is used twice")
        keys[item.key] = item
    statements = [i for i in conversation.items if i.kind == "statement"]
    for item in conversation.items:
        for key, where in item.addresses:
            named = keys.get(key)
            if (named is None or named.kind != "statement") and not key.startswith("Observation/"):
                problems.add(
                    where, f"'addresses' names {key!r}, which is not a statement of this input"
                )
        if item.kind == "goal" and not item.addresses and not statements:
            problems.add(
                item.where,
                "A goal addresses at least one statement: give a statement, or 'addresses' "
                "with the reference of a stored one",
            )
    for key, where in conversation.ranking or []:
        if key not in keys and not re.fullmatch(r"(Goal|Observation)/[A-Za-z0-9\-.]{1,64}", key):
            problems.add(
                where,
                f"The ranking names {key!r}, which is neither a key of this input nor a "
                "Goal/ or Observation/ reference",
            )
    problems.raise_if_any()
    return conversation


def _item(kind: str, parts: list[Any], where: str, position: int, problems: _Problems) -> Item:
    allowed = _STATEMENT_PARTS if kind == "statement" else _GOAL_PARTS
    item = Item(kind, f"{kind}-{position + 1}", where)
    for index, part in enumerate(parts):
        part_where = f"{where}.part[{index}]"
        name = str(part.get("name")) if isinstance(part, dict) else ""
        if name not in allowed:
            problems.add(
                f"{part_where}.name",
                f"Unknown part {name!r} of '{kind}'; it takes {', '.join(allowed)}",
            )
            continue
        value_kind, value = _value(part)
        if name == "addresses":
            if value_kind == "String" and isinstance(value, str) and value:
                item.addresses.append((value, part_where))
            elif value_kind == "Reference" and isinstance(value, dict):
                item.addresses.append((str(value.get("reference", "")), part_where))
            else:
                problems.add(part_where, "'addresses' is a statement key (valueString)")
            continue
        item.parts[name] = (value, f"{part_where}.value{value_kind or ''}")
        expected = {
            "key": "String",
            "text": "String",
            "description": "String",
            "code": "CodeableConcept",
            "identifier": "Identifier",
            "effective": "DateTime",
            "priority": "Code",
            "target-date": "Date",
            "start": "Date",
            "expressed-by": "Reference",
            "acceptance": "Code",
            "status": "Code",
            "status-reason": "String",
        }[name]
        json_type = dict if expected in ("CodeableConcept", "Identifier", "Reference") else str
        if value_kind != expected or not isinstance(value, json_type):
            problems.add(part_where, f"'{name}' of '{kind}' is a value{expected}")
    key = item.parts.get("key", (None, ""))[0]
    if isinstance(key, str) and key:
        item.key = key
    words = "text" if kind == "statement" else "description"
    text = item.parts.get(words, (None, ""))[0]
    if not isinstance(text, str) or not text.strip():
        problems.add(where, f"A {kind} needs its {words}: the patient's own words")
    if kind == "goal":
        priority = item.parts.get("priority", (None, ""))
        if priority[0] is not None and (
            not isinstance(priority[0], str) or priority[0] not in PRIORITIES
        ):
            problems.add(priority[1], "'priority' is high, medium or low")
        acceptance = item.parts.get("acceptance", (None, ""))
        if acceptance[0] is not None and acceptance[0] not in ACCEPTANCE:
            problems.add(acceptance[1], f"'acceptance' is one of {', '.join(ACCEPTANCE)}")
        status = item.parts.get("status", (None, ""))
        if status[0] is not None and status[0] not in LIFECYCLE:
            problems.add(status[1], f"'status' is one of {', '.join(LIFECYCLE)}")
        for name in ("target-date", "start"):
            date = item.parts.get(name, (None, ""))
            if date[0] is not None and not (isinstance(date[0], str) and _DATE.fullmatch(date[0])):
                problems.add(date[1], f"'{name}' is a full date (YYYY-MM-DD)")
    return item


def setting_key(setting: dict[str, Any] | None) -> str:
    """A stable key for the care setting, used in the setting's priorities List identifier."""
    if not setting:
        return "unspecified"
    if setting.get("reference"):
        return str(setting["reference"])
    return "display:" + re.sub(r"\s+", " ", str(setting.get("display", ""))).strip().lower()


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
        search = f"identifier={token(identifier)}"
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
    return {"system": system, "value": f"urn:uuid:{uuid.uuid5(_NAMESPACE, seed)}"}


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
