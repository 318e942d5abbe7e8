"""``$summary``: the patient's International Patient Summary (IPS 2.0.0), checked against the
IPS profiles of the npm package, with the patient's words verbatim in the Patient Story; and
the document read back at a fresh instance giving the same merged view."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from service.errors import Issue
from service.fhir.actor import Actor
from service.priorities.ips_import import import_document
from service.priorities.view import priorities
from service.validation.packages import IPS_BUNDLE, IPS_COMPOSITION
from tests.builders import BASE
from tests.ips_package import ips_checker, ips_package_path
from tests.priorities.conversations import (
    FHIR_JSON,
    NHS,
    add_patient,
    conversation,
    goal,
    ranking,
    record,
    statement,
)
from tests.priorities.test_patients_words import WORDS

STORY, PLAN = "81338-6", "18776-5"
REQUIRED_EMPTY = ("11450-4", "48765-2", "10160-0")


@pytest.fixture
def ips_app(config: Config, folders: dict[str, Any]) -> Flask:
    """An application with the IPS package loaded, on the emptied test database."""
    return create_app(config, **folders, ips_checker=ips_checker())


@pytest.fixture
def ips_client(ips_app: Flask) -> FlaskClient:
    return ips_app.test_client()


def _two_settings(client: FlaskClient) -> None:
    add_patient(client)
    hospital = conversation(
        statement("s1", "Walking Bramble, my dog, every morning 🐕"),
        goal("g1", "Walk to the end of the lane and back by spring", "s1", priority="high"),
        statement("s2", "Seeing my grandchildren at Christmas"),
        ranking("s2", "g1", "s1"),
        recorded="2026-11-20T10:00:00Z",
    )
    assert record(client, hospital).status_code == 200
    gp = conversation(
        statement("s1", "Seeing my grandchildren at Christmas"),
        statement("s3", "Tea with Ffion on Sundays"),
        goal("g2", "Be well enough to host tea", "s3", priority="medium"),
        ranking("s3", "s1"),
        setting="Bodnant Surgery",
        setting_type="primary-care",
        recorder="Dr Rhys Evans",
        recorded="2026-11-28T09:30:00Z",
    )
    assert record(client, gp).status_code == 200


def _summary(client: FlaskClient, path: str = "Patient/p1/$summary") -> dict[str, Any]:
    response = client.get(f"/fhir/{path}")
    assert response.status_code == 200, response.get_data(as_text=True)
    body: dict[str, Any] = response.get_json()
    return body


def _section(document: dict[str, Any], code: str) -> dict[str, Any]:
    composition = document["entry"][0]["resource"]
    found = [s for s in composition["section"] if s["code"]["coding"][0]["code"] == code]
    assert len(found) == 1, code
    return found[0]


class _Words(HTMLParser):
    """The text of every ``span class="words"`` of a narrative, in order."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "span" and ("class", "words") in attrs:
            self._inside = True
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.found[-1] += data


def _words_in(div: str) -> list[str]:
    parser = _Words()
    parser.feed(div)
    return parser.found


def _references(value: Any) -> list[str]:
    if isinstance(value, dict):
        found = [value["reference"]] if isinstance(value.get("reference"), str) else []
        return found + [r for v in value.values() for r in _references(v)]
    if isinstance(value, list):
        return [r for v in value for r in _references(v)]
    return []


def test_the_summary_of_two_settings_meets_the_ips_profiles(ips_client: FlaskClient) -> None:
    _two_settings(ips_client)
    document = _summary(ips_client)  # parsed with the R4B models by the autouse fixture
    errors = [i for i in ips_checker().validate(document) if i.severity in ("error", "fatal")]
    assert errors == []
    # the Bundle and Composition profiles, each asked on its own as well
    profiles = ips_checker().validator.profiles
    for resource, profile in (
        (document, IPS_BUNDLE),
        (document["entry"][0]["resource"], IPS_COMPOSITION),
    ):
        found = profiles.validate(resource, profile)
        assert [i for i in found if i.severity in ("error", "fatal")] == [], profile
    assert document["type"] == "document"
    assert (
        "http://hl7.org/fhir/uv/ips/StructureDefinition/Bundle-uv-ips"
        in (document["meta"]["profile"])
    )
    entries = document["entry"]
    assert entries[0]["resource"]["resourceType"] == "Composition"
    urls = [e["fullUrl"] for e in entries]
    assert all(u.startswith(("http://test.local/fhir/", "urn:uuid:")) for u in urls)
    assert len(set(urls)) == len(urls)
    for entry in entries:  # every reference resolves inside the document
        assert set(_references(entry["resource"])) <= set(urls), entry["fullUrl"]
    composition = entries[0]["resource"]
    by_url = {e["fullUrl"]: e["resource"] for e in entries}
    assert by_url[composition["subject"]["reference"]]["id"] == "p1"
    # the author and custodian: the Provenance of the latest recording (the GP's)
    author = by_url[composition["author"][0]["reference"]]
    assert author["resourceType"] == "Practitioner"
    assert author["name"][0]["text"] == "Dr Rhys Evans"
    assert by_url[composition["custodian"]["reference"]]["name"] == "Bodnant Surgery"
    for code in REQUIRED_EMPTY:
        section = _section(document, code)
        assert section["emptyReason"]["coding"][0]["code"] == "unavailable"
        assert "not a full health record" in section["text"]["div"]
    story = _section(document, STORY)
    kinds = [by_url[e["reference"]]["resourceType"] for e in story["entry"]]
    assert {"Observation", "Goal", "List"} <= set(kinds)
    plan = _section(document, PLAN)
    care_plan = by_url[plan["entry"][0]["reference"]]
    assert care_plan["resourceType"] == "CarePlan"
    goals = [by_url[g["reference"]]["description"]["text"] for g in care_plan["goal"]]
    assert sorted(goals) == [
        "Be well enough to host tea",
        "Walk to the end of the lane and back by spring",
    ]
    # the story: rank order of the merged view, with who, where and when of each record
    words = _words_in(story["text"]["div"])
    assert words == [
        "Tea with Ffion on Sundays",
        "Be well enough to host tea",
        "Seeing my grandchildren at Christmas",
        "Walking Bramble, my dog, every morning 🐕",
        "Walk to the end of the lane and back by spring",
    ]
    div = story["text"]["div"]
    assert "heard by Dr Rhys Evans, at Bodnant Surgery (GP), on 2026-11-28T09:30:00Z" in div
    assert "heard by Nurse Ada Okafor, at Ward 7, Ysbyty Gwynedd (Hospital), on 2026-11-20" in div


def test_a_patient_with_no_name_birth_date_or_words_still_gets_a_conforming_summary(
    ips_client: FlaskClient,
) -> None:
    patient = {"resourceType": "Patient", "id": "p2", "gender": "unknown"}
    assert ips_client.put("/fhir/Patient/p2", json=patient).status_code == 201
    document = _summary(ips_client, "Patient/p2/$summary")
    errors = [i for i in ips_checker().validate(document) if i.severity in ("error", "fatal")]
    assert errors == []
    ips_patient = document["entry"][1]["resource"]
    assert ips_patient["_birthDate"]["extension"][0]["valueCode"] == "unknown"
    assert ips_patient["name"] == [{"text": "Name not recorded"}]
    story = _section(document, STORY)
    assert story["emptyReason"]["coding"][0]["code"] == "nilknown"
    assert "has not yet said what matters" in story["text"]["div"]
    assert "No goals have been recorded yet" in _section(document, PLAN)["text"]["div"]
    # no Provenance says who: the service is author and custodian, one Organization
    composition = document["entry"][0]["resource"]
    assert composition["author"][0]["reference"] == composition["custodian"]["reference"]
    kinds = [e["resource"]["resourceType"] for e in document["entry"]]
    assert kinds.count("Organization") == 1


def test_the_identifier_variant_names_the_same_patient(ips_client: FlaskClient) -> None:
    _two_settings(ips_client)
    by_id = _summary(ips_client)
    by_identifier = _summary(ips_client, f"Patient/$summary?identifier={NHS}|9000000009")
    assert [e["fullUrl"] for e in by_identifier["entry"][1:]] == [
        e["fullUrl"] for e in by_id["entry"][1:]
    ]
    assert ips_client.get(f"/fhir/Patient/$summary?identifier={NHS}|1").status_code == 404
    assert ips_client.get("/fhir/Patient/$summary").status_code == 400
    assert ips_client.get("/fhir/Patient/nobody/$summary").status_code == 404


def test_every_word_is_in_the_story_verbatim_in_rank_order(ips_client: FlaskClient) -> None:
    add_patient(ips_client)
    keys = list(WORDS)
    body = conversation(*(statement(k, WORDS[k]) for k in keys), ranking(*reversed(keys)))
    assert record(ips_client, body).status_code == 200
    document = _summary(ips_client)
    errors = [i for i in ips_checker().validate(document) if i.severity in ("error", "fatal")]
    assert errors == []
    story = _section(document, STORY)
    assert _words_in(story["text"]["div"]) == [WORDS[k] for k in reversed(keys)]
    assert len(WORDS["long"]) == 10_000


def test_a_document_that_does_not_conform_is_a_500_never_served(
    ips_app: Flask, ips_client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_patient(ips_client)
    checker = ips_app.extensions["whatmatters.summaries"].checker
    monkeypatch.setattr(
        checker, "validate", lambda document: [Issue("error", "invalid", "broken", ("Bundle",))]
    )
    response = ips_client.get("/fhir/Patient/p1/$summary")
    assert response.status_code == 500
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "does not conform" in outcome["issue"][0]["diagnostics"]


def test_without_the_package_the_summary_is_served_unchecked(
    config: Config, folders: dict[str, Any], caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    with caplog.at_level(logging.WARNING):
        app = create_app(replace(config, ips_package=tmp_path / "absent.tgz"), **folders)
    assert "served without validation against IPS 2.0.0" in caplog.text
    client = app.test_client()
    _two_settings(client)
    assert _summary(client)["type"] == "document"


def _view(client: FlaskClient, patient: str) -> list[dict[str, Any]]:
    """The merged view without this instance's own ids: words, order, goals, who/where/when."""
    response = client.get(f"/fhir/Patient/{patient}/$what-matters")
    assert response.status_code == 200
    items = priorities(response.get_json())["priorities"]

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if k != "reference"}
        if isinstance(value, list):
            return [plain(v) for v in value]
        return value

    return [plain(item) for item in items]


def test_a_summary_imported_at_a_fresh_instance_gives_the_same_merged_view(
    ips_client: FlaskClient, folders: dict[str, Any], tmp_path: Path
) -> None:
    _two_settings(ips_client)
    document = _summary(ips_client)
    fresh = Config(database_url=f"sqlite:///{tmp_path}/b.db", public_base_url="http://b.test/fhir")
    other = create_app(fresh, **folders, ips_checker=ips_checker())
    try:
        report = import_document(other.extensions["whatmatters.fhir"], document)
        assert report.read == {"Observation": 4, "Goal": 2, "List": 2, "Provenance": 2}
        assert report.created == 10
        patient = report.patient.split("/", 1)[1]
        here, there = _view(ips_client, "p1"), _view(other.test_client(), patient)
        assert [i["text"] for i in there] == [i["text"] for i in here]
        assert there == here
        again = import_document(other.extensions["whatmatters.fhir"], document)
        assert (again.created, again.updated, again.unchanged) == (0, 0, 10)
        # and the document it gives is the same story
        story_there = _section(_summary(other.test_client(), f"Patient/{patient}/$summary"), STORY)
        assert _words_in(story_there["text"]["div"]) == _words_in(
            _section(document, STORY)["text"]["div"]
        )
    finally:
        other.extensions["whatmatters.store"].close()


def test_whatmatters_import_reads_an_ips_file(
    ips_client: FlaskClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from service.cli import main

    _two_settings(ips_client)
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(_summary(ips_client), ensure_ascii=False), encoding="utf-8")
    monkeypatch.setenv("WHATMATTERS_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("WHATMATTERS_IPS_PACKAGE", str(ips_package_path()))
    assert main(["init-db"]) == 0
    assert main(["import", "--ips", str(path)]) == 0
    assert "10 created, 0 updated, 0 unchanged" in capsys.readouterr().out
    assert main(["import", "--ips", str(path), "--from", "gp"]) == 2


@pytest.mark.parametrize(
    "name", ["Bundle-bundle-ips-all-sections.json", "Bundle-bundle-minimal.json"]
)
def test_another_systems_ips_document_is_read_by_the_bundle_reference_rules(
    folders: dict[str, Any], name: str
) -> None:
    """An IPS written elsewhere (the IPS package's own examples): the all-sections one refers
    from RESTful fullUrls by relative ``Patient/id`` references, the minimal one by
    ``urn:uuid:``; both name the patient, resolved as bundle.html#references says."""
    from service import wire_fhir_service
    from service.storage.memory import MemoryStore
    from tests.validation.test_ips_package import _examples

    document = _examples()[name]
    composition_subject = document["entry"][0]["resource"]["subject"]["reference"]
    fhir = wire_fhir_service(Config(public_base_url=BASE), MemoryStore(), folders["registry"])
    report = import_document(fhir, document)
    assert report.patient.startswith("Patient/")
    with fhir.session(Actor.system()) as session:
        stored = json.loads(session.read(*report.patient.split("/")).stored.content)  # type: ignore[union-attr]
    patient = next(
        e["resource"]
        for e in document["entry"]
        if e.get("fullUrl") == composition_subject
        or f"Patient/{e['resource'].get('id')}" == composition_subject
    )
    assert stored["name"] == patient["name"]


def test_the_story_gives_a_rank_only_to_what_the_patient_ranked(ips_client: FlaskClient) -> None:
    """An IPS reader that knows nothing of our profiles read "Goal (rank 1, not yet ranked)":
    a rank number for something the patient never ranked. A ranked item keeps its rank; an
    unranked one says only that it is not yet ranked."""
    add_patient(ips_client)
    ranked = conversation(statement("a", "Walking Bramble"), ranking("a"))
    assert record(ips_client, ranked).status_code == 200
    plain = {  # another EHR's statement, written by plain FHIR: no List ranks it
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T10:15:00+00:00",
        "valueString": "Tea in the garden",
    }
    headers = {"Content-Type": "application/fhir+json"}
    assert ips_client.post("/fhir/Observation", json=plain, headers=headers).status_code == 201
    story = _section(_summary(ips_client), STORY)["text"]["div"]
    assert "What matters (rank 1):" in story
    assert "What matters (not yet ranked):" in story
    assert "rank 2, not yet ranked" not in story


class _Spans(HTMLParser):
    """(lang, dir, text) of every ``span class="words"`` of a narrative."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[list[str | None]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "span" and ("class", "words") in attrs:
            self._inside = True
            self.found.append([dict(attrs).get("lang"), dict(attrs).get("dir"), ""])

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.found[-1][2] = str(self.found[-1][2]) + data


def test_words_keep_their_language_and_direction_in_the_summary(client: FlaskClient) -> None:
    """The page showed an Arabic goal with lang="ar" dir="rtl"; the summary's Patient Story and
    Plan of Care showed it with no language or direction, so a reader laid it out left to
    right, and "(for: ...)" ran into it."""
    add_patient(client)
    arabic = "ثم امشي إلى المسجد"
    goal_body = {
        "resourceType": "Goal",
        "language": "ar",
        "lifecycleStatus": "active",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary",
                        "code": "what-matters",
                    }
                ]
            }
        ],
        "description": {"text": arabic},
        "subject": {"reference": "Patient/p1"},
    }
    assert client.post("/fhir/Goal", json=goal_body, headers=FHIR_JSON).status_code == 201
    document = _summary(client)
    for code in (STORY, PLAN):
        spans = _Spans()
        spans.feed(_section(document, code)["text"]["div"])
        assert ["ar", "rtl", arabic] in spans.found, (code, spans.found)
