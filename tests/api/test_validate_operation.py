"""$validate (https://hl7.org/fhir/R4/resource-operation-validate.html) and the validate command."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, goal, observation, outcome_issues, whatmatters

JSON = {"Content-Type": FHIR_JSON}
NARRATIVE = {
    "status": "generated",
    "div": '<div xmlns="http://www.w3.org/1999/xhtml">Walk to the corner shop</div>',
}


def narrated_goal(**changes: object) -> dict:
    """A Goal with narrative, so that dom-6 (a resource should have narrative) is met."""
    return goal(text=NARRATIVE, **changes)


def test_validate_a_valid_resource_reports_no_issues(client: FlaskClient) -> None:
    response = client.post("/fhir/Goal/$validate", json=narrated_goal(), headers=JSON)
    assert response.status_code == 200
    issues = outcome_issues(response)
    assert [i["severity"] for i in issues] == ["information"]


def test_validate_warns_about_a_resource_without_narrative(client: FlaskClient) -> None:
    issues = outcome_issues(client.post("/fhir/Goal/$validate", json=goal(), headers=JSON))
    assert [(i["severity"], i["diagnostics"][:5]) for i in issues] == [("warning", "dom-6")]


def test_validate_reports_structure_and_invariant_errors_without_writing(
    client: FlaskClient,
) -> None:
    # obs-6: dataAbsentReason SHALL only be present if value[x] is not present
    bad = observation(dataAbsentReason={"text": "asked, not answered"}, status="bogus")
    response = client.post("/fhir/Observation/$validate", json=bad, headers=JSON)
    assert response.status_code == 200
    found = {
        (i["severity"], i["code"], i["expression"][0])
        for i in outcome_issues(response)
        if i["severity"] == "error"
    }
    assert ("error", "invariant", "Observation") in found
    assert ("error", "code-invalid", "Observation.status") in found
    assert "entry" not in client.get("/fhir/Observation").get_json()


def test_validate_takes_parameters_with_resource_and_profile(client: FlaskClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": narrated_goal()},
            {"name": "profile", "valueUri": "http://hl7.org/fhir/StructureDefinition/Goal"},
        ],
    }
    response = client.post("/fhir/Goal/$validate", json=params, headers=JSON)
    assert [i["severity"] for i in outcome_issues(response)] == ["information"]
    unknown = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": narrated_goal()},
            {"name": "profile", "valueUri": "http://example.org/StructureDefinition/other"},
        ],
    }
    issues = outcome_issues(client.post("/fhir/Goal/$validate", json=unknown, headers=JSON))
    assert issues[0]["code"] == "not-supported"


def test_validate_a_stored_resource(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=narrated_goal(id="g1"), headers=JSON)
    response = client.post("/fhir/Goal/g1/$validate")
    assert [i["severity"] for i in outcome_issues(response)] == ["information"]
    assert client.post("/fhir/Goal/missing/$validate").status_code == 404


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_validate_command_exits_1_on_errors(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps(narrated_goal()), encoding="utf-8")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(goal(lifecycleStatus="sort-of")), encoding="utf-8")
    ok = whatmatters("validate", str(good))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "no issues" in ok.stdout
    failed = whatmatters("validate", str(good), str(bad))
    assert failed.returncode == 1
    assert "bad.json: error [code-invalid] Goal.lifecycleStatus" in failed.stdout


def test_malformed_parameters_are_400(client: FlaskClient) -> None:
    for body in (
        {"resourceType": "Parameters", "parameter": 5},
        {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": [1]}]},
        {"resourceType": "Parameters", "parameter": [{"name": "profile", "valueUri": 5}]},
        {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "patch"}]},
    ):
        response = client.post("/fhir/Goal/$validate", json=body, headers=JSON)
        assert response.status_code == 400, body
        outcome_issues(response)


def test_mode_update_needs_the_url_id_and_mode_delete_checks_existence(
    client: FlaskClient,
) -> None:
    client.put("/fhir/Goal/g1", json=narrated_goal(id="g1"), headers=JSON)
    other = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "mode", "valueCode": "update"},
            {"name": "resource", "resource": narrated_goal(id="other")},
        ],
    }
    issues = outcome_issues(client.post("/fhir/Goal/g1/$validate", json=other, headers=JSON))
    assert [(i["severity"], i["expression"]) for i in issues] == [("error", ["Goal.id"])]
    delete = {"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]}
    ok = client.post("/fhir/Goal/g1/$validate", json=delete, headers=JSON)
    assert [i["severity"] for i in outcome_issues(ok)] == ["information"]
    assert client.post("/fhir/Goal/nope/$validate", json=delete, headers=JSON).status_code == 404


def test_a_chunked_body_on_the_instance_route_is_validated(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=narrated_goal(id="g1"), headers=JSON)
    bad = json.dumps(narrated_goal(id="g1", lifecycleStatus="sort-of")).encode()
    response = client.post(
        "/fhir/Goal/g1/$validate",
        input_stream=BytesIO(bad),
        headers={**JSON, "Transfer-Encoding": "chunked"},
        # as gunicorn sets it for a chunked request it has decoded
        environ_overrides={"wsgi.input_terminated": True},
    )
    codes = [i["code"] for i in outcome_issues(response)]
    assert "code-invalid" in codes


def _heart_rate(**changes: object) -> dict:
    resource: dict = {
        "resourceType": "Observation",
        "text": NARRATIVE,
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-11-20T08:00:00Z",
        "valueQuantity": {
            "value": 72,
            "unit": "beats/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def test_validate_applies_the_vital_signs_profile_of_the_code(client: FlaskClient) -> None:
    """observation-vitalsigns.html: a heart rate meets the heartrate profile, claimed or not."""
    good = outcome_issues(
        client.post("/fhir/Observation/$validate", json=_heart_rate(), headers=JSON)
    )
    assert [i["severity"] for i in good if i["severity"] == "error"] == []
    assert any("StructureDefinition/heartrate" in i["diagnostics"] for i in good)
    bad = _heart_rate(
        category=None,
        valueQuantity={
            "value": 1.2,
            "unit": "/s",
            "system": "http://unitsofmeasure.org",
            "code": "/s",
        },
    )
    issues = outcome_issues(client.post("/fhir/Observation/$validate", json=bad, headers=JSON))
    assert {i["expression"][0] for i in issues if i["severity"] == "error"} == {
        "Observation.category",
        "Observation.valueQuantity.code",
    }
