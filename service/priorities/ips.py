"""``Patient/{id}/$summary``: the patient's International Patient Summary (IPS 2.0.0).

A document Bundle: the Composition first, then the Patient, the author and custodian (from the
Provenance of the latest recording), every record of what the patient said (statement
Observations, Goals, the Priorities Lists that rank them, their Provenances) and a CarePlan
holding the goals. Its sections:

- Patient Story (LOINC 81338-6): the patient's words verbatim in the narrative, HTML-escaped,
  in rank order, with who heard them, where and when; the records as entries;
- Plan of Care (LOINC 18776-5): the goals, through the CarePlan (the only entry IPS allows
  there besides ImmunizationRecommendation and DocumentReference);
- Problems, Allergies, Medications (the sections IPS requires): ``emptyReason`` unavailable
  and a narrative saying this service is not a full health record.

Every reference inside the document resolves inside it: stored resources are named by their
absolute URL here, the generated ones by ``urn:uuid``; a reference to anything the document
does not carry (a ``Practitioner/...`` the service never held) keeps only its display.
Before it leaves, the document is checked against the IPS profiles (``DocumentChecker``); one
that does not conform is a 500, never sent.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from html import escape
from typing import Any, cast

from service.errors import FhirError, Issue
from service.fhir.actor import Actor
from service.fhir.model import ORIGIN_TAG_SYSTEM, instance_uri, instant, now_us, origin_of
from service.fhir.references import replace_references
from service.fhir.results import Result
from service.priorities.codes import LOINC, coding
from service.priorities.items import gather, plain_reference, reference_of
from service.priorities.operations import WhatMatters
from service.priorities.view import priorities
from service.validation.packages import IPS_BUNDLE, DocumentChecker

log = logging.getLogger(__name__)

XHTML = "http://www.w3.org/1999/xhtml"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
DATA_ABSENT = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
PATIENT_STORY = "81338-6"
PLAN_OF_CARE = "18776-5"
SUMMARY_TYPE = "60591-5"
# the sections IPS requires, which this service never holds: (code, display, title, what)
REQUIRED_EMPTY = (
    ("11450-4", "Problem list - Reported", "Problem List", "health problems"),
    (
        "48765-2",
        "Allergies and adverse reactions Document",
        "Allergies and Intolerances",
        "allergies and intolerances",
    ),
    ("10160-0", "History of Medication use Narrative", "Medication Summary", "medicines"),
)
NOT_AN_EHR = (
    "This summary comes from What Matters, a service that records what matters to the patient "
    "and the goals set from it. It is not a full health record and holds no information "
    "about the patient's {what}: ask the patient's other care providers."
)
# the document's own resources are named from these, so the same content gives the same ids
_NAMESPACE = uuid.UUID("6b1f6f0e-2d2c-4f6e-9a53-3a6c1c5e0f24")


class SummaryNotConformant(FhirError):
    """A generated document failed the IPS profiles: a fault of this service (500)."""

    status = 500
    code = "exception"


class Summaries:
    """Build, check and serve IPS documents of patients' priorities."""

    def __init__(
        self,
        operations: WhatMatters,
        checker: DocumentChecker | Callable[[], DocumentChecker | None] | None,
        clock: Callable[[], int] = now_us,
    ) -> None:
        """``checker`` may be a loader, called once on the first document: reading the IPS
        packages takes seconds, which a process that never makes a summary should not pay."""
        self.operations = operations
        self._checker: DocumentChecker | None = None
        self._load: Callable[[], DocumentChecker | None] | None = None
        if checker is None or hasattr(checker, "validate"):  # a checker (or a stand-in)
            self._checker = cast("DocumentChecker | None", checker)
        else:
            self._load = checker
        self._lock = threading.Lock()
        self.clock = clock

    @property
    def checker(self) -> DocumentChecker | None:
        """The IPS 2.0.0 check (None when the package is not there: documents go unchecked)."""
        if self._load is not None:
            with self._lock:
                if self._load is not None:
                    self._checker = self._load()
                    self._load = None
        return self._checker

    def summary(self, actor: Actor, patient_id: str, base: str) -> Result:
        """``$summary``: the checked document (500 when it does not conform)."""
        return Result(200, body=self.document(actor, patient_id, base))

    def document(self, actor: Actor, patient_id: str, base: str) -> dict[str, Any]:
        """The patient's IPS document, checked against IPS 2.0.0 when the package is loaded."""
        operations = self.operations
        with operations.fhir.session(actor) as session:
            patient_json = operations.patient_resource(session, patient_id)
            lists, resources, provenances = operations.sources(session, patient_id, base)
            merged = operations.merged_bundle(session, patient_id, base)
        items = gather(lists, resources, provenances, operations.fhir.instance_id)
        records = [
            record.resource
            for item in items
            for each in [item, *item.goals]
            for record in each.records
        ]
        shown = {reference_of(r) for r in [*records, *lists]}
        provenances = [
            p
            for p in provenances
            if {plain_reference(t.get("reference")) for t in p.get("target", [])} & shown
        ]
        document = build_document(
            patient_json,
            priorities(merged)["priorities"],
            records,
            lists,
            provenances,
            base,
            operations.fhir.instance_id,
            instant(self.clock()),
        )
        self.check(document)
        return document

    def check(self, document: dict[str, Any]) -> None:
        """Raise SummaryNotConformant when the document fails IPS 2.0.0."""
        if self.checker is None:
            return
        issues = self.checker.validate(document)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            log.error("an IPS document failed IPS 2.0.0: %s", [i.diagnostics for i in errors])
            lead = f"The summary does not conform to {IPS_BUNDLE}: {errors[0].diagnostics}"
            raise SummaryNotConformant(
                lead,
                issues=[
                    Issue("error", "exception", lead),
                    *(Issue(i.severity, "exception", i.diagnostics, i.expression) for i in errors),
                ],
            )


def _uuid(*parts: str) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, '|'.join(parts))}"


def _div(body: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="{XHTML}">{body}</div>'}


_RTL = {"ar", "arc", "ckb", "dv", "fa", "he", "iw", "ks", "ku", "ps", "sd", "ug", "ur", "yi"}


def direction(language: str | None) -> str:
    """``rtl`` or ``ltr`` for a known language, ``auto`` when it is not known."""
    if not language:
        return "auto"
    return "rtl" if language.split("-", 1)[0].lower() in _RTL else "ltr"


def words_span(text: str, language: str | None, style: str = "") -> str:
    """The patient's words as a span in their own language and direction (an isolated run:
    right-to-left words keep their order inside a left-to-right sentence)."""
    lang = f' lang="{escape(language)}"' if language else ""
    styled = f' style="{style}"' if style else ""
    return (
        f'<span class="words"{styled}{lang} dir="{direction(language)}">{words_html(text)}</span>'
    )


def words_html(text: str) -> str:
    """The patient's words as XHTML text: escaped, with carriage returns kept as ``&#13;``
    (an XML parser would otherwise fold ``\\r\\n`` into ``\\n``)."""
    return escape(text, quote=False).replace("\r", "&#13;")


def _who_where_when(record: dict[str, Any]) -> str:
    parts = []
    if record.get("recordedBy"):
        parts.append(f"heard by {escape(str(record['recordedBy']))}")
    if record.get("setting"):
        where = str(record["setting"])
        if record.get("settingType"):
            where += f" ({record['settingType']})"
        parts.append(f"at {escape(where)}")
    if record.get("date"):
        parts.append(f"on {escape(str(record['date']))}")
    return ", ".join(parts) or "recorded"


def story_narrative(view: list[dict[str, Any]]) -> dict[str, str]:
    """The Patient Story: every item's words, in rank order, with every record's who, where
    and when, and the goals set from it."""
    if not view:
        return _div("<p>The patient has not yet said what matters to them.</p>")
    rows = []
    for item in view:
        kind = "Goal" if item["kind"] == "goal" else "What matters"
        records = "".join(f"<li>{_who_where_when(r)}</li>" for r in item.get("records", []))
        goals = "".join(
            f"<li>Goal: {words_span(g['text'], g.get('language'))}"
            f" ({escape(str(g.get('status') or ''))})</li>"
            for g in item.get("goals", [])
        )
        # an unranked item has a place in the list, not a rank the patient gave it
        placed = f"rank {item['rank']}" if item["ranked"] else "not yet ranked"
        rows.append(
            f"<li><p>{kind} ({placed}): "
            f"{words_span(item['text'], item.get('language'), 'white-space: pre-wrap')}</p>"
            f"<ul>{records}</ul>{f'<ul>{goals}</ul>' if goals else ''}</li>"
        )
    intro = "<p>What matters to the patient, in their own words, most important first.</p>"
    return _div(f"{intro}<ol>{''.join(rows)}</ol>")


def plan_narrative(view: list[dict[str, Any]]) -> dict[str, str]:
    """The Plan of Care: each goal, its status, priority and target, and what it answers."""
    rows = []
    for item in view:
        goals = (
            [(item["text"], item)]
            if item["kind"] == "goal"
            else [(g["text"], g) for g in item["goals"]]
        )
        for text, goal in goals:
            details = [str(goal.get("status") or "")]
            if goal.get("priority"):
                details.append(f"{goal['priority']} priority")
            if goal.get("targetDate"):
                details.append(f"by {goal['targetDate']}")
            answered = words_span(item["text"], item.get("language"))
            answers = "" if item["kind"] == "goal" else f" (for: {answered})"
            rows.append(
                f"<li>{words_span(text, goal.get('language'))}"
                f" — {escape(', '.join(d for d in details if d))}{answers}</li>"
            )
    if not rows:
        return _div("<p>No goals have been recorded yet.</p>")
    # "agreed" only where the status says so: a proposed goal is not yet agreed
    return _div(f"<p>The patient's goals, each with its status.</p><ul>{''.join(rows)}</ul>")


def _latest_recording(provenances: list[dict[str, Any]]) -> dict[str, Any] | None:
    dated = [p for p in provenances if p.get("recorded")]
    return max(dated, key=lambda p: str(p["recorded"]), default=None)


def _agent(provenance: dict[str, Any] | None, role: str) -> dict[str, Any] | None:
    for agent in (provenance or {}).get("agent", []) or []:
        codes = {c.get("code") for c in (agent.get("type") or {}).get("coding", [])}
        if role in codes and isinstance(agent.get("who"), dict):
            who: dict[str, Any] = agent["who"]
            return who
    return None


def _name(reference: dict[str, Any] | None, fallback: str) -> str:
    if not reference:
        return fallback
    return str(reference.get("display") or reference.get("reference") or fallback)


def ips_patient(patient: dict[str, Any]) -> dict[str, Any]:
    """The Patient as IPS needs it: a name and a birth date, said to be unknown when absent."""
    body = {k: v for k, v in patient.items() if k != "meta"}
    if not any(
        isinstance(n, dict) and (n.get("family") or n.get("given") or n.get("text"))
        for n in body.get("name") or []
    ):
        body["name"] = [{"text": "Name not recorded"}]
    if not body.get("birthDate"):
        body["_birthDate"] = {
            "extension": [{"url": DATA_ABSENT, "valueCode": "unknown"}],
        }
    return body


def _sourced(resource: dict[str, Any], instance_id: str) -> dict[str, Any]:
    """A stored resource as the document carries it: where it began (meta.source and the origin
    tag, as the outbox stamps what it sends), its profiles."""
    meta = {
        k: v for k, v in (resource.get("meta") or {}).items() if k in ("profile", "lastUpdated")
    }
    meta["source"] = f"{instance_uri(instance_id)}#{reference_of(resource)}"
    meta["tag"] = [{"system": ORIGIN_TAG_SYSTEM, "code": origin_of(resource) or instance_id}]
    return {**resource, "meta": meta}


def _empty_section(code: str, display: str, title: str, what: str) -> dict[str, Any]:
    return {
        "title": title,
        "code": {"coding": [coding(LOINC, code, display)]},
        "text": _div(f"<p>{escape(NOT_AN_EHR.format(what=what), quote=False)}</p>"),
        "emptyReason": {
            "coding": [coding(EMPTY_REASON, "unavailable", "Unavailable")],
            "text": "No information available",
        },
    }


def build_document(
    patient: dict[str, Any],
    view: list[dict[str, Any]],
    records: list[dict[str, Any]],
    lists: list[dict[str, Any]],
    provenances: list[dict[str, Any]],
    base: str,
    instance_id: str,
    now: str,
) -> dict[str, Any]:
    """The IPS document Bundle (see the module's docstring)."""
    patient_url = f"{base}/Patient/{patient['id']}"
    stored = [*records, *lists, *provenances]
    urls = {"Patient/" + str(patient["id"]): patient_url}
    urls.update({reference_of(r): f"{base}/{reference_of(r)}" for r in stored})

    def resolve(element: dict[str, Any]) -> dict[str, Any] | None:
        ref = plain_reference(element.get("reference"))
        if ref in urls:
            return {**element, "reference": urls[ref]}
        kept = {k: v for k, v in element.items() if k != "reference"}
        kept.setdefault("display", str(element.get("reference")))
        return kept

    latest = _latest_recording(provenances)
    author_ref = _agent(latest, "author")
    custodian_ref = _agent(latest, "custodian") or (latest or {}).get("location")
    entries: list[dict[str, Any]] = []
    if author_ref and plain_reference(author_ref.get("reference")) in urls:
        author = {"reference": urls[plain_reference(author_ref.get("reference"))]}
    else:
        name = _name(author_ref, "What Matters")
        kind = "Practitioner" if author_ref else "Organization"
        author_url = _uuid(instance_id, kind, name)  # the same one is named once
        author_body: dict[str, Any] = {"resourceType": kind, "id": author_url[9:]}
        author_body["name"] = [{"text": name}] if kind == "Practitioner" else name
        entries.append({"fullUrl": author_url, "resource": author_body})
        author = {"reference": author_url, "display": name}
    custodian_name = _name(custodian_ref, "What Matters")
    custodian_url = _uuid(instance_id, "Organization", custodian_name)
    if not any(e["fullUrl"] == custodian_url for e in entries):
        organization = {"resourceType": "Organization", "id": custodian_url[9:]}
        entries.append(
            {"fullUrl": custodian_url, "resource": {**organization, "name": custodian_name}}
        )
    subject = {"reference": patient_url}
    goals = [r for r in records if r.get("resourceType") == "Goal"]
    care_plan_url = _uuid(instance_id, "care-plan", str(patient["id"]))
    care_plan = {
        "resourceType": "CarePlan",
        "id": care_plan_url[9:],
        "text": plan_narrative(view),
        "status": "active",
        "intent": "plan",
        "title": "Goals from what matters to the patient",
        "subject": subject,
        "goal": [{"reference": urls[reference_of(g)]} for g in goals],
    }
    if not goals:
        del care_plan["goal"]
    story_entries = [{"reference": urls[reference_of(r)]} for r in [*records, *lists]]
    story: dict[str, Any] = {
        "title": "Patient Story: what matters to me",
        "code": {"coding": [coding(LOINC, PATIENT_STORY, "Patient Story")]},
        "author": [subject],
        "text": story_narrative(view),
    }
    if story_entries:
        story["entry"] = story_entries
    else:
        story["emptyReason"] = {"coding": [coding(EMPTY_REASON, "nilknown", "Nil Known")]}
    plan = {
        "title": "Plan of Care",
        "code": {"coding": [coding(LOINC, PLAN_OF_CARE, "Plan of care note")]},
        "text": plan_narrative(view),
        "entry": [{"reference": care_plan_url}],
    }
    document_id = str(uuid.uuid4())
    composition_url = f"urn:uuid:{document_id}"
    composition = {
        "resourceType": "Composition",
        "id": document_id,
        "text": _div(
            "<p>International Patient Summary of what matters to the patient, from What "
            "Matters: the patient's story in their own words and the goals set from it.</p>"
        ),
        "identifier": {"system": "urn:ietf:rfc:3986", "value": composition_url},
        "status": "final",
        "type": {"coding": [coding(LOINC, SUMMARY_TYPE, "Patient summary Document")]},
        "subject": subject,
        "date": now,
        "author": [author],
        "title": "International Patient Summary: what matters to me",
        "confidentiality": "N",
        "custodian": {"reference": custodian_url, "display": custodian_name},
        "section": [
            *(_empty_section(*section) for section in REQUIRED_EMPTY),
            story,
            plan,
        ],
    }
    bundle_entries = [
        {"fullUrl": composition_url, "resource": composition},
        {"fullUrl": patient_url, "resource": replace_references(ips_patient(patient), resolve)},
        *entries,
        *(
            {
                "fullUrl": urls[reference_of(r)],
                "resource": replace_references(_sourced(r, instance_id), resolve),
            }
            for r in stored
        ),
        {"fullUrl": care_plan_url, "resource": care_plan},
    ]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [IPS_BUNDLE]},
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": now,
        "entry": bundle_entries,
    }


__all__ = ["Summaries", "SummaryNotConformant", "build_document"]
