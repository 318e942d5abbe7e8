"""read, vread, create, update, delete: https://hl7.org/fhir/R4/http.html."""

from __future__ import annotations

import re
from email.utils import parsedate_to_datetime

from flask.testing import FlaskClient

from tests.builders import BASE, FHIR_JSON, goal, observation, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}


def _create(client: FlaskClient, resource: dict) -> dict:
    response = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers=JSON_HEADERS)
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


# -- create: http.html#create ----------------------------------------------------------------


def test_create_returns_201_with_location_etag_and_last_modified(client: FlaskClient) -> None:
    response = client.post("/fhir/Patient", json=patient(), headers=JSON_HEADERS)
    assert response.status_code == 201
    body = response.get_json()
    assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", body["id"])
    assert response.headers["Location"] == f"{BASE}/Patient/{body['id']}/_history/1"
    assert response.headers["ETag"] == 'W/"1"'
    assert parsedate_to_datetime(response.headers["Last-Modified"]).tzinfo is not None
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"].endswith("Z")
    assert response.headers["Content-Type"].startswith(FHIR_JSON)


def test_create_ignores_client_id_and_meta_version(client: FlaskClient) -> None:
    sent = patient(
        id="chosen-by-client",
        meta={
            "versionId": "7",
            "lastUpdated": "2000-01-01T00:00:00Z",
            "tag": [{"system": "urn:t", "code": "kept"}],
        },
    )
    body = _create(client, sent)
    assert body["id"] != "chosen-by-client"
    assert body["meta"]["versionId"] == "1"
    assert body["meta"]["lastUpdated"] != "2000-01-01T00:00:00Z"
    assert body["meta"]["tag"] == [{"system": "urn:t", "code": "kept"}]


def test_create_keeps_the_patients_words_verbatim(client: FlaskClient) -> None:
    words = "Être chez moi pour Noël — 回家 🏡  (two spaces kept)\nsecond line"
    body = _create(client, observation(valueString=words))
    read = client.get(f"/fhir/Observation/{body['id']}")
    assert read.get_json()["valueString"] == words
    # Not re-encoded as \u escapes: the UTF-8 bytes of the words are in the body.
    assert words.split("\n")[0].encode("utf-8") in read.data


def test_create_with_wrong_resource_type_in_body_is_400(client: FlaskClient) -> None:
    response = client.post("/fhir/Goal", json=patient(), headers=JSON_HEADERS)
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["resourceType"]


def test_create_of_unsupported_type_is_404_not_supported(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Condition", json={"resourceType": "Condition"}, headers=JSON_HEADERS
    )
    assert response.status_code == 404
    assert outcome_issues(response)[0]["code"] == "not-supported"


def test_create_reports_every_base_problem_with_its_expression(client: FlaskClient) -> None:
    bad = observation(status="done", unknownThing=True, valueString=12)
    del bad["code"]
    response = client.post("/fhir/Observation", json=bad, headers=JSON_HEADERS)
    assert response.status_code == 400
    found = {(i["code"], i["expression"][0]) for i in outcome_issues(response)}
    assert ("code-invalid", "Observation.status") in found
    assert ("structure", "Observation.unknownThing") in found
    assert ("value", "Observation.valueString") in found
    assert ("required", "Observation.code") in found


def test_create_with_invalid_json_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Patient", data=b'{"resourceType": "Patient",', headers=JSON_HEADERS
    )
    assert response.status_code == 400
    assert "not valid JSON" in outcome_issues(response)[0]["diagnostics"]


def test_create_with_duplicate_json_keys_is_400(client: FlaskClient) -> None:
    body = b'{"resourceType":"Patient","gender":"male","gender":"female"}'
    response = client.post("/fhir/Patient", data=body, headers=JSON_HEADERS)
    assert response.status_code == 400
    assert "gender" in outcome_issues(response)[0]["diagnostics"]


def test_create_with_invalid_utf8_is_400(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Patient", data=b'{"resourceType":"Patient","gender":"\xff"}', headers=JSON_HEADERS
    )
    assert response.status_code == 400
    assert "UTF-8" in outcome_issues(response)[0]["diagnostics"]


# -- read and vread: http.html#read, http.html#vread -----------------------------------------


def test_read_returns_resource_with_etag_and_last_modified(client: FlaskClient) -> None:
    created = _create(client, goal())
    response = client.get(f"/fhir/Goal/{created['id']}")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert "Last-Modified" in response.headers
    assert response.get_json() == created


def test_read_unknown_id_is_404_operation_outcome(client: FlaskClient) -> None:
    response = client.get("/fhir/Goal/does-not-exist")
    assert response.status_code == 404
    assert outcome_issues(response)[0]["code"] == "not-found"


def test_read_invalid_id_is_400(client: FlaskClient) -> None:
    response = client.get("/fhir/Goal/" + "x" * 65)
    assert response.status_code == 400
    outcome_issues(response)


def test_vread_returns_each_version(client: FlaskClient) -> None:
    created = _create(client, goal())
    updated = dict(created, lifecycleStatus="completed")
    client.put(f"/fhir/Goal/{created['id']}", json=updated, headers=JSON_HEADERS)
    first = client.get(f"/fhir/Goal/{created['id']}/_history/1")
    second = client.get(f"/fhir/Goal/{created['id']}/_history/2")
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.get_json()["lifecycleStatus"] == "active"
    assert second.get_json()["lifecycleStatus"] == "completed"
    assert first.headers["ETag"] == 'W/"1"'
    assert second.headers["ETag"] == 'W/"2"'


def test_vread_unknown_version_is_404(client: FlaskClient) -> None:
    created = _create(client, goal())
    response = client.get(f"/fhir/Goal/{created['id']}/_history/9")
    assert response.status_code == 404
    outcome_issues(response)


# -- update: http.html#update -----------------------------------------------------------------


def test_update_returns_200_and_increments_version(client: FlaskClient) -> None:
    created = _create(client, patient())
    changed = dict(created, gender="other")
    response = client.put(f"/fhir/Patient/{created['id']}", json=changed, headers=JSON_HEADERS)
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert response.get_json()["meta"]["versionId"] == "2"
    assert response.get_json()["gender"] == "other"
    assert "Location" not in response.headers


def test_update_as_create_with_client_id_returns_201(client: FlaskClient) -> None:
    response = client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    assert response.status_code == 201
    assert response.headers["Location"] == f"{BASE}/Patient/p1/_history/1"
    assert response.headers["ETag"] == 'W/"1"'
    assert client.get("/fhir/Patient/p1").status_code == 200


def test_update_without_id_in_body_is_400(client: FlaskClient) -> None:
    response = client.put("/fhir/Patient/p1", json=patient(), headers=JSON_HEADERS)
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["Patient.id"]


def test_update_with_mismatched_id_is_400(client: FlaskClient) -> None:
    response = client.put("/fhir/Patient/p1", json=patient(id="p2"), headers=JSON_HEADERS)
    assert response.status_code == 400
    outcome_issues(response)


def test_update_with_matching_if_match_succeeds(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    response = client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1", gender="male"),
        headers={**JSON_HEADERS, "If-Match": 'W/"1"'},
    )
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'


def test_update_with_stale_etag_returns_412(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    client.put("/fhir/Patient/p1", json=patient(id="p1", gender="male"), headers=JSON_HEADERS)
    response = client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1", gender="other"),
        headers={**JSON_HEADERS, "If-Match": 'W/"1"'},
    )
    assert response.status_code == 412
    assert outcome_issues(response)[0]["code"] == "conflict"
    assert client.get("/fhir/Patient/p1").get_json()["gender"] == "male"


def test_update_with_malformed_if_match_is_400(client: FlaskClient) -> None:
    response = client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1"),
        headers={**JSON_HEADERS, "If-Match": "version-one"},
    )
    assert response.status_code == 400
    outcome_issues(response)


def test_if_match_star_updates_only_what_exists(client: FlaskClient) -> None:
    """RFC 9110 §13.1.1: If-Match: * holds when a current representation exists. A client that
    means "update, never create" sends it; it was a 400."""
    star = {**JSON_HEADERS, "If-Match": "*"}
    absent = client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=star)
    assert absent.status_code == 412, absent.get_data(as_text=True)
    assert client.get("/fhir/Patient/p1").status_code == 404
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    updated = client.put("/fhir/Patient/p1", json=patient(id="p1", gender="male"), headers=star)
    assert updated.status_code == 200, updated.get_data(as_text=True)
    assert updated.headers["ETag"] == 'W/"2"'
    assert client.delete("/fhir/Patient/p1", headers={"If-Match": "*"}).status_code == 204
    again = client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=star)
    assert again.status_code == 412  # deleted: no current representation
    # W/"0" names a version that never exists: it is not "*"
    zero = {**JSON_HEADERS, "If-Match": 'W/"0"'}
    assert client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=zero).status_code == 412


def test_server_owns_version_and_last_updated(client: FlaskClient) -> None:
    created = _create(client, patient())
    forged = dict(
        created, active=True, meta={"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z"}
    )
    body = client.put(
        f"/fhir/Patient/{created['id']}", json=forged, headers=JSON_HEADERS
    ).get_json()
    assert body["meta"]["versionId"] == "2"
    assert body["meta"]["lastUpdated"] >= created["meta"]["lastUpdated"]


def test_an_update_that_changes_nothing_is_not_a_new_version(client: FlaskClient) -> None:
    # as HAPI answers a no-op update: the current version, not incremented
    created = _create(client, patient())
    again = dict(created, meta={"versionId": "99", "lastUpdated": "1999-01-01T00:00:00Z"})
    response = client.put(f"/fhir/Patient/{created['id']}", json=again, headers=JSON_HEADERS)
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert response.get_json()["meta"] == created["meta"]


# -- Prefer: http.html#ops ---------------------------------------------------------------------


def test_prefer_return_minimal_sends_no_body(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Patient", json=patient(), headers={**JSON_HEADERS, "Prefer": "return=minimal"}
    )
    assert response.status_code == 201
    assert response.data == b""
    assert response.headers["Location"].endswith("/_history/1")
    assert response.headers["ETag"] == 'W/"1"'


def test_answers_without_a_body_name_no_media_type(client: FlaskClient) -> None:
    """A 201 with Prefer: return=minimal, a 204 delete, a 304 and an OPTIONS answer carry no
    body, so no Content-Type: never text/html, which a FHIR client would try to parse."""
    created = client.post(
        "/fhir/Patient", json=patient(), headers={**JSON_HEADERS, "Prefer": "return=minimal"}
    )
    where = created.headers["Location"].split("/_history")[0].removeprefix("http://test.local")
    unchanged = client.get(where, headers={"If-None-Match": created.headers["ETag"]})
    options = client.open("/fhir/Patient", method="OPTIONS")
    deleted = client.delete(where)
    statuses = [r.status_code for r in (created, unchanged, options, deleted)]
    assert statuses == [201, 304, 200, 204]
    for response in (created, unchanged, options, deleted):
        assert response.data == b""
        assert "Content-Type" not in response.headers, response.headers


def test_prefer_return_operation_outcome(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Patient",
        json=patient(),
        headers={**JSON_HEADERS, "Prefer": "return=OperationOutcome"},
    )
    assert response.status_code == 201
    issues = outcome_issues(response)
    assert issues[0]["severity"] == "information"


def test_prefer_return_representation_is_the_default(client: FlaskClient) -> None:
    response = client.post("/fhir/Patient", json=patient(), headers=JSON_HEADERS)
    assert response.get_json()["resourceType"] == "Patient"
    assert response.get_json()["id"] in response.headers["Location"]


# -- delete: http.html#delete ------------------------------------------------------------------


def test_delete_then_read_is_410_gone(client: FlaskClient) -> None:
    created = _create(client, goal())
    response = client.delete(f"/fhir/Goal/{created['id']}")
    assert response.status_code == 204
    assert response.headers["ETag"] == 'W/"2"'
    gone = client.get(f"/fhir/Goal/{created['id']}")
    assert gone.status_code == 410
    assert outcome_issues(gone)[0]["code"] == "deleted"


def test_delete_keeps_earlier_versions_readable(client: FlaskClient) -> None:
    created = _create(client, goal())
    client.delete(f"/fhir/Goal/{created['id']}")
    assert client.get(f"/fhir/Goal/{created['id']}/_history/1").status_code == 200
    assert client.get(f"/fhir/Goal/{created['id']}/_history/2").status_code == 410


def test_delete_is_idempotent(client: FlaskClient) -> None:
    created = _create(client, goal())
    assert client.delete(f"/fhir/Goal/{created['id']}").status_code == 204
    again = client.delete(f"/fhir/Goal/{created['id']}")
    assert again.status_code == 204
    assert again.headers["ETag"] == 'W/"2"'
    assert client.delete("/fhir/Goal/never-existed").status_code == 204


def test_update_after_delete_revives_with_next_version(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    client.delete("/fhir/Goal/g1")
    response = client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    assert response.status_code == 201
    assert response.headers["ETag"] == 'W/"3"'
    assert client.get("/fhir/Goal/g1").status_code == 200


def test_delete_with_stale_if_match_is_412(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    response = client.delete("/fhir/Goal/g1", headers={"If-Match": 'W/"5"'})
    assert response.status_code == 412
    assert client.get("/fhir/Goal/g1").status_code == 200


# -- conditional read: http.html#cread ---------------------------------------------------------


def test_read_with_current_etag_in_if_none_match_is_304(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    response = client.get("/fhir/Goal/g1", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 304
    assert response.data == b""
    assert response.headers["ETag"] == 'W/"1"'


def test_read_with_old_etag_in_if_none_match_is_200(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    client.put("/fhir/Goal/g1", json=goal(id="g1", lifecycleStatus="on-hold"), headers=JSON_HEADERS)
    response = client.get("/fhir/Goal/g1", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 200
    assert response.get_json()["lifecycleStatus"] == "on-hold"


def test_read_with_if_modified_since(client: FlaskClient) -> None:
    created = client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    last_modified = created.headers["Last-Modified"]
    unchanged = client.get("/fhir/Goal/g1", headers={"If-Modified-Since": last_modified})
    assert unchanged.status_code == 304
    old = client.get(
        "/fhir/Goal/g1", headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}
    )
    assert old.status_code == 200


def test_decimals_keep_the_precision_they_were_sent_with(client: FlaskClient) -> None:
    # https://hl7.org/fhir/R4/datatypes.html#decimal: precision is part of the value
    body = (
        '{"resourceType":"Observation","id":"wt","status":"final",'
        '"code":{"text":"Body weight"},"valueQuantity":{"value":72.50,"unit":"kg"},'
        '"component":[{"code":{"text":"tiny"},"valueQuantity":{"value":1.0E-7}}]}'
    )
    assert client.put("/fhir/Observation/wt", data=body, headers=JSON_HEADERS).status_code == 201
    for url in (
        "/fhir/Observation/wt",
        "/fhir/Observation?_id=wt",
        "/fhir/Observation/wt/_history",
        "/fhir/Observation/wt?_pretty=true",
    ):
        text = client.get(url).get_data(as_text=True)
        assert "72.50" in text, url
        assert "1.0E-7" in text, url


def test_read_with_summary_and_elements(client: FlaskClient) -> None:
    # https://hl7.org/fhir/R4/search.html#summary also applies to read
    client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1", communication=[{"language": {"text": "Yoruba"}}]),
        headers=JSON_HEADERS,
    )
    summary = client.get("/fhir/Patient/p1?_summary=true").get_json()
    assert "name" in summary
    assert "communication" not in summary
    assert summary["meta"]["tag"][-1]["code"] == "SUBSETTED"
    elements = client.get("/fhir/Patient/p1/_history/1?_elements=gender").get_json()
    assert set(elements) == {"resourceType", "id", "meta", "gender"}
    assert client.get("/fhir/Patient/p1?_summary=count").status_code == 400
    full = client.get("/fhir/Patient/p1").get_json()
    assert "communication" in full
