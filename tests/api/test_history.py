"""history at instance, type and system level: https://hl7.org/fhir/R4/http.html#history."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, goal, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}
# the Patients of one test each need their own number (no two share an NHS number)
MRN = "https://hospital.example/Id/mrn"
OLD = [{"system": MRN, "value": "old"}]


def _three_versions(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    client.put("/fhir/Goal/g1", json=goal(id="g1", lifecycleStatus="on-hold"), headers=JSON_HEADERS)
    client.delete("/fhir/Goal/g1")


def test_instance_history_lists_versions_newest_first(client: FlaskClient) -> None:
    _three_versions(client)
    response = client.get("/fhir/Goal/g1/_history")
    assert response.status_code == 200
    bundle = response.get_json()
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    entries = bundle["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "PUT"]
    assert "resource" not in entries[0]
    assert entries[0]["response"]["etag"] == 'W/"3"'
    assert entries[1]["resource"]["meta"]["versionId"] == "2"
    assert entries[2]["response"]["status"].startswith("201")
    assert all(e["fullUrl"].endswith("/Goal/g1") for e in entries)


def test_instance_history_of_unknown_resource_is_404(client: FlaskClient) -> None:
    response = client.get("/fhir/Goal/nope/_history")
    assert response.status_code == 404
    outcome_issues(response)


def test_type_history_only_lists_that_type(client: FlaskClient) -> None:
    _three_versions(client)
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    entries = client.get("/fhir/Goal/_history").get_json()["entry"]
    assert len(entries) == 3
    assert {e["fullUrl"].split("/")[-2] for e in entries} == {"Goal"}


def test_system_history_lists_all_types(client: FlaskClient) -> None:
    _three_versions(client)
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    entries = client.get("/fhir/_history").get_json()["entry"]
    assert len(entries) == 4
    assert entries[0]["fullUrl"].endswith("/Patient/p1")


def test_history_count_pages_with_next_links_until_done(client: FlaskClient) -> None:
    for index in range(7):
        body = patient(id=f"p{index}", identifier=[{"system": MRN, "value": f"p{index}"}])
        client.put(f"/fhir/Patient/p{index}", json=body, headers=JSON_HEADERS)
    seen: list[str] = []
    url = "/fhir/Patient/_history?_count=3"
    pages = 0
    while url:
        bundle = client.get(url).get_json()
        pages += 1
        seen += [e["fullUrl"] for e in bundle["entry"]]
        # a new Patient version between pages must not shift what the next page returns
        client.put("/fhir/Patient/p0", json=patient(id="p0", gender="other"), headers=JSON_HEADERS)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        url = ""
        if nxt:
            parts = urlsplit(nxt[0])
            url = f"{parts.path}?{parts.query}"
    assert pages == 3
    assert len(seen) == 7
    assert len(set(seen)) == 7


def test_history_since_excludes_older_versions(client: FlaskClient) -> None:
    client.put("/fhir/Patient/old", json=patient(id="old", identifier=OLD), headers=JSON_HEADERS)
    time.sleep(0.01)
    marker = client.put("/fhir/Patient/new", json=patient(id="new"), headers=JSON_HEADERS)
    since = marker.get_json()["meta"]["lastUpdated"]
    entries = client.get(f"/fhir/Patient/_history?_since={since}").get_json()["entry"]
    assert [e["fullUrl"].split("/")[-1] for e in entries] == ["new"]


def test_history_since_must_be_an_instant(client: FlaskClient) -> None:
    response = client.get("/fhir/_history?_since=yesterday")
    assert response.status_code == 400
    outcome_issues(response)


def test_history_with_unknown_parameter_is_400(client: FlaskClient) -> None:
    response = client.get("/fhir/_history?_at=2020")
    assert response.status_code == 400
    outcome_issues(response)


def test_a_version_that_created_the_resource_again_after_a_delete_says_201(
    client: FlaskClient,
) -> None:
    """PUT (201), PUT (200), DELETE (204), PUT again (201 Created, as it was answered): the
    history said "200 OK" for the last, in the instance history and in the type history where
    the version before it is on another page (bundle.html: entry.response says how the
    interaction was answered)."""
    headers = {"Content-Type": FHIR_JSON}
    body = patient(id="p1")
    assert client.put("/fhir/Patient/p1", json=body, headers=headers).status_code == 201
    assert client.put("/fhir/Patient/p1", json={**body, "gender": "male"}, headers=headers)
    assert client.delete("/fhir/Patient/p1").status_code == 204
    again = client.put("/fhir/Patient/p1", json=body, headers=headers)
    assert again.status_code == 201
    instance = client.get("/fhir/Patient/p1/_history").get_json()["entry"]
    assert [e["response"]["status"] for e in instance] == [
        "201 Created",
        "204 No Content",
        "200 OK",
        "201 Created",
    ]
    newest = client.get("/fhir/Patient/_history?_count=1").get_json()["entry"]
    assert newest[0]["response"]["status"] == "201 Created"
