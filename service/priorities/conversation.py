"""The input of $record-what-matters, read: a Parameters resource (OperationDefinition
``record-what-matters`` in ``profiles/``) becomes a ``Conversation`` of statements and goals.

Anything wrong in the input is a 422 whose issue names the parameter
(``Parameters.parameter[2].part[1]``); record.py builds the resources from what is read here.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from service.errors import Issue, Unprocessable

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
NAMESPACE = uuid.UUID("0f3c2a54-5b1e-4f0e-9a43-7d0c6f1e2b9a")  # ids derived from content
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
    given: dict[str, str] = {}  # the parameters the OperationDefinition allows once, by name
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if name not in _PARAMETERS:
            problems.add(
                f"{where}.name",
                f"Unknown parameter {name!r}; this operation takes {', '.join(_PARAMETERS)}",
            )
            continue
        if name not in ("statement", "goal"):
            if name in given:
                # max 1 (the OperationDefinition): which one was meant cannot be told, and
                # keeping the last would drop the other without a word
                problems.add(
                    where, f"'{name}' is given twice (also at {given[name]}); it takes one"
                )
                continue
            given[name] = where
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
    seen: dict[str, str] = {}
    for index, part in enumerate(parts):
        part_where = f"{where}.part[{index}]"
        name = str(part.get("name")) if isinstance(part, dict) else ""
        if name not in allowed:
            problems.add(
                f"{part_where}.name",
                f"Unknown part {name!r} of '{kind}'; it takes {', '.join(allowed)}",
            )
            continue
        if name != "addresses":  # every other part is max 1 (the OperationDefinition)
            if name in seen:
                problems.add(
                    part_where,
                    f"'{kind}' has '{name}' twice (also at {seen[name]}); it takes one: give "
                    f"each {'statement' if kind == 'statement' else 'goal'} its own parameter",
                )
                continue
            seen[name] = part_where
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
