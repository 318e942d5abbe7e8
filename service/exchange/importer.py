"""Inbound: pull a patient's Goals, Observations and Lists from a partner FHIR server.

A partner that holds none of them for the patient (a documents-only partner) is read for its
"What matters to me" DocumentReference instead: the data block at the end of its text/plain
part (``summary_data.py``) gives back the statements, goals and ranked Lists verbatim.

Everything pulled is written in one transaction through the same validation as any write, by
conditional update on each resource's identifier, so importing twice changes nothing twice.
References are rewritten to this service's resources; ``meta.source`` names the partner, so the
outbox never sends the partner's own data back to it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from service.errors import BadRequest, FhirError
from service.exchange.channels import Refused, check
from service.exchange.channels.partner_api import URI_SYSTEM, has_key, identifier_token
from service.exchange.partner_client import PartnerClient
from service.exchange.summary_data import DATA_TYPES, NoData, read_block, resources_of
from service.fhir.actor import Actor
from service.fhir.bundles import resolve_conditional_references
from service.fhir.interactions import FhirService
from service.fhir.model import ORIGIN_TAG_SYSTEM, origin_of
from service.fhir.references import rewrite_references
from service.fhir.session import Session

# dependencies first: Goals address Observations; Lists hold both
IMPORT_ORDER = ("Observation", "Goal", "List")
MAX_PAGES = 1000


@dataclass
class ImportReport:
    """What an import read and wrote."""

    patient: str = ""
    read: dict[str, int] = field(default_factory=dict)
    created: int = 0
    updated: int = 0
    unchanged: int = 0  # found here already as they are: no new version written
    pages: int = 0
    document: str | None = None  # the DocumentReference at the partner it was restored from


def pages(client: PartnerClient, type_: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The resources of a search at the partner, following ``next`` links."""
    answer = check(client.request("GET", type_, params=params), f"search {type_}")
    base = client.partner.base_url
    for _ in range(MAX_PAGES):
        bundle = answer.body if isinstance(answer.body, dict) else {}
        for entry in _dicts(bundle.get("entry")):
            resource = entry.get("resource")
            search = entry.get("search")
            mode = search.get("mode", "match") if isinstance(search, dict) else "match"
            if (
                isinstance(resource, dict)
                and resource.get("resourceType") == type_
                and mode == "match"
            ):
                yield resource
        next_url = next(
            (
                link.get("url")
                for link in _dicts(bundle.get("link"))
                if link.get("relation") == "next" and isinstance(link.get("url"), str)
            ),
            None,
        )
        if not next_url:
            return
        next_url = urljoin(base + "/", next_url)
        if not _same_origin(next_url, base):
            # our credentials go to the partner only, never to a host a page names
            raise Refused(
                f"{client.partner.name} sent a next link to another server ({next_url}); "
                f"pages must stay at {base}"
            )
        answer = check(client.request("GET", next_url), f"next page of {type_}")
    raise Refused(f"the search for {type_} has more than {MAX_PAGES} pages")


def import_patient(
    fhir: FhirService, client: PartnerClient, system: str, value: str
) -> ImportReport:
    """Pull one patient's priorities from a partner and store them here."""
    partner = client.partner
    report = ImportReport()
    patients = list(pages(client, "Patient", {"identifier": identifier_token(system, value)}))
    if len(patients) != 1:
        raise Refused(
            f"{partner.name} has {len(patients)} patients with identifier {system}|{value}; "
            "one is needed"
        )
    remote_patient = patients[0]
    if not has_key(remote_patient, "identifier", identifier_token(system, value)):
        # a partner that ignores the search parameter answers with whoever it holds: that is
        # somebody else's record
        raise Refused(
            f"{partner.name} answered the search for the patient with identifier "
            f"{system}|{value} with Patient/{remote_patient.get('id')}, who does not hold it; "
            "nothing was imported"
        )
    remote_id = str(remote_patient["id"])
    wanted = [t for t in IMPORT_ORDER if t in (partner.receive_types or IMPORT_ORDER)]
    pulled: list[tuple[str, dict[str, Any]]] = []
    for type_ in wanted:
        found = list(_held(client, type_, {"patient": f"Patient/{remote_id}"}))
        report.read[type_] = len(found)
        pulled += [(type_, r) for r in found]
    # each partner resource as a conditional reference on its identifier
    patient_criteria = f"Patient?{urlencode({'identifier': identifier_token(system, value)})}"
    known = {f"Patient/{remote_id}": patient_criteria}
    document = None
    restored = None if pulled else from_document(client, remote_id, system, value)
    if restored is not None:
        # nothing but documents there: the priorities as our document's data block holds them
        document, patient_ref, held = restored
        report.document = document
        report.read = {t: sum(1 for k, _ in held if k == t) for t in wanted}
        pulled = [(t, r) for t, r in held if t in wanted]
        known[patient_ref] = patient_criteria
    identified: list[tuple[str, dict[str, Any], str]] = []
    for type_, resource in pulled:
        ident = _identifier(resource, f"{partner.base_url}/{type_}/{resource.get('id')}")
        criteria = urlencode({"identifier": identifier_token(ident["system"], ident["value"])})
        known[f"{type_}/{resource.get('id')}"] = f"{type_}?{criteria}"
        identified.append((type_, {**resource, "identifier": _with(resource, ident)}, criteria))

    def local(resource: dict[str, Any], refs: dict[str, str]) -> dict[str, Any]:
        body = _rewrite(resource, refs, partner.base_url)
        given = resource.get("meta")
        # the profiles, and the security labels (a restricted record stays restricted here)
        kept = ("profile", "security")
        meta = {k: v for k, v in given.items() if k in kept} if isinstance(given, dict) else {}
        origin = origin_of(resource)
        if origin is not None:  # the instance that originated it, when the partner names one
            meta["tag"] = [{"system": ORIGIN_TAG_SYSTEM, "code": origin}]
        # where it came from: the outbox never sends it back to that partner
        here = f"{resource['resourceType']}/{resource.get('id')}"
        meta["source"] = (
            f"{partner.base_url}/{document}#{here}" if document else f"{partner.base_url}/{here}"
        )
        body = {k: v for k, v in body.items() if k not in ("id", "meta")}
        return {**body, "meta": meta}

    patient_body = local(remote_patient, known)

    def work(session: Session) -> ImportReport:
        existing = session.match_one_or_none("Patient", patient_criteria.split("?", 1)[1], "Import")
        if existing is None:
            session.check(patient_body, "Patient")
            created = session.create("Patient", patient_body, checked=True)
            assert created.stored is not None
            report.patient = f"Patient/{created.stored.id}"
        else:
            report.patient = f"Patient/{existing.id}"
        # a partner's identifiers may be unique per patient only: each is looked up in this
        # patient's record, never matched to (and moved out of) another patient's
        scope = urlencode({"patient": report.patient})
        refs = {k: v if v == patient_criteria else f"{v}&{scope}" for k, v in known.items()}
        for type_, resource, unscoped in identified:
            criteria = f"{unscoped}&{scope}"
            body = resolve_conditional_references(session, local(resource, refs))
            session.check(body, type_)
            before = session.match_one_or_none(type_, criteria, "Import")
            try:
                result = session.conditional_update(type_, criteria, body, checked=True)
            except FhirError as exc:
                raise BadRequest(
                    f"{type_}/{resource.get('id')} from {partner.name}: {exc}"
                ) from exc
            if result.status == 201:
                report.created += 1
            elif (
                before is not None
                and result.stored is not None
                and (result.stored.version == before.version)
            ):
                report.unchanged += 1  # the same content: the write made no version
            else:
                report.updated += 1
        return report

    # the service imports for whoever runs it (the CLI): no token restricts it
    return fhir.perform(Actor.system(), work)


def _held(client: PartnerClient, type_: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The resources of a search, none when the partner does not serve the type (404)."""
    try:
        yield from pages(client, type_, params)
    except Refused as exc:
        if exc.status not in (404, 405):
            raise


def from_document(
    client: PartnerClient, remote_id: str, system: str, value: str
) -> tuple[str, str, list[tuple[str, dict[str, Any]]]] | None:
    """The newest "What matters to me" document of the patient at the partner that carries a
    data block: its reference at the partner, the reference its block names the patient by,
    and the statements, goals and Lists it holds (dependencies first); None when the partner
    holds no document for the patient."""
    partner = client.partner
    documents = list(_held(client, "DocumentReference", {"patient": f"Patient/{remote_id}"}))
    if not documents:
        return None  # nothing there at all: only the patient is imported
    reasons: list[str] = []
    found: list[tuple[str, str, dict[str, Any]]] = []
    for doc in documents:
        name = f"DocumentReference/{doc.get('id')}"
        try:
            bundle = read_block(_plain_text(doc))
        except NoData as exc:
            reasons.append(f"{name}: {exc}")
            continue
        found.append((str(bundle.get("timestamp") or doc.get("date") or ""), name, bundle))
    if not found:
        raise Refused(
            f"{partner.name} holds only documents for the patient {system}|{value}, and none "
            "carries What Matters data to restore the priorities from: " + "; ".join(reasons)
        )
    _, name, bundle = max(found, key=lambda item: item[0])
    resources = resources_of(bundle)
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    if len(patients) != 1 or not any(
        isinstance(i, dict) and i.get("system") == system and i.get("value") == value
        for i in patients[0].get("identifier") or []
    ):
        raise Refused(f"{name} at {partner.name} is not about the patient {system}|{value}")
    held = [(type_, r) for type_ in DATA_TYPES for r in resources if r.get("resourceType") == type_]
    return name, f"Patient/{patients[0].get('id')}", held


def _plain_text(document: dict[str, Any]) -> str:
    """The text/plain attachment of a DocumentReference, decoded (UTF-8 unless it says)."""
    for content in _dicts(document.get("content")):
        attachment = content.get("attachment")
        if not isinstance(attachment, dict):
            continue
        kind = str(attachment.get("contentType") or "")
        if kind.split(";")[0].strip().lower() != "text/plain":
            continue
        data = attachment.get("data")
        if not isinstance(data, str):
            raise NoData("its text/plain part is not inline (no attachment data)")
        charset = "utf-8"
        for param in kind.split(";")[1:]:
            key, _, val = param.partition("=")
            if key.strip().lower() == "charset" and val.strip():
                charset = val.strip().strip('"')
        try:
            return base64.b64decode(data, validate=True).decode(charset)
        except (ValueError, LookupError) as exc:
            raise NoData(f"its text/plain part cannot be read: {exc}") from exc
    raise NoData("it has no text/plain part")


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _same_origin(url: str, base: str) -> bool:
    """Same scheme, host and port (RFC 6454), under the partner's base path."""
    a, b = urlsplit(url), urlsplit(base)
    ports = {"http": 80, "https": 443}
    root = b.path.rstrip("/")
    return (a.scheme, a.hostname, a.port or ports.get(a.scheme)) == (
        b.scheme,
        b.hostname,
        b.port or ports.get(b.scheme),
    ) and (a.path.rstrip("/") == root or a.path.startswith(root + "/"))


def _identifier(resource: dict[str, Any], url: str) -> dict[str, str]:
    for item in resource.get("identifier") or []:
        if isinstance(item, dict) and item.get("system") and item.get("value"):
            return {"system": str(item["system"]), "value": str(item["value"])}
    return {"system": URI_SYSTEM, "value": url}


def _with(resource: dict[str, Any], ident: dict[str, str]) -> list[Any]:
    identifiers = list(resource.get("identifier") or [])
    if not any(isinstance(i, dict) and i.get("value") == ident["value"] for i in identifiers):
        identifiers.append(ident)
    return identifiers


def _rewrite(value: Any, known: dict[str, str], base: str) -> Any:
    """The partner's references as this service names them: an imported resource by its
    conditional reference, any other partner resource by its absolute URL at the partner."""

    def rewrite(item: str) -> str:
        ref = item[len(base) + 1 :] if item.startswith(base + "/") else item
        ref = "/".join(ref.split("/")[:2])  # drop a _history version
        if ref in known:
            return known[ref]
        if ref.count("/") == 1 and "://" not in ref and not ref.startswith("#"):
            # a partner resource not imported: keep it as an absolute reference to the partner
            return f"{base}/{ref}"
        return item

    return rewrite_references(value, rewrite)
