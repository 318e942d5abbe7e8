"""$record-what-matters and $what-matters (OperationDefinitions in profiles/).

Operations: https://hl7.org/fhir/R4/operations.html; transactions:
https://hl7.org/fhir/R4/http.html#transaction.
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.builders import outcome_issues
from tests.priorities.conversations import (
    FHIR_JSON,
    NHS,
    add_patient,
    conversation,
    count,
    goal,
    ranked_texts,
    ranking,
    record,
    statement,
    what_matters,
)

PROFILE = "http://whatmatters.example/fhir/StructureDefinition/"


def _talk() -> dict:
    return conversation(
        statement("s1", "Walking Bramble every morning"),
        statement("s2", "Seeing my grandchildren at Christmas"),
        goal(
            "g1",
            "Walk to the park and back by spring",
            "s1",
            priority="high",
            acceptance="agree",
            **{"target-date": "2027-03-31"},
        ),
        ranking("s2", "g1", "s1"),
    )


def test_record_writes_profiled_statements_goals_list_and_provenance(client: FlaskClient) -> None:
    add_patient(client)
    response = record(client, _talk())
    assert response.status_code == 200
    bundle = response.get_json()
    assert bundle["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in bundle["entry"]] == ["201"] * 5
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Observation", "Observation", "Goal", "List", "Provenance"]
    by_kind = {e["resource"]["resourceType"]: e["resource"] for e in bundle["entry"]}
    assert by_kind["Goal"]["meta"]["profile"] == [PROFILE + "wmty-personal-goal"]
    assert by_kind["List"]["meta"]["profile"] == [PROFILE + "wmty-priorities-list"]
    ids = {
        e["resource"]["resourceType"] + "/" + e["resource"]["id"]: e["resource"]
        for e in bundle["entry"]
    }
    order = [ids[e["item"]["reference"]] for e in by_kind["List"]["entry"]]
    assert [r.get("valueString") or r["description"]["text"] for r in order] == [
        "Seeing my grandchildren at Christmas",
        "Walk to the park and back by spring",
        "Walking Bramble every morning",
    ]
    goal_resource = by_kind["Goal"]
    assert goal_resource["addresses"] == [
        {"reference": order[2]["resourceType"] + "/" + order[2]["id"]}
    ]
    provenance = by_kind["Provenance"]
    assert {t["reference"] for t in provenance["target"]} == set(ids) - {
        "Provenance/" + provenance["id"]
    }
    assert provenance["agent"][0]["who"]["display"] == "Nurse Ada Okafor"
    assert count(client, "Observation") == 2


def test_repeating_a_conversation_writes_nothing(client: FlaskClient) -> None:
    add_patient(client)
    record(client, _talk())
    history = len(client.get("/fhir/_history?_count=1000").get_json()["entry"])
    again = record(client, _talk())
    assert again.status_code == 200
    assert [e["response"]["status"] for e in again.get_json()["entry"]] == ["200 OK"] * 4
    assert len(client.get("/fhir/_history?_count=1000").get_json()["entry"]) == history
    counts = [count(client, t) for t in ("Observation", "Goal", "List", "Provenance")]
    assert counts == [2, 1, 1, 1]


def test_repeating_with_a_new_ranking_writes_a_new_list_version(client: FlaskClient) -> None:
    add_patient(client)
    record(client, _talk())
    reordered = _talk()
    reordered["parameter"][3] = ranking("s1", "g1", "s2")
    response = record(client, reordered)
    statuses = [e["response"]["status"][:3] for e in response.get_json()["entry"]]
    assert statuses == ["200", "201"]  # the stored items are not rewritten: List v2, Provenance
    assert ranked_texts(what_matters(client))[0] == "Walking Bramble every morning"


def test_record_by_patient_identifier(client: FlaskClient) -> None:
    add_patient(client)
    body = _talk()
    body["parameter"].append(
        {"name": "patient-identifier", "valueIdentifier": {"system": NHS, "value": "9000000009"}}
    )
    response = client.post("/fhir/Patient/$record-what-matters", json=body, headers=FHIR_JSON)
    assert response.status_code == 200
    subject = response.get_json()["entry"][0]["resource"]["subject"]
    assert subject == {"reference": "Patient/p1"}
    body["parameter"][-1]["valueIdentifier"]["value"] = "0000000000"
    missing = client.post("/fhir/Patient/$record-what-matters", json=body, headers=FHIR_JSON)
    assert missing.status_code == 404
    outcome_issues(missing)


def test_unknown_patient_is_404(client: FlaskClient) -> None:
    response = record(client, _talk(), patient="nobody")
    assert response.status_code == 404
    outcome_issues(response)


def test_invalid_input_gets_422_naming_the_field_and_writes_nothing(client: FlaskClient) -> None:
    add_patient(client)
    body = conversation(
        statement("s1", "Being at home"),
        goal("g1", "Go home", "s1", priority="urgent"),
    )
    response = record(client, body)
    assert response.status_code == 422
    issues = outcome_issues(response)
    assert issues[0]["expression"] == ["Parameters.parameter[1].part[3].valueCode"]
    assert "priority" in issues[0]["diagnostics"]
    assert [count(client, t) for t in ("Observation", "Goal", "List", "Provenance")] == [0] * 4


def test_every_problem_of_the_input_is_listed(client: FlaskClient) -> None:
    add_patient(client)
    body = conversation(
        {"name": "statement", "part": [{"name": "text", "valueString": "   "}]},
        goal("g1", "Go home", "nope"),
        ranking("g1", "ghost"),
        {"name": "mood", "valueString": "fine"},
    )
    issues = outcome_issues(record(client, body))
    where = [e for i in issues for e in i["expression"]]
    assert "Parameters.parameter[0]" in where  # no words
    assert "Parameters.parameter[1].part[2]" in where  # addresses an unknown key
    assert "Parameters.parameter[2].part[1]" in where  # ranks an unknown key
    assert "Parameters.parameter[3].name" in where  # unknown parameter


def test_a_profile_rule_broken_by_the_input_names_the_input(client: FlaskClient) -> None:
    add_patient(client)
    body = conversation(statement("s1", "Home"), goal("g1", "Go home", "s1", status="rejected"))
    response = record(client, body)
    assert response.status_code == 422
    issues = outcome_issues(response)
    assert "wmty-goal-1" in issues[0]["diagnostics"]
    assert issues[0]["expression"][0] == "Parameters.parameter[1]"
    assert count(client, "Observation") == 0


def test_a_new_ranking_keeps_earlier_items_it_does_not_name(client: FlaskClient) -> None:
    add_patient(client)
    record(client, conversation(statement("a", "Garden"), statement("b", "Choir")))
    record(client, conversation(statement("c", "Chapel on Sunday"), ranking("c")))
    assert ranked_texts(what_matters(client)) == ["Chapel on Sunday", "Garden", "Choir"]


def test_what_matters_merges_three_settings(client: FlaskClient) -> None:
    """Duplicate (same identifier) once; most recent ranking wins; single-setting items stay."""
    add_patient(client)
    hospital = conversation(
        statement("x", "Getting back to my allotment", identifier="x"),
        statement("y", "Not being a burden on my daughter", identifier="y"),
        ranking("x", "y"),
        setting="Ward 7",
        setting_type="hospital",
        recorded="2026-01-10T10:00:00Z",
    )
    gp = conversation(
        statement("x", "Getting back to my allotment", identifier="x"),
        statement("z", "Managing my own tablets", identifier="z"),
        ranking("z", "x"),
        setting="Bodnant Surgery",
        setting_type="primary-care",
        recorded="2026-02-10T10:00:00Z",
    )
    assert record(client, hospital).status_code == 200
    assert record(client, gp).status_code == 200
    # The care home's system writes its own records over REST: a second copy of the same
    # statement (same identifier, its own resource) and its own ranking, the most recent one.
    copy = {
        "resourceType": "Observation",
        "id": "care-home-x",
        "identifier": [{"system": "urn:ehr:ids", "value": "x"}],
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": "Patient/p1"},
        "valueString": "Getting back to my allotment",
    }
    only_here = {
        **copy,
        "id": "care-home-w",
        "identifier": [{"system": "urn:ehr:ids", "value": "w"}],
        "valueString": "Music in the afternoons",
    }
    for resource in (copy, only_here):
        assert (
            client.put(
                f"/fhir/Observation/{resource['id']}", json=resource, headers=FHIR_JSON
            ).status_code
            == 201
        )
    listed = {
        "resourceType": "List",
        "id": "care-home-list",
        "extension": [
            {
                "url": PROFILE + "wmty-care-setting",
                "valueReference": {"display": "Plas Newydd care home"},
            }
        ],
        "status": "current",
        "mode": "working",
        "code": {"coding": [{"system": "http://loinc.org", "code": "81340-2"}]},
        "subject": {"reference": "Patient/p1"},
        "date": "2026-03-10T10:00:00Z",
        "entry": [
            {"item": {"reference": "Observation/care-home-w"}},
            {"item": {"reference": "Observation/care-home-x"}},
        ],
    }
    # the care home ranks y (which only the hospital recorded) below x: conflicting ranking
    hospital_y = next(
        e["resource"]
        for e in what_matters(client)["entry"][1:]
        if e["resource"].get("valueString") == "Not being a burden on my daughter"
    )
    listed["entry"].append({"item": {"reference": f"Observation/{hospital_y['id']}"}})
    assert (
        client.put("/fhir/List/care-home-list", json=listed, headers=FHIR_JSON).status_code == 201
    )
    bundle = what_matters(client)
    assert ranked_texts(bundle) == [
        "Music in the afternoons",  # the care home's ranking is the most recent ...
        "Getting back to my allotment",  # ... x once, though three settings recorded it
        "Not being a burden on my daughter",  # the hospital ranked y second; the care home third
        "Managing my own tablets",  # only the GP knows z: still shown
    ]
    merged = bundle["entry"][0]["resource"]
    settings = [
        sorted(
            x["valueReference"]["display"]
            for x in e.get("extension", [])
            if x["url"] == PROFILE + "wmty-care-setting"
        )
        for e in merged["entry"]
    ]
    assert settings[1] == ["Bodnant Surgery", "Plas Newydd care home", "Ward 7"]
    assert settings[3] == ["Bodnant Surgery"]
    assert merged["entry"][1]["item"]["reference"] == "Observation/care-home-x"  # most recent copy
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds.count("List") == 4  # the merged view and the three settings' Lists
    assert "Provenance" in kinds


def test_history_shows_how_the_ranking_changed(client: FlaskClient) -> None:
    add_patient(client)
    record(
        client, conversation(statement("a", "Garden"), statement("b", "Choir"), ranking("a", "b"))
    )
    record(
        client, conversation(ranking("b", "a"), statement("a", "Garden"), statement("b", "Choir"))
    )
    plain = what_matters(client)
    assert all("/_history/" not in e["fullUrl"] for e in plain["entry"])
    bundle = what_matters(client, history=True)
    earlier = [e for e in bundle["entry"] if "/_history/" in e["fullUrl"]]
    assert [e["resource"]["meta"]["versionId"] for e in earlier] == ["1"]
    assert ranked_texts(bundle) == ["Choir", "Garden"]
    assert client.get("/fhir/Patient/p1/$what-matters?history=maybe").status_code == 400
    assert client.get("/fhir/Patient/p1/$what-matters?history=true&history=x").status_code == 400


def test_capability_statement_names_the_operations(client: FlaskClient) -> None:
    statement_ = client.get("/fhir/metadata").get_json()
    patient = next(r for r in statement_["rest"][0]["resource"] if r["type"] == "Patient")
    assert {"record-what-matters", "what-matters"} <= {o["name"] for o in patient["operation"]}


def _post_what_matters(client: FlaskClient, patient: str, *parameters: dict) -> Any:
    """$what-matters as FHIR client libraries invoke operations: POST with a Parameters body."""
    body = {"resourceType": "Parameters", "parameter": list(parameters)}
    return client.post(f"/fhir/Patient/{patient}/$what-matters", json=body, headers=FHIR_JSON)


def test_what_matters_may_be_invoked_by_post_with_parameters(client: FlaskClient) -> None:
    # R4 operations.html#invoking: every operation may be invoked by POST; GET only as well
    add_patient(client)
    record(
        client, conversation(statement("a", "Garden"), statement("b", "Choir"), ranking("a", "b"))
    )
    record(
        client, conversation(ranking("b", "a"), statement("a", "Garden"), statement("b", "Choir"))
    )
    plain = _post_what_matters(client, "p1")
    assert plain.status_code == 200, plain.get_data(as_text=True)
    assert ranked_texts(plain.get_json()) == ["Choir", "Garden"]
    with_history = _post_what_matters(client, "p1", {"name": "history", "valueBoolean": True})
    earlier = [e for e in with_history.get_json()["entry"] if "/_history/" in e["fullUrl"]]
    assert [e["resource"]["meta"]["versionId"] for e in earlier] == ["1"]
    since = _post_what_matters(
        client, "p1", {"name": "since", "valueInstant": "2000-01-01T00:00:00Z"}
    )
    assert since.status_code == 200
    assert "wmty-change" in since.get_data(as_text=True)
    no_body = client.post("/fhir/Patient/p1/$what-matters")
    assert no_body.status_code == 200
    assert ranked_texts(no_body.get_json()) == ["Choir", "Garden"]


def test_a_posted_parameter_that_is_wrong_is_400_naming_it(client: FlaskClient) -> None:
    add_patient(client)
    cases = [
        ({"name": "since", "valueString": "garbage"}, "Parameters.parameter[0].valueInstant"),
        ({"name": "since", "valueInstant": "yesterday"}, "since"),
        ({"name": "history", "valueString": "yes"}, "Parameters.parameter[0].valueBoolean"),
        ({"name": "patient", "valueString": "p2"}, "Parameters.parameter[0]"),
    ]
    for parameter, where in cases:
        response = _post_what_matters(client, "p1", parameter)
        assert response.status_code == 400, parameter
        assert [i["expression"] for i in outcome_issues(response)] == [[where]]
    twice = client.post(
        "/fhir/Patient/p1/$what-matters?since=2026-01-01T00:00:00Z",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "since", "valueInstant": "2026-01-01T00:00:00Z"}],
        },
        headers=FHIR_JSON,
    )
    assert twice.status_code == 400
    not_parameters = client.post(
        "/fhir/Patient/p1/$what-matters", json={"resourceType": "Patient"}, headers=FHIR_JSON
    )
    assert not_parameters.status_code == 400
    assert _post_what_matters(client, "nobody").status_code == 404
