"""No two Patients share an NHS number (issue finding 4: identifier takeover).

Rule (README, Authorization): in every identifier system listed in
``WHATMATTERS_UNIQUE_IDENTIFIER_SYSTEMS`` (by default the NHS number,
``https://fhir.nhs.uk/Id/nhs-number``) a value names at most one current Patient. A create or
update that would make a second is refused with 409 and an OperationOutcome naming
``Patient.identifier[i]``; nothing is written. Concurrent writers of one number take turns, so
under a race exactly one wins.
"""

from __future__ import annotations

import threading
from typing import Any

from flask import Flask

from tests.security.support import caller, text_of, token_for

NHS = "https://fhir.nhs.uk/Id/nhs-number"
B_NHS = "9000000017"
RACERS = 20


def patient(number: str, family: str, *, other: str | None = None) -> dict[str, Any]:
    identifiers = [{"system": NHS, "value": number}]
    if other:
        identifiers.insert(0, {"system": "urn:example:mrn", "value": other})
    return {"resourceType": "Patient", "identifier": identifiers, "name": [{"family": family}]}


def b_is_intact(world: dict[str, Any]) -> None:
    """B's NHS number still names only B: the facade and a search both find B alone."""
    admin = caller(world, token_for(world, "system"))
    found = admin.get(f"/fhir/Patient?identifier={NHS}|{B_NHS}").get_json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == ["pB"]
    facade = admin.get(
        f"/api/patients/{NHS.replace('/', '%2F').replace(':', '%3A')}|{B_NHS}/priorities"
    )
    assert facade.status_code == 200, text_of(facade)


def assert_conflict(response: Any, element: str) -> None:
    assert response.status_code == 409, text_of(response)
    issue = response.get_json()["issue"][0]
    assert issue["code"] == "conflict"
    assert issue["expression"] == [element]


def test_a_second_patient_with_bs_nhs_number_is_refused(world: dict[str, Any]) -> None:
    writer = caller(world, token_for(world, "system"))
    assert_conflict(
        writer.put("/fhir/Patient/ghost", {**patient(B_NHS, "Ghost", other="m1"), "id": "ghost"}),
        "Patient.identifier[1]",
    )
    assert_conflict(writer.post("/fhir/Patient", patient(B_NHS, "Ghost")), "Patient.identifier[0]")
    assert writer.get("/fhir/Patient/ghost").status_code == 404
    b_is_intact(world)


def test_an_update_may_not_take_bs_number_but_may_keep_its_own(world: dict[str, Any]) -> None:
    writer = caller(world, token_for(world, "system"))
    mine = writer.get("/fhir/Patient/pA").get_json()
    mine["name"] = [{"family": "Jones", "given": ["Eleri"]}]
    assert writer.put("/fhir/Patient/pA", mine).status_code == 200
    mine["identifier"].append({"system": NHS, "value": B_NHS})
    assert_conflict(writer.put("/fhir/Patient/pA", mine), "Patient.identifier[1]")
    assert writer.get("/fhir/Patient/pA").get_json()["meta"]["versionId"] == "2"
    b_is_intact(world)


def test_a_transaction_making_two_patients_with_one_number_writes_neither(
    world: dict[str, Any],
) -> None:
    writer = caller(world, token_for(world, "system"))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient("9000000025", "One"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": patient("9000000025", "Two"),
                "request": {"method": "POST", "url": "Patient"},
            },
        ],
    }
    response = writer.post("/fhir", bundle)
    assert response.status_code == 409, text_of(response)
    assert (
        writer.get(f"/fhir/Patient?identifier={NHS}|9000000025").get_json().get("entry", []) == []
    )


def test_a_number_is_free_again_once_its_patient_is_deleted(world: dict[str, Any]) -> None:
    writer = caller(world, token_for(world, "system"))
    first = writer.post("/fhir/Patient", patient("9000000033", "First"))
    assert first.status_code == 201
    assert writer.delete(f"/fhir/Patient/{first.get_json()['id']}").status_code == 204
    assert writer.post("/fhir/Patient", patient("9000000033", "Second")).status_code == 201


def test_a_patient_token_learns_nothing_from_a_number_in_use(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    taken = a.put("/fhir/Patient/ghost", {**patient(B_NHS, "Ghost"), "id": "ghost"})
    free = a.put("/fhir/Patient/ghost", {**patient("9000000041", "Ghost"), "id": "ghost"})
    assert taken.status_code == free.status_code == 403
    assert text_of(taken) == text_of(free)
    b_is_intact(world)


def test_twenty_concurrent_creates_of_one_number_make_exactly_one_patient(
    world: dict[str, Any], smart_app: Flask
) -> None:
    token = token_for(world, "system")
    statuses: list[int] = []
    start = threading.Barrier(RACERS)

    def race(n: int) -> None:
        client = caller({"client": smart_app.test_client()}, token)
        start.wait()
        statuses.append(
            client.post("/fhir/Patient", patient("9000000068", f"Racer{n}")).status_code
        )

    threads = [threading.Thread(target=race, args=(n,)) for n in range(RACERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [409] * (RACERS - 1)
    found = caller(world, token).get(f"/fhir/Patient?identifier={NHS}|9000000068").get_json()
    assert len(found["entry"]) == 1


def test_a_patients_own_token_cannot_claim_or_probe_an_nhs_number(world: dict[str, Any]) -> None:
    """A patient token may keep its Patient's NHS number, not add or change one: claiming a
    number nobody holds yet would file later data for it under this patient, and a 409 for a
    held one would tell the token that someone has it. Both answers are the same 403."""
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    before = system.get("/fhir/Patient/pA").get_json()
    unheld = {**before, "identifier": [{"system": NHS, "value": "9000000025"}]}
    held = {**before, "identifier": [{"system": NHS, "value": B_NHS}]}
    added = {
        **before,
        "identifier": [*before["identifier"], {"system": NHS, "value": "9000000033"}],
    }
    # as a patient's app would send it: a bare Patient of its own, no meta, another number
    bare = {
        "resourceType": "Patient",
        "id": "pA",
        "identifier": [{"system": NHS, "value": "9000000041"}],
        "name": [{"family": "Jones"}],
    }
    answers = [a.put("/fhir/Patient/pA", body) for body in (unheld, held, added, bare)]
    assert [r.status_code for r in answers] == [403, 403, 403, 403]
    for answer in answers:
        issue = answer.get_json()["issue"][0]
        assert issue["code"] == "forbidden"
        assert issue["expression"][0].startswith("Patient.identifier[")
        assert B_NHS not in text_of(answer)
    after = system.get("/fhir/Patient/pA").get_json()
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert (
        system.get(f"/fhir/Patient?identifier={NHS}|9000000025&_summary=count").get_json()["total"]
        == 0
    )
    # keeping the number while changing the name is the patient's own business
    renamed = {**before, "name": [{"family": "Jones", "given": ["Eira"]}]}
    assert a.put("/fhir/Patient/pA", renamed).status_code == 200
