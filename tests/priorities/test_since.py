"""``?since=``: what changed since someone last looked, from version history. Each item is
marked new, changed (words, status, rank) or removed, in ``$what-matters``, the facade and the
page alike."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.builders import outcome_issues
from tests.priorities.conversations import (
    FHIR_JSON,
    NHS,
    add_patient,
    conversation,
    goal,
    ranking,
    record,
    statement,
    what_matters,
)
from tests.security.support import caller, keys, shared_smart_app, smart_app, token_for, world

# the smart-mode fixtures this module uses
__all__ = ["keys", "shared_smart_app", "smart_app", "world"]

CHANGE = "http://whatmatters.example/fhir/StructureDefinition/wmty-change"


def _first_conversation(client: FlaskClient) -> dict[str, dict[str, Any]]:
    response = record(
        client,
        conversation(
            statement("garden", "Garden"),
            statement("choir", "Choir"),
            statement("chapel", "Chapel on Sunday"),
            statement("bingo", "Bingo on Fridays"),
            statement("crosswords", "Crosswords"),
            goal("g", "Plant the beans in May", "garden"),
            ranking("garden", "choir", "chapel", "bingo", "crosswords"),
        ),
    )
    assert response.status_code == 200
    written = [e["resource"] for e in response.get_json()["entry"]]
    return {r.get("valueString") or r.get("description", {}).get("text", ""): r for r in written}


def _second_conversation(client: FlaskClient, stored: dict[str, dict[str, Any]]) -> None:
    def ref(text: str) -> str:
        return f"Observation/{stored[text]['id']}"

    body = conversation(
        statement("music", "Music in the afternoons"),
        ranking(ref("Garden"), ref("Chapel on Sunday"), ref("Choir"), "music"),
    )
    assert record(client, body).status_code == 200
    choir = {**stored["Choir"], "valueString": "Choir on Thursdays"}  # the words corrected
    assert (
        client.put(f"/fhir/Observation/{choir['id']}", json=choir, headers=FHIR_JSON).status_code
        == 200
    )
    beans = {**stored["Plant the beans in May"], "lifecycleStatus": "completed"}
    assert client.put(f"/fhir/Goal/{beans['id']}", json=beans, headers=FHIR_JSON).status_code == 200
    bingo = {**stored["Bingo on Fridays"], "status": "entered-in-error"}
    assert (
        client.put(f"/fhir/Observation/{bingo['id']}", json=bingo, headers=FHIR_JSON).status_code
        == 200
    )
    assert client.delete(f"/fhir/Observation/{stored['Crosswords']['id']}").status_code in (
        200,
        204,
    )


def _marks(bundle: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    resources = {}
    for entry in bundle["entry"][1:]:
        resource = entry["resource"]
        ref = f"{resource['resourceType']}/{resource['id']}"
        if "/_history/" in entry["fullUrl"]:
            ref += f"/_history/{resource['meta']['versionId']}"
        resources[ref] = resource
    marks = {}
    for entry in bundle["entry"][0]["resource"]["entry"]:
        resource = resources[entry["item"]["reference"]]
        change = next((x for x in entry.get("extension", []) if x["url"] == CHANGE), None)
        parts = [p["valueCode"] for p in (change or {}).get("extension", []) if "valueCode" in p]
        marks[resource.get("valueString") or resource["description"]["text"]] = tuple(parts)
    return marks


def test_since_marks_new_changed_and_removed_after_a_second_conversation(
    client: FlaskClient,
) -> None:
    add_patient(client)
    stored = _first_conversation(client)
    since = what_matters(client)["timestamp"]  # when the nurse last looked
    _second_conversation(client, stored)
    bundle = client.get(f"/fhir/Patient/p1/$what-matters?since={since}").get_json()
    assert _marks(bundle) == {
        "Garden": ("changed", "status"),  # its goal was completed
        "Chapel on Sunday": ("changed", "rank"),
        "Choir on Thursdays": ("changed", "words", "rank"),
        "Music in the afternoons": ("new",),
        "Bingo on Fridays": ("removed",),  # entered in error
        "Crosswords": ("removed",),  # deleted
    }
    assert _marks(what_matters(client)) == {  # without since, nothing is marked
        "Garden": (),
        "Chapel on Sunday": (),
        "Choir on Thursdays": (),
        "Music in the afternoons": (),
    }
    facade = client.get(f"/api/patients/{NHS}%7C9000000009/priorities?since={since}").get_json()
    marks = {p["text"]: (p["change"] or {}).get("mark") for p in facade["priorities"]}
    assert marks == {
        "Garden": "changed",
        "Chapel on Sunday": "changed",
        "Choir on Thursdays": "changed",
        "Music in the afternoons": "new",
        "Bingo on Fridays": "removed",
        "Crosswords": "removed",
    }
    page = client.get(f"/patients/p1/what-matters?since={since}").get_data(as_text=True)
    day = f"{int(since[8:10])} "
    assert f'New since <time datetime="{since}">{day}' in page
    assert page.count('data-mark="removed"') == 2
    assert "No longer current" in page


def test_a_bad_since_is_400_naming_it(client: FlaskClient) -> None:
    add_patient(client)
    response = client.get("/fhir/Patient/p1/$what-matters?since=last-tuesday")
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["since"]
    assert client.get("/patients/p1/what-matters?since=nope").status_code == 400


def test_a_patient_token_gets_since_marks_for_its_own_patient(world: dict[str, Any]) -> None:
    """Type history is closed to patient-context tokens: changes still show from each
    resource's own history, and nothing of another patient is read."""
    patient = caller(world, token_for(world, "patient-A"))
    since = patient.get("/fhir/Patient/pA/$what-matters").get_json()["timestamp"]
    body = conversation(statement("s2", "Seeing the sea at Llandudno"), ranking("s2"))
    assert patient.post("/fhir/Patient/pA/$record-what-matters", body).status_code == 200
    response = patient.get(f"/fhir/Patient/pA/$what-matters?since={since}")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _marks(response.get_json()) == {
        "Seeing the sea at Llandudno": ("new",),
        "Walk the dog": (),  # still first among what was there before
    }
    assert patient.get(f"/fhir/Patient/pB/$what-matters?since={since}").status_code == 403
