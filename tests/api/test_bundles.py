"""batch and transaction: https://hl7.org/fhir/R4/http.html#transaction."""

from __future__ import annotations

import base64
import json

from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, goal, observation, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


def _entry(
    method: str, url: str, resource: dict | None = None, full_url: str | None = None, **request: str
) -> dict:
    entry: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url is not None:
        entry["fullUrl"] = full_url
    return entry


def _bundle(kind: str, *entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _post(client: FlaskClient, bundle: dict, **headers: str):
    return client.post("/fhir", json=bundle, headers={**JSON_HEADERS, **headers})


def _total(client: FlaskClient, type_: str) -> int:
    return int(client.get(f"/fhir/{type_}?_total=accurate").get_json()["total"])


def test_transaction_resolves_urn_uuid_references(client: FlaskClient) -> None:
    pat = "urn:uuid:8c0e8a3e-1111-4b7e-9e56-000000000001"
    obs = "urn:uuid:8c0e8a3e-1111-4b7e-9e56-000000000002"
    bundle = _bundle(
        "transaction",
        _entry(
            "POST",
            "Goal",
            goal(subject={"reference": pat}, addresses=[{"reference": obs}]),
            obs.replace("2", "3"),
        ),
        _entry("POST", "Observation", observation(subject={"reference": pat}), obs),
        _entry("POST", "Patient", patient(), pat),
    )
    response = _post(client, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json()
    assert result["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses == ["201 Created"] * 3
    goal_loc, obs_loc, pat_loc = (e["response"]["location"] for e in result["entry"])
    assert pat_loc.startswith("Patient/")
    assert pat_loc.endswith("/_history/1")
    stored_goal = client.get("/fhir/" + goal_loc.split("/_history")[0]).get_json()
    assert stored_goal["subject"]["reference"] == pat_loc.split("/_history")[0]
    assert stored_goal["addresses"][0]["reference"] == obs_loc.split("/_history")[0]
    for entry in result["entry"]:
        assert entry["response"]["etag"] == 'W/"1"'
        assert entry["fullUrl"].startswith("http://test.local/fhir/")


def test_transaction_is_all_or_nothing(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    # POST entries run before PUT entries: the Patient is written, then the stale PUT fails
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", patient()),
        _entry("PUT", "Goal/g1", goal(id="g1", lifecycleStatus="on-hold"), ifMatch='W/"9"'),
    )
    response = _post(client, bundle)
    assert response.status_code == 412
    assert outcome_issues(response)[0]["expression"] == ["Bundle.entry[1]"]
    assert _total(client, "Patient") == 0
    assert client.get("/fhir/Goal/g1").get_json()["lifecycleStatus"] == "active"


def test_transaction_with_an_invalid_resource_is_400_at_its_path(client: FlaskClient) -> None:
    bad = observation(status="not-a-status")
    bundle = _bundle(
        "transaction", _entry("POST", "Patient", patient()), _entry("POST", "Observation", bad)
    )
    response = _post(client, bundle)
    assert response.status_code == 400
    issue = outcome_issues(response)[0]
    assert issue["expression"] == ["Bundle.entry[1].resource.status"]
    assert _total(client, "Patient") == 0


def test_transaction_failure_in_a_late_entry_rolls_back_earlier_writes(
    client: FlaskClient,
) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    bundle = _bundle(
        "transaction",
        _entry("PUT", "Patient/p1", patient(id="p1", gender="male")),
        _entry("DELETE", "Goal/whatever"),
        _entry("PUT", "Goal/g1", goal(id="g1"), ifMatch='W/"3"'),
    )
    response = _post(client, bundle)
    assert response.status_code == 412
    outcome_issues(response)
    assert client.get("/fhir/Patient/p1").get_json()["gender"] == "female"
    assert client.get("/fhir/Goal/g1").status_code == 404


def test_transaction_resolves_conditional_reference(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    ref = f"Patient?identifier={NHS}|9000000009"
    bundle = _bundle("transaction", _entry("POST", "Goal", goal(subject={"reference": ref})))
    response = _post(client, bundle)
    assert response.status_code == 200
    location = response.get_json()["entry"][0]["response"]["location"]
    stored = client.get("/fhir/" + location.split("/_history")[0]).get_json()
    assert stored["subject"]["reference"] == "Patient/p1"


def test_transaction_conditional_reference_with_no_match_fails(client: FlaskClient) -> None:
    ref = f"Patient?identifier={NHS}|nobody"
    bundle = _bundle("transaction", _entry("POST", "Goal", goal(subject={"reference": ref})))
    response = _post(client, bundle)
    assert response.status_code == 404
    assert "Bundle.entry[0]" in outcome_issues(response)[0]["diagnostics"]
    assert _total(client, "Goal") == 0


def test_a_urn_uuid_reference_that_names_no_entry_is_400_and_writes_nothing(
    client: FlaskClient,
) -> None:
    """Another system's transaction whose Goal refers to ``urn:uuid:...`` of a Patient it
    forgot to include (bundle.html#references: the urn stands for an entry's fullUrl). It was
    stored with the urn as its subject (201), a reference that leads nowhere; now the
    transaction fails at that entry, as HAPI FHIR's does. A batch entry fails alone."""
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    lost = "urn:uuid:99999999-9999-4999-8999-999999999999"
    kept = _entry("POST", "Goal", goal(), full_url="urn:uuid:11111111-1111-4111-8111-111111111111")
    orphan = _entry("POST", "Goal", goal(subject={"reference": lost}))
    response = _post(client, _bundle("transaction", kept, orphan))
    assert response.status_code == 400, response.get_data(as_text=True)
    issue = outcome_issues(response)[0]
    assert lost in issue["diagnostics"]
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert _total(client, "Goal") == 0
    batch = _post(client, _bundle("batch", kept, orphan)).get_json()
    assert [e["response"]["status"][:3] for e in batch["entry"]] == ["201", "400"]
    assert _total(client, "Goal") == 1


def test_transaction_conditional_reference_with_several_matches_is_412(
    client: FlaskClient,
) -> None:
    # a local record number two Patients may share (an NHS number names one Patient only)
    mrn = [{"system": "https://hospital.example/Id/mrn", "value": "m1"}]
    for _ in range(2):
        created = client.post("/fhir/Patient", json=patient(identifier=mrn), headers=JSON_HEADERS)
        assert created.status_code == 201
    ref = "Patient?identifier=https://hospital.example/Id/mrn|m1"
    bundle = _bundle("transaction", _entry("POST", "Goal", goal(subject={"reference": ref})))
    response = _post(client, bundle)
    assert response.status_code == 412
    outcome_issues(response)


def test_transaction_conditional_create_reuses_existing_and_references_it(
    client: FlaskClient,
) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    pat = "urn:uuid:0f8fad5b-d9cb-469f-a165-70867728950e"
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", patient(), pat, ifNoneExist=f"identifier={NHS}|9000000009"),
        _entry("POST", "Goal", goal(subject={"reference": pat})),
    )
    response = _post(client, bundle)
    assert response.status_code == 200
    entries = response.get_json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["location"].startswith("Patient/p1/")
    goal_url = entries[1]["response"]["location"].split("/_history")[0]
    assert client.get(f"/fhir/{goal_url}").get_json()["subject"]["reference"] == "Patient/p1"
    assert _total(client, "Patient") == 1


def test_transaction_processes_delete_before_create_and_get_last(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    bundle = _bundle(
        "transaction",
        _entry("GET", "Goal?_id=g1,g2"),
        _entry("PUT", "Goal/g2", goal(id="g2")),
        _entry("DELETE", "Goal/g1"),
    )
    response = _post(client, bundle)
    assert response.status_code == 200
    entries = response.get_json()["entry"]
    # GET runs last (spec order: DELETE, POST, PUT, GET): it sees g2 created and g1 deleted
    found = [e["resource"]["id"] for e in entries[0]["resource"]["entry"]]
    assert found == ["g2"]
    # and the DELETE ran before the PUT: history lists newest first
    history = client.get("/fhir/Goal/_history").get_json()["entry"]
    assert [(e["request"]["method"], e["fullUrl"].rsplit("/", 1)[1]) for e in history[:2]] == [
        ("PUT", "g2"),
        ("DELETE", "g1"),
    ]
    assert entries[1]["response"]["status"] == "201 Created"
    assert entries[2]["response"]["status"] == "204 No Content"


def test_transaction_that_changes_one_resource_twice_is_400(client: FlaskClient) -> None:
    bundle = _bundle(
        "transaction", _entry("PUT", "Goal/g1", goal(id="g1")), _entry("DELETE", "Goal/g1")
    )
    response = _post(client, bundle)
    assert response.status_code == 400
    outcome_issues(response)


def test_transaction_patch_entry_uses_binary_json_patch(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    ops = [{"op": "replace", "path": "/lifecycleStatus", "value": "completed"}]
    binary = {
        "resourceType": "Binary",
        "contentType": "application/json-patch+json",
        "data": base64.b64encode(json.dumps(ops).encode()).decode(),
    }
    response = _post(client, _bundle("transaction", _entry("PATCH", "Goal/g1", binary)))
    assert response.status_code == 200
    assert client.get("/fhir/Goal/g1").get_json()["lifecycleStatus"] == "completed"


def test_batch_patch_entries_whose_patch_is_not_a_base64_string_are_400_each(
    client: FlaskClient,
) -> None:
    """Another system's batch: a Binary whose data is not a string, or no Binary at all, is a
    bad entry (400 with an OperationOutcome), not a server error; the others still run."""
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON_HEADERS)
    binaries: list = [
        {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}
        for data in (5, {}, [1], None, True)
    ]
    entries = [_entry("PATCH", "Goal/g1", b) for b in binaries]
    entries.append({"request": {"method": "PATCH", "url": "Goal/g1"}, "resource": "x"})
    entries.append(_entry("GET", "Goal/g1"))
    response = _post(client, _bundle("batch", *entries))
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    answered = response.get_json()["entry"]
    for entry in answered[:-1]:
        assert entry["response"]["status"].startswith("400"), entry
        assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert answered[-1]["response"]["status"] == "200 OK"


def test_a_fullurl_naming_another_resource_than_its_entry_is_400(client: FlaskClient) -> None:
    """bundle.html#bundle-unique: a RESTful fullUrl agrees with the resource's type and id.
    One that does not would have the other entries' references to it rewritten to the entry's
    resource (here a Goal meant for Patient/pb would land on Patient/pa)."""
    bundle = _bundle(
        "transaction",
        _entry(
            "PUT",
            "Patient/pa",
            patient(id="pa"),
            full_url="http://test.local/fhir/Patient/pb",
        ),
        _entry("POST", "Goal", goal(subject={"reference": "Patient/pb"})),
    )
    response = _post(client, bundle)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert outcome_issues(response)[0]["expression"] == ["Bundle.entry[0].fullUrl"]
    assert _total(client, "Goal") == 0
    # a relative fullUrl (not allowed, but sent) is still read as before
    relative = _bundle("transaction", _entry("PUT", "Patient/pa", patient(id="pa"), "Patient/pa"))
    assert _post(client, relative).status_code == 200


def test_transaction_conditional_update_entry(client: FlaskClient) -> None:
    bundle = _bundle(
        "transaction", _entry("PUT", f"Patient?identifier={NHS}|9000000009", patient())
    )
    first = _post(client, bundle)
    second = _post(client, bundle)
    assert first.get_json()["entry"][0]["response"]["status"] == "201 Created"
    assert second.get_json()["entry"][0]["response"]["status"] == "200 OK"
    assert _total(client, "Patient") == 1


def test_transaction_with_prefer_minimal_omits_resources(client: FlaskClient) -> None:
    response = _post(
        client,
        _bundle("transaction", _entry("POST", "Patient", patient())),
        Prefer="return=minimal",
    )
    entry = response.get_json()["entry"][0]
    assert "resource" not in entry
    assert entry["response"]["status"] == "201 Created"


def test_batch_entries_succeed_or_fail_independently(client: FlaskClient) -> None:
    bundle = _bundle(
        "batch",
        _entry("POST", "Patient", patient()),
        _entry("POST", "Observation", observation(status="bogus")),
        _entry("GET", "Patient/missing"),
        _entry("POST", "Condition", {"resourceType": "Condition"}),
    )
    response = _post(client, bundle)
    assert response.status_code == 200
    result = response.get_json()
    assert result["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in result["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("400")
    assert statuses[2].startswith("404")
    assert statuses[3].startswith("404")
    outcome = result["entry"][1]["response"]["outcome"]
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.status"]
    assert _total(client, "Patient") == 1


def test_batch_get_search_entry_returns_searchset(client: FlaskClient) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    response = _post(
        client, _bundle("batch", _entry("GET", f"Patient?identifier={NHS}|9000000009"))
    )
    entry = response.get_json()["entry"][0]
    assert entry["response"]["status"] == "200 OK"
    assert entry["resource"]["type"] == "searchset"
    assert entry["resource"]["entry"][0]["resource"]["id"] == "p1"


def test_bundle_of_other_type_is_400(client: FlaskClient) -> None:
    response = _post(client, {"resourceType": "Bundle", "type": "collection"})
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["Bundle.type"]


def test_non_bundle_posted_to_base_is_400(client: FlaskClient) -> None:
    response = _post(client, patient())
    assert response.status_code == 400
    outcome_issues(response)


def test_entry_without_request_is_400(client: FlaskClient) -> None:
    response = _post(
        client,
        {"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": patient()}]},
    )
    assert response.status_code == 400
    outcome_issues(response)


def test_batch_reads_with_if_none_match_or_if_modified_since_are_conditional(
    client: FlaskClient,
) -> None:
    """A client refreshing its cache in one batch (bundle.html: request.ifNoneMatch and
    ifModifiedSince, http.html#cread): an entry whose version the client has answers
    "304 Not Modified" without the resource, as the same GET with the header does; another
    version, or a later change, gives 200 with it. The entries answered 200 with the resource."""
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON_HEADERS)
    read = client.get("/fhir/Patient/p1")
    modified = read.headers["Last-Modified"]
    bundle = _bundle(
        "batch",
        _entry("GET", "Patient/p1", ifNoneMatch='W/"1"'),
        _entry("GET", "Patient/p1", ifNoneMatch="*"),
        _entry("GET", "Patient/p1", ifNoneMatch='W/"7"'),
        _entry("GET", "Patient/p1", ifModifiedSince="2999-01-01T00:00:00Z"),
        _entry("GET", "Patient/p1", ifModifiedSince="2001-01-01T00:00:00Z"),
    )
    entries = _post(client, bundle).get_json()["entry"]
    assert [e["response"]["status"] for e in entries] == [
        "304 Not Modified",
        "304 Not Modified",
        "200 OK",
        "304 Not Modified",
        "200 OK",
    ]
    assert ["resource" in e for e in entries] == [False, False, True, False, True]
    assert entries[0]["response"]["etag"] == 'W/"1"'
    assert modified  # the REST read gave the date the batch compared with
    bad = _bundle("batch", _entry("GET", "Patient/p1", ifModifiedSince="yesterday"))
    refused = _post(client, bad)  # as a malformed ifMatch is: the entry cannot be read
    assert refused.status_code == 400
    assert outcome_issues(refused)[0]["expression"] == ["Bundle.entry[0].request.ifModifiedSince"]


def test_an_update_with_if_none_match_star_does_not_overwrite(client: FlaskClient) -> None:
    """``PUT`` with ``If-None-Match: *`` is "create it unless it exists" (RFC 9110 section
    13.1.2): the server overwrote the existing Patient (200, version 2). Now 412 and the
    stored version is untouched; with no resource there it creates (201), and a named
    version that is current also refuses. The same in a transaction's PUT entry."""
    first = client.put(
        "/fhir/Patient/p1", json=patient(id="p1"), headers={**JSON_HEADERS, "If-None-Match": "*"}
    )
    assert first.status_code == 201
    again = client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1", gender="female"),
        headers={**JSON_HEADERS, "If-None-Match": "*"},
    )
    assert again.status_code == 412, again.get_data(as_text=True)
    assert outcome_issues(again)[0]["diagnostics"].startswith("If-None-Match is *")
    named = client.put(
        "/fhir/Patient/p1",
        json=patient(id="p1", gender="female"),
        headers={**JSON_HEADERS, "If-None-Match": 'W/"1"'},
    )
    assert named.status_code == 412
    assert client.get("/fhir/Patient/p1").headers["ETag"] == 'W/"1"'
    entry = _entry("PUT", "Patient/p1", patient(id="p1", gender="female"), ifNoneMatch="*")
    refused = _post(client, _bundle("transaction", entry))
    assert refused.status_code == 412
    assert client.get("/fhir/Patient/p1").headers["ETag"] == 'W/"1"'


def test_two_entries_with_one_fullurl_are_400_and_write_nothing(client: FlaskClient) -> None:
    """bundle.html bdl-7: fullUrl is unique in a Bundle (unless the versions differ). Two
    Patients under one urn:uuid left a reference to it pointing at whichever came last."""
    same = "urn:uuid:66666666-1111-1111-1111-111111111111"
    said = observation(subject={"reference": same})
    for kind in ("transaction",):
        bundle = _bundle(
            kind,
            _entry("POST", "Patient", {"resourceType": "Patient", "active": True}, full_url=same),
            _entry("POST", "Patient", {"resourceType": "Patient", "active": False}, full_url=same),
            _entry("POST", "Observation", said),
        )
        response = _post(client, bundle)
        assert response.status_code == 400, response.get_data(as_text=True)[:300]
        issue = outcome_issues(response)[0]
        assert issue["expression"] == ["Bundle.entry[1].fullUrl"]
        assert "bdl-7" in issue["diagnostics"]
        assert "Bundle.entry[0]" in issue["diagnostics"]
        assert _total(client, "Patient") == 0


def test_a_batch_entry_without_request_is_named_whether_or_not_it_has_a_fullurl(
    client: FlaskClient,
) -> None:
    # bundle.html bdl-3: a batch or transaction entry carries its request; in a batch each
    # entry stands alone, so the good entry beside it is still written
    good = _entry("POST", "Patient", patient())
    for entry in (
        {"resource": patient()},
        {"resource": patient(), "fullUrl": "urn:uuid:55555555-1111-1111-1111-111111111111"},
    ):
        transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}
        response = _post(client, transaction)
        assert response.status_code == 400, response.get_data(as_text=True)[:300]
        issue = outcome_issues(response)[0]
        assert issue["expression"] == ["Bundle.entry[0].request"], issue
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [good, entry]}
        answered = _post(client, batch)
        if set(entry) == {"resource"}:  # nothing but a resource: named before anything runs
            assert answered.status_code == 400
            assert outcome_issues(answered)[0]["expression"] == ["Bundle.entry[1].request"]
            continue
        assert answered.status_code == 200, answered.get_data(as_text=True)[:300]
        statuses = [e["response"]["status"][:3] for e in answered.get_json()["entry"]]
        assert statuses == ["201", "400"]


def test_two_batch_entries_with_one_fullurl_each_stand_alone(client: FlaskClient) -> None:
    # no entry of a batch refers to another, so a repeated fullUrl makes nothing ambiguous
    same = "urn:uuid:77777777-1111-1111-1111-111111111111"
    bundle = _bundle(
        "batch",
        _entry("POST", "Patient", {"resourceType": "Patient", "active": True}, full_url=same),
        _entry("POST", "Patient", {"resourceType": "Patient", "active": False}, full_url=same),
    )
    response = _post(client, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert [e["response"]["status"][:3] for e in response.get_json()["entry"]] == ["201", "201"]


def test_a_version_id_that_is_not_text_is_a_400_not_a_500(client: FlaskClient) -> None:
    same = "urn:uuid:88888888-1111-1111-1111-111111111111"
    odd = {"resourceType": "Patient", "meta": {"versionId": ["1"]}}
    bundle = _bundle(
        "transaction",
        _entry("POST", "Patient", odd, full_url=same),
        _entry("POST", "Patient", odd, full_url=same),
    )
    response = _post(client, bundle)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]


def test_metadata_in_a_batch_is_answered_for_what_it_is(client: FlaskClient) -> None:
    # it was answered "Resource type 'metadata' is not supported here"
    bundle = _bundle("batch", {"request": {"method": "GET", "url": "metadata"}})
    response = _post(client, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    entry = response.get_json()["entry"][0]
    assert entry["response"]["status"].startswith("400")
    issue = entry["response"]["outcome"]["issue"][0]
    assert "GET [base]/metadata" in issue["diagnostics"]
