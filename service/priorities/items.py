"""One item per thing the patient said, from every source: the heart of ``$what-matters``.

Pure functions over resources already read (no I/O). A what-matters record is an Observation
that is a what-matters statement (PCO ``what-matters`` category, a WMTY code or a claimed WMTY
profile) or a Goal that is about what matters (the category, the profile, or it addresses such a
statement), whoever wrote it: ``$record-what-matters``, a mapping, or plain FHIR REST.

Records whose words are the same after whitespace is normalised (or that share an identifier)
are one item; each item keeps every record, with who recorded it, where and when. Goals sit
under the statement they address, or stand on their own. Items a current Priorities List ranks
come first, in the merged ranking; the others follow, newest first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from service.fhir.model import origin_of
from service.priorities.codes import (
    CARE_SETTING,
    CARE_SETTING_TYPE,
    GOAL_PROFILE,
    PCO_CONCEPTS,
    STATEMENT_CODES,
    STATEMENT_PROFILES,
    extension_value,
)

LANGUAGE = "http://hl7.org/fhir/StructureDefinition/language"
_SPACE = re.compile(r"\s+")
_HISTORY = re.compile(r"/_history/[^/]*$")


def reference_of(resource: dict[str, Any]) -> str:
    """``Type/id`` of a stored resource."""
    return f"{resource.get('resourceType')}/{resource.get('id')}"


def plain_reference(reference: Any) -> str:
    """A literal reference as ``Type/id``: no base URL, no ``/_history/n``."""
    text = _HISTORY.sub("", str(reference or ""))
    parts = text.rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else text


def _codes(concepts: Any) -> list[tuple[str, str]]:
    found = []
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(concept, dict):
            for c in concept.get("coding", []) or []:
                if isinstance(c, dict):
                    found.append((str(c.get("system", "")), str(c.get("code", ""))))
    return found


def _profiles(resource: dict[str, Any]) -> list[str]:
    meta = resource.get("meta")
    profiles = meta.get("profile", []) if isinstance(meta, dict) else []
    return [str(p).split("|", 1)[0] for p in profiles or [] if isinstance(p, str)]


def _what_matters_category(resource: dict[str, Any]) -> bool:
    return (PCO_CONCEPTS, "what-matters") in _codes(resource.get("category"))


def is_statement(resource: dict[str, Any]) -> bool:
    """A what-matters statement that counts: not entered in error, not cancelled (R4
    observation-status: "not started or not completed"), and with words to show (a value;
    another EHR's record with its words only in a note says nothing the page could put first)."""
    if resource.get("resourceType") != "Observation":
        return False
    if resource.get("status") in ("entered-in-error", "cancelled"):
        return False
    if not words(resource).strip():
        return False
    return (
        _what_matters_category(resource)
        or any(code in STATEMENT_CODES for _, code in _codes(resource.get("code")))
        or any(p in STATEMENT_PROFILES for p in _profiles(resource))
    )


# R4 goal-status: never accepted (rejected), abandoned (cancelled) or never so: not something
# the patient is working towards
NOT_PURSUED = ("entered-in-error", "rejected", "cancelled")


def is_goal(resource: dict[str, Any], statements: set[str], ranked: set[str]) -> bool:
    """A Goal about what matters: the category, the profile, it addresses a statement, or a
    Priorities List ranks it (``ranked``: ``Type/id``)."""
    if resource.get("resourceType") != "Goal":
        return False
    if resource.get("lifecycleStatus") in NOT_PURSUED:
        return False
    return (
        _what_matters_category(resource)
        or GOAL_PROFILE in _profiles(resource)
        or bool(addressed(resource) & statements)
        or reference_of(resource) in ranked
    )


def addressed(goal: dict[str, Any]) -> set[str]:
    """The ``Type/id`` of everything a Goal addresses."""
    return {
        plain_reference(a.get("reference"))
        for a in goal.get("addresses", []) or []
        if isinstance(a, dict) and a.get("reference")
    }


def words(resource: dict[str, Any]) -> str:
    """The patient's words, verbatim: a statement's value, a goal's description."""
    if resource.get("resourceType") == "Goal":
        concept = resource.get("description")
    elif "valueString" in resource:
        return str(resource["valueString"])
    else:
        concept = resource.get("valueCodeableConcept")
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    codings = [c for c in concept.get("coding", []) or [] if isinstance(c, dict)]
    for c in codings:
        if c.get("display"):
            return str(c["display"])
    for c in codings:
        if c.get("code"):
            # a bare code is nothing the patient said: say what it is, not a number as words
            system = str(c.get("system") or "an unnamed code system")
            return f"{SYSTEM_NAMES.get(system, system)} {c['code']} (code only, no words recorded)"
    return ""


SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
}


def language(resource: dict[str, Any]) -> str | None:
    """The language of the words: the language extension on them, else ``Resource.language``."""
    if resource.get("resourceType") == "Goal":
        element = (resource.get("description") or {}).get("_text")
    elif "valueString" in resource:
        element = resource.get("_valueString")
    else:
        element = (resource.get("valueCodeableConcept") or {}).get("_text")
    if isinstance(element, dict):
        code = extension_value(element, LANGUAGE, "valueCode")
        if isinstance(code, str) and code:
            return code
    value = resource.get("language")
    return value if isinstance(value, str) and value else None


def normalised(text: str) -> str:
    """The words compared: runs of whitespace as one space, none at either end."""
    return _SPACE.sub(" ", text).strip()


def _updated(resource: dict[str, Any]) -> str:
    meta = resource.get("meta")
    return str(meta.get("lastUpdated", "")) if isinstance(meta, dict) else ""


# when each kind of record was made, in content every copy of it shares
_RECORDED = {
    "List": ("date",),
    "Observation": ("issued", "effectiveDateTime"),
    "Goal": ("statusDate", "startDate"),
}


def _moment(value: Any) -> str:
    """A FHIR date or dateTime as a sortable UTC instant (as given, if it is not one)."""
    text = str(value or "")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return text
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def _identity(resource: dict[str, Any]) -> str:
    """What names a record on every instance that holds it: its first identifier."""
    for identifier in resource.get("identifier", []) or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return f"{identifier.get('system', '')}|{identifier['value']}"
    return reference_of(resource)


def merge_order(resource: dict[str, Any], instance_id: str = "") -> tuple[str, str, str]:
    """The tie-break key of the merge: the recorded time, then the instance that originated the
    record (its origin tag; ``instance_id`` for this instance's own), then its identifier.

    Every part is content that travels with the record, never the local ``lastUpdated``
    (arrival time) unless the record has no recorded time at all, so every instance holding
    the same records shows the same order.
    """
    recorded = next(
        (
            resource[name]
            for name in _RECORDED.get(str(resource.get("resourceType", "")), ())
            if resource.get(name)
        ),
        _updated(resource),  # a record without a recorded time has only its local one
    )
    return _moment(recorded), origin_of(resource) or instance_id, _identity(resource)


@dataclass
class Record:
    """One resource saying the thing, and who recorded it, where and when."""

    resource: dict[str, Any]
    recorder: dict[str, Any] | None = None
    setting: dict[str, Any] | None = None
    setting_type: dict[str, Any] | None = None
    date: str | None = None

    @property
    def reference(self) -> str:
        """``Type/id`` of the resource."""
        return reference_of(self.resource)


@dataclass(eq=False)
class Item:
    """One thing said (a statement, or a goal on its own), with every record of it."""

    kind: str  # statement | goal
    records: list[Record]  # the most recently updated first: its words are shown
    goals: list[Item] = field(default_factory=list)
    position: int | None = None  # place in the merged ranking; None: not yet ranked

    @property
    def resource(self) -> dict[str, Any]:
        """The record shown."""
        return self.records[0].resource

    @property
    def references(self) -> set[str]:
        """``Type/id`` of every record."""
        return {r.reference for r in self.records}

    def references_addressed(self) -> set[str]:
        """``Type/id`` of everything any record (a goal's) addresses."""
        return set().union(*(addressed(r.resource) for r in self.records))

    @property
    def newest(self) -> str:
        """The latest date any record gives, for ordering the not-yet-ranked."""
        return max((_moment(r.date or _updated(r.resource)) for r in self.records), default="")


def _agent(provenance: dict[str, Any]) -> dict[str, Any] | None:
    """The author agent, else the only agent, else the first."""
    agents = [a for a in provenance.get("agent", []) or [] if isinstance(a, dict)]
    for agent in agents:
        if any(code == "author" for _, code in _codes(agent.get("type"))):
            return agent
    return agents[0] if agents else None


def _reference(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict) and (value.get("reference") or value.get("display")):
        return value
    return None


def records_of(
    resource: dict[str, Any],
    provenances: list[dict[str, Any]],
    listed: list[dict[str, Any]],
) -> list[Record]:
    """Who, where and when for one resource: one Record for each care setting that knows it.

    Who: the newest Provenance that targets it (its author agent, else its only agent, else
    its first), else ``performer`` / ``expressedBy``. Where: the care-setting extension and
    the settings of the Lists that rank it (``listed``, newest first), else the Provenance's
    ``location``, else the agent's ``onBehalfOf``. When: the effective date, else ``issued``,
    else the start date, else the Provenance's ``recorded``."""
    provenance = max(provenances, key=lambda p: str(p.get("recorded", "")), default=None)
    agent = _agent(provenance) if provenance else None
    recorder = _reference(agent.get("who")) if agent else None
    if recorder is None:
        if resource.get("resourceType") == "Goal":
            recorder = _reference(resource.get("expressedBy"))
        else:
            recorder = next(
                (r for r in map(_reference, resource.get("performer", []) or []) if r), None
            )
    date = (
        resource.get("effectiveDateTime")
        or resource.get("effectiveInstant")
        or (resource.get("effectivePeriod") or {}).get("start")
        or resource.get("issued")  # when it was made available: the merge orders by it too
        or resource.get("startDate")
        or (provenance or {}).get("recorded")
    )
    own_type = extension_value(resource, CARE_SETTING_TYPE, "valueCoding")
    settings: list[tuple[dict[str, Any] | None, Any]] = []
    own = _reference(extension_value(resource, CARE_SETTING, "valueReference"))
    if own is not None:
        settings.append((own, own_type))
    for source in listed:  # the same record ranked by another setting's List: it knows it too
        setting = _reference(extension_value(source, CARE_SETTING, "valueReference"))
        kind = extension_value(source, CARE_SETTING_TYPE, "valueCoding")
        if setting is not None and setting not in [s for s, _ in settings]:
            settings.append((setting, kind))
    if not settings and provenance is not None:
        where = _reference(provenance.get("location"))
        if where is None and agent is not None:
            where = _reference(agent.get("onBehalfOf"))
        settings.append((where, own_type))
    return [
        Record(
            resource,
            recorder,
            setting,
            kind if isinstance(kind, dict) else None,
            str(date) if date else None,
        )
        for setting, kind in settings or [(None, own_type)]
    ]


class _Groups:
    """Union-find over records: the same words, or the same identifier, is the same item."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, ref: str) -> str:
        while self.parent.setdefault(ref, ref) != ref:
            self.parent[ref] = self.parent[self.parent[ref]]
            ref = self.parent[ref]
        return ref

    def join(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def _keys(resource: dict[str, Any]) -> list[str]:
    kind = str(resource.get("resourceType"))
    keys = []
    said = normalised(words(resource))
    if said:
        keys.append(f"{kind}\x1fwords\x1f{said}")
    for identifier in resource.get("identifier", []) or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            keys.append(f"{kind}\x1fid\x1f{identifier.get('system', '')}|{identifier['value']}")
    return keys


def _group(records: list[Record], instance_id: str) -> list[list[Record]]:
    groups = _Groups()
    first: dict[str, str] = {}
    for record in records:
        groups.find(record.reference)
        for key in _keys(record.resource):
            if key in first:
                groups.join(record.reference, first[key])
            else:
                first[key] = record.reference
    together: dict[str, list[Record]] = {}
    for record in records:
        together.setdefault(groups.find(record.reference), []).append(record)
    for members in together.values():
        members.sort(key=lambda r: merge_order(r.resource, instance_id), reverse=True)
    return list(together.values())


def setting_key(setting: dict[str, Any] | None) -> str:
    """A stable key for the care setting, used in the setting's priorities List identifier."""
    if not setting:
        return "unspecified"
    if setting.get("reference"):
        return str(setting["reference"])
    return "display:" + re.sub(r"\s+", " ", str(setting.get("display", ""))).strip().lower()


def _ranker(source: dict[str, Any]) -> str:
    """Who ranks with a List, so that their newer List replaces their older one: its care
    setting (the extension); else its identifier (the same List sent again); else one
    unnamed ranker (an EHR posting a new List each time)."""
    setting = _reference(extension_value(source, CARE_SETTING, "valueReference"))
    if setting is not None:
        return setting_key(setting)
    for identifier in source.get("identifier", []) or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return f"id:{identifier.get('system', '')}|{identifier['value']}"
    return setting_key(None)


def _ranking(lists: list[dict[str, Any]], instance_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every reference the Lists rank, the most recently recorded List first (ties broken by
    ``merge_order``, the same on every instance), each with its List.

    Each ranker (``_ranker``) ranks once: by its newest List. An EHR that posts a new List each
    time the patient re-ranks (rather than updating one) has withdrawn what the older ones
    said. A List in ``changes`` mode (R4 list-mode: "a set of changes", not a whole list) ranks
    nothing."""
    ordered = sorted(lists, key=lambda r: merge_order(r, instance_id), reverse=True)
    seen: set[str] = set()
    ranked = []
    for source in ordered:
        if source.get("mode") == "changes":
            continue
        key = _ranker(source)
        if key in seen:
            continue
        seen.add(key)
        for entry in source.get("entry", []) or []:
            if not isinstance(entry, dict) or entry.get("deleted"):
                continue
            item = entry.get("item")
            if isinstance(item, dict) and item.get("reference"):
                ranked.append((plain_reference(item["reference"]), source))
    return ranked


def gather(
    lists: list[dict[str, Any]],
    resources: list[dict[str, Any]],
    provenances: list[dict[str, Any]],
    instance_id: str = "",
) -> list[Item]:
    """The patient's items: ranked ones in the merged order, then the not-yet-ranked, newest
    first. ``lists`` are the current Priorities Lists; ``resources`` the patient's Observations
    and Goals (those that are not about what matters are left out here); ``instance_id`` names
    this instance, the origin of the records that carry no origin tag."""
    statements = [r for r in resources if is_statement(r)]
    statement_refs = {reference_of(r) for r in statements}
    ranking = _ranking(lists, instance_id)
    goals = [r for r in resources if is_goal(r, statement_refs, {ref for ref, _ in ranking})]
    listed: dict[str, list[dict[str, Any]]] = {}
    for ref, source in ranking:
        listed.setdefault(ref, []).append(source)  # the newest List first
    targets: dict[str, list[dict[str, Any]]] = {}
    for provenance in provenances:
        for target in provenance.get("target", []) or []:
            if isinstance(target, dict):
                ref = plain_reference(target.get("reference"))
                targets.setdefault(ref, []).append(provenance)

    def records(found: list[dict[str, Any]]) -> list[Record]:
        return [
            record
            for r in found
            for record in records_of(
                r, targets.get(reference_of(r), []), listed.get(reference_of(r), [])
            )
        ]

    statement_items = [Item("statement", g) for g in _group(records(statements), instance_id)]
    goal_items = [Item("goal", g) for g in _group(records(goals), instance_id)]
    place: dict[str, int] = {}
    for position, (ref, _) in enumerate(ranking):
        place.setdefault(ref, position)
    for item in [*statement_items, *goal_items]:
        found = [place[r] for r in item.references if r in place]
        item.position = min(found) if found else None
    owner = {ref: item for item in statement_items for ref in item.references}
    alone = []
    for goal in goal_items:
        addressed_items = {
            id(owner[r]): owner[r] for r in goal.references_addressed() if r in owner
        }
        if not addressed_items:
            alone.append(goal)
            continue
        home = min(addressed_items.values(), key=item_order)
        home.goals.append(goal)
        if goal.position is not None and (home.position is None or goal.position < home.position):
            home.position = goal.position
    top = [*statement_items, *alone]
    for item in top:
        item.goals.sort(key=item_order)
    ranked = sorted((i for i in top if i.position is not None), key=item_order)
    waiting = sorted((i for i in top if i.position is None), key=lambda i: i.newest, reverse=True)
    return ranked + waiting


def item_order(item: Item) -> tuple[int, int, str]:
    """Ranked items first, in their rank; the others after."""
    if item.position is None:
        return (1, 0, "")
    return (0, item.position, "")
