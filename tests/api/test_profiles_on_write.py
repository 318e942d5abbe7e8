"""Profiles on the REST API: claimed and required profiles are enforced on every write (422),
``$validate`` checks a named profile, and the CapabilityStatement lists the profiles.

https://hl7.org/fhir/R4/http.html#2.21.0.17 (422 for a resource that breaks a profile),
https://hl7.org/fhir/R4/resource-operation-validate.html,
https://hl7.org/fhir/R4/capabilitystatement-definitions.html#CapabilityStatement.rest.resource.supportedProfile.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from tests.builders import FHIR_JSON, goal, outcome_issues
from tests.validation.mutations import BASE, example

JSON = {"Content-Type": FHIR_JSON}
GOAL_PROFILE = BASE + "wmty-personal-goal"


def _expressions(response: object) -> set[str]:
    return {e for i in outcome_issues(response) for e in i.get("expression", [])}


def _count(client: FlaskClient, type_: str) -> int:
    body = client.get(f"/fhir/{type_}?_summary=count").get_json()
    return int(body["total"])


def test_a_resource_meeting_its_claimed_profile_is_created(client: FlaskClient) -> None:
    response = client.post("/fhir/Goal", json=example("wmty-personal-goal"), headers=JSON)
    assert response.status_code == 201


def test_a_resource_breaking_its_claimed_profile_gets_422_and_is_not_written(
    client: FlaskClient,
) -> None:
    bad = example("wmty-personal-goal")
    del bad["expressedBy"]
    response = client.post("/fhir/Goal", json=bad, headers=JSON)
    assert response.status_code == 422
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert "Goal.expressedBy" in _expressions(response)
    assert client.put("/fhir/Goal/g1", json={**bad, "id": "g1"}, headers=JSON).status_code == 422
    assert _count(client, "Goal") == 0


def test_base_errors_still_get_400(client: FlaskClient) -> None:
    bad = example("wmty-personal-goal")
    bad["lifecycleStatus"] = "paused"
    response = client.post("/fhir/Goal", json=bad, headers=JSON)
    assert response.status_code == 400
    assert "Goal.lifecycleStatus" in _expressions(response)


def test_a_patch_that_breaks_the_profile_gets_422(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json={**example("wmty-personal-goal"), "id": "g1"}, headers=JSON)
    patch = [{"op": "remove", "path": "/addresses"}]
    response = client.patch(
        "/fhir/Goal/g1", json=patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert response.status_code == 422
    assert "Goal.addresses" in _expressions(response)
    assert client.get("/fhir/Goal/g1").get_json()["meta"]["versionId"] == "1"


def test_a_transaction_with_one_entry_breaking_its_profile_writes_nothing(
    client: FlaskClient,
) -> None:
    bad = example("wmty-statement")
    bad["status"] = "preliminary"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": example("wmty-personal-goal"),
                "request": {"method": "POST", "url": "Goal"},
            },
            {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    response = client.post("/fhir", json=bundle, headers=JSON)
    assert response.status_code == 422
    assert "Bundle.entry[1].resource.status" in _expressions(response)
    assert _count(client, "Goal") == 0


def test_warnings_come_back_with_return_operation_outcome(client: FlaskClient) -> None:
    resource = example("wmty-personal-goal")
    resource["extension"].append({"url": "http://example.org/fhir/mood", "valueString": "calm"})
    headers = {**JSON, "Prefer": "return=OperationOutcome"}
    response = client.post("/fhir/Goal", json=resource, headers=headers)
    assert response.status_code == 201
    issues = outcome_issues(response)
    assert ("warning", ["Goal.extension[1]"]) in [
        (i["severity"], i.get("expression")) for i in issues
    ]


@pytest.fixture
def strict_app(config: Config, folders: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(
        replace(config, required_profiles=(("Goal", (GOAL_PROFILE,)),), validation_warnings=False),
        **folders,
    )
    yield application
    application.extensions["whatmatters.store"].close()


def test_required_profile_refuses_plain_goals(strict_app: Flask) -> None:
    client = strict_app.test_client()
    response = client.post("/fhir/Goal", json=goal(), headers=JSON)
    assert response.status_code == 422
    issues = outcome_issues(response)
    assert GOAL_PROFILE in issues[0]["diagnostics"]
    assert all(i["severity"] == "error" for i in issues)  # warnings are not returned
    assert (
        client.post("/fhir/Goal", json=example("wmty-personal-goal"), headers=JSON).status_code
        == 201
    )


def test_without_warnings_configured_the_outcome_has_none(strict_app: Flask) -> None:
    client = strict_app.test_client()
    resource = example("wmty-personal-goal")
    resource["extension"].append({"url": "http://example.org/fhir/mood", "valueString": "calm"})
    headers = {**JSON, "Prefer": "return=OperationOutcome"}
    response = client.post("/fhir/Goal", json=resource, headers=headers)
    assert response.status_code == 201
    assert [i["severity"] for i in outcome_issues(response)] == ["information"]


def test_validate_against_a_named_profile(client: FlaskClient) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": goal()},
            {"name": "profile", "valueUri": GOAL_PROFILE},
        ],
    }
    response = client.post("/fhir/Goal/$validate", json=params, headers=JSON)
    assert response.status_code == 200
    assert {"Goal.expressedBy", "Goal.addresses"} <= _expressions(response)
    good = {
        **params,
        "parameter": [
            {"name": "resource", "resource": example("wmty-personal-goal")},
            params["parameter"][1],
        ],
    }
    issues = outcome_issues(client.post("/fhir/Goal/$validate", json=good, headers=JSON))
    assert [i for i in issues if i["severity"] in ("error", "fatal")] == []


def test_capability_statement_lists_the_supported_profiles(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    by_type = {r["type"]: r.get("supportedProfile", []) for r in statement["rest"][0]["resource"]}
    assert GOAL_PROFILE in by_type["Goal"]
    assert {BASE + "wmty-statement", BASE + "wmty-treatment-preference"} <= set(
        by_type["Observation"]
    )
    assert by_type["List"] == [BASE + "wmty-priorities-list"]
    assert by_type["Patient"] == []
