"""The FHIR API's one view over the route table (service/fhir/router.py) as HTTP clients see
it: OPTIONS and HEAD, doubled slashes, what is checked first, and the interaction metrics and
audit read from the route (R4 http.html)."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, outcome_issues, patient
from tests.operations.test_observability import sample

JSON_HEADERS = {"Content-Type": FHIR_JSON}


def test_options_lists_the_methods_routed_at_the_path(client: FlaskClient) -> None:
    answer = client.options("/fhir/Patient/p1/_history")
    assert answer.status_code == 200
    assert set(answer.headers["Allow"].split(", ")) == {"GET", "HEAD", "OPTIONS"}
    base = client.options("/fhir")
    assert set(base.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert client.options("/fhir/Patient/p1/_history/1/extra").status_code == 404


def test_head_answers_as_get_without_a_body(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    answer = client.head("/fhir/Patient/p1")
    assert answer.status_code == 200
    assert answer.headers["ETag"] == 'W/"1"'
    assert answer.data == b""


def test_doubled_slashes_redirect_to_the_route(client: FlaskClient) -> None:
    moved = client.get("/fhir/Patient//p1?_format=json")
    assert moved.status_code == 308
    assert moved.headers["Location"].endswith("/fhir/Patient/p1?_format=json")
    refused = client.post("/fhir/Patient//p1", json=patient(), headers=JSON_HEADERS)
    assert refused.status_code == 405
    assert outcome_issues(refused)[0]["diagnostics"] == "POST is not allowed on /fhir/Patient//p1"
    assert client.get("/fhir/metadata//").status_code == 404


def test_the_route_is_found_before_the_format_is_negotiated(client: FlaskClient) -> None:
    missing = client.get("/fhir/Patient/p1/nothing", headers={"Accept": "application/fhir+xml"})
    assert missing.status_code == 404
    outcome_issues(missing)
    refused = client.get("/fhir/Patient/p1", headers={"Accept": "application/fhir+xml"})
    assert refused.status_code == 406


def test_metrics_count_each_request_by_the_interaction_of_its_route(
    app: Flask, client: FlaskClient
) -> None:
    def count(interaction: str) -> float:
        text = client.get("/metrics").get_data(as_text=True)
        return sample(text, "whatmatters_requests_total", interaction=interaction, status="200")

    before = {i: count(i) for i in ("batch", "transaction", "capabilities", "read")}
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
    assert client.post("/fhir", json=bundle, headers=JSON_HEADERS).status_code == 200
    read = {"request": {"method": "GET", "url": "Patient?_id=p1"}}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [read]}
    assert client.post("/fhir/", json=bundle, headers=JSON_HEADERS).status_code == 200
    assert client.get("/fhir/metadata").status_code == 200
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    assert client.head("/fhir/Patient/p1").status_code == 200
    after = {i: count(i) for i in before}
    assert {i: after[i] - before[i] for i in before} == {
        "batch": 1,
        "transaction": 1,
        "capabilities": 1,
        "read": 1,
    }
