"""SMART on FHIR authorization: tokens x doors, and no door leaks another patient's data.

Specs: SMART App Launch 2.x scopes-and-launch-context.html (scopes v1 and v2, the ``patient``
launch context), RFC 6750 section 3 (401 with WWW-Authenticate; invalid_token), RFC 7519
(exp, nbf, iss, aud), R4 CompartmentDefinition patient. Patients A and B each have a recorded
conversation (Observations, Goals, a List, a Provenance). A token for A must never return
anything of B's, whichever door it tries; each denial must carry the right status.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.priorities.codes import LIST_IDS
from tests.priorities.conversations import conversation, ranking, statement
from tests.security.support import (
    B_WORDS,
    ISSUER,
    caller,
    plain_goal,
    sign,
    text_of,
    token_for,
)

# -- tokens that cannot be trusted: 401 with WWW-Authenticate, on every door ------------------

UNTRUSTED = ["expired", "not-yet", "wrong-issuer", "wrong-audience", "tampered", "stranger-key"]
DOORS_GET = [
    "/fhir/Patient/pB",
    "/fhir/Goal",
    "/fhir/Goal/_history",
    "/fhir/Patient/pB/$what-matters",
    "/api/patients/https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number|9000000017/priorities",
    "/patients/pB/what-matters",
    "/admin/outbox",
]


@pytest.mark.parametrize("kind", UNTRUSTED)
@pytest.mark.parametrize("door", DOORS_GET)
def test_untrusted_tokens_get_401_invalid_token(
    world: dict[str, Any], kind: str, door: str
) -> None:
    response = caller(world, token_for(world, kind)).get(door)
    assert response.status_code == 401
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="what-matters"')
    assert 'error="invalid_token"' in challenge
    assert B_WORDS not in text_of(response)


@pytest.mark.parametrize("door", DOORS_GET)
def test_no_token_gets_401_without_an_error_code(world: dict[str, Any], door: str) -> None:
    response = caller(world, None).get(door)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="what-matters"'


def test_metadata_and_smart_configuration_are_public(world: dict[str, Any]) -> None:
    anonymous = caller(world, None)
    metadata = anonymous.get("/fhir/metadata")
    assert metadata.status_code == 200
    security = metadata.get_json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris == {"token": f"{ISSUER}/token", "authorize": f"{ISSUER}/authorize"}
    # SMART App Launch 2.x conformance: the document is at [FHIR base]/.well-known/...
    for path in ("/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"):
        smart = anonymous.get(path)
        assert smart.status_code == 200, path
        document = smart.get_json()
        assert document["issuer"] == ISSUER
        assert document["token_endpoint"] == f"{ISSUER}/token"
        assert document["authorization_endpoint"] == f"{ISSUER}/authorize"
        assert "permission-v2" in document["capabilities"]


# -- patient A's token: every door shows A's data and never B's ---------------------------------


def leaks(response: Any) -> bool:
    return B_WORDS in text_of(response) or "Patient/pB" in text_of(response)


@pytest.mark.parametrize("kind", ["patient-A", "patient-A-v1"])
@pytest.mark.parametrize(
    ("door", "status"),
    [
        ("/fhir/Patient/pB", 403),
        ("/fhir/Goal/{B_goal}", 403),
        ("/fhir/Goal/{B_goal}/_history/1", 403),
        ("/fhir/Goal/{B_goal}/_history", 403),
        ("/fhir/Observation/{B_observation}", 403),
        ("/fhir/Goal/_history", 403),
        ("/fhir/_history", 403),
        ("/fhir/Patient/pB/$what-matters", 403),
        ("/fhir/Patient/pB/$summary", 403),
        ("/fhir/Patient/$summary?identifier=https://fhir.nhs.uk/Id/nhs-number|9000000017", 404),
        ("/patients/pB/what-matters", 403),
        # the facade finds the patient by identifier, a search: B is not there for A's token
        ("/api/patients/https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number|9000000017/priorities", 404),
        ("/fhir/Goal?patient=Patient/pB", 200),
        ("/fhir/Goal?subject:Patient.name=Bryn", 200),
        ("/fhir/Patient?_has:Goal:patient:lifecycle-status=active", 200),
        ("/fhir/Goal?_include=Goal:subject", 200),
        ("/fhir/Patient?_revinclude=Provenance:patient&_revinclude=Goal:subject", 200),
        ("/fhir/Observation?_summary=count", 200),
        ("/fhir/Provenance", 200),
        ("/fhir/Patient/pA/$what-matters", 200),
        ("/fhir/Patient/pA/$summary", 200),
        ("/fhir/Goal/{A_goal}", 200),
        ("/fhir/Goal/{A_goal}/_history", 200),
    ],
)
def test_patient_a_never_sees_patient_b(
    world: dict[str, Any], kind: str, door: str, status: int
) -> None:
    url = door.format(
        B_goal=world["pB"]["goal"],
        B_observation=world["pB"]["observation"],
        A_goal=world["pA"]["goal"],
    )
    response = caller(world, token_for(world, kind)).get(url)
    assert response.status_code == status, text_of(response)
    assert not leaks(response)
    if status in (403, 404) and not url.startswith("/patients/"):
        assert response.get_json()["issue"][0]["code"] in ("forbidden", "not-found")
    if status == 403 and not url.startswith("/patients/"):
        assert response.get_json()["issue"][0]["code"] == "forbidden"


@pytest.mark.parametrize(("patient", "status"), [("pA", 403), ("pB", 200)])
def test_what_matters_invoked_by_post_keeps_to_the_tokens_patient(
    world: dict[str, Any], patient: str, status: int
) -> None:
    # a read-only token (patient/*.rs): POST of a read-only operation is still a read
    b = caller(world, token_for(world, "patient-B"))
    body = {"resourceType": "Parameters", "parameter": [{"name": "history", "valueBoolean": True}]}
    response = b.post(f"/fhir/Patient/{patient}/$what-matters", body)
    assert response.status_code == status, text_of(response)
    if status == 403:
        assert response.get_json()["issue"][0]["code"] == "forbidden"
        assert "Walk the dog" not in text_of(response)
    else:
        assert B_WORDS in text_of(response)


def test_patient_a_searches_find_only_a(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    goals = a.get("/fhir/Goal").get_json()
    assert [e["resource"]["subject"]["reference"] for e in goals["entry"]] == ["Patient/pA"]
    patients = a.get("/fhir/Patient").get_json()
    assert [e["resource"]["id"] for e in patients["entry"]] == ["pA"]
    assert a.get("/fhir/Observation?_summary=count").get_json()["total"] == 1
    included = a.get("/fhir/Goal?_include=Goal:subject").get_json()
    assert {e["resource"]["resourceType"] for e in included["entry"]} == {"Goal", "Patient"}
    provenance = a.get("/fhir/Provenance?_revinclude=Provenance:target").get_json()
    assert "entry" not in provenance or not leaks_json(provenance)


def leaks_json(body: Any) -> bool:
    return B_WORDS in json.dumps(body) or "Patient/pB" in json.dumps(body)


def test_patient_a_cannot_write_into_b_and_nothing_is_written(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    before = system.get("/fhir/Goal?_summary=count").get_json()["total"]
    new_goal = plain_goal("pB", "planted")
    assert a.post("/fhir/Goal", new_goal).status_code == 403
    b_goal = system.get(f"/fhir/Goal/{world['pB']['goal']}").get_json()
    moved = {**b_goal, "subject": {"reference": "Patient/pA"}}
    assert a.put(f"/fhir/Goal/{b_goal['id']}", moved).status_code == 403
    hijack = {**b_goal, "description": {"text": "changed by A"}}
    assert a.put(f"/fhir/Goal/{b_goal['id']}", hijack).status_code == 403
    assert (
        world["client"]
        .delete(
            f"/fhir/Goal/{b_goal['id']}",
            headers={"Authorization": f"Bearer {token_for(world, 'patient-A')}"},
        )
        .status_code
        == 403
    )
    record = conversation(statement("s9", "planted words"), ranking("s9"))
    assert a.post("/fhir/Patient/pB/$record-what-matters", record).status_code == 403
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    **new_goal,
                    "description": {"text": "own"},
                    "subject": {"reference": "Patient/pA"},
                },
                "request": {"method": "POST", "url": "Goal"},
            },
            {"resource": new_goal, "request": {"method": "POST", "url": "Goal"}},
        ],
    }
    assert a.post("/fhir", transaction).status_code == 403
    reading = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Goal/{b_goal['id']}"}}],
    }
    batch = a.post("/fhir", reading)
    assert not leaks(batch)
    assert batch.get_json()["entry"][0]["response"]["status"].startswith("403")
    after = system.get("/fhir/Goal?_summary=count").get_json()["total"]
    assert after == before
    assert (
        system.get(f"/fhir/Goal/{b_goal['id']}").get_json()["description"] == b_goal["description"]
    )


def test_patient_a_writes_into_its_own_compartment(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    own = plain_goal("pA", "Garden again")
    assert a.post("/fhir/Goal", own).status_code == 201
    record = conversation(statement("s2", "See the sea"), ranking("s2"))
    assert a.post("/fhir/Patient/pA/$record-what-matters", record).status_code in (200, 201)


def test_patient_b_read_only_token_cannot_write(world: dict[str, Any]) -> None:
    b = caller(world, token_for(world, "patient-B"))
    own = plain_goal("pB", "x")
    assert b.post("/fhir/Goal", own).status_code == 403
    assert b.get(f"/fhir/Goal/{world['pB']['goal']}").status_code == 200


def test_missing_scopes_are_403(world: dict[str, Any]) -> None:
    nothing = caller(world, token_for(world, "no-scope"))
    assert nothing.get("/fhir/Patient/pA").status_code == 403
    assert nothing.get("/fhir/Goal").status_code == 403
    goals_only = caller(world, token_for(world, "goal-only"))
    assert goals_only.get("/fhir/Goal").status_code == 200
    assert goals_only.get(f"/fhir/Observation/{world['pA']['observation']}").status_code == 403
    assert goals_only.get("/fhir/Observation").status_code == 403
    assert goals_only.get("/fhir/Patient/pA/$what-matters").status_code == 403


def test_a_scope_string_joined_by_a_no_break_space_grants_nothing_more(
    world: dict[str, Any],
) -> None:
    """A patient app's token whose scope claim joins two scopes with a no-break space (or a
    tab): the authorization server saw one unknown scope; this server split it on any
    whitespace and granted user/*.rs, so patient A read patient B's Goal (RFC 6749 section
    3.3: scopes are separated by spaces only)."""
    key, _ = world["keys"]
    for separator in ("\u00a0", "\t"):
        token = sign(key, scope=f"patient/*.rs{separator}user/*.rs", patient="pA")
        a = caller(world, token)
        assert a.get(f"/fhir/Goal/{world['pB']['goal']}").status_code == 403
        assert a.get("/fhir/Goal?_summary=count").status_code == 403  # no scope at all


def test_user_and_system_tokens_reach_every_patient(world: dict[str, Any]) -> None:
    user = caller(world, token_for(world, "user"))
    assert user.get(f"/fhir/Goal/{world['pB']['goal']}").status_code == 200
    assert user.get("/fhir/Goal?_summary=count").get_json()["total"] == 2
    denied = user.post(
        "/fhir/Goal",
        plain_goal("pA", "x"),
    )
    assert denied.status_code == 403  # user/*.rs reads only
    assert caller(world, token_for(world, "system")).get("/admin/outbox").status_code == 200
    assert user.get("/admin/outbox").status_code == 403


def test_validate_needs_a_token_but_reads_nothing(world: dict[str, Any]) -> None:
    body = plain_goal("pB", "x")
    assert caller(world, None).post("/fhir/Goal/$validate", body).status_code == 401
    response = caller(world, token_for(world, "patient-A")).post("/fhir/Goal/$validate", body)
    assert response.status_code == 200
    assert B_WORDS not in text_of(response)


def test_conditional_writes_cannot_probe_another_patients_identifiers(
    world: dict[str, Any],
) -> None:
    system = caller(world, token_for(world, "system"))
    identifier = [{"system": "urn:t", "value": "b-1"}]
    tagged = {**plain_goal("pB", "B's tagged goal"), "identifier": identifier}
    assert system.post("/fhir/Goal", tagged).status_code == 201
    a_token = token_for(world, "patient-A")
    own = {**plain_goal("pA", "A's goal"), "identifier": identifier}
    response = world["client"].post(
        "/fhir/Goal",
        json=own,
        headers={
            "Authorization": f"Bearer {a_token}",
            "Content-Type": "application/fhir+json",
            "If-None-Exist": "identifier=urn:t|b-1",
        },
    )
    # the same answer as if B had no such Goal: A's own Goal is created
    assert response.status_code == 201
    assert response.get_json()["subject"]["reference"] == "Patient/pA"


def test_what_patient_a_planted_under_b_s_identifiers_is_never_taken_for_b_s(
    world: dict[str, Any],
) -> None:
    """An outside attacker with A's token stored, in A's own record, a List under the
    identifier B's ward List would have and an Observation under the identifier B's EHR sends.
    $record-what-matters for B then updated A's List into B's record (keeping A's entries) and
    took A's Observation for B's statement, so B's words were never stored as B's: lookups by
    identifier were not confined to the patient being recorded."""
    a = caller(world, token_for(world, "patient-A"))
    system = caller(world, token_for(world, "system"))
    a_statement = world["pA"]["observation"]
    planted_list = {
        "resourceType": "List",
        "status": "current",
        "mode": "snapshot",
        "code": {"coding": [{"system": "http://loinc.org", "code": "81340-2"}]},
        "subject": {"reference": "Patient/pA"},
        "identifier": [{"system": LIST_IDS, "value": "pB|display:ward 7, ysbyty gwynedd"}],
        "entry": [{"item": {"reference": f"Observation/{a_statement}"}}],
    }
    listed = a.post("/fhir/List", planted_list)
    assert listed.status_code == 201, text_of(listed)
    planted = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": "Patient/pA"},
        "identifier": [{"system": "urn:ehr:ids", "value": "S-3001"}],
        "valueString": "A's planted words",
    }
    said = a.post("/fhir/Observation", planted)
    assert said.status_code == 201, text_of(said)

    b_words = "B's real words: home for Christmas"
    body = conversation(statement("s1", b_words, identifier="S-3001"), ranking("s1"))
    recorded = system.post("/fhir/Patient/pB/$record-what-matters", body)
    assert recorded.status_code == 200, text_of(recorded)

    for planted_one in (listed, said):
        kept = system.get(planted_one.headers["Location"].split("/_history/")[0])
        assert kept.get_json()["meta"]["versionId"] == "1"
        assert kept.get_json()["subject"] == {"reference": "Patient/pA"}
    b_statements = system.get("/fhir/Observation?patient=Patient/pB&identifier=urn:ehr:ids|S-3001")
    assert [e["resource"]["valueString"] for e in b_statements.get_json()["entry"]] == [b_words]
    assert b_words not in text_of(a.get("/fhir/Observation?_count=100"))
    assert b_words not in text_of(a.get("/fhir/List?_count=100"))
    assert b_words in text_of(system.get("/fhir/Patient/pB/$what-matters"))
