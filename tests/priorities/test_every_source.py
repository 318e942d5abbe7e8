"""What matters from every source: one patient's data written three ways (plain FHIR REST, a
mapping ingest, ``$record-what-matters`` at two settings) is one list in ``$what-matters``, the
facade and the page: each thing said once, ranked items first, every goal once, and who /
where / when for each. Runs on SQLite and, with WHATMATTERS_TEST_DATABASE_URL, PostgreSQL.
"""

from __future__ import annotations

import re
from html import unescape
from typing import Any

from flask.testing import FlaskClient

from tests.mapping.test_ingest import CSV, HL7, MESSAGE, SURVEY
from tests.priorities.conversations import (
    FHIR_JSON,
    NHS,
    add_patient,
    conversation,
    goal,
    ranked_texts,
    ranking,
    record,
    statement,
    what_matters,
)

PROFILE = "http://whatmatters.example/fhir/StructureDefinition/"
FACADE = f"/api/patients/{NHS}%7C9000000009/priorities"
SHARED = "Seeing my grandchildren at Christmas"
PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"


def _rest(client: FlaskClient) -> None:
    """What an EHR following the PCO IG writes: a statement, a goal and an untyped Provenance."""
    said = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": PCO, "code": "what-matters"}]}],
        "code": {"text": "What matters to you?"},
        "subject": {"reference": "Patient/p1"},
        "valueString": "Sleeping in my own bed again",
    }
    created = client.post("/fhir/Observation", json=said, headers=FHIR_JSON)
    assert created.status_code == 201, created.get_data(as_text=True)
    observation = created.get_json()["id"]
    aim = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "category": [{"coding": [{"system": PCO, "code": "what-matters"}]}],
        "description": {"text": "Home before the new year"},
        "subject": {"reference": "Patient/p1"},
        "addresses": [{"reference": f"Observation/{observation}"}],
    }
    created = client.post("/fhir/Goal", json=aim, headers=FHIR_JSON)
    assert created.status_code == 201, created.get_data(as_text=True)
    provenance = {
        "resourceType": "Provenance",
        "target": [
            {"reference": f"Observation/{observation}"},
            {"reference": f"Goal/{created.get_json()['id']}"},
        ],
        "recorded": "2026-12-01T09:00:00Z",
        "agent": [  # R4 allows an agent without a type
            {
                "who": {"reference": "Practitioner/dn-1", "display": "Sister Siân Hughes"},
                "onBehalfOf": {"display": "Conwy Community Nursing"},
            }
        ],
    }
    assert client.post("/fhir/Provenance", json=provenance, headers=FHIR_JSON).status_code == 201


def _ingest(client: FlaskClient) -> None:
    for mapping, data, headers in (("wmty-oru", MESSAGE, HL7), ("survey-csv", SURVEY, CSV)):
        response = client.post(f"/fhir/$ingest?mapping={mapping}", data=data, headers=headers)
        assert response.status_code == 200, response.get_data(as_text=True)


def _conversations(client: FlaskClient) -> None:
    ward = conversation(
        statement("s1", SHARED),
        goal("g1", "Be well enough to travel to Cardiff", "s1", priority="high"),
        statement("s2", "Not being a burden on my daughter"),
        ranking("s2", "g1", "s1"),
        setting="Ward 7, Ysbyty Gwynedd",
        setting_type="hospital",
        recorder="Nurse Ada Okafor",
        recorded="2026-11-20T10:15:00Z",
    )
    gp = conversation(  # the same sentence, spaced differently: the same thing said
        statement("s1", "Seeing my  grandchildren\nat Christmas "),
        statement("s3", "Managing my own tablets"),
        ranking("s1", "s3"),
        setting="Bodnant Surgery",
        setting_type="primary-care",
        recorder="Dr Rhys Morgan",
        recorded="2026-11-24T09:00:00Z",
    )
    for body in (ward, gp):
        response = record(client, body)
        assert response.status_code == 200, response.get_data(as_text=True)


def _scenario(client: FlaskClient) -> None:
    add_patient(client)
    _rest(client)
    _ingest(client)
    _conversations(client)


def _said(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


EXPECTED = {  # every thing said, once
    SHARED,
    "Not being a burden on my daughter",
    "Managing my own tablets",
    "Sleeping in my own bed again",
    "Walking Bramble & the sea",
    "Cared for at home",
    "Singing in the choir",
    "Keeping my own front door key",
}
GOALS = {"Be well enough to travel to Cardiff", "Home before the new year"}


def _facade_texts(body: dict[str, Any]) -> list[str]:
    return [_said(p["text"]) for p in body["priorities"]]


def test_what_matters_shows_every_source_once_ranked_first(client: FlaskClient) -> None:
    _scenario(client)
    bundle = what_matters(client)
    merged = bundle["entry"][0]["resource"]
    resources = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in bundle["entry"][1:]
    }
    shown = [resources[e["item"]["reference"]] for e in merged["entry"]]
    texts = [_said(r.get("valueString") or r["description"]["text"]) for r in shown]
    assert sorted(texts) == sorted(EXPECTED)  # each once
    # the ranked (the GP spoke last: its order first, then what only the ward ranked) ...
    assert texts[:3] == [SHARED, "Managing my own tablets", "Not being a burden on my daughter"]
    # ... then the not yet ranked, flagged, newest first
    flags = [e.get("flag", {}).get("coding", [{}])[0].get("code") for e in merged["entry"]]
    assert flags == [None] * 3 + ["not-yet-ranked"] * 5
    assert texts[3] == "Sleeping in my own bed again"  # recorded 1 Dec, the newest
    assert texts[-1] == "Cared for at home"  # answered in July, the oldest
    goals = [r for r in bundle["entry"] if r["resource"]["resourceType"] == "Goal"]
    assert sorted(g["resource"]["description"]["text"] for g in goals) == sorted(GOALS)
    # the shared sentence: both settings, each record with who, where and when
    first = merged["entry"][0]
    settings = [x["valueReference"]["display"] for x in first["extension"] if "valueReference" in x]
    assert settings == ["Bodnant Surgery", "Ward 7, Ysbyty Gwynedd"]
    records = [x for x in first["extension"] if x["url"] == PROFILE + "wmty-recorded"]
    parts = [{p["url"]: p for p in r["extension"]} for r in records]
    assert [p["recorder"]["valueReference"]["display"] for p in parts] == [
        "Dr Rhys Morgan",
        "Nurse Ada Okafor",
    ]
    assert [p["date"]["valueDateTime"][:10] for p in parts] == ["2026-11-24", "2026-11-20"]


def test_the_facade_and_the_page_show_the_same_items(client: FlaskClient) -> None:
    _scenario(client)
    body = client.get(FACADE).get_json()
    items = body["priorities"]
    assert sorted(_facade_texts(body)) == sorted(EXPECTED)
    assert [i["ranked"] for i in items] == [True] * 3 + [False] * 5
    nested = [g["text"] for i in items for g in i.get("goals", [])]
    alone = [i["text"] for i in items if i["kind"] == "goal"]
    assert sorted(nested + alone) == sorted(GOALS)  # every goal once
    by_text = {_said(i["text"]): i for i in items}
    shared = by_text[SHARED]
    assert [(r["recordedBy"], r["setting"], r["settingType"]) for r in shared["records"]] == [
        ("Dr Rhys Morgan", "Bodnant Surgery", "GP"),
        ("Nurse Ada Okafor", "Ward 7, Ysbyty Gwynedd", "Hospital"),
    ]
    assert [g["text"] for g in shared["goals"]] == ["Be well enough to travel to Cardiff"]
    rest = by_text["Sleeping in my own bed again"]  # plain FHIR: the untyped Provenance
    assert (rest["recordedBy"], rest["settings"], rest["date"]) == (
        "Sister Siân Hughes",
        ["Conwy Community Nursing"],
        "2026-12-01T09:00:00Z",
    )
    assert [g["text"] for g in rest["goals"]] == ["Home before the new year"]
    hl7 = by_text["Walking Bramble & the sea"]  # the mapping: performer and sending facility
    assert (hl7["recordedBy"], hl7["settings"], hl7["date"][:10]) == (
        "Nurse Ada Okafor",
        ["YSBYTY-GWYNEDD"],
        "2026-11-20",
    )
    csv = by_text["Singing in the choir"]
    assert (csv["recordedBy"], csv["settings"], csv["settingType"]) == (
        "Nurse Ada Okafor",
        ["Bodnant Surgery"],
        "GP",
    )
    assert all(i["date"] for i in items)  # when, for each
    page = client.get("/patients/p1/what-matters").get_data(as_text=True)
    words = [
        _said(unescape(w)) for w in re.findall(r'<h2 class="words"[^>]*>(.*?)</h2>', page, re.S)
    ]
    assert words == _facade_texts(body)  # the same items, in the same order
    for text in GOALS:
        assert page.count(text) == 1
    assert page.count("Bodnant Surgery") == 3  # the shared sentence, the tablets, the survey


def test_a_cancelled_statement_or_one_without_words_is_not_shown_as_what_matters(
    client: FlaskClient,
) -> None:
    """Another EHR writes what-matters Observations by plain FHIR: one cancelled (R4
    observation-status: "not started or not completed"), one with its words only in a note
    (no value), one final. The first two were shown as current priorities (the second as an
    empty heading on the page and "rank 3" in the IPS); now only the final one is."""
    add_patient(client)
    headers = {"Content-Type": "application/fhir+json"}
    base = {
        "resourceType": "Observation",
        "category": [{"coding": [{"system": PCO, "code": "what-matters"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T10:15:00+00:00",
    }
    sent = [
        {**base, "status": "cancelled", "valueString": "EHR: never asked"},
        {**base, "status": "final", "note": [{"text": "Talked about the garden"}]},
        {**base, "status": "final", "valueString": "Tea in the garden"},
    ]
    for resource in sent:
        assert client.post("/fhir/Observation", json=resource, headers=headers).status_code == 201
    assert ranked_texts(what_matters(client)) == ["Tea in the garden"]
    page = unescape(client.get("/patients/p1/what-matters").get_data(as_text=True))
    assert "Tea in the garden" in page
    assert "EHR: never asked" not in page
    assert not re.search(r'<h2 class="words"[^>]*>\s*</h2>', page)


def test_a_statement_dated_only_by_issued_shows_that_date(client: FlaskClient) -> None:
    """Another EHR's statement carries ``issued`` (when it was made available) and no
    effective time: the page said "date not recorded" although the merge already orders by
    ``issued``. The page now shows it."""
    add_patient(client)
    statement_only_issued = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": PCO, "code": "what-matters"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": "Patient/p1"},
        "issued": "2026-09-02T09:00:00Z",
        "valueString": "Sea swimming in September",
    }
    headers = {"Content-Type": "application/fhir+json"}
    assert (
        client.post("/fhir/Observation", json=statement_only_issued, headers=headers).status_code
        == 201
    )
    page = unescape(client.get("/patients/p1/what-matters").get_data(as_text=True))
    assert "Sea swimming in September" in page
    assert "2026-09-02" in page
    assert "date not recorded" not in page
