"""The plain-JSON facade (service/api/openapi.json) and the clinician's page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
from flask.testing import FlaskClient

from tests.builders import outcome_issues
from tests.priorities.conversations import NHS, add_patient, conversation, goal, record, statement

OPENAPI = json.loads(
    (Path(__file__).resolve().parents[2] / "service" / "api" / "openapi.json").read_text()
)
PATIENT = f"/api/patients/{NHS}%7C9000000009/priorities"


def _schema(name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": OPENAPI["components"]}
    return jsonschema.Draft202012Validator(schema)


def _conversation() -> dict[str, Any]:
    return {
        "statements": [{"key": "s1", "text": "Singing in the chapel choir"}],
        "goals": [
            {
                "key": "g1",
                "description": "Back at choir practice by Easter",
                "priority": "high",
                "addresses": ["s1"],
                "targetDate": "2027-04-01",
            }
        ],
        "ranking": ["g1", "s1"],
        "recordedBy": {"reference": "Practitioner/gp-1", "display": "Dr Rhys Morgan"},
        "setting": {"display": "Bodnant Surgery"},
        "settingType": "primary-care",
    }


def test_openapi_document_is_served_and_describes_both_calls(client: FlaskClient) -> None:
    served = client.get("/api/openapi.json")
    assert served.status_code == 200
    document = served.get_json()
    assert document == OPENAPI
    jsonschema.Draft202012Validator.check_schema({"components": document["components"]})
    path = document["paths"]["/api/patients/{patient}/priorities"]
    assert {"get", "post"} <= set(path)


def test_post_records_a_conversation_and_returns_the_ranking(client: FlaskClient) -> None:
    add_patient(client)
    response = client.post(PATIENT, json=_conversation())
    assert response.status_code == 201
    body = response.get_json()
    _schema("Priorities").validate(body)
    # the goal is ranked first: the statement it addresses takes its place, the goal under it
    (only,) = body["priorities"]
    assert (only["rank"], only["kind"], only["text"]) == (
        1,
        "statement",
        "Singing in the chapel choir",
    )
    assert only["ranked"] is True
    (goal_,) = only["goals"]
    assert (goal_["text"], goal_["priority"]) == ("Back at choir practice by Easter", "high")
    assert only["recordedBy"] == "Dr Rhys Morgan"
    assert only["settings"] == ["Bodnant Surgery"]
    assert only["settingType"] == "GP"


def test_get_is_the_same_as_what_matters(client: FlaskClient) -> None:
    add_patient(client)
    client.post(PATIENT, json=_conversation())
    body = client.get(PATIENT).get_json()
    _schema("Priorities").validate(body)
    assert [p["text"] for p in body["priorities"]] == ["Singing in the chapel choir"]
    assert [g["text"] for g in body["priorities"][0]["goals"]] == [
        "Back at choir practice by Easter"
    ]


def test_facade_errors_name_the_json_field(client: FlaskClient) -> None:
    add_patient(client)
    bad = _conversation()
    bad["goals"][0]["priority"] = "urgent"
    response = client.post(PATIENT, json=bad)
    assert response.status_code == 422
    assert outcome_issues(response)[0]["expression"] == ["$.goals[0].priority"]
    unknown = client.post(PATIENT, json={**_conversation(), "mood": "fine"})
    assert unknown.status_code == 400
    assert outcome_issues(unknown)[0]["expression"] == ["$.mood"]
    assert client.get("/api/patients/urn:x%7Cnobody/priorities").status_code == 404
    assert client.get("/api/patients/no-bar/priorities").status_code == 400
    assert client.get(PATIENT).get_json()["priorities"] == []


def test_page_shows_ranked_priorities_with_who_where_and_when(client: FlaskClient) -> None:
    add_patient(client)
    record(
        client,
        conversation(
            statement("s1", "<script>alert('x')</script> & family"),
            goal("g1", "Sleep in my own bed", "s1", priority="medium"),
            recorder="Nurse Ada Okafor",
            setting="Ward 7",
        ),
    )
    response = client.get("/patients/p1/what-matters")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]
    html = response.get_data(as_text=True)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; family" in html
    assert '<html lang="en">' in html
    assert "@media print" in html
    assert "Nurse Ada Okafor" in html
    assert "Ward 7" in html
    assert html.count('data-rank="') == 1  # the goal sits under the statement it addresses
    assert html.count("Sleep in my own bed") == 1
    missing = client.get("/patients/nobody/what-matters")
    assert missing.status_code == 404
    assert missing.mimetype == "text/html"  # a person reads it: the error is a page too
    assert "Patient/nobody is not known" in missing.get_data(as_text=True)
    assert missing.headers["X-Content-Type-Options"] == "nosniff"
