"""Every operation invoked by POST reads its Parameters body the same way
(https://hl7.org/fhir/R4/operations.html#invoking): a body a client library gets wrong is a
400 OperationOutcome naming where, whichever operation it was sent to."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

OPERATIONS = [
    "/fhir/Patient/p1/$what-matters",
    "/fhir/Measure/what-matters/$evaluate-measure",
    "/fhir/ValueSet/$expand",
    "/fhir/$export",
]
HEADERS = {"Content-Type": "application/fhir+json", "Prefer": "respond-async"}


def _post(client: FlaskClient, path: str, body: Any) -> tuple[int, list[str]]:
    response = client.post(path, data=json.dumps(body), headers=HEADERS)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    return response.status_code, [e for i in outcome["issue"] for e in i.get("expression", [])]


@pytest.mark.parametrize("path", OPERATIONS)
def test_a_resource_other_than_parameters_is_refused(client: FlaskClient, path: str) -> None:
    # a client that posts the resource itself, as it would to create it
    assert _post(client, path, {"resourceType": "Patient"}) == (400, ["resourceType"])


@pytest.mark.parametrize("path", OPERATIONS)
def test_parameter_as_an_object_not_an_array_is_refused(client: FlaskClient, path: str) -> None:
    # a hand-built body with one parameter written as an object, not a list of one
    body = {"resourceType": "Parameters", "parameter": {"name": "url", "valueUri": "x"}}
    assert _post(client, path, body) == (400, ["Parameters.parameter"])


@pytest.mark.parametrize("path", OPERATIONS)
def test_a_parameter_without_a_name_is_refused_where_it_is(client: FlaskClient, path: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [{"valueString": "x"}]}
    assert _post(client, path, body) == (400, ["Parameters.parameter[0]"])
