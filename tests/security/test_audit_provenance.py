"""Every write gets a Provenance, every access an AuditEvent, and no personal data reaches the
application logs (issue 8; R4 provenance.html, auditevent.html; SMART mode)."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.priorities.conversations import conversation, goal, ranking, statement
from tests.security.support import B_WORDS, ISSUER, Caller, caller, plain_goal, token_for


def provenances_of(system: Caller, target: str) -> list[dict[str, Any]]:
    bundle = system.get(f"/fhir/Provenance?target={target}&_count=100").get_json()
    return [e["resource"] for e in bundle.get("entry", [])]


def activity(provenance: dict[str, Any]) -> str:
    return str(provenance["activity"]["coding"][0]["code"])


def test_each_rest_write_gets_a_provenance_naming_the_token_user_and_client(
    world: dict[str, Any],
) -> None:
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    created = a.post("/fhir/Goal", plain_goal("pA", "Dance at the wedding")).get_json()
    id_ = created["id"]
    assert (
        a.put(f"/fhir/Goal/{id_}", {**created, "description": {"text": "Dance"}}).status_code == 200
    )
    assert a.delete(f"/fhir/Goal/{id_}").status_code == 204
    found = provenances_of(system, f"Goal/{id_}")
    by_version = {p["target"][0]["reference"]: p for p in found}
    assert sorted(by_version) == [f"Goal/{id_}/_history/{n}" for n in (1, 2, 3)]
    assert [activity(by_version[f"Goal/{id_}/_history/{n}"]) for n in (1, 2, 3)] == [
        "CREATE",
        "UPDATE",
        "DELETE",
    ]
    author = by_version[f"Goal/{id_}/_history/1"]["agent"][0]
    assert author["type"]["coding"][0]["code"] == "author"
    assert author["who"]["identifier"] == {"system": ISSUER, "value": "user-1"}
    assert by_version[f"Goal/{id_}/_history/1"]["agent"][1]["who"]["display"] == "client test-app"
    # a Provenance of ours is valid R4
    check = system.post("/fhir/Provenance/$validate", by_version[f"Goal/{id_}/_history/1"])
    assert check.status_code == 200
    assert all(i["severity"] not in ("error", "fatal") for i in check.get_json()["issue"])


def test_transaction_entries_each_get_a_provenance(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": plain_goal("pA", f"Goal {n}"),
                "request": {"method": "POST", "url": "Goal"},
            }
            for n in range(2)
        ],
    }
    response = a.post("/fhir", bundle)
    assert response.status_code == 200
    for entry in response.get_json()["entry"]:
        goal_id = entry["response"]["location"].split("/")[1]
        assert [activity(p) for p in provenances_of(system, f"Goal/{goal_id}")] == ["CREATE"]


def test_a_recorded_conversation_keeps_only_the_recorders_provenance(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    body = conversation(
        statement("s5", "Sing in the choir"), goal("g5", "Choir", "s5"), ranking("s5")
    )
    assert a.post("/fhir/Patient/pA/$record-what-matters", body).status_code in (200, 201)
    goals = system.get("/fhir/Goal?patient=Patient/pA&description:contains=Choir").get_json()
    goal_id = goals["entry"][0]["resource"]["id"]
    found = provenances_of(system, f"Goal/{goal_id}")
    assert len(found) == 1
    assert found[0]["agent"][0]["who"]["display"] == "Nurse Ada Okafor"


def audit_events(system: Caller) -> list[dict[str, Any]]:
    bundle = system.get("/fhir/AuditEvent?_count=1000").get_json()
    return [e["resource"] for e in bundle.get("entry", [])]


def test_every_access_gets_an_audit_event(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    before = len(audit_events(system))  # this search is itself audited
    goal_id = world["pA"]["goal"]
    assert a.get(f"/fhir/Goal/{goal_id}").status_code == 200
    assert a.get("/fhir/Goal?lifecycle-status=active").status_code == 200
    assert a.post("/fhir/Goal", plain_goal("pA", "Swim")).status_code == 201
    assert a.get("/fhir/Patient/pB").status_code == 403
    assert caller(world, None).get("/fhir/Goal").status_code == 401
    assert caller(world, token_for(world, "expired")).get("/fhir/Goal").status_code == 401
    events = audit_events(system)
    assert len(events) == before + 1 + 6
    seen = [(e["subtype"][0]["code"], e["action"], e["outcome"]) for e in events]
    assert ("read", "R", "0") in seen
    assert ("search-type", "E", "0") in seen
    assert ("create", "C", "0") in seen
    assert ("read", "R", "4") in seen  # the 403
    assert sum(1 for e in events if e["agent"][0]["who"].get("display") == "no valid token") >= 2
    read = next(
        e
        for e in events
        if e["subtype"][0]["code"] == "read"
        and e["outcome"] == "0"
        and any(
            x.get("what", {}).get("reference") == f"Goal/{goal_id}" for x in e.get("entity", [])
        )
    )
    entities = [x["what"]["reference"] for x in read["entity"] if "what" in x]
    assert "Patient/pA" in entities
    assert read["agent"][0]["who"]["identifier"]["value"] == "user-1"
    assert read["agent"][0]["network"]["type"] == "2"
    check = system.post("/fhir/AuditEvent/$validate", read)
    assert check.status_code == 200
    assert all(i["severity"] not in ("error", "fatal") for i in check.get_json()["issue"])


@pytest.mark.parametrize("kind", ["patient-A", "user"])
def test_only_system_scopes_read_the_audit_trail(world: dict[str, Any], kind: str) -> None:
    assert caller(world, token_for(world, kind)).get("/fhir/AuditEvent").status_code == 403


def test_the_audit_trail_is_append_only(world: dict[str, Any]) -> None:
    system = caller(world, token_for(world, "system"))
    event = audit_events(system)[0]
    assert system.put(f"/fhir/AuditEvent/{event['id']}", event).status_code == 403
    assert system.delete(f"/fhir/AuditEvent/{event['id']}").status_code == 403


def test_no_names_identifiers_or_words_reach_the_logs(
    world: dict[str, Any], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    private_name = "Angharad Rhys-Llewellyn"
    private_words = "I want to see my granddaughter Seren graduate"  # what must not leak
    patient = {
        "resourceType": "Patient",
        "id": "pC",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"text": private_name}],
    }
    assert system.put("/fhir/Patient/pC", patient).status_code == 201
    body = conversation(statement("s1", private_words), ranking("s1"))
    assert system.post("/fhir/Patient/pC/$record-what-matters", body).status_code in (200, 201)
    facade = "/api/patients/https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number|9434765919/priorities"
    assert system.get(facade).status_code == 200
    assert system.get("/fhir/Patient?name=Angharad").status_code == 200
    assert a.get("/fhir/Patient/pC").status_code == 403
    system.post(
        "/fhir/Goal", {"resourceType": "Goal", "description": {"text": private_words}}
    )  # 400
    system.get("/fhir/Patient/pC/$what-matters")

    # an unexpected failure whose message quotes the patient's words
    from service.priorities.operations import WhatMatters

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError(f"could not rank {private_words} for {private_name} 9434765919")

    monkeypatch.setattr(WhatMatters, "what_matters", broken)
    assert system.get("/fhir/Patient/pC/$what-matters").status_code == 500
    assert (
        system.get(
            "/api/patients/https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number|9434765919/priorities"
        ).status_code
        == 500
    )
    logged = caplog.text
    assert "unexpected error" in logged  # the failure itself is logged ...
    for private in (
        private_name,
        "Angharad",
        private_words,
        "granddaughter",
        "9434765919",
        B_WORDS,
    ):
        assert private not in logged  # ... with nothing of the patient's


def test_an_update_that_changes_nothing_still_needs_the_right_to_write(
    world: dict[str, Any],
) -> None:
    # patient-B may read and search only: repeating a resource as it is is still a write
    system = caller(world, token_for(world, "system"))
    reader = caller(world, token_for(world, "patient-B"))
    created = system.post("/fhir/Goal", plain_goal("pB", "Keep my allotment")).get_json()
    assert reader.get(f"/fhir/Goal/{created['id']}").status_code == 200
    assert reader.put(f"/fhir/Goal/{created['id']}", created).status_code == 403
    assert system.put(f"/fhir/Goal/{created['id']}", created).status_code == 200
