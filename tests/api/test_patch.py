"""PATCH with JSON Patch (RFC 6902): https://hl7.org/fhir/R4/http.html#patch."""

from __future__ import annotations

import json

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, goal, outcome_issues

PATCH_HEADERS = {"Content-Type": "application/json-patch+json"}


def _goal(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers={"Content-Type": FHIR_JSON})


def _patch(client: FlaskClient, ops: object, **headers: str):
    return client.patch("/fhir/Goal/g1", data=json.dumps(ops), headers={**PATCH_HEADERS, **headers})


def test_patch_applies_operations_and_increments_version(client: FlaskClient) -> None:
    _goal(client)
    response = _patch(
        client,
        [
            {"op": "replace", "path": "/lifecycleStatus", "value": "completed"},
            {"op": "add", "path": "/note", "value": [{"text": "Managed it on Tuesday"}]},
        ],
    )
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    body = response.get_json()
    assert body["lifecycleStatus"] == "completed"
    assert body["note"] == [{"text": "Managed it on Tuesday"}]
    assert body["meta"]["versionId"] == "2"


def test_patch_with_matching_if_match(client: FlaskClient) -> None:
    _goal(client)
    ok = _patch(
        client,
        [{"op": "replace", "path": "/lifecycleStatus", "value": "on-hold"}],
        **{"If-Match": 'W/"1"'},
    )
    assert ok.status_code == 200


def test_patch_with_stale_if_match_is_412(client: FlaskClient) -> None:
    _goal(client)
    stale = _patch(
        client,
        [{"op": "replace", "path": "/lifecycleStatus", "value": "on-hold"}],
        **{"If-Match": 'W/"4"'},
    )
    assert stale.status_code == 412
    outcome_issues(stale)


def test_patch_producing_invalid_resource_is_400_and_changes_nothing(client: FlaskClient) -> None:
    _goal(client)
    response = _patch(client, [{"op": "replace", "path": "/lifecycleStatus", "value": "sort-of"}])
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["Goal.lifecycleStatus"]
    assert client.get("/fhir/Goal/g1").headers["ETag"] == 'W/"1"'


def test_patch_changing_id_is_422(client: FlaskClient) -> None:
    _goal(client)
    response = _patch(client, [{"op": "replace", "path": "/id", "value": "g2"}])
    assert response.status_code == 422
    outcome_issues(response)


def test_patch_with_failed_test_operation_is_422(client: FlaskClient) -> None:
    """RFC 6902 section 4.6: a failed test makes the whole patch fail; RFC 5789 section 2.2:
    a patch that cannot be applied is 422 (412 is for If-Match, a header precondition)."""
    _goal(client)
    response = _patch(client, [{"op": "test", "path": "/lifecycleStatus", "value": "cancelled"}])
    assert response.status_code == 422
    diagnostics = outcome_issues(response)[0]["diagnostics"]
    assert "test operation failed" in diagnostics
    assert "<class" not in diagnostics


def test_patch_with_path_that_does_not_exist_is_422(client: FlaskClient) -> None:
    _goal(client)
    response = _patch(client, [{"op": "remove", "path": "/note/5"}])
    assert response.status_code == 422
    outcome_issues(response)


def test_patch_document_that_is_not_an_array_is_400(client: FlaskClient) -> None:
    _goal(client)
    response = _patch(client, {"op": "replace"})
    assert response.status_code == 400
    outcome_issues(response)


def test_patch_with_fhir_json_body_is_415(client: FlaskClient) -> None:
    _goal(client)
    response = client.patch(
        "/fhir/Goal/g1", json={"resourceType": "Parameters"}, headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code == 415
    outcome_issues(response)


def test_patch_of_unknown_resource_is_404(client: FlaskClient) -> None:
    response = _patch(client, [{"op": "remove", "path": "/note"}])
    assert response.status_code == 404
    outcome_issues(response)


def test_patch_of_deleted_resource_is_410(client: FlaskClient) -> None:
    _goal(client)
    client.delete("/fhir/Goal/g1")
    response = _patch(client, [{"op": "remove", "path": "/note"}])
    assert response.status_code == 410
    outcome_issues(response)
