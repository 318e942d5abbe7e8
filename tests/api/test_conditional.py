"""Conditional create, update, delete and patch: https://hl7.org/fhir/R4/http.html#ccreate,
http.html#cond-update, http.html#3.1.0.7.1 (conditional delete)."""

from __future__ import annotations

import json

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}
# a local record number: unlike the NHS number, two Patients may share one (merged records)
MRN = "https://hospital.example/Id/mrn"


def _patient(value: str, **changes: object) -> dict:
    return patient(identifier=[{"system": MRN, "value": value}], **changes)


def _count(client: FlaskClient, query: str) -> int:
    bundle = client.get(f"/fhir/Patient?{query}&_total=accurate").get_json()
    return int(bundle["total"])


def test_conditional_create_with_no_match_creates_201(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Patient",
        json=_patient("111"),
        headers={**JSON_HEADERS, "If-None-Exist": f"identifier={MRN}|111"},
    )
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/_history/1")


def test_conditional_create_with_one_match_returns_200_and_existing(client: FlaskClient) -> None:
    first = client.post("/fhir/Patient", json=_patient("111"), headers=JSON_HEADERS).get_json()
    response = client.post(
        "/fhir/Patient",
        json=_patient("111", gender="male"),
        headers={**JSON_HEADERS, "If-None-Exist": f"identifier={MRN}|111"},
    )
    assert response.status_code == 200
    assert response.get_json()["id"] == first["id"]
    assert response.get_json()["gender"] == "female"
    assert response.headers["ETag"] == 'W/"1"'
    assert _count(client, f"identifier={MRN}|111") == 1


def test_conditional_create_with_several_matches_is_412(client: FlaskClient) -> None:
    client.post("/fhir/Patient", json=_patient("111"), headers=JSON_HEADERS)
    client.post("/fhir/Patient", json=_patient("111"), headers=JSON_HEADERS)
    response = client.post(
        "/fhir/Patient",
        json=_patient("111"),
        headers={**JSON_HEADERS, "If-None-Exist": f"identifier={MRN}|111"},
    )
    assert response.status_code == 412
    outcome_issues(response)
    assert _count(client, f"identifier={MRN}|111") == 2


def test_conditional_create_with_unknown_parameter_is_400_not_a_wide_match(
    client: FlaskClient,
) -> None:
    client.post("/fhir/Patient", json=_patient("111"), headers=JSON_HEADERS)
    response = client.post(
        "/fhir/Patient",
        json=_patient("222"),
        headers={**JSON_HEADERS, "If-None-Exist": "nickname=Ada"},
    )
    assert response.status_code == 400
    assert "nickname" in outcome_issues(response)[0]["diagnostics"]


def test_conditional_create_accepts_type_prefixed_criteria(client: FlaskClient) -> None:
    client.post("/fhir/Patient", json=_patient("111"), headers=JSON_HEADERS)
    response = client.post(
        "/fhir/Patient",
        json=_patient("111"),
        headers={**JSON_HEADERS, "If-None-Exist": f"Patient?identifier={MRN}|111"},
    )
    assert response.status_code == 200


def test_conditional_update_with_no_match_creates(client: FlaskClient) -> None:
    response = client.put(
        f"/fhir/Patient?identifier={MRN}|333", json=_patient("333"), headers=JSON_HEADERS
    )
    assert response.status_code == 201
    assert _count(client, f"identifier={MRN}|333") == 1


def test_conditional_update_with_no_match_and_client_id_creates_that_id(
    client: FlaskClient,
) -> None:
    response = client.put(
        f"/fhir/Patient?identifier={MRN}|333",
        json=_patient("333", id="pat-333"),
        headers=JSON_HEADERS,
    )
    assert response.status_code == 201
    assert response.get_json()["id"] == "pat-333"


def test_conditional_update_with_one_match_updates_it(client: FlaskClient) -> None:
    first = client.post("/fhir/Patient", json=_patient("444"), headers=JSON_HEADERS).get_json()
    response = client.put(
        f"/fhir/Patient?identifier={MRN}|444",
        json=_patient("444", gender="male"),
        headers=JSON_HEADERS,
    )
    assert response.status_code == 200
    assert response.get_json()["id"] == first["id"]
    assert response.headers["ETag"] == 'W/"2"'


def test_conditional_update_with_other_id_than_match_is_400(client: FlaskClient) -> None:
    client.post("/fhir/Patient", json=_patient("444"), headers=JSON_HEADERS)
    response = client.put(
        f"/fhir/Patient?identifier={MRN}|444",
        json=_patient("444", id="other"),
        headers=JSON_HEADERS,
    )
    assert response.status_code == 400
    outcome_issues(response)


def test_conditional_update_with_several_matches_is_412(client: FlaskClient) -> None:
    client.post("/fhir/Patient", json=_patient("555"), headers=JSON_HEADERS)
    client.post("/fhir/Patient", json=_patient("555"), headers=JSON_HEADERS)
    response = client.put(
        f"/fhir/Patient?identifier={MRN}|555", json=_patient("555"), headers=JSON_HEADERS
    )
    assert response.status_code == 412
    outcome_issues(response)


def test_conditional_update_without_criteria_is_rejected(client: FlaskClient) -> None:
    response = client.put("/fhir/Patient", json=_patient("555"), headers=JSON_HEADERS)
    assert response.status_code == 400
    outcome_issues(response)


def test_conditional_delete_with_one_match_deletes_it(client: FlaskClient) -> None:
    first = client.post("/fhir/Patient", json=_patient("666"), headers=JSON_HEADERS).get_json()
    response = client.delete(f"/fhir/Patient?identifier={MRN}|666")
    assert response.status_code == 204
    assert client.get(f"/fhir/Patient/{first['id']}").status_code == 410


def test_conditional_delete_with_no_match_is_204(client: FlaskClient) -> None:
    assert client.delete(f"/fhir/Patient?identifier={MRN}|nobody").status_code == 204


def test_conditional_delete_with_several_matches_is_412_and_deletes_nothing(
    client: FlaskClient,
) -> None:
    client.post("/fhir/Patient", json=_patient("777"), headers=JSON_HEADERS)
    client.post("/fhir/Patient", json=_patient("777"), headers=JSON_HEADERS)
    response = client.delete(f"/fhir/Patient?identifier={MRN}|777")
    assert response.status_code == 412
    outcome_issues(response)
    assert _count(client, f"identifier={MRN}|777") == 2


def test_conditional_patch_applies_to_the_single_match(client: FlaskClient) -> None:
    first = client.post("/fhir/Patient", json=_patient("888"), headers=JSON_HEADERS).get_json()
    patch = [{"op": "replace", "path": "/gender", "value": "male"}]
    response = client.patch(
        f"/fhir/Patient?identifier={MRN}|888",
        data=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200
    assert response.get_json()["id"] == first["id"]
    assert response.get_json()["gender"] == "male"
