"""The profiles folder's conformance resources, read-only over REST, so the canonical URLs in
the CapabilityStatement (supportedProfile, operation definitions) can be fetched and used."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, outcome_issues

BASE = "http://whatmatters.example/fhir/StructureDefinition/"


def test_a_profile_is_served_with_its_generated_snapshot(client: FlaskClient) -> None:
    response = client.get("/fhir/StructureDefinition/wmty-statement")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    profile = response.get_json()
    assert profile["url"] == BASE + "wmty-statement"
    ids = [e["id"] for e in profile["snapshot"]["element"]]
    assert "Observation.category:whatMatters" in ids
    assert all("_changed" not in e for e in profile["snapshot"]["element"])
    assert profile["differential"]["element"]


def test_search_by_canonical_url(client: FlaskClient) -> None:
    bundle = client.get(f"/fhir/StructureDefinition?url={BASE}wmty-personal-goal").get_json()
    assert bundle["type"] == "searchset"
    assert bundle["total"] == 1
    assert bundle["entry"][0]["resource"]["id"] == "wmty-personal-goal"
    operations = client.get("/fhir/OperationDefinition").get_json()
    assert {e["resource"]["code"] for e in operations["entry"]} == {
        "record-what-matters",
        "what-matters",
    }
    assert client.get("/fhir/ValueSet?url=http://example.org/none").get_json()["total"] == 0
    bad = client.get("/fhir/ValueSet?title=x")
    assert bad.status_code == 400
    outcome_issues(bad)


def test_conformance_resources_are_read_only(client: FlaskClient) -> None:
    profile = client.get("/fhir/StructureDefinition/wmty-statement").get_json()
    for response in (
        client.put(
            "/fhir/StructureDefinition/wmty-statement",
            json=profile,
            headers={"Content-Type": FHIR_JSON},
        ),
        client.post(
            "/fhir/ValueSet", json={"resourceType": "ValueSet"}, headers={"Content-Type": FHIR_JSON}
        ),
        client.delete("/fhir/CodeSystem/wmty-care-setting-type"),
    ):
        assert response.status_code == 405
        outcome_issues(response)
    assert client.get("/fhir/StructureDefinition/nope").status_code == 404


def test_capability_statement_offers_read_and_search_of_them(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {i["code"] for i in by_type["StructureDefinition"]["interaction"]} == {
        "read",
        "search-type",
    }
    for profile in by_type["Goal"]["supportedProfile"]:
        found = client.get(f"/fhir/StructureDefinition?url={profile}").get_json()
        assert found["total"] == 1
