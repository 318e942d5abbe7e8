"""A reference to another server's Patient names somebody else.

R4 references.html §2.3.0: a literal reference is "an absolute URL, or a relative one"; a
relative one resolves against this server's base, so ``Patient/p1`` here and
``http://other-ehr.example/fhir/Patient/p1`` are two people. search.html §3.1.1.4.13
(reference): an absolute reference on the server's own base is the same as the relative one.
So what another EHR wrote about its own patient 123 never reaches our Patient/123's search,
compartment, ``$what-matters`` or page; a reference on our own base does.
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.priorities.conversations import FHIR_JSON, add_patient, what_matters

PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"
FOREIGN = "http://other-ehr.example/fhir/Patient/p1"
OWN = "http://test.local/fhir/Patient/p1"  # the tests' public base URL


def _said(client: FlaskClient, subject: str, words: str) -> str:
    body = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": PCO, "code": "what-matters"}]}],
        "code": {"text": "What matters to you?"},
        "subject": {"reference": subject},
        "effectiveDateTime": "2026-11-20T10:15:00Z",
        "valueString": words,
    }
    created = client.post("/fhir/Observation", json=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.get_data(as_text=True)
    return str(created.get_json()["id"])


def _ids(client: FlaskClient, url: str) -> set[str]:
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return {e["resource"]["id"] for e in response.get_json().get("entry", [])}


def _words(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["valueString"]
        for e in bundle["entry"][1:]
        if e["resource"]["resourceType"] == "Observation" and "valueString" in e["resource"]
    }


def test_another_servers_patient_is_not_ours(client: FlaskClient) -> None:
    add_patient(client)
    ours = _said(client, "Patient/p1", "Being at home for lambing")
    own_base = _said(client, OWN, "Walking the top field")
    foreign = _said(client, FOREIGN, "OTHER EHR patient: wants no resuscitation")

    assert _ids(client, "/fhir/Observation?patient=p1") == {ours, own_base}
    assert _ids(client, "/fhir/Observation?subject=Patient/p1") == {ours, own_base}
    assert _ids(client, f"/fhir/Observation?subject={OWN}") == {ours, own_base}
    assert _ids(client, "/fhir/Patient/p1/Observation") == {ours, own_base}
    assert _ids(client, f"/fhir/Observation?subject={FOREIGN}") == {foreign}
    # a chain follows only references that resolve here
    assert _ids(client, "/fhir/Observation?subject:Patient._id=p1") == {ours, own_base}
    included = client.get(f"/fhir/Observation?_id={foreign}&_include=Observation:subject")
    assert [e["resource"]["resourceType"] for e in included.get_json()["entry"]] == ["Observation"]

    words = _words(what_matters(client))
    assert words == {"Being at home for lambing", "Walking the top field"}
