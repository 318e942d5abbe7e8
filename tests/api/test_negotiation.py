"""Formats, content types and errors: https://hl7.org/fhir/R4/http.html#mime-type and
http.html#general (every error is an OperationOutcome)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from tests.builders import FHIR_JSON, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}


@pytest.mark.parametrize(
    "accept",
    [
        FHIR_JSON,
        "application/json",
        "*/*",
        "application/xml;q=0.5, application/fhir+json",
        "application/json+fhir",
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+json; fhirVersion=3.0, application/fhir+json; fhirVersion=4.0; q=0.5",
    ],
)
def test_json_accept_headers_are_served(client: FlaskClient, accept: str) -> None:
    response = client.get("/fhir/metadata", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] in (FHIR_JSON, "application/json")


def test_plain_json_accept_gets_application_json(client: FlaskClient) -> None:
    response = client.get("/fhir/metadata", headers={"Accept": "application/json"})
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+xml",
        "text/html",
        "application/xml",
        # another FHIR version than this server's R4: https://hl7.org/fhir/R4/versioning.html
        "application/fhir+json; fhirVersion=3.0",
        "application/json; fhirVersion=5.0",
    ],
)
def test_unmet_accept_is_406(client: FlaskClient, accept: str) -> None:
    response = client.get("/fhir/metadata", headers={"Accept": accept})
    assert response.status_code == 406
    assert outcome_issues(response)[0]["code"] == "not-supported"


@pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "application/json"])
def test_format_parameter_json_is_served(client: FlaskClient, fmt: str) -> None:
    response = client.get(f"/fhir/metadata?_format={fmt}", headers={"Accept": "text/html"})
    assert response.status_code == 200


@pytest.mark.parametrize("fmt", ["xml", "application/fhir+xml", "ttl"])
def test_format_parameter_xml_is_406(client: FlaskClient, fmt: str) -> None:
    response = client.get(f"/fhir/metadata?_format={fmt}")
    assert response.status_code == 406
    outcome_issues(response)


def test_pretty_output_is_indented_and_equal(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    compact = client.get("/fhir/Patient/p1")
    pretty = client.get("/fhir/Patient/p1?_pretty=true")
    assert b"\n  " in pretty.data
    assert b"\n" not in compact.data
    assert json.loads(pretty.data) == json.loads(compact.data)


@pytest.mark.parametrize("content_type", ["application/xml", "text/plain", "application/fhir+xml"])
def test_body_in_other_format_is_415(client: FlaskClient, content_type: str) -> None:
    response = client.post(
        "/fhir/Patient", data=b"<Patient/>", headers={"Content-Type": content_type}
    )
    assert response.status_code == 415
    outcome_issues(response)


@pytest.mark.parametrize(
    "content_type",
    [
        "application/fhir+json; fhirVersion=5.0",
        "application/fhir+json; fhirVersion=3.0",
        "application/fhir+json; charset=iso-8859-1",
        "application/json; charset=windows-1252",
    ],
)
def test_a_body_declared_in_another_fhir_version_or_charset_is_415(
    client: FlaskClient, content_type: str
) -> None:
    """versioning.html#mt-version and http.html#mime-type: an R5 (or STU3) body, or one in a
    character set other than UTF-8, cannot be read as R4 JSON. A body declared fhirVersion=5.0
    was created (201); a Latin-1 body was a 400 about invalid UTF-8 rather than a 415."""
    body = json.dumps(patient(name=[{"family": "Pérez"}])).encode("latin-1")
    response = client.post("/fhir/Patient", data=body, headers={"Content-Type": content_type})
    assert response.status_code == 415, response.get_data(as_text=True)
    assert outcome_issues(response)[0]["code"] in ("not-supported", "processing")
    assert client.get("/fhir/Patient?_summary=count").get_json()["total"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        FHIR_JSON,
        "application/json",
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+json; fhirVersion=4.0.1; charset=UTF-8",
    ],
)
def test_json_bodies_are_accepted(client: FlaskClient, content_type: str) -> None:
    response = client.post(
        "/fhir/Patient", data=json.dumps(patient()), headers={"Content-Type": content_type}
    )
    assert response.status_code == 201


def test_body_over_the_limit_is_413(
    database_url: str, config: Config, folders: dict[str, Any]
) -> None:
    small = Config(database_url=database_url, max_body_bytes=2048)
    app: Flask = create_app(small, **folders)
    client = app.test_client()
    big = patient(
        text={
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 5000 + "</div>",
        }
    )
    response = client.post("/fhir/Patient", data=json.dumps(big), headers=JSON_HEADERS)
    assert response.status_code == 413
    assert outcome_issues(response)[0]["code"] == "too-costly"
    app.extensions["whatmatters.store"].close()


def test_unknown_path_is_404_operation_outcome(client: FlaskClient) -> None:
    response = client.get("/fhir/Patient/p1/_history/1/extra")
    assert response.status_code == 404
    outcome_issues(response)


def test_method_not_allowed_is_405_operation_outcome(client: FlaskClient) -> None:
    response = client.post("/fhir/Patient/p1/_history/1")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    outcome_issues(response)


def test_unsupported_type_read_is_404_not_supported(client: FlaskClient) -> None:
    response = client.get("/fhir/MedicationRequest/1")
    assert response.status_code == 404
    assert outcome_issues(response)[0]["code"] == "not-supported"


def test_json_nested_too_deep_is_400(client: FlaskClient) -> None:
    deep = '{"resourceType":"Patient","extension":' + "[" * 200 + "]" * 200 + "}"
    response = client.post("/fhir/Patient", data=deep, headers=JSON_HEADERS)
    assert response.status_code == 400
    outcome_issues(response)


def test_empty_body_is_400(client: FlaskClient) -> None:
    response = client.post("/fhir/Patient", data=b"", headers=JSON_HEADERS)
    assert response.status_code == 400
    outcome_issues(response)


def test_head_on_read_returns_headers_without_body(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    response = client.head("/fhir/Patient/p1")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert response.data == b""
