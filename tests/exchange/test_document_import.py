"""Import from a partner that holds nothing but our "What matters to me" document.

The documents channel sends a documents-only partner the summary as text/plain and PDF; the
text ends with a machine-readable block (service/exchange/summary_data.py). ``import_patient``
reads that block back into statements, goals and the ranked Lists when the partner has no
Observation, Goal or List for the patient: the patient's words byte for byte (scripts, emoji,
newlines, combining marks, 10,000 characters), goal status, the ranking after a re-ranking, as
our profiles require, and a second import writes nothing. A document without the block (another
vendor's) or with an altered block is refused with a reason, never a crash.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import requests

from service import build_worker, wire_fhir_service
from service.config import Config
from service.exchange.channels import Refused
from service.exchange.importer import import_patient
from service.exchange.partners import Partner
from service.exchange.summary_data import BEGIN, NoData, data_block, read_block
from service.exchange.worker import Worker
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.priorities.codes import GOAL_PROFILE, LIST_PROFILE, STATEMENT_PROFILE
from service.priorities.operations import WhatMatters
from service.storage.memory import MemoryStore
from tests.exchange.conftest import MRN
from tests.exchange.fakefhir import FakeFhir, FakeFhirServer
from tests.exchange.instances import Instance, partner_entry
from tests.priorities.conversations import conversation, goal, ranked_texts, ranking, statement

HOSPITAL = "http://hospital.example/fhir"
CLINIC = "http://clinic.example/fhir"
DOCS = "http://docs.example/fhir"
LONG = ("Rwy'n dymuno aros adref gyda Mali'r gath. " * 250)[:10_000]
WORDS = {
    "s1": "Dal i ganu yn y côr — e\u0301 (combining), ŵ ŷ",
    "s2": "回家过年，和孙女一起包饺子 🥟👩\u200d👧🏽",
    "s3": "أن أبقى في بيتي\nمع قطتي",
    "s4": "घर पर रहना\r\nРядом с семьёй",
    "s5": LONG,
}
GOALS = {"g1": "Sing at Christmas 🎄", "g2": "Walk to the chapel\nand back"}


def service(tmp_path: Path, name: str, base: str) -> FhirService:
    """A service in memory whose one partner is the documents-only server."""
    path = tmp_path / f"{name}-partners.json"
    partner = {
        "name": "docs",
        "base_url": DOCS,
        "send": {
            "types": ["Patient", "Observation", "Goal", "List", "Provenance"],
            "patient_identifier_systems": [MRN],
        },
    }
    path.write_text(json.dumps({"partners": [partner]}), encoding="utf-8")
    return wire_fhir_service(Config(partners_file=path, public_base_url=base), MemoryStore())


def the_partner(fhir: FhirService) -> Partner:
    partners: tuple[Partner, ...] = fhir.listeners[0].partners  # type: ignore[attr-defined]
    return partners[0]


def deliver(hospital: FhirService, docs: FakeFhir) -> None:
    """Run the hospital's outbox worker against the documents-only partner."""
    config = Config(public_base_url=HOSPITAL)
    built = build_worker(config, hospital, (docs.partner,))
    Worker(
        hospital,
        (docs.partner,),
        HOSPITAL,
        lambda _partner: docs,
        summarise=built.summarise,
        records=built.documents.records,
    ).drain()


def talk(order: tuple[str, ...], **goal_parts: str) -> dict[str, Any]:
    return conversation(
        *(statement(key, text, f"doc-{key}") for key, text in WORDS.items()),
        goal("g1", GOALS["g1"], "s1", priority="high"),
        goal("g2", GOALS["g2"], "s3", **goal_parts),
        ranking(*order),
    )


def record(hospital: FhirService, body: dict[str, Any]) -> None:
    result = WhatMatters(hospital).record(Actor.system(), "p1", body, HOSPITAL)
    assert result.status in (200, 201), result.body


def shown(fhir: FhirService, patient: str, base: str) -> dict[str, Any]:
    """What a clinician sees: the ranked words, and each goal with its status."""
    bundle = WhatMatters(fhir).what_matters(Actor.system(), patient, False, base).body
    assert bundle is not None
    goals = sorted(
        (e["resource"]["description"]["text"], e["resource"]["lifecycleStatus"])
        for e in bundle["entry"][1:]
        if e["resource"]["resourceType"] == "Goal"
    )
    return {"ranked": ranked_texts(bundle), "goals": goals}


def stored(fhir: FhirService, type_: str) -> list[dict[str, Any]]:
    """Every current resource of a type, as stored."""
    with fhir.session(Actor.system()) as session:
        found = session.search_type(type_, [("_count", "1000")], CLINIC)
    bundle = found.body or json.loads(found.text or "{}")
    return [e["resource"] for e in bundle.get("entry", [])]


def versions(fhir: FhirService) -> dict[tuple[str, str], str]:
    """The current version of every imported resource."""
    return {
        (type_, r["id"]): r["meta"]["versionId"]
        for type_ in ("Patient", "Observation", "Goal", "List")
        for r in stored(fhir, type_)
    }


def the_text(document: dict[str, Any]) -> str:
    return next(
        base64.b64decode(c["attachment"]["data"]).decode("utf-8")
        for c in document["content"]
        if c["attachment"]["contentType"].startswith("text/plain")
    )


@pytest.fixture
def hospital(tmp_path: Path) -> FhirService:
    """The hospital: a patient whose conversation was recorded, then re-ranked with a goal
    completed."""
    fhir = service(tmp_path, "hospital", HOSPITAL)
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [
            {"system": MRN, "value": "M1"},
            {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"},
        ],
        "name": [{"family": "Okafor", "given": ["Ada"]}],
    }
    fhir.perform(Actor.system(), lambda session: session.update("Patient", "p1", patient))
    record(fhir, talk(("s2", "s1", "g1", "s3", "s4", "s5")))
    record(fhir, talk(("s5", "s3", "s1", "g1", "s4", "s2"), status="completed"))
    return fhir


@pytest.fixture
def docs(hospital: FhirService) -> FakeFhir:
    """The documents-only partner, holding the hospital's document for the patient."""
    server = FakeFhir(the_partner(hospital), ("Patient", "DocumentReference"))
    deliver(hospital, server)
    return server


def test_import_restores_statements_goals_and_ranking_verbatim(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    (document,) = docs.of_type("DocumentReference")
    text = the_text(document)
    human, _, _ = text.partition(BEGIN)
    assert WORDS["s3"] in human  # the text for people is as it was, the words untouched
    # the block names the patient by the identifiers shared with this partner only
    block_patient = read_block(text)["entry"][0]["resource"]
    assert block_patient == {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": MRN, "value": "M1"}],
    }
    expected = shown(hospital, "p1", HOSPITAL)
    assert expected["ranked"][:3] == [WORDS["s5"], WORDS["s3"], WORDS["s1"]]
    assert (GOALS["g2"], "completed") in expected["goals"]

    clinic = service(tmp_path, "clinic", CLINIC)
    report = import_patient(clinic, docs, MRN, "M1")
    assert report.document == f"DocumentReference/{document['id']}"
    assert report.read == {"Observation": 5, "Goal": 2, "List": 1}
    assert (report.created, report.updated, report.unchanged) == (8, 0, 0)
    patient = report.patient.removeprefix("Patient/")
    restored = shown(clinic, patient, CLINIC)
    assert restored == expected
    # byte for byte, not merely equal after some normalisation
    said = {o["valueString"] for o in stored(clinic, "Observation")}
    assert {w.encode("utf-8") for w in said} == {w.encode("utf-8") for w in WORDS.values()}
    assert len(next(w for w in said if w.startswith("Rwy'n"))) == 10_000
    # written as our profiles require, naming where they came from
    for type_, profile in (
        ("Observation", STATEMENT_PROFILE),
        ("Goal", GOAL_PROFILE),
        ("List", LIST_PROFILE),
    ):
        for resource in stored(clinic, type_):
            assert profile in resource["meta"]["profile"], resource
            assert resource["meta"]["source"].startswith(f"{DOCS}/DocumentReference/")
    # nothing of it goes back to the partner it came from
    rows = clinic.read_only(lambda tx: tx.outbox.rows(limit=1000))
    assert [r for r in rows if r.res_type in ("Observation", "Goal", "List")] == []


def test_importing_the_same_document_again_writes_nothing(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    clinic = service(tmp_path, "clinic", CLINIC)
    import_patient(clinic, docs, MRN, "M1")
    before = versions(clinic)
    assert len(before) == 9
    again = import_patient(clinic, docs, MRN, "M1")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 8)
    assert versions(clinic) == before


def test_a_later_document_brings_the_new_ranking(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    clinic = service(tmp_path, "clinic", CLINIC)
    import_patient(clinic, docs, MRN, "M1")
    record(hospital, talk(("s4", "s2", "s1", "g1", "s3", "s5"), status="completed"))
    deliver(hospital, docs)
    report = import_patient(clinic, docs, MRN, "M1")
    assert (report.created, report.updated) == (0, 1)  # the List only
    patient = report.patient.removeprefix("Patient/")
    assert shown(clinic, patient, CLINIC) == shown(hospital, "p1", HOSPITAL)
    assert shown(clinic, patient, CLINIC)["ranked"][0] == WORDS["s4"]


def a_document(docs: FakeFhir, text: str) -> None:
    """Put a DocumentReference with this text at the partner, instead of ours."""
    (ours,) = docs.of_type("DocumentReference")
    data = base64.b64encode(text.encode("utf-8")).decode("ascii")
    docs.stored[("DocumentReference", ours["id"])] = {
        **ours,
        "content": [{"attachment": {"contentType": "text/plain", "data": data}}],
    }


def test_another_vendors_document_is_refused_with_a_reason(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    a_document(docs, "Patient wishes to stay at home.\nDischarge summary.\n")
    clinic = service(tmp_path, "clinic", CLINIC)
    with pytest.raises(Refused, match="none carries What Matters data") as raised:
        import_patient(clinic, docs, MRN, "M1")
    assert "no What Matters data block" in str(raised.value)
    assert stored(clinic, "Observation") == []


def test_an_altered_block_is_refused_rather_than_imported_unfaithfully(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    text = the_text(docs.of_type("DocumentReference")[0])
    a_document(docs, text.replace("e\u0301", "\u00e9"))  # a partner that normalised to NFC
    clinic = service(tmp_path, "clinic", CLINIC)
    with pytest.raises(Refused, match="checksum"):
        import_patient(clinic, docs, MRN, "M1")


def test_a_document_about_another_patient_is_refused(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    bundle = read_block(the_text(docs.of_type("DocumentReference")[0]))
    bundle["entry"][0]["resource"]["identifier"] = [{"system": MRN, "value": "M2"}]
    a_document(docs, "Summary\n" + data_block(bundle))
    clinic = service(tmp_path, "clinic", CLINIC)
    with pytest.raises(Refused, match="not about the patient"):
        import_patient(clinic, docs, MRN, "M1")


def test_the_block_survives_words_that_look_like_it() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": []}
    words = f"{BEGIN}\n{{}}\n-----END WHAT MATTERS DATA 1 sha256={'0' * 64}-----"
    text = f"1. {words}\n" + data_block(bundle)
    assert read_block(text) == bundle
    assert read_block(text.replace("\n", "\r\n")) == bundle  # line endings rewritten on the way
    with pytest.raises(NoData, match="no What Matters data block"):
        read_block("just words\n")
    with pytest.raises(NoData, match="version"):
        read_block(data_block(bundle).replace("DATA 1-----", "DATA 2-----"))
    with pytest.raises(NoData, match="cut short"):
        read_block(data_block(bundle).rsplit("-----END", 1)[0])


def test_a_partner_with_no_document_either_gives_the_patient_only(
    tmp_path: Path, hospital: FhirService, docs: FakeFhir
) -> None:
    docs.stored = {k: v for k, v in docs.stored.items() if k[0] != "DocumentReference"}
    clinic = service(tmp_path, "clinic", CLINIC)
    report = import_patient(clinic, docs, MRN, "M1")
    assert report.document is None
    assert (report.created, report.updated, report.unchanged) == (0, 0, 0)
    assert report.patient.startswith("Patient/")
    assert stored(clinic, "Observation") == []


@pytest.mark.slow  # a real instance at each side of a documents-only partner
def test_whatmatters_import_restores_from_a_documents_only_partner_over_http(
    tmp_path: Path,
) -> None:
    """The hospital (a real instance) sends to a documents-only FHIR server over HTTP; a clinic
    (another real instance) runs ``whatmatters import`` from it and shows the same ranking,
    word for word; importing again writes nothing."""
    with FakeFhirServer(("Patient", "DocumentReference")) as docs:
        hospital = Instance(
            "doc_hospital", tmp_path, partners=[partner_entry("docs", docs.url, [MRN])]
        )
        clinic = Instance("doc_clinic", tmp_path, partners=[partner_entry("docs", docs.url, [MRN])])
        try:
            hospital.start()
            clinic.start()
            patient = {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "M1"}]}
            answer = requests.post(f"{hospital.base}/Patient", json=patient, timeout=30)
            assert answer.status_code == 201, answer.text
            at_hospital = answer.json()["id"]
            path = f"{hospital.base}/Patient/{at_hospital}/$record-what-matters"
            for body in (
                talk(("s2", "s1", "g1", "s3", "s4", "s5")),
                talk(("s5", "s3", "s1", "g1", "s4", "s2"), status="completed"),
            ):
                answer = requests.post(path, json=body, timeout=60)
                assert answer.status_code in (200, 201), answer.text
            hospital.wait_until_delivered()
            assert docs.fake.of_type("DocumentReference")
            first = clinic.cli("import", "--from", "docs", "--patient", f"{MRN}|M1")
            assert first.returncode == 0, first.stderr
            assert "from its What matters to me document DocumentReference/" in first.stdout
            assert "8 created, 0 updated, 0 unchanged" in first.stdout, first.stdout
            again = clinic.cli("import", "--from", "docs", "--patient", f"{MRN}|M1")
            assert "0 created, 0 updated, 8 unchanged" in again.stdout, again.stdout
            (at_clinic,) = clinic.search("Patient", identifier=f"{MRN}|M1")

            def ranked(instance: Instance, id_: str) -> list[str]:
                url = f"{instance.base}/Patient/{id_}/$what-matters"
                return ranked_texts(requests.get(url, timeout=30).json())

            expected = ranked(hospital, at_hospital)
            assert expected[0] == WORDS["s5"]
            assert ranked(clinic, at_clinic["id"]) == expected
        finally:
            hospital.stop()
            clinic.stop()
