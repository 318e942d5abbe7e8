"""The two what-matters operations over the FHIR core.

- ``$record-what-matters`` (``POST /fhir/Patient/{id}/$record-what-matters``, or
  ``POST /fhir/Patient/$record-what-matters`` with ``patient-identifier``)
- ``$what-matters`` (``GET /fhir/Patient/{id}/$what-matters[?history=true]``)

Both are described by OperationDefinitions in ``profiles/``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from service.errors import (
    FhirError,
    Issue,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from service.fhir.bundles import process_bundle
from service.fhir.interactions import FhirService
from service.fhir.model import instant, now_us, origin_of
from service.fhir.results import Result
from service.priorities.codes import (
    CARE_SETTING,
    CARE_SETTING_TYPE,
    LIST_PROFILE,
    LOINC,
    PRIORITIES_CODE,
    STATEMENT_CODE,
    extension_value,
)
from service.priorities.record import (
    Conversation,
    build_transaction,
    goal_status_updates,
    item_identifier,
    list_entries,
    list_identifier,
    parse_conversation,
    ranking_order,
    token,
)

ATTEMPTS = 3  # a List updated by two conversations at once: the loser reads it again


@dataclass
class Ranked:
    """One merged priority: the chosen resource, where it came from, and its companions."""

    resource: dict[str, Any]
    settings: list[dict[str, Any]] = field(default_factory=list)  # each setting that knows it
    setting_types: list[str] = field(default_factory=list)


class WhatMatters:
    """Record conversations and serve merged, ranked priorities."""

    def __init__(self, fhir: FhirService, clock: Callable[[], int] = now_us) -> None:
        self.fhir = fhir
        self.clock = clock

    # -- $record-what-matters ---------------------------------------------------------------

    def record(self, patient_id: str | None, body: Any, base: str) -> Result:
        """Record one conversation in one transaction; 422 naming the input on any problem."""
        conversation = parse_conversation(body)
        patient_id = self.patient_id(patient_id, conversation)
        for attempt in range(ATTEMPTS):
            current = self._current_list(patient_id, conversation, base)
            found = self._stored_items(conversation, patient_id, base)
            now = instant(self.clock())
            updates = goal_status_updates(conversation, found, (conversation.recorded or now)[:10])
            unchanged = None if updates else self._unchanged(conversation, found, current, base)
            if unchanged is not None:
                return unchanged
            known = {key: f"{r['resourceType']}/{r['id']}" for key, r in found.items()}
            bundle, origins = build_transaction(
                conversation, patient_id, now, current, known, updates
            )
            try:
                with self.fhir.provenance_supplied():  # the Bundle holds the recorder's
                    return process_bundle(self.fhir, bundle, base, "representation")
            except PreconditionFailed:
                if attempt == ATTEMPTS - 1:
                    raise
            except FhirError as error:
                if error.status not in (400, 422):
                    raise
                raise _named_after_input(error, origins) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _stored_items(
        self, conversation: Conversation, patient_id: str, base: str
    ) -> dict[str, dict[str, Any]]:
        """The statements and goals of the conversation that are stored already, by key."""
        found: dict[str, dict[str, Any]] = {}
        for item in conversation.items:
            identifier = item_identifier(item, patient_id, conversation.setting)
            type_ = "Observation" if item.kind == "statement" else "Goal"
            matches = self._search(type_, [("identifier", token(identifier))], base)
            if len(matches) == 1:
                found[item.key] = matches[0]
        return found

    def _unchanged(
        self,
        conversation: Conversation,
        found: dict[str, dict[str, Any]],
        current: dict[str, Any] | None,
        base: str,
    ) -> Result | None:
        """The answer, when every item exists already and the ranking would not change.

        Recording the same conversation again then writes nothing: no new List version and
        no new Provenance (a retry after a lost response is harmless).
        """
        if current is None or len(found) != len(conversation.items):
            return None
        refs = {key: f"{r['resourceType']}/{r['id']}" for key, r in found.items()}
        if ranking_order(conversation, refs, current) != list_entries(current):
            return None
        entries = [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "response": {
                    "status": "200 OK",
                    "location": f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}",
                    "etag": f'W/"{r["meta"]["versionId"]}"',
                    "lastModified": r["meta"]["lastUpdated"],
                },
            }
            for r in [*found.values(), current]
        ]
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "transaction-response",
            "meta": {"lastUpdated": instant(self.clock())},
            "entry": entries,
        }
        return Result(200, body=bundle)

    def patient_id(self, patient_id: str | None, conversation: Conversation) -> str:
        """The id of the patient: from the URL, or found by ``patient-identifier``."""
        if patient_id is not None:
            self.fhir.read("Patient", patient_id)  # 404 or 410 when there is no such patient
            return patient_id
        identifier = conversation.patient_identifier
        if identifier is None:
            raise Unprocessable(
                "Say whose conversation this is: POST to Patient/{id}/$record-what-matters, "
                "or give 'patient-identifier'",
                expression=("Parameters",),
            )
        return self.patient_by_identifier(identifier)

    def patient_by_identifier(self, identifier: dict[str, Any]) -> str:
        """The id of the one Patient with ``identifier``: 404 for none, 422 for several."""
        found = self._search("Patient", [("identifier", token(identifier))], "")
        shown = f"{identifier.get('system', '')}|{identifier['value']}"
        if not found:
            raise NotFound(f"No Patient has the identifier {shown}; create the Patient first")
        if len(found) > 1:
            raise Unprocessable(
                f"{len(found)} Patients have the identifier {shown}; it must name one patient",
                expression=("Parameters.parameter",),
            )
        return str(found[0]["id"])

    def _current_list(
        self, patient_id: str, conversation: Conversation, base: str
    ) -> dict[str, Any] | None:
        identifier = list_identifier(patient_id, conversation.setting)
        found = self._search("List", [("identifier", token(identifier))], base)
        return found[0] if found else None

    # -- $what-matters --------------------------------------------------------------------

    def what_matters(self, patient_id: str, history: bool, base: str) -> Result:
        """The patient's merged priorities: a Bundle of the ranked List and what it names."""
        patient = self.fhir.read("Patient", patient_id).stored
        assert patient is not None
        lists = [
            r
            for r in self._search(
                "List",
                [
                    ("subject", f"Patient/{patient_id}"),
                    ("code", f"{LOINC}|{PRIORITIES_CODE}"),
                    ("status", "current"),
                ],
                base,
            )
        ]
        goals = self._search(
            "Goal",
            [("patient", f"Patient/{patient_id}"), ("_revinclude", "Provenance:target")],
            base,
            keep_includes=True,
        )
        statements = self._search(
            "Observation",
            [
                ("patient", f"Patient/{patient_id}"),
                ("code", f"{LOINC}|{STATEMENT_CODE}"),
                ("_revinclude", "Provenance:target"),
            ],
            base,
            keep_includes=True,
        )
        resources = [r for r in goals + statements if r.get("resourceType") != "Provenance"]
        provenances = {
            r["id"]: r for r in goals + statements if r.get("resourceType") == "Provenance"
        }
        ranked = merge(lists, resources, self.fhir.instance_id)
        merged_list = _merged_list(patient_id, ranked, lists, instant(self.clock()))
        entries = [_entry(base, merged_list)]
        chosen_refs = set()
        for item in ranked:
            entries.append(_entry(base, item.resource))
            chosen_refs.add(f"{item.resource['resourceType']}/{item.resource['id']}")
        # goals and statements no list names yet are still the patient's
        for resource in resources:
            ref = f"{resource['resourceType']}/{resource['id']}"
            if ref not in chosen_refs and not _superseded(resource, ranked):
                entries.append(_entry(base, resource))
                chosen_refs.add(ref)
        for source in lists:
            entries.append(_entry(base, source))
        for provenance in provenances.values():
            targets = {str(t.get("reference", "")) for t in provenance.get("target", [])}
            if targets & chosen_refs:
                entries.append(_entry(base, provenance))
        if history:
            for source in lists:
                entries += self._list_history(source, base)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": instant(self.clock()),
            "entry": entries,
        }
        return Result(200, body=bundle)

    def _list_history(self, source: dict[str, Any], base: str) -> list[dict[str, Any]]:
        result = self.fhir.history("List", str(source["id"]), [("_count", "1000")], base)
        body = result.body or json.loads(result.text or "{}")
        earlier = []
        for entry in body.get("entry", []):
            resource = entry.get("resource")
            if not resource or resource.get("meta", {}).get("versionId") == source.get(
                "meta", {}
            ).get("versionId"):
                continue
            version = resource["meta"]["versionId"]
            earlier.append(
                {
                    "fullUrl": f"{base}/List/{resource['id']}/_history/{version}",
                    "resource": resource,
                    "search": {"mode": "include"},
                }
            )
        return earlier

    def _search(
        self,
        type_: str,
        params: list[tuple[str, str]],
        base: str,
        keep_includes: bool = False,
    ) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        params = [*params, ("_count", "1000")]
        while True:
            result = self.fhir.search_type(type_, params, base or "urn:local", strict=True)
            body = result.body or json.loads(result.text or "{}")
            for entry in body.get("entry", []):
                mode = entry.get("search", {}).get("mode", "match")
                if mode == "match" or keep_includes:
                    found.append(entry["resource"])
            following = [link for link in body.get("link", []) if link.get("relation") == "next"]
            if not following or len(found) > 20000:
                return found
            params = parse_qsl(urlsplit(following[0]["url"]).query, keep_blank_values=True)


def _named_after_input(error: FhirError, origins: dict[int, str]) -> Unprocessable:
    """The same problems, each also naming the input parameter the resource came from."""
    issues = []
    for issue in error.outcome_issues():
        where = list(issue.expression)
        for expression in issue.expression:
            if expression.startswith("Bundle.entry["):
                index = int(expression[len("Bundle.entry[") :].split("]", 1)[0])
                origin = origins.get(index)
                if origin is not None:
                    where.insert(0, origin)
                break
        issues.append(Issue(issue.severity, issue.code, issue.diagnostics, tuple(where)))
    lead = next((i for i in issues if i.severity in ("error", "fatal")), None)
    return Unprocessable(
        "What would be recorded does not meet the WMTY profiles: "
        + (lead.diagnostics if lead else error.diagnostics),
        issues=issues,
    )


def _identity(resource: dict[str, Any]) -> str:
    """What makes two records the same item in every setting: the first identifier."""
    for identifier in resource.get("identifier", []) or []:
        if isinstance(identifier, dict) and identifier.get("value"):
            return f"{identifier.get('system', '')}|{identifier['value']}"
    return f"{resource['resourceType']}/{resource['id']}"


# when each kind of record was made, in content every copy of it shares
_RECORDED = {
    "List": ("date",),
    "Observation": ("issued", "effectiveDateTime"),
    "Goal": (
        "statusDate",
        "startDate",
    ),
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


def merge_order(resource: dict[str, Any], instance_id: str = "") -> tuple[str, str, str]:
    """The tie-break key of the merge: the recorded time, then the instance that originated the
    record (its origin tag; ``instance_id`` for this instance's own), then its identifier.

    Every key is content that travels with the record, never the local ``lastUpdated``
    (arrival time) unless the record has no recorded time at all, so every instance holding
    the same records shows the same order.
    """
    recorded = next(
        (
            resource[name]
            for name in _RECORDED.get(resource.get("resourceType", ""), ())
            if resource.get(name)
        ),
        # a record without a recorded time (written over REST) has only its local one
        (resource.get("meta") or {}).get("lastUpdated", ""),
    )
    return _moment(recorded), origin_of(resource) or instance_id, _identity(resource)


def merge(
    lists: list[dict[str, Any]], resources: list[dict[str, Any]], instance_id: str = ""
) -> list[Ranked]:
    """Merge several settings' rankings into one.

    The most recently recorded List (by ``List.date``) ranks first; items only older Lists know
    follow, in their order; an item known by several settings (same identifier) appears once,
    as its most recently recorded record, with every setting that knows it. Ties are broken by
    ``merge_order``, the same on every instance.
    """
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    newest: dict[str, dict[str, Any]] = {}
    for resource in resources:
        key = _identity(resource)
        if key not in newest or merge_order(resource, instance_id) > merge_order(
            newest[key], instance_id
        ):
            newest[key] = resource
    ordered = sorted(lists, key=lambda r: merge_order(r, instance_id), reverse=True)
    ranked: dict[str, Ranked] = {}
    for source in ordered:
        setting = extension_value(source, CARE_SETTING, "valueReference")
        setting_type = extension_value(source, CARE_SETTING_TYPE, "valueCoding")
        for entry in source.get("entry", []) or []:
            if entry.get("deleted"):
                continue
            found = by_ref.get(str(entry.get("item", {}).get("reference", "")))
            if found is None:
                continue  # deleted since, or not a what-matters goal or statement
            key = _identity(found)
            item = ranked.setdefault(key, Ranked(newest.get(key, found)))
            if setting and setting not in item.settings:
                item.settings.append(setting)
            code = (setting_type or {}).get("code")
            if code and code not in item.setting_types:
                item.setting_types.append(code)
    return list(ranked.values())


def _superseded(resource: dict[str, Any], ranked: list[Ranked]) -> bool:
    key = _identity(resource)
    return any(_identity(item.resource) == key for item in ranked)


def _merged_list(
    patient_id: str, ranked: list[Ranked], lists: list[dict[str, Any]], now: str
) -> dict[str, Any]:
    entries = []
    for item in ranked:
        entry: dict[str, Any] = {
            "item": {"reference": f"{item.resource['resourceType']}/{item.resource['id']}"}
        }
        extensions = [{"url": CARE_SETTING, "valueReference": s} for s in item.settings]
        if extensions:
            entry["extension"] = extensions
        entries.append(entry)
    sources = ", ".join(f"List/{source['id']}" for source in lists) or "none"
    merged: dict[str, Any] = {
        "resourceType": "List",
        "meta": {
            "profile": [LIST_PROFILE],
            "tag": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "merged view, not stored",
                }
            ],
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">What matters to this patient, '
            f"merged from {len(lists)} care setting(s): {sources}</div>",
        },
        "status": "current",
        "mode": "working",
        "title": "What matters to me",
        "code": {"coding": [{"system": LOINC, "code": PRIORITIES_CODE}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": now,
        "source": {"display": "What Matters: merged from every care setting"},
        "orderedBy": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/list-order", "code": "priority"}
            ]
        },
    }
    if entries:
        merged["entry"] = entries
    return merged


def _entry(base: str, resource: dict[str, Any]) -> dict[str, Any]:
    if "id" not in resource:  # the merged List is a view: it has no id, nothing to read back
        return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource}
    return {"fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}", "resource": resource}
