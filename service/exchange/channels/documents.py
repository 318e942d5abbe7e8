"""The documents channel: a partner that takes only the patient's "What matters to me" document.

A partner whose CapabilityStatement accepts no writes of a Goal, Observation or List but
accepts DocumentReference gets, for each change of those, the patient's summary (text and
PDF, ``service/exchange/summary.py``) as one DocumentReference: replaced in place where the
partner updates documents, a new one per change where it only creates them. The text ends with
the machine-readable block of ``service/exchange/summary_data.py`` (the statements, goals and
Lists as data), from which ``whatmatters import`` restores them.

A partner whose entry asks for ``document: ips`` gets, for each change of those types, the
patient's IPS 2.0.0 document instead (``$summary``, checked before it leaves): as a Bundle
where the partner accepts Bundle writes, else wrapped in a DocumentReference. Either way one
current document per patient, found again by its identifier and replaced on change, so a
redelivery after a lost answer writes nothing twice.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from service.exchange.channels import Refused, check
from service.exchange.channels.partner_api import (
    URI_SYSTEM,
    Capability,
    PartnerApi,
    Target,
    identifier_token,
)
from service.exchange.partner_client import PartnerClient
from service.exchange.partners import Partner
from service.exchange.summary import SummaryItem, summary_pdf, summary_text
from service.exchange.summary_data import collection, data_block
from service.fhir.model import ORIGIN_TAG_SYSTEM, instant, origin_of
from service.fhir.references import replace_references
from service.storage.outbox import OutboxRow

SUMMARY_TYPES = ("Goal", "Observation", "List")
Summariser = Callable[[str], tuple[str | None, list[SummaryItem]]]
# the patient's IPS document (service.priorities.ips), by patient id
IpsDocument = Callable[[str], dict[str, Any]]
IPS_TYPE = {
    "coding": [
        {"system": "http://loinc.org", "code": "60591-5", "display": "Patient summary Document"}
    ]
}
# the patient (as stored) and its statements, goals and Lists, for the data block; None when
# the patient is not here
Records = Callable[[str], tuple[dict[str, Any], list[dict[str, Any]]] | None]


class Documents:
    """Delivers a row to a documents-only partner as the patient's summary document."""

    coalesces = True

    def __init__(
        self,
        api: PartnerApi,
        summarise: Summariser | None,
        clock: Callable[[], int],
        ips: IpsDocument | None = None,
        records: Records | None = None,
    ) -> None:
        self.api = api
        self.summarise = summarise
        self.clock = clock
        self.ips = ips
        self.records = records

    @staticmethod
    def takes(capability: Capability, type_: str, partner: Partner | None = None) -> bool:
        """Whether the partner gets changes of this type as the patient's document: always
        for a partner that asks for IPS (and takes Bundles or DocumentReferences), else when
        it takes no writes of the type but takes DocumentReferences."""
        if type_ not in SUMMARY_TYPES:
            return False
        if partner is not None and partner.send_document == "ips":
            return capability.writes("Bundle") or capability.writes("DocumentReference")
        return not capability.writes(type_) and capability.writes("DocumentReference")

    def deliver(self, row: OutboxRow) -> int | None:
        """Send the summary of the row's patient (its resource as it is now)."""
        target = self.api.prepare(row)
        if target is None:
            return None
        return self.send(target, row)

    def send(self, target: Target, row: OutboxRow) -> int:
        """Send the summary for a row the partner sync found to be for documents."""
        current = target.current
        if current.deleted:
            # the summary is written again without what was deleted
            last = self.api.previous(row)
            if last is not None and last.content is not None:
                self.send_summary(target.client, target.capability, json.loads(last.content), row)
            return current.version
        content = json.loads(current.content or "{}")
        self.send_summary(target.client, target.capability, content, row)
        return current.version

    def gave_up(self, row: OutboxRow, reason: str) -> None:
        """Nothing to do: the partner's dead row is the operator's to see."""

    def send_summary(
        self,
        client: PartnerClient,
        capability: Capability,
        content: dict[str, Any],
        row: OutboxRow,
    ) -> None:
        """Send the patient's "What matters to me" DocumentReference (text and PDF).

        A partner that updates documents keeps one, replaced in place; a partner that only
        creates them gets a new document per change (identified by the outbox row, so a
        redelivery still writes it once)."""
        patient = _subject_id(content)
        if patient is None:
            return
        if client.partner.send_document == "ips":
            self.send_ips(client, capability, patient, row)
            return
        if self.summarise is None:
            raise Refused(f"{client.partner.name} takes documents only and no summary is wired")
        name, items = self.summarise(patient)
        generated = instant(self.clock())
        text = summary_text(name, items, generated)
        held = self.records(patient) if self.records is not None else None
        if held is not None:
            patient_record, resources = held
            # the partner learns no identifier of the patient it was not configured to share
            systems = client.partner.patient_identifier_systems
            shared = [
                i
                for i in patient_record.get("identifier") or []
                if not systems or (isinstance(i, dict) and i.get("system") in systems)
            ]
            patient_record = {**patient_record, "identifier": shared}
            text += data_block(self.data(patient_record, resources, generated))
        pdf = summary_pdf(name, items, generated)
        replaced_in_place = capability.updates("DocumentReference") or capability.flag(
            "DocumentReference", "conditionalUpdate"
        )
        name_of = f"{self.api.base_url}/Patient/{patient}#what-matters"
        if not replaced_in_place:
            name_of += f"-{row.id}"
        key = uuid.uuid5(uuid.NAMESPACE_URL, name_of)
        document = {
            "resourceType": "DocumentReference",
            "id": f"summary-{patient}",
            "identifier": [{"system": URI_SYSTEM, "value": f"urn:uuid:{key}"}],
            "status": "current",
            "type": {"text": "What matters to me"},
            "subject": {"reference": f"Patient/{patient}"},
            "date": generated,
            "description": "What matters to me: the patient's priorities in their own words",
            "content": [
                {"attachment": _attachment("text/plain; charset=utf-8", text.encode("utf-8"))},
                {"attachment": _attachment("application/pdf", pdf)},
            ],
        }
        self.api.send_resource(
            client, capability, "DocumentReference", document, 2 if replaced_in_place else 1
        )

    def send_ips(
        self, client: PartnerClient, capability: Capability, patient: str, row: OutboxRow
    ) -> None:
        """Send the patient's IPS document: one per patient at the partner, replaced in place
        (a Bundle where the partner takes Bundles, else a DocumentReference holding it, which
        a partner that only creates documents gets anew per change, as the summary)."""
        if self.ips is None:
            raise Refused(f"{client.partner.name} asks for IPS documents and none is wired")
        document = self.ips(patient)
        key = uuid.uuid5(uuid.NAMESPACE_URL, f"{self.api.base_url}/Patient/{patient}#ips")
        identifier = {"system": URI_SYSTEM, "value": f"urn:uuid:{key}"}
        if capability.writes("Bundle"):
            body = {k: v for k, v in document.items() if k != "id"}
            self._replace(client, capability, "Bundle", {**body, "identifier": identifier})
            return
        replaced_in_place = capability.updates("DocumentReference") or capability.flag(
            "DocumentReference", "conditionalUpdate"
        )
        if not replaced_in_place:
            key = uuid.uuid5(
                uuid.NAMESPACE_URL, f"{self.api.base_url}/Patient/{patient}#ips-{row.id}"
            )
            identifier = {"system": URI_SYSTEM, "value": f"urn:uuid:{key}"}
        data = json.dumps(document, ensure_ascii=False).encode("utf-8")
        wrapped = {
            "resourceType": "DocumentReference",
            "id": f"ips-{patient}",
            "identifier": [identifier],
            "status": "current",
            "type": IPS_TYPE,
            "subject": {"reference": f"Patient/{patient}"},
            "date": document["timestamp"],
            "description": "International Patient Summary (IPS 2.0.0): what matters to me",
            "content": [
                {
                    "attachment": {
                        "contentType": "application/fhir+json",
                        "data": base64.b64encode(data).decode("ascii"),
                        "title": "International Patient Summary",
                    },
                    "format": {
                        "system": "http://ihe.net/fhir/ihe.formatcode.fhir/CodeSystem/formatcode",
                        "code": "urn:hl7-org:sdwg:ips:2.0.0",
                    },
                }
            ],
        }
        self.api.send_resource(
            client, capability, "DocumentReference", wrapped, 2 if replaced_in_place else 1
        )

    def _replace(
        self, client: PartnerClient, capability: Capability, type_: str, body: dict[str, Any]
    ) -> None:
        """Write the one resource with the body's identifier: a conditional update where the
        partner offers one, else found by identifier and updated, or created when not there."""
        given = body["identifier"]
        identifier = given[0] if isinstance(given, list) else given
        token = identifier_token(identifier["system"], identifier["value"])
        what = f"{type_} identifier={token} to {client.partner.name}"
        if capability.flag(type_, "conditionalUpdate"):
            criteria = urlencode({"identifier": token})
            check(client.request("PUT", f"{type_}?{criteria}", body), f"conditional update {what}")
            return
        existing = self.api.find(client, type_, "identifier", token)
        if existing is None:
            check(client.request("POST", type_, body), f"create {what}")
            return
        if not capability.updates(type_):
            raise Refused(
                f"{client.partner.name} accepts creates of {type_} but no updates; the "
                f"patient's IPS document there cannot be replaced"
            )
        check(client.request("PUT", f"{type_}/{existing}", {**body, "id": existing}), what)

    def data(
        self, patient: dict[str, Any], resources: list[dict[str, Any]], generated: str
    ) -> dict[str, Any]:
        """The data block's Bundle: the resources stamped with where they began (as a partner
        would get them), references among them relative, any other reference its display."""
        inside = {f"Patient/{patient['id']}"} | {
            f"{r['resourceType']}/{r['id']}" for r in resources
        }

        def replace(element: dict[str, Any]) -> dict[str, Any] | None:
            ref = element.get("reference")
            local = self.api.local(ref) if isinstance(ref, str) else None
            if local is None:
                return None
            key = "/".join(local)
            if key in inside:
                return {**element, "reference": key}
            kept = {k: v for k, v in element.items() if k != "reference"}
            if not {"identifier", "display"} & set(kept):
                kept["display"] = key  # a reference keeps at least what it said
            return kept

        stamped = []
        for resource in resources:
            type_ = resource["resourceType"]
            given = resource.get("meta") or {}
            meta = {k: v for k, v in given.items() if k == "profile"}
            meta["source"] = self.api.source(type_, resource)
            origin = origin_of(resource) or self.api.instance_id
            meta["tag"] = [{"system": ORIGIN_TAG_SYSTEM, "code": origin}]
            body = {**{k: v for k, v in resource.items() if k != "meta"}, "meta": meta}
            stamped.append(replace_references(body, replace))
        return collection(patient, stamped, self.api.base_url, generated)


def _subject_id(content: dict[str, Any]) -> str | None:
    ref = (content.get("subject") or {}).get("reference")
    if isinstance(ref, str) and ref.startswith("Patient/"):
        return ref.split("/", 1)[1]
    return None


def _attachment(content_type: str, data: bytes) -> dict[str, Any]:
    return {
        "contentType": content_type,
        "data": base64.b64encode(data).decode("ascii"),
        "title": "What matters to me",
    }
