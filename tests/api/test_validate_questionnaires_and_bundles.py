"""$validate over HTTP for Bundles and asked-for profiles, and QuestionnaireResponses checked
against their Questionnaire on every write (resource-operation-validate.html,
questionnaireresponse.html)."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, observation, outcome_issues

JSON = {"Content-Type": FHIR_JSON}
STATEMENT = "http://whatmatters.example/fhir/StructureDefinition/wmty-statement"
GOAL = "http://whatmatters.example/fhir/StructureDefinition/wmty-personal-goal"
WMTY = "http://whatmatters.example/fhir/Questionnaire/wmty"
DIV = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}
UUID = "urn:uuid:0f0a1c4e-5d3b-4c1a-9e2f-1a2b3c4d5e6f"


def _errors(response: object) -> set[str]:
    return {
        e
        for i in outcome_issues(response)
        if i["severity"] in ("error", "fatal")
        for e in i.get("expression", [])
    }


def test_bundle_validate_is_served_and_reports_inside_entries(client: FlaskClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": "Observation/x", "resource": observation(id="o1", status="done")},
        ],
    }
    response = client.post("/fhir/Bundle/$validate", json=bundle, headers=JSON)
    assert response.status_code == 200
    assert {"Bundle.entry[0].fullUrl", "Bundle.entry[0].resource.status"} <= _errors(response)


def test_a_valid_bundle_validates_without_errors(client: FlaskClient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"fullUrl": UUID, "resource": {**observation(), "text": DIV}}],
    }
    response = client.post("/fhir/Bundle/$validate", json=bundle, headers=JSON)
    assert response.status_code == 200
    assert _errors(response) == set()


def test_profile_in_the_url_is_checked(client: FlaskClient) -> None:
    plain = {**observation(), "text": DIV}
    plain.pop("meta", None)
    plain["code"] = {"text": "something else"}
    response = client.post(f"/fhir/Observation/$validate?profile={STATEMENT}", json=plain)
    assert response.status_code == 200
    assert _errors(response), "the WMTY Statement profile needs its LOINC code"
    unprofiled = client.post("/fhir/Observation/$validate", json=plain, headers=JSON)
    assert _errors(unprofiled) == set()


def test_unknown_profile_in_the_url_is_an_error(client: FlaskClient) -> None:
    url = "http://example.org/fhir/StructureDefinition/nowhere"
    response = client.post(f"/fhir/Observation/$validate?profile={url}", json=observation())
    issues = outcome_issues(response)
    assert any(i["severity"] == "error" and url in i["diagnostics"] for i in issues)


def test_profile_for_another_type_in_parameters_is_an_error(client: FlaskClient) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": {**observation(), "text": DIV}},
            {"name": "profile", "valueUri": GOAL},
        ],
    }
    response = client.post("/fhir/Observation/$validate", json=body, headers=JSON)
    assert any(i["severity"] == "error" for i in outcome_issues(response))


def _wmty_response(**changes: object) -> dict[str, object]:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": WMTY,
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "item": [{"linkId": "what-matters", "answer": [{"valueString": "My garden"}]}],
        **changes,
    }


def test_wmty_response_is_stored_when_it_answers_the_questionnaire(client: FlaskClient) -> None:
    response = client.post("/fhir/QuestionnaireResponse", json=_wmty_response(), headers=JSON)
    assert response.status_code == 201, response.get_json()


def test_wmty_response_with_unknown_item_is_refused_on_write(client: FlaskClient) -> None:
    bad = _wmty_response(
        item=[
            {"linkId": "what-matters", "answer": [{"valueString": "My garden"}]},
            {"linkId": "shoe-size", "answer": [{"valueInteger": 9}]},
        ]
    )
    response = client.post("/fhir/QuestionnaireResponse", json=bad, headers=JSON)
    assert response.status_code == 422
    assert "QuestionnaireResponse.item[1]" in _errors(response)
    assert "entry" not in client.get("/fhir/QuestionnaireResponse").get_json()


def test_completed_wmty_response_needs_the_required_answer(client: FlaskClient) -> None:
    bad = _wmty_response(item=[{"linkId": "goal", "answer": [{"valueString": "Walk"}]}])
    response = client.post("/fhir/QuestionnaireResponse", json=bad, headers=JSON)
    assert response.status_code == 422
    assert "QuestionnaireResponse" in _errors(response)


def test_questionnaire_stored_on_the_server_is_found_by_canonical(client: FlaskClient) -> None:
    url = "http://clinic.example.org/fhir/Questionnaire/mobility"
    questionnaire = {
        "resourceType": "Questionnaire",
        "url": url,
        "status": "active",
        "item": [{"linkId": "steps", "type": "integer", "required": True}],
    }
    assert client.post("/fhir/Questionnaire", json=questionnaire, headers=JSON).status_code == 201
    answer = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": url,
        "status": "completed",
        "item": [{"linkId": "steps", "answer": [{"valueString": "many"}]}],
    }
    response = client.post("/fhir/QuestionnaireResponse/$validate", json=answer, headers=JSON)
    assert "QuestionnaireResponse.item[0].answer[0]" in _errors(response)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": UUID,
                "resource": answer,
                "request": {"method": "POST", "url": "QuestionnaireResponse"},
            }
        ],
    }
    refused = client.post("/fhir", json=bundle, headers=JSON)
    assert refused.status_code == 422
    answer["item"] = [{"linkId": "steps", "answer": [{"valueInteger": 4000}]}]
    stored = client.post("/fhir", json=bundle, headers=JSON)
    assert stored.status_code == 200, stored.get_json()
