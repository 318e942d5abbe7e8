"""The documents channel: a partner that takes only the patient's "What matters to me" document.

A partner whose CapabilityStatement accepts no writes of a Goal, Observation or List but
accepts DocumentReference gets, for each change of those, the patient's summary (text and
PDF, ``service/exchange/summary.py``) as one DocumentReference: replaced in place where the
partner updates documents, a new one per change where it only creates them. The text ends with
the machine-readable block of ``service/exchange/summary_data.py`` (the statements, goals and
Lists as data), from which ``whatmatters import`` restores them.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

from service.exchange.channels import Refused
from service.exchange.channels.partner_api import URI_SYSTEM, Capability, PartnerApi, Target
from service.exchange.partner_client import PartnerClient
from service.exchange.summary import SummaryItem, summary_pdf, summary_text
from service.exchange.summary_data import collection, data_block
from service.fhir.model import ORIGIN_TAG_SYSTEM, instant, origin_of
from service.fhir.references import replace_references
from service.storage.outbox import OutboxRow

SUMMARY_TYPES = ("Goal", "Observation", "List")
Summariser = Callable[[str], tuple[str | None, list[SummaryItem]]]
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
        records: Records | None = None,
    ) -> None:
        self.api = api
        self.summarise = summarise
        self.clock = clock
        self.records = records

    @staticmethod
    def takes(capability: Capability, type_: str) -> bool:
        """Whether the partner gets changes of this type as the summary document."""
        return (
            not capability.writes(type_)
            and type_ in SUMMARY_TYPES
            and capability.writes("DocumentReference")
        )

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
        if self.summarise is None:
            raise Refused(f"{client.partner.name} takes documents only and no summary is wired")
        patient = _subject_id(content)
        if patient is None:
            return
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
