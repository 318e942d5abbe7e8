"""Read an International Patient Summary back: its Patient Story and Plan of Care become
statements, goals and ranking here (``whatmatters import --ips FILE``).

What is read: the Composition's subject (the Patient, found here by identifier or created),
the Patient Story section's entries (statement Observations, Goals, Priorities Lists), the
Plan of Care's CarePlans and the Goals they hold, and the Provenances in the document that
target any of them (who recorded what, where and when). Everything is written in one
transaction through the same validation as any write: Observations, Goals and Lists by
conditional update on their identifier (one naming the document entry when they have none),
Provenances created once (found again by their ``meta.source``), so importing a document
twice writes nothing twice. References inside the document are rewritten to what they name
here; a reference to something not imported keeps its display. ``meta.source`` names the
entry's URL in the document and the origin tag travels, so the merged view at this instance
orders what was imported as the instance that recorded it does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from service.errors import BadRequest, FhirError
from service.fhir.actor import Actor
from service.fhir.bundles import resolve_conditional_references
from service.fhir.interactions import FhirService
from service.fhir.model import ORIGIN_TAG_SYSTEM, origin_of, parse_json
from service.fhir.references import replace_references
from service.fhir.session import Session
from service.priorities.ips import PATIENT_STORY, PLAN_OF_CARE
from service.priorities.record import token
from service.validation.bundle_rules import bundle_target

URI_SYSTEM = "urn:ietf:rfc:3986"
# dependencies first: Goals address Observations; Lists hold both; Provenances target them all
ORDER = ("Observation", "Goal", "List")


@dataclass
class DocumentImport:
    """What an import of a document read and wrote."""

    patient: str = ""
    read: dict[str, int] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    unchanged: int = 0


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _section(composition: dict[str, Any], code: str) -> dict[str, Any]:
    for section in _dicts(composition.get("section")):
        codes = {c.get("code") for c in _dicts((section.get("code") or {}).get("coding"))}
        if code in codes:
            return section
    return {}


def _identifier(resource: dict[str, Any], url: str) -> dict[str, str]:
    for item in _dicts(resource.get("identifier")):
        if item.get("system") and item.get("value"):
            return {"system": str(item["system"]), "value": str(item["value"])}
    return {"system": URI_SYSTEM, "value": url}


def _criteria(identifier: dict[str, str]) -> str:
    return urlencode({"identifier": token(identifier)})


def _display(resource: dict[str, Any] | None) -> str | None:
    if resource is None:
        return None
    name = resource.get("name")
    if isinstance(name, str):
        return name
    for item in _dicts(name):
        text = item.get("text") or " ".join([*item.get("given", []), item.get("family", "")])
        if text.strip():
            return str(text).strip()
    return None


class DocumentReader:
    """One IPS document, read into what this service stores."""

    def __init__(self, document: Any) -> None:
        if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
            raise BadRequest("An IPS document is a Bundle", expression=("Bundle",))
        if document.get("type") != "document":
            raise BadRequest("The Bundle is not a document", expression=("Bundle.type",))
        entries = _dicts(document.get("entry"))
        self.by_url = {
            str(e["fullUrl"]): e["resource"]
            for e in entries
            if isinstance(e.get("resource"), dict) and e.get("fullUrl")
        }
        # what a reference may name: a fullUrl, or the Type/id of an entry's resource
        self._keys = {url: url for url in self.by_url} | {
            f"{r.get('resourceType')}/{r['id']}": url
            for url, r in self.by_url.items()
            if isinstance(r.get("id"), str)
        }
        composition = entries[0].get("resource") if entries else None
        composition_url = str(entries[0].get("fullUrl")) if entries else None
        if not isinstance(composition, dict) or composition.get("resourceType") != "Composition":
            raise BadRequest(
                "The document's first entry must be its Composition",
                expression=("Bundle.entry[0]",),
            )
        self.composition = composition
        self.composition_url = composition_url
        subject = self.url_of((composition.get("subject") or {}).get("reference"), composition_url)
        patient = self.by_url.get(subject or "")
        if subject is None or patient is None or patient.get("resourceType") != "Patient":
            raise BadRequest(
                "The Composition's subject is not a Patient in the document",
                expression=("Composition.subject",),
            )
        self.patient_url, self.patient = subject, patient

    def url_of(self, reference: Any, within: str | None) -> str | None:
        """The fullUrl of the entry a reference made in the entry ``within`` names, resolved
        as bundle.html#references says (absolute, relative to a RESTful fullUrl, by type and
        id, or a ``urn:uuid:``); None when it names no entry."""
        if not isinstance(reference, str):
            return None
        key, _ = bundle_target(reference, within, self._keys)
        return self._keys[key] if key is not None else None

    def chosen(self) -> list[tuple[str, dict[str, Any]]]:
        """(fullUrl, resource) of every statement, goal and list the document's Patient Story
        and Plan of Care hold, in write order."""
        here = self.composition_url
        story = _section(self.composition, PATIENT_STORY)
        urls = [self.url_of(e.get("reference"), here) for e in _dicts(story.get("entry"))]
        plan = _section(self.composition, PLAN_OF_CARE)
        for entry in _dicts(plan.get("entry")):
            plan_url = self.url_of(entry.get("reference"), here)
            care_plan = self.by_url.get(plan_url or "") or {}
            if care_plan.get("resourceType") == "CarePlan":
                urls += [
                    self.url_of(g.get("reference"), plan_url) for g in _dicts(care_plan.get("goal"))
                ]
        found = {
            url: self.by_url[url]
            for url in dict.fromkeys(u for u in urls if u is not None)
            if self.by_url[url].get("resourceType") in ORDER
        }
        return sorted(found.items(), key=lambda item: ORDER.index(item[1]["resourceType"]))

    def provenances(self, chosen: set[str]) -> list[tuple[str, dict[str, Any]]]:
        """The document's Provenances that target what is imported."""
        return [
            (url, resource)
            for url, resource in self.by_url.items()
            if resource.get("resourceType") == "Provenance"
            and {self.url_of(t.get("reference"), url) for t in _dicts(resource.get("target"))}
            & chosen
        ]


def _local(
    resource: dict[str, Any], url: str, known: dict[str, str], reader: DocumentReader
) -> dict[str, Any]:
    """The resource as this service stores it: references rewritten, where it came from."""

    def replace(element: dict[str, Any]) -> dict[str, Any] | None:
        ref = str(element.get("reference"))
        target = reader.url_of(ref, url)
        if target in known:
            return {**element, "reference": known[target]}
        kept = {k: v for k, v in element.items() if k != "reference"}
        kept.setdefault("display", _display(reader.by_url.get(target or "")) or ref)
        return kept

    body = replace_references(resource, replace)
    given = resource.get("meta")
    meta: dict[str, Any] = (
        {k: v for k, v in given.items() if k == "profile"} if isinstance(given, dict) else {}
    )
    origin = origin_of(resource)
    if origin is not None:
        meta["tag"] = [{"system": ORIGIN_TAG_SYSTEM, "code": origin}]
    source = (given or {}).get("source") if isinstance(given, dict) else None
    meta["source"] = str(source or url)
    body = {k: v for k, v in body.items() if k not in ("id", "meta")}
    return {**body, "meta": meta}


def import_document(fhir: FhirService, document: Any, actor: Actor | None = None) -> DocumentImport:
    """Store what matters from an IPS document (see the module's docstring)."""
    reader = DocumentReader(document)
    chosen = reader.chosen()
    report = DocumentImport()
    for _, resource in chosen:
        kind = str(resource["resourceType"])
        report.read[kind] = report.read.get(kind, 0) + 1
    known: dict[str, str] = {}
    written: list[tuple[str, dict[str, Any], str]] = []
    for url, resource in chosen:
        ident = _identifier(resource, url)
        identifiers = _dicts(resource.get("identifier"))
        if not any(i.get("value") == ident["value"] for i in identifiers):
            resource = {**resource, "identifier": [*identifiers, ident]}
        known[url] = f"{resource['resourceType']}?{_criteria(ident)}"
        written.append((url, resource, _criteria(ident)))
    provenances = reader.provenances(set(known))
    report.read["Provenance"] = len(provenances)
    patient_ident = _identifier(reader.patient, reader.patient_url)

    def work(session: Session) -> DocumentImport:
        criteria = _criteria(patient_ident)
        existing = session.match_one_or_none("Patient", criteria, "Import")
        if existing is None:
            body = _local(reader.patient, reader.patient_url, {}, reader)
            identifiers = _dicts(body.get("identifier"))
            if not any(i.get("value") == patient_ident["value"] for i in identifiers):
                body["identifier"] = [*identifiers, patient_ident]
            session.check(body, "Patient")
            created = session.create("Patient", body, checked=True)
            assert created.stored is not None
            report.patient = f"Patient/{created.stored.id}"
        else:
            report.patient = f"Patient/{existing.id}"
        known[reader.patient_url] = report.patient
        for url, resource, criteria in written:
            kind = str(resource["resourceType"])
            body = resolve_conditional_references(session, _local(resource, url, known, reader))
            session.check(body, kind)
            before = session.match_one_or_none(kind, criteria, "Import")
            try:
                result = session.conditional_update(kind, criteria, body, checked=True)
            except FhirError as exc:
                raise BadRequest(f"{kind} {url} of the document: {exc}") from exc
            _count(report, result.status, before, result.stored)
        for url, resource in provenances:
            body = resolve_conditional_references(session, _local(resource, url, known, reader))
            _provenance(session, body, report)
        return report

    return fhir.perform(actor or Actor.system(), work)


def _count(report: DocumentImport, status: int, before: Any, stored: Any) -> None:
    if status == 201:
        report.created += 1
    elif before is not None and stored is not None and stored.version == before.version:
        report.unchanged += 1  # the same content: the write made no version
    else:
        report.updated += 1


def _provenance(session: Session, body: dict[str, Any], report: DocumentImport) -> None:
    """Create the Provenance unless one with the same ``meta.source`` targets the same."""
    targets = [str(t.get("reference")) for t in _dicts(body.get("target")) if t.get("reference")]
    if targets:
        page = session.search("Provenance", [("target", targets[0]), ("_count", "1000")])
        for stored in page.matches:
            found = parse_json(stored.content or "{}")
            if (found.get("meta") or {}).get("source") == body["meta"]["source"]:
                report.unchanged += 1
                return
    session.check(body, "Provenance")
    session.create("Provenance", body, checked=True)
    report.created += 1
