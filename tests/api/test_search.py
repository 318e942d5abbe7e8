"""Search by _id and identifier: https://hl7.org/fhir/R4/search.html#token."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, outcome_issues, patient

JSON_HEADERS = {"Content-Type": FHIR_JSON}
NHS = "https://fhir.nhs.uk/Id/nhs-number"
MRN = "urn:oid:1.2.36.146.595.217.0.1"


def _ids(client: FlaskClient, query: str) -> list[str]:
    response = client.get(f"/fhir/Patient?{query}")
    assert response.status_code == 200, response.get_data(as_text=True)
    bundle = response.get_json()
    assert bundle["type"] == "searchset"
    return sorted(
        e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
    )


def _setup(client: FlaskClient) -> None:
    client.put(
        "/fhir/Patient/a",
        json=patient(id="a", identifier=[{"system": NHS, "value": "1"}]),
        headers=JSON_HEADERS,
    )
    client.put(
        "/fhir/Patient/b",
        json=patient(id="b", identifier=[{"system": MRN, "value": "1"}]),
        headers=JSON_HEADERS,
    )
    client.put(
        "/fhir/Patient/c", json=patient(id="c", identifier=[{"value": "1"}]), headers=JSON_HEADERS
    )
    client.put(
        "/fhir/Patient/d",
        json=patient(id="d", identifier=[{"system": NHS, "value": "2"}]),
        headers=JSON_HEADERS,
    )


def test_identifier_token_forms(client: FlaskClient) -> None:
    _setup(client)
    assert _ids(client, f"identifier={NHS}|1") == ["a"]
    assert _ids(client, "identifier=1") == ["a", "b", "c"]
    assert _ids(client, "identifier=|1") == ["c"]
    assert _ids(client, f"identifier={NHS}|") == ["a", "d"]


def test_comma_is_or_and_repetition_is_and(client: FlaskClient) -> None:
    _setup(client)
    assert _ids(client, f"identifier={NHS}|1,{MRN}|1") == ["a", "b"]
    assert _ids(client, f"identifier={NHS}|&identifier=1") == ["a"]


def test_id_parameter(client: FlaskClient) -> None:
    _setup(client)
    assert _ids(client, "_id=a,c") == ["a", "c"]
    assert _ids(client, "_id=a&identifier=2") == []


def test_deleted_resources_are_not_found(client: FlaskClient) -> None:
    _setup(client)
    client.delete("/fhir/Patient/a")
    assert _ids(client, "identifier=1") == ["b", "c"]


def test_unknown_parameter_is_ignored_with_a_warning(client: FlaskClient) -> None:
    _setup(client)
    bundle = client.get("/fhir/Patient?nickname=Ada&_id=a").get_json()
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    outcomes = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"]
    assert [e["resource"]["id"] for e in matches] == ["a"]
    assert outcomes[0]["resource"]["issue"][0]["severity"] == "warning"
    assert "nickname" in outcomes[0]["resource"]["issue"][0]["diagnostics"]


def test_unknown_parameter_with_strict_handling_is_400(client: FlaskClient) -> None:
    response = client.get("/fhir/Patient?nickname=Ada", headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    outcome_issues(response)


@pytest.mark.parametrize(
    "query",
    [
        "Patient?general-practitioner.name=x",  # Practitioner, Organization: not stored here
        "Patient?organization.name=x",
        "Observation?performer:Practitioner.name=x",
        "Observation?subject:Patient.nickname=x",
        "Patient?_has:Observation:bogus:code=x",
        "Patient?_has:Encounter:patient:status=x",
        "Patient?_has:Observation:patient:nickname=x",
    ],
)
def test_a_known_parameter_the_search_cannot_follow_is_400_even_when_lenient(
    client: FlaskClient, query: str
) -> None:
    """Chains and _has are known parameters: ignored, they would widen the search to every
    resource (search.html#errors; a malformed use of a known parameter is an error)."""
    _setup(client)
    response = client.get(f"/fhir/{query}", headers={"Prefer": "handling=lenient"})
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert outcome_issues(response)[0]["severity"] == "error"


def test_count_pages_with_next_and_previous(client: FlaskClient) -> None:
    _setup(client)
    first = client.get("/fhir/Patient?_count=3").get_json()
    assert len(first["entry"]) == 3
    links = {link["relation"]: link["url"] for link in first["link"]}
    assert "next" in links
    assert "previous" not in links
    second = client.get(links["next"].replace("http://test.local", "")).get_json()
    assert len(second["entry"]) == 1
    assert {link["relation"] for link in second["link"]} == {"self", "previous"}


def test_total_accurate(client: FlaskClient) -> None:
    _setup(client)
    assert client.get("/fhir/Patient?_total=accurate&_count=1").get_json()["total"] == 4
    assert "total" not in client.get("/fhir/Patient").get_json()


def test_post_search_with_form_parameters(client: FlaskClient) -> None:
    _setup(client)
    response = client.post("/fhir/Patient/_search", data={"identifier": f"{NHS}|2"})
    assert response.status_code == 200
    assert [e["resource"]["id"] for e in response.get_json()["entry"]] == ["d"]


def test_post_search_with_the_parameters_in_the_url_and_no_body(client: FlaskClient) -> None:
    """http.html#search: the parameters may be in the URL, the body or both. A client that
    POSTs to _search with them in the query string and an empty body, no Content-Type, was
    refused (400); a body that is not a form still is."""
    _setup(client)
    response = client.post(f"/fhir/Patient/_search?identifier={NHS}|2")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [e["resource"]["id"] for e in response.get_json()["entry"]] == ["d"]
    json_body = client.post(
        "/fhir/Patient/_search", data='{"identifier": "x"}', content_type="application/json"
    )
    assert json_body.status_code == 400


def test_a_meta_source_naming_a_request_after_a_fragment_is_stored(client: FlaskClient) -> None:
    # meta.source is a uri, and a uri may end in a fragment: "<source>#<request id>" is how
    # HAPI and this service's own exchange stamp what they write
    source = "urn:uuid:80da6b50-d703-4cb1-ab5c-faf555954de7#Patient/p1"
    body = {"resourceType": "Patient", "meta": {"source": source}}
    created = client.post(
        "/fhir/Patient", json=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert created.status_code == 201, created.get_data(as_text=True)
    assert created.get_json()["meta"]["source"] == source
    body["meta"]["source"] = "urn:uuid:not-a-uuid#Patient/p1"
    refused = client.post(
        "/fhir/Patient", json=body, headers={"Content-Type": "application/fhir+json"}
    )
    assert refused.status_code == 400
    assert "is not a valid urn:uuid" in refused.get_data(as_text=True)


def test_an_instant_to_the_millisecond_from_another_system_is_found_by_it(
    client: FlaskClient,
) -> None:
    """search.html#date: an EHR's effectiveDateTime to the millisecond in UTC covers that
    millisecond; the same instant written with an offset is the same moment."""
    _setup(client)
    for id_, moment in (
        ("utc", "2026-12-07T10:00:00.123Z"),
        ("bst", "2026-12-07T11:00:00.123+01:00"),
    ):
        observation = {
            "resourceType": "Observation",
            "id": id_,
            "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/a"},
            "effectiveDateTime": moment,
        }
        put = client.put(f"/fhir/Observation/{id_}", json=observation, headers=JSON_HEADERS)
        assert put.status_code == 201, put.get_data(as_text=True)

    def found(query: str) -> list[str]:
        response = client.get(f"/fhir/Observation?{query}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return sorted(e["resource"]["id"] for e in response.get_json().get("entry", []))

    assert found("date=2026-12-07T10:00:00.123Z") == ["bst", "utc"]
    assert found("date=gt2026-12-07T10:00:00.123Z") == []
    assert found("date=ge2026-12-07T10:00:00.124Z") == []
    assert found("date=lt2026-12-07T10:00:00.124Z") == ["bst", "utc"]
    assert found("date=2026-12-07T10:00:00Z") == ["bst", "utc"]  # within that second
    # the same moment asked for with an offset (%2B is +): each form covers one millisecond
    assert found("date=2026-12-07T11:00:00.123%2B01:00") == ["bst", "utc"]
    assert found("date=gt2026-12-07T11:00:00.123%2B01:00") == []
    refused = client.get("/fhir/Observation?date=2026-02-30T10:00:00.000Z")
    assert refused.status_code == 400


def test_text_search_finds_a_concept_by_its_text_or_by_any_display(client: FlaskClient) -> None:
    """search.html, token :text: "the text associated with the code/value - either
    CodeableConcept.text, Coding.display, or Identifier.type.text". Another EHR sends one
    Observation whose code is only the patient's words (no coding) and one coded LOINC 8867-4
    "Heart rate" with the text "HR": the first was never found by :text (no row at all) and the
    second not by its display. The text-only concept now counts for :missing too, and sorts
    after the coded one by code (it has none)."""
    headers = {"Content-Type": "application/fhir+json"}
    words = {"resourceType": "Observation", "id": "o-words", "status": "final"}
    words["code"] = {"text": "Walking the dog"}
    coded = {"resourceType": "Observation", "id": "o-coded", "status": "final"}
    coded["code"] = {
        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
        "text": "HR",
    }
    for resource in (words, coded):
        assert client.put(f"/fhir/Observation/{resource['id']}", json=resource, headers=headers)

    def ids(query: str) -> list[str]:
        found = client.get(f"/fhir/Observation?{query}").get_json()
        return [
            e["resource"]["id"] for e in found.get("entry", []) if e["search"]["mode"] == "match"
        ]

    assert ids("code:text=walking") == ["o-words"]
    assert ids("code:text=WALKING%20THE") == ["o-words"]
    assert ids("code:text=heart") == ["o-coded"]
    assert ids("code:text=hr") == ["o-coded"]
    assert sorted(ids("code:missing=false")) == ["o-coded", "o-words"]
    assert ids("code:missing=true") == []
    assert ids("_sort=code") == ["o-coded", "o-words"]
    assert ids("_sort=-code") == ["o-coded", "o-words"]
    assert ids("code=http://loinc.org|8867-4") == ["o-coded"]
    assert ids("code:not=http://loinc.org|8867-4") == ["o-words"]


def test_a_value_on_the_edge_of_two_search_ranges_is_found_by_one(client: FlaskClient) -> None:
    """search.html#number: ``100`` means the range [99.5, 100.5), its upper edge left out. A
    heart rate of 80.5 was found by value-quantity=80 and by =81 alike; now by 81 (and by
    80.5, and by ne80), not by 80."""
    headers = {"Content-Type": "application/fhir+json"}
    body = {
        "resourceType": "Observation",
        "id": "hr",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "valueQuantity": {"value": 80.5, "system": "http://unitsofmeasure.org", "code": "/min"},
    }
    assert client.put("/fhir/Observation/hr", json=body, headers=headers).status_code == 201

    def found(value: str) -> bool:
        bundle = client.get(f"/fhir/Observation?value-quantity={value}").get_json()
        return bool(bundle.get("entry"))

    assert not found("80")
    assert found("81")
    assert found("80.5")
    assert not found("80.4")
    assert found("ne80")
    assert not found("ne81")


def test_revinclude_wildcard_brings_what_refers_to_the_matches(client: FlaskClient) -> None:
    """search.html#include: ``_revinclude=*`` asks for every resource that refers to a match.
    It was taken and echoed in the self link but included nothing; and an _include whose
    source type is not the searched type (Observation?_include=Goal:subject), which can
    never apply, was dropped without a word even under Prefer: handling=strict."""
    headers = {"Content-Type": "application/fhir+json"}
    client.put("/fhir/Patient/pa", json=patient(id="pa"), headers=headers)
    goal = {
        "resourceType": "Goal",
        "id": "g1",
        "lifecycleStatus": "active",
        "description": {"text": "Walk to the shop"},
        "subject": {"reference": "Patient/pa"},
    }
    words = {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"text": "What matters"},
        "subject": {"reference": "Patient/pa"},
    }
    client.put("/fhir/Goal/g1", json=goal, headers=headers)
    client.put("/fhir/Observation/o1", json=words, headers=headers)
    bundle = client.get("/fhir/Patient?_id=pa&_revinclude=*").get_json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("Patient", "match"), ("Goal", "include"), ("Observation", "include")}
    lenient = client.get("/fhir/Observation?_include=Goal:subject").get_json()
    outcome = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "follows Goal references" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = client.get(
        "/fhir/Observation?_include=Goal:subject", headers={"Prefer": "handling=strict"}
    )
    assert strict.status_code == 400
    iterate = client.get("/fhir/Observation?_include:iterate=Goal:subject")
    assert iterate.status_code == 200


def test_a_search_in_a_patients_compartment(client: FlaskClient) -> None:
    """http.html#vsearch: GET [base]/Patient/[id]/Observation finds that patient's
    Observations, with the type's other parameters. It was a 404 (not-found); the
    CapabilityStatement now names the patient CompartmentDefinition. A type this server does
    not search in the compartment is a 404 not-supported naming those it does; the instance
    routes beside it (_history, $what-matters) are unchanged."""
    headers = {"Content-Type": "application/fhir+json"}
    for pid in ("pa", "pb"):
        client.put(f"/fhir/Patient/{pid}", json=patient(id=pid), headers=headers)
        for status in ("final", "amended"):
            body = {
                "resourceType": "Observation",
                "status": status,
                "code": {"text": f"{pid} {status}"},
                "subject": {"reference": f"Patient/{pid}"},
            }
            client.post("/fhir/Observation", json=body, headers=headers)
    found = client.get("/fhir/Patient/pa/Observation").get_json()
    assert sorted(e["resource"]["code"]["text"] for e in found["entry"]) == [
        "pa amended",
        "pa final",
    ]
    final = client.get("/fhir/Patient/pa/Observation?status=final").get_json()
    assert [e["resource"]["code"]["text"] for e in final["entry"]] == ["pa final"]
    assert client.get("/fhir/Patient/nobody/Observation").get_json().get("entry") is None
    refused = client.get("/fhir/Patient/pa/AuditEvent")
    assert refused.status_code == 404
    assert outcome_issues(refused)[0]["code"] == "not-supported"
    assert client.get("/fhir/Patient/pa/_history").get_json()["type"] == "history"
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
