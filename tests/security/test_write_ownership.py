"""A patient's token writes only that patient's own resources (issue finding 1).

Rule (README, Authorization): with a ``patient/`` scope, a resource may be created, updated,
patched or deleted only when its patient (``Observation.subject``, ``Goal.subject``,
``List.subject``, ``QuestionnaireResponse.subject``; the Patient itself; every
``Provenance.target``) is the token's patient. Being its ``performer``, ``author`` or
``source`` puts A in a resource's compartment, which lets A read it, but makes A no owner.

Each attack below is made with A's ``patient/*.cruds`` token against B's record, and must be
answered 403 (OperationOutcome ``forbidden`` naming the element) with nothing changed: B's
resources and their versions, B's ``$what-matters``, every resource count, and the outbox.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from service import create_app
from service.config import Config
from service.storage.sql import SqlStore
from tests.conftest import app_config
from tests.priorities.conversations import conversation, goal, ranking, statement
from tests.security.support import (
    B_WORDS,
    Caller,
    caller,
    fresh,
    smart_config,
    text_of,
    token_for,
)

NHS = "https://fhir.nhs.uk/Id/nhs-number"
B_NHS = "9000000017"
INJECTED = "Injected by A"
TYPES = ("Patient", "Observation", "Goal", "List", "QuestionnaireResponse", "Provenance")


@pytest.fixture(scope="module")
def partnered_app(
    database_url: str,
    sql_store: SqlStore,
    tmp_path_factory: pytest.TempPathFactory,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> Iterator[Flask]:
    """The smart-mode app with a partner that is sent every change (so the outbox shows
    whether anything was written), built once for this module."""
    folder = tmp_path_factory.mktemp("ownership")
    partners = folder / "partners.json"
    partner = {"name": "ehr", "base_url": "https://ehr.example/fhir", "send": {"types": TYPES}}
    partners.write_text(json.dumps({"partners": [partner]}))
    config = smart_config(app_config(database_url), folder, keys[0], partners_file=partners)
    application = create_app(config, **folders)
    yield application
    application.extensions["whatmatters.store"].close()


@pytest.fixture
def smart_app(config: Config, partnered_app: Flask) -> Flask:
    """That app on the database ``config`` has just emptied, no requests counted."""
    return fresh(partnered_app)


def observation(subject: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": subject},
        "valueString": INJECTED,
        **extra,
    }


def snapshot(world: dict[str, Any], smart_app: Flask) -> dict[str, Any]:
    """Everything an attack on B must leave as it was, read with a system token."""
    admin = caller(world, token_for(world, "system"))
    state: dict[str, Any] = {}
    for type_ in TYPES:
        everything = admin.get(f"/fhir/{type_}?_count=1000").get_json()
        state[type_] = sorted(
            (e["resource"]["id"], e["resource"]["meta"]["versionId"])
            for e in everything.get("entry", [])
        )
    matters = admin.get("/fhir/Patient/pB/$what-matters").get_json()
    merged, *rest = (e["resource"] for e in matters["entry"])
    # the merged List is made at each request: its items are what must not change
    state["$what-matters"] = [merged["entry"], *(json.dumps(r, sort_keys=True) for r in rest)]
    store = smart_app.extensions["whatmatters.store"]
    with store.transaction(write=False) as tx:
        state["outbox"] = sorted(row.id for row in tx.outbox.rows())
    return state


def assert_refused(response: Any, element: str | None) -> None:
    """403 with an OperationOutcome (forbidden) whose expression names ``element`` (None: a
    refusal before anything is written, naming nothing of B's)."""
    assert response.status_code == 403, text_of(response)
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    issue = outcome["issue"][0]
    assert issue["code"] == "forbidden"
    assert issue.get("expression") == ([element] if element else None), outcome
    assert B_WORDS not in text_of(response)


@pytest.fixture
def a(world: dict[str, Any]) -> Caller:
    """Patient A's app: ``patient/*.cruds`` with ``patient=pA``."""
    return caller(world, token_for(world, "patient-A"))


@pytest.fixture
def unchanged(world: dict[str, Any], smart_app: Flask) -> Iterator[None]:
    """Assert after the test that B's record, B's $what-matters and the outbox are as before."""
    before = snapshot(world, smart_app)
    assert before["outbox"], "the partner must be sent the world's writes"
    yield
    after = snapshot(world, smart_app)
    assert after == before
    assert INJECTED not in json.dumps(after)


Attack = Callable[[Caller, dict[str, Any]], tuple[Any, str | None]]


def _observation_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = observation("Patient/pB", performer=[{"reference": "Patient/pA"}])
    return a.post("/fhir/Observation", body), "Observation.subject"


def questionnaire_response(subject: str, author: str) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "subject": {"reference": subject},
        "author": {"reference": author},
        "item": [{"linkId": "1", "answer": [{"valueString": INJECTED}]}],
    }


def priorities_list(subject: str, source: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "status": "current",
        "mode": "working",
        "title": INJECTED,
        "subject": {"reference": subject},
        "source": {"reference": source},
        **extra,
    }


def _questionnaire_response_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = questionnaire_response("Patient/pB", author="Patient/pA")
    return a.post("/fhir/QuestionnaireResponse", body), "QuestionnaireResponse.subject"


def _list_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    entry = [{"item": {"reference": f"Goal/{world['pB']['goal']}"}}]
    body = priorities_list("Patient/pB", source="Patient/pA", entry=entry)
    return a.post("/fhir/List", body), "List.subject"


def _provenance_over_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = {
        "resourceType": "Provenance",
        "target": [{"reference": "Patient/pA"}, {"reference": f"Goal/{world['pB']['goal']}"}],
        "recorded": "2026-12-01T10:00:00Z",
        "agent": [{"who": {"reference": "Patient/pA"}}],
    }
    return a.post("/fhir/Provenance", body), "Provenance.target[1]"


def _transaction_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    # A's own goal first: the refused entry must take it down with it (all or nothing)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:7b1e0c1e-0f4e-4c39-9d2a-3d5c0f1a0001",
                "resource": {
                    "resourceType": "Goal",
                    "lifecycleStatus": "active",
                    "description": {"text": INJECTED},
                    "subject": {"reference": "Patient/pA"},
                },
                "request": {"method": "POST", "url": "Goal"},
            },
            {
                "fullUrl": "urn:uuid:7b1e0c1e-0f4e-4c39-9d2a-3d5c0f1a0002",
                "resource": observation("Patient/pB", performer=[{"reference": "Patient/pA"}]),
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    return a.post("/fhir", bundle), "Bundle.entry[1].resource.subject"


def _conditional_update_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = observation(
        "Patient/pB",
        performer=[{"reference": "Patient/pA"}],
        identifier=[{"system": "urn:example:a-app", "value": "x1"}],
    )
    response = a.put("/fhir/Observation?identifier=urn:example:a-app|x1", body)
    return response, "Observation.subject"


def _conditional_create_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = observation("Patient/pB", performer=[{"reference": "Patient/pA"}])
    response = a.client.post(
        "/fhir/Observation",
        json=body,
        headers={
            **a._headers({"Content-Type": "application/fhir+json"}),
            "If-None-Exist": "identifier=urn:example:a-app|x2",
        },
    )
    return response, "Observation.subject"


def _patch_moves_subject_to_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    patch = [
        {"op": "replace", "path": "/subject/reference", "value": "Patient/pB"},
        {"op": "replace", "path": "/valueString", "value": INJECTED},
    ]
    response = a.client.patch(
        f"/fhir/Observation/{world['pA']['observation']}",
        data=json.dumps(patch),
        headers=a._headers({"Content-Type": "application/json-patch+json"}),
    )
    return response, "Observation.subject"


def _record_what_matters_for_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str | None]:
    body = conversation(statement("s1", INJECTED), goal("g1", INJECTED, "s1"), ranking("s1"))
    # refused when the operation looks B's Patient up, before it writes anything
    return a.post("/fhir/Patient/pB/$record-what-matters", body), None


def _new_patient_with_a_link(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = {
        "resourceType": "Patient",
        "name": [{"family": INJECTED}],
        "link": [{"other": {"reference": "Patient/pA"}, "type": "seealso"}],
    }
    return a.post("/fhir/Patient", body), "Patient.id"


def _put_another_patient(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = {"resourceType": "Patient", "id": "ghost", "name": [{"family": INJECTED}]}
    return a.put("/fhir/Patient/ghost", body), "Patient.id"


def _observation_of_a_performed_by_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    # performer is a patient-compartment parameter: B's token would read it as B's own
    body = observation("Patient/pA", performer=[{"reference": "Patient/pB"}])
    return a.post("/fhir/Observation", body), "Observation.performer"


def _questionnaire_response_of_a_by_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = questionnaire_response("Patient/pA", author="Patient/pB")
    return a.post("/fhir/QuestionnaireResponse", body), "QuestionnaireResponse.author"


def _list_of_a_from_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = priorities_list("Patient/pA", source="Patient/pB")
    return a.post("/fhir/List", body), "List.source"


def _a_links_itself_to_b(a: Caller, world: dict[str, Any]) -> tuple[Any, str]:
    body = {
        "resourceType": "Patient",
        "id": "pA",
        "name": [{"family": INJECTED}],
        "link": [{"other": {"reference": "Patient/pB"}, "type": "seealso"}],
    }
    return a.put("/fhir/Patient/pA", body), "Patient.link"


ATTACKS: dict[str, Attack] = {
    "Observation subject A, performer B": _observation_of_a_performed_by_b,
    "QuestionnaireResponse subject A, author B": _questionnaire_response_of_a_by_b,
    "List subject A, source B": _list_of_a_from_b,
    "A's Patient linked to B": _a_links_itself_to_b,
    "Observation subject B, performer A": _observation_for_b,
    "QuestionnaireResponse subject B, author A": _questionnaire_response_for_b,
    "List subject B, source A": _list_for_b,
    "Provenance targets A's Patient and B's Goal": _provenance_over_b,
    "transaction Bundle with an Observation for B": _transaction_for_b,
    "conditional update for B": _conditional_update_for_b,
    "conditional create for B": _conditional_create_for_b,
    "PATCH moves A's Observation to B": _patch_moves_subject_to_b,
    "$record-what-matters for B": _record_what_matters_for_b,
    "POST of a new Patient linked to A": _new_patient_with_a_link,
    "PUT of a Patient that is not A": _put_another_patient,
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
@pytest.mark.usefixtures("unchanged")
def test_a_patient_token_cannot_write_into_another_patients_record(
    a: Caller, world: dict[str, Any], attack: Attack
) -> None:
    response, element = attack(a, world)
    assert_refused(response, element)


def test_a_batch_entry_for_b_is_refused_and_the_others_are_answered(
    a: Caller, world: dict[str, Any], smart_app: Flask
) -> None:
    before = snapshot(world, smart_app)
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "resource": observation("Patient/pB", performer=[{"reference": "Patient/pA"}]),
                "request": {"method": "POST", "url": "Observation"},
            },
            {"request": {"method": "GET", "url": "Patient/pA"}},
        ],
    }
    response = a.post("/fhir", bundle)
    assert response.status_code == 200
    first, second = response.get_json()["entry"]
    assert first["response"]["status"].startswith("403")
    assert first["response"]["outcome"]["issue"][0]["expression"] == [
        "Bundle.entry[0].resource.subject"
    ]
    assert second["response"]["status"].startswith("200")
    assert snapshot(world, smart_app) == before


@pytest.fixture
def performed_by_a(world: dict[str, Any]) -> str:
    """B's Observation in which A is the performer (so it is in A's compartment)."""
    admin = caller(world, token_for(world, "system"))
    body = observation("Patient/pB", performer=[{"reference": "Patient/pA"}])
    body["valueString"] = B_WORDS
    response = admin.post("/fhir/Observation", body)
    assert response.status_code == 201
    created: str = response.get_json()["id"]
    return created


def test_being_the_performer_of_bs_observation_does_not_let_a_update_it(
    a: Caller, world: dict[str, Any], performed_by_a: str, smart_app: Flask
) -> None:
    before = snapshot(world, smart_app)
    body = observation("Patient/pB", performer=[{"reference": "Patient/pA"}], id=performed_by_a)
    assert_refused(a.put(f"/fhir/Observation/{performed_by_a}", body), "Observation.subject")
    assert snapshot(world, smart_app) == before


def test_being_the_performer_of_bs_observation_does_not_let_a_delete_it(
    a: Caller, world: dict[str, Any], performed_by_a: str, smart_app: Flask
) -> None:
    before = snapshot(world, smart_app)
    assert_refused(a.delete(f"/fhir/Observation/{performed_by_a}"), "Observation.subject")
    assert snapshot(world, smart_app) == before


@pytest.mark.usefixtures("unchanged")
def test_the_facade_answers_a_for_bs_number_as_for_a_number_nobody_holds(
    a: Caller, world: dict[str, Any]
) -> None:
    def post(number: str) -> Any:
        body = {"statements": [{"key": "s1", "text": INJECTED}], "recordedBy": {"display": "A"}}
        url = f"/api/patients/{NHS.replace('/', '%2F').replace(':', '%3A')}|{number}/priorities"
        return a.client.post(url, json=body, headers=a._headers())

    for_b, for_nobody = post(B_NHS), post("9000000025")
    assert for_b.status_code == for_nobody.status_code
    assert for_b.status_code in (403, 404)
    assert text_of(for_b).replace(B_NHS, "N") == text_of(for_nobody).replace("9000000025", "N")


def test_ingest_needs_a_user_or_system_scope(a: Caller, world: dict[str, Any]) -> None:
    rows = (
        "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
        f"r-1,{B_NHS},2026-11-20 10:15,{INJECTED},,,\n"
    )
    response = a.client.post(
        "/fhir/$ingest?mapping=survey-csv",
        data=rows,
        headers=a._headers({"Content-Type": "text/csv"}),
    )
    assert response.status_code == 403
    assert response.get_json()["issue"][0]["code"] == "forbidden"
    admin = caller(world, token_for(world, "system"))
    assert INJECTED not in text_of(admin.get("/fhir/Observation?patient=Patient/pB"))
    # a name the server does not know is refused for the token too: the 400 listed the
    # server's mappings to a patient app
    unknown = a.client.post(
        "/fhir/$ingest?mapping=nope", data=rows, headers=a._headers({"Content-Type": "text/csv"})
    )
    assert unknown.status_code == 403
    assert "survey-csv" not in unknown.get_data(as_text=True)


def test_a_still_writes_its_own_record(a: Caller, world: dict[str, Any]) -> None:
    own = a.post("/fhir/Observation", observation("Patient/pA"))
    assert own.status_code == 201, text_of(own)
    provenance = {
        "resourceType": "Provenance",
        "target": [
            {"reference": "Patient/pA"},
            {"reference": f"Observation/{own.get_json()['id']}/_history/1"},
            {"reference": f"Goal/{world['pA']['goal']}"},
        ],
        "recorded": "2026-12-01T10:00:00Z",
        "agent": [{"who": {"reference": "Patient/pA"}}],
    }
    assert a.post("/fhir/Provenance", provenance).status_code == 201
    patient = a.get("/fhir/Patient/pA").get_json()
    patient["name"] = [{"family": "Jones", "given": ["Eleri"]}]
    assert a.put("/fhir/Patient/pA", patient).status_code == 200
    assert a.delete(f"/fhir/Observation/{own.get_json()['id']}").status_code == 204
    body = {"statements": [{"key": "s1", "text": "Walk the dog"}], "recordedBy": {"display": "A"}}
    url = f"/api/patients/{NHS.replace('/', '%2F').replace(':', '%3A')}|9000000009/priorities"
    assert a.client.post(url, json=body, headers=a._headers()).status_code == 201
