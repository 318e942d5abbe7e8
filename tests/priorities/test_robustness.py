"""Inputs that once broke things: re-ranking stored items, odd JSON types in $record-what-matters,
$validate and $ingest. Each now gets a clear 4xx, and no List ever names an item twice."""

from __future__ import annotations

from flask.testing import FlaskClient

from tests.builders import outcome_issues
from tests.priorities.conversations import (
    FHIR_JSON,
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
ITEM = (
    b'{"resourceType": "QuestionnaireResponse",'
    b' "item": [{"linkId": "what-matters", "answer": ANSWER}]}'
)


def _list_entries(client: FlaskClient) -> list[str]:
    (found,) = client.get("/fhir/List").get_json()["entry"]
    return [e["item"]["reference"] for e in found["resource"]["entry"]]


def test_re_ranking_stored_items_names_each_once(client: FlaskClient) -> None:
    add_patient(client)
    record(client, conversation(statement("a", "Garden"), statement("b", "Choir")))
    response = record(
        client, conversation(statement("a", "Garden"), statement("b", "Choir"), ranking("b", "a"))
    )
    assert response.status_code == 200
    entries = _list_entries(client)
    assert len(entries) == len(set(entries)) == 2
    assert ranked_texts(what_matters(client)) == ["Choir", "Garden"]
    # the setting can go on recording
    more = record(client, conversation(statement("c", "Chapel"), statement("a", "Garden")))
    assert more.status_code == 200, more.get_data(as_text=True)
    assert len(set(_list_entries(client))) == len(_list_entries(client)) == 3


def test_a_goal_may_address_a_statement_given_after_it(client: FlaskClient) -> None:
    add_patient(client)
    response = record(client, conversation(goal("g", "Walk to the shop"), statement("s", "Home")))
    assert response.status_code == 200
    goal_resource = next(
        e["resource"]
        for e in response.get_json()["entry"]
        if e["resource"]["resourceType"] == "Goal"
    )
    assert goal_resource["addresses"][0]["reference"].startswith("Observation/")


def test_odd_types_in_a_goal_are_422_not_500(client: FlaskClient) -> None:
    add_patient(client)
    for bad in ([1], {}, 5):
        body = conversation(statement("s1", "x"), goal("g1", "Walk", "s1"))
        body["parameter"][1]["part"].append({"name": "priority", "valueCode": bad})
        response = record(client, body)
        assert response.status_code == 422
        assert outcome_issues(response)[0]["expression"][0].startswith("Parameters.parameter[1]")


def test_validate_survives_odd_types_in_profiled_elements(client: FlaskClient) -> None:
    base = {
        "resourceType": "Goal",
        "meta": {"profile": [PROFILE + "wmty-personal-goal"]},
        "lifecycleStatus": "active",
        "description": {"text": "d"},
        "subject": {"reference": "Patient/p1"},
    }
    odd = [
        {"priority": {"coding": None}},
        {"priority": {"coding": 5}},
        {"priority": {"coding": [{"system": ["x"], "code": "high-priority"}]}},
        {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/goal-acceptance", "extension": 5}
            ]
        },
    ]
    for change in odd:
        params = {
            "resourceType": "Parameters",
            "parameter": [{"name": "resource", "resource": {**base, **change}}],
        }
        response = client.post("/fhir/Goal/$validate", json=params, headers=FHIR_JSON)
        assert response.status_code == 200, (change, response.get_data(as_text=True))
        assert any(i["severity"] == "error" for i in outcome_issues(response))


def test_ingest_survives_a_questionnaire_response_of_odd_shape(client: FlaskClient) -> None:
    headers = FHIR_JSON
    for body in (
        b'{"resourceType": "QuestionnaireResponse", "item": 5}',
        b'{"resourceType": "QuestionnaireResponse", "item": [5]}',
        ITEM.replace(b"ANSWER", b"5"),
        ITEM.replace(b"ANSWER", b"[5]"),
    ):
        for dry in ("false", "true"):
            response = client.post(
                f"/fhir/$ingest?mapping=wmty-questionnaire&dryRun={dry}", data=body, headers=headers
            )
            assert response.status_code in (200, 422), (body, response.get_data(as_text=True))
            assert response.status_code == 422 or dry == "true"


def test_facade_fields_of_the_wrong_json_type_are_refused_not_dropped(client: FlaskClient) -> None:
    add_patient(client)
    url = "/api/patients/https://fhir.nhs.uk/Id/nhs-number%7C9000000009/priorities"
    for field, value in (("identifier", "x"), ("code", "x"), ("effective", 5), ("text", 5)):
        response = client.post(url, json={"statements": [{"text": "Home", field: value}]})
        assert response.status_code == 422, (field, response.get_data(as_text=True))
        assert outcome_issues(response)[0]["expression"] == [f"$.statements[0].{field}"]
    assert client.get(url).get_json()["priorities"] == []


def test_a_ranking_or_address_naming_no_goal_or_statement_of_the_patient_is_422(
    client: FlaskClient,
) -> None:
    """A stored item the input names by reference must be the patient's own: another
    patient's, a deleted one and one never stored get the same 422 at the input's place."""
    add_patient(client)
    add_patient(client, "p2", "9000000017")
    theirs = record(client, conversation(statement("s", "Their garden")), patient="p2")
    their_statement = next(
        e["resource"]["id"]
        for e in theirs.get_json()["entry"]
        if e["resource"]["resourceType"] == "Observation"
    )
    mine = record(client, conversation(statement("s", "My choir"), goal("g", "Sing", "s")))
    my_goal = next(
        e["resource"]["id"]
        for e in mine.get_json()["entry"]
        if e["resource"]["resourceType"] == "Goal"
    )
    gone = record(client, conversation(statement("x", "Going"))).get_json()["entry"][0]
    client.delete(f"/fhir/Observation/{gone['resource']['id']}")
    before = count(client, "List"), _list_entries_of(client, "p1")
    for ref in (
        f"Observation/{their_statement}",
        f"Observation/{gone['resource']['id']}",
        "Goal/never-stored",
    ):
        ranked = record(client, conversation(statement("t", "Tea"), ranking("t", ref)))
        assert ranked.status_code == 422, ranked.get_data(as_text=True)
        issue = outcome_issues(ranked)[0]
        assert issue["diagnostics"] == f"{ref} is not a stored {ref.split('/')[0]} of Patient/p1"
        assert issue["expression"] == ["Parameters.parameter[1].part[1]"]
        addressed = record(client, conversation(goal("h", "Walk", ref)))
        assert addressed.status_code == 422, addressed.get_data(as_text=True)
        assert "Their garden" not in addressed.get_data(as_text=True)
    assert (count(client, "List"), _list_entries_of(client, "p1")) == before
    # the patient's own stored goal is still rankable by reference
    own = record(client, conversation(statement("t", "Tea"), ranking("t", f"Goal/{my_goal}")))
    assert own.status_code == 200, own.get_data(as_text=True)


def _list_entries_of(client: FlaskClient, patient: str) -> list[str]:
    found = client.get(f"/fhir/List?subject=Patient/{patient}").get_json().get("entry", [])
    return [e["item"]["reference"] for f in found for e in f["resource"]["entry"]]


def test_a_part_or_parameter_allowed_once_and_given_twice_is_422_not_the_last_kept(
    client: FlaskClient,
) -> None:
    """An app written from the OperationDefinition (statement.text, ranking, recorder,
    setting-type: max 1) sends two texts in one statement, or two rankings. The last was kept
    and the first dropped without a word, the patient's own words among them; now a 422 names
    both places and nothing is written."""
    add_patient(client)
    two_texts = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "statement",
                "part": [
                    {"name": "text", "valueString": "I want to see my daughter"},
                    {"name": "text", "valueString": "I do not want to go to a care home"},
                ],
            }
        ],
    }
    response = client.post(
        "/fhir/Patient/p1/$record-what-matters", json=two_texts, headers=FHIR_JSON
    )
    assert response.status_code == 422, response.get_data(as_text=True)
    issue = outcome_issues(response)[0]
    assert issue["expression"] == ["Parameters.parameter[0].part[1]"]
    assert "'text' twice (also at Parameters.parameter[0].part[0])" in issue["diagnostics"]
    once = conversation(statement("a", "Walking Bramble"), statement("b", "The sea"))
    once["parameter"] += [
        {"name": "ranking", "part": [{"name": "item", "valueString": "a"}]},
        {"name": "ranking", "part": [{"name": "item", "valueString": "b"}]},
    ]
    twice = client.post("/fhir/Patient/p1/$record-what-matters", json=once, headers=FHIR_JSON)
    assert twice.status_code == 422
    assert "'ranking' is given twice" in outcome_issues(twice)[0]["diagnostics"]
    assert count(client, "Observation") == 0


def test_a_patient_identifier_naming_another_patient_than_the_url_is_422(
    client: FlaskClient,
) -> None:
    """An app posts to Patient/p2/$record-what-matters with 'patient-identifier' holding p1's
    NHS number: everything was written to p2 without a word. Whose conversation it is cannot
    be told, so it is a 422 and nothing is written; p2's own number is accepted."""
    add_patient(client, "p1", "9000000009")
    add_patient(client, "p2", "9000000017")
    body = conversation(statement("a", "Walking Bramble"))

    def naming(nhs: str) -> dict[str, object]:
        identifier = {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}
        return {
            **body,
            "parameter": [
                *body["parameter"],
                {"name": "patient-identifier", "valueIdentifier": identifier},
            ],
        }

    other = client.post(
        "/fhir/Patient/p2/$record-what-matters", json=naming("9000000009"), headers=FHIR_JSON
    )
    assert other.status_code == 422, other.get_data(as_text=True)
    assert "names another patient than Patient/p2" in outcome_issues(other)[0]["diagnostics"]
    assert count(client, "Observation") == 0
    own = client.post(
        "/fhir/Patient/p2/$record-what-matters", json=naming("9000000017"), headers=FHIR_JSON
    )
    assert own.status_code == 200, own.get_data(as_text=True)


def test_what_matters_by_get_refuses_a_parameter_it_does_not_define_as_post_does(
    client: FlaskClient,
) -> None:
    """``GET $what-matters?bogus=1`` answered 200 (the parameter ignored) where the same name
    in a Parameters body was a 400: a misspelt ``histroy=true`` silently gave the current view.
    Both are a 400 naming the parameter; _format and _pretty stay allowed."""
    add_patient(client)
    assert record(client, conversation(statement("a", "Walking Bramble"))).status_code == 200
    misspelt = client.get("/fhir/Patient/p1/$what-matters?histroy=true")
    assert misspelt.status_code == 400
    assert "no in-parameter 'histroy'" in outcome_issues(misspelt)[0]["diagnostics"]
    assert client.get("/fhir/Patient/p1/$what-matters?history=true&_pretty=true").status_code == 200
