"""Deliver what the partner can take, as its CapabilityStatement says
(https://hl7.org/fhir/R4/capabilitystatement.html), and never call a row done without a 2xx
for its write.

A partner whose CapabilityStatement offers Patient, Observation, Provenance and
DocumentReference (no Goal, no List) gets the statements, the Provenance and the "What
matters to me" document; references to what it cannot hold become identifier references or
display text, never a search for a type it does not serve. A partner with no
CapabilityStatement gets nothing marked done.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from service import build_worker, wire_fhir_service
from service.config import Config
from service.exchange.partners import Partner, load_partners
from service.exchange.summary import summary_text
from service.exchange.worker import Worker
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.priorities.operations import WhatMatters
from service.storage.memory import MemoryStore
from tests.direct import Direct
from tests.exchange.conftest import MRN
from tests.exchange.fakefhir import FakeFhir
from tests.priorities.conversations import conversation, goal, ranking, statement

BASE = "http://hospital.example/fhir"
SENT = ["Patient", "Observation", "Goal", "List", "Provenance"]


@pytest.fixture
def hospital(tmp_path: Path) -> Direct:
    """A hospital (in memory) sending everything of its patients to one partner, the GP."""
    path = tmp_path / "partners.json"
    path.write_text(
        json.dumps(
            {
                "partners": [
                    {
                        "name": "gp",
                        "base_url": "http://gp.example/fhir",
                        "send": {"types": SENT, "patient_identifier_systems": [MRN]},
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    service = wire_fhir_service(Config(partners_file=path, public_base_url=BASE), MemoryStore())
    return Direct(service)


def worker_for(fhir: FhirService, partner_server: FakeFhir, config: Config) -> Worker:
    built = build_worker(config, fhir, (partner_server.partner,))
    return Worker(
        fhir,
        (partner_server.partner,),
        BASE,
        lambda _partner: partner_server,
        summarise=built.summarise,
    )


def the_partner(fhir: FhirService) -> Partner:
    feed = fhir.listeners[0]
    partners: tuple[Partner, ...] = feed.partners  # type: ignore[attr-defined]
    return partners[0]


def record_conversation(fhir: FhirService) -> None:
    fhir.update(
        "Patient",
        "p1",
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": MRN, "value": "M1"}],
            "name": [{"family": "Okafor"}],
        },
    )
    body = conversation(
        statement("s1", "Walking Bramble, my dog, every morning", "walk"),
        statement("s2", "Singing in the chapel choir", "choir"),
        goal("g1", "Walk to the end of the lane and back by spring", "s1", priority="high"),
        ranking("g1", "s1", "s2"),
    )
    result = WhatMatters(fhir).record(Actor.system(), "p1", body, BASE)
    assert result.status == 200


def rows(fhir: FhirService) -> list[tuple[str, str, str | None]]:
    return [
        (r.res_type, r.state, r.last_error)
        for r in fhir.read_only(lambda tx: tx.outbox.rows(limit=1000))
    ]


def test_a_partner_without_goals_or_lists_gets_statements_provenance_and_the_document(
    hospital: FhirService,
) -> None:
    config = Config(public_base_url=BASE)
    gp = FakeFhir(
        the_partner(hospital), ("Patient", "Observation", "Provenance", "DocumentReference")
    )
    record_conversation(hospital)
    worker = worker_for(hospital, gp, config)
    worker.drain()
    states = rows(hospital)
    assert {state for _, state, _ in states} == {"done"}, states
    said = sorted(o["valueString"] for o in gp.of_type("Observation"))
    assert said == ["Singing in the chapel choir", "Walking Bramble, my dog, every morning"]
    (provenance,) = gp.of_type("Provenance")
    (document,) = gp.of_type("DocumentReference")
    text = next(
        base64.b64decode(c["attachment"]["data"]).decode("utf-8")
        for c in document["content"]
        if c["attachment"]["contentType"].startswith("text/plain")
    )
    assert "Walk to the end of the lane and back by spring" in text  # the goal, in words
    # the Provenance's targets: the statements as the GP's own, the goal and the List (types
    # the GP cannot hold) by identifier, never as a URL to a resource the GP cannot follow
    targets = provenance["target"]
    observation_ids = {f"Observation/{o['id']}" for o in gp.of_type("Observation")}
    literal = {t["reference"] for t in targets if "reference" in t}
    assert literal == observation_ids
    by_identifier = sorted(t["type"] for t in targets if "identifier" in t)
    assert by_identifier == ["Goal", "List"]
    # the recorder (a Practitioner this service does not hold) is kept as its display
    agents = [a["who"] for a in provenance["agent"]]
    assert {"display": "Nurse Ada Okafor"} in agents
    # nothing was asked of the GP about types it does not offer
    asked = [path for method, path in gp.calls if method == "GET"]
    assert not [p for p in asked if p.startswith(("Goal", "List"))], asked


def test_a_partner_without_a_capability_statement_never_shows_done(
    hospital: FhirService,
) -> None:
    config = Config(public_base_url=BASE)
    gp = FakeFhir(the_partner(hospital), None)
    record_conversation(hospital)
    worker = worker_for(hospital, gp, config)
    worker.drain()
    states = rows(hospital)
    assert states
    assert all(state == "dead" for _, state, _ in states), states
    assert all("no usable CapabilityStatement" in (error or "") for _, _, error in states)
    assert [method for method, _ in gp.calls if method != "GET"] == []


def test_a_resource_is_not_sent_back_to_the_instance_it_came_from(
    hospital: FhirService,
) -> None:
    config = Config(public_base_url=BASE)
    gp = FakeFhir(the_partner(hospital), ("Patient", "Observation", "Goal", "List"))
    gp_instance = "5b8f7d6e-0000-4000-8000-00000000abcd"
    capability = gp.capability()
    capability["implementation"] = {
        "url": "http://gp.example/fhir",
        "extension": [
            {
                "url": "http://whatmatters.example/fhir/StructureDefinition/instance-identifier",
                "valueUri": f"urn:uuid:{gp_instance}",
            }
        ],
    }
    gp.capability = lambda: capability  # type: ignore[method-assign]
    hospital.update(
        "Patient",
        "p1",
        {"resourceType": "Patient", "id": "p1", "identifier": [{"system": MRN, "value": "M1"}]},
    )
    # the GP's goal, as the GP's own instance delivered it here, under any URL
    from_gp: dict[str, Any] = {
        "resourceType": "Goal",
        "meta": {
            "source": f"urn:uuid:{gp_instance}#Goal/g7",
            "tag": [
                {
                    "system": "http://whatmatters.example/fhir/CodeSystem/origin-instance",
                    "code": gp_instance,
                }
            ],
        },
        "identifier": [{"system": "urn:gp:goals", "value": "g7"}],
        "lifecycleStatus": "active",
        "description": {"text": "Keep my allotment"},
        "subject": {"reference": "Patient/p1"},
    }
    hospital.create("Goal", from_gp)
    # with send.origin: local (the default) the GP's goal is not queued for anyone
    assert [t for t, _, _ in rows(hospital)] == ["Patient"]
    worker = worker_for(hospital, gp, config)
    worker.drain()
    assert gp.of_type("Goal") == []
    # relayed (send.origin: any), it still never goes back to the GP, whatever its URL
    relaying = Partner(
        name="gp",
        base_url="http://localhost:9/fhir",
        send_types=tuple(SENT),
        patient_identifier_systems=(MRN,),
        send_origin="any",
    )
    feed = hospital.listeners[0]
    feed.partners = (relaying,)  # type: ignore[attr-defined]
    goal_id = _only_goal_id(hospital)
    changed = {**from_gp, "id": goal_id, "description": {"text": "Keep my allotment, with help"}}
    hospital.update("Goal", goal_id, changed)
    gp.partner = relaying
    worker = Worker(hospital, (relaying,), BASE, lambda _partner: gp)
    worker.drain()
    assert gp.of_type("Goal") == []
    skipped = [(t, s, e) for t, s, e in rows(hospital) if t == "Goal"]
    assert [s for _, s, _ in skipped] == ["discarded"], skipped
    assert "not sent back" in (skipped[0][2] or "")


def _only_goal_id(fhir: FhirService) -> str:
    (stored,) = [
        s
        for s in fhir.read_only(
            lambda tx: tx.resources.read_many(tx.resources.current_keys(None, 100))
        )
        if s.type == "Goal"
    ]
    return stored.id


def test_partners_file_origin_setting(tmp_path: Path) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(
        "partners:\n  - name: gp\n    base_url: http://gp.example/fhir\n"
        "    send: {types: [Goal], origin: any}\n"
        "  - name: home\n    base_url: http://home.example/fhir\n    send: {types: [Goal]}\n",
        encoding="utf-8",
    )
    gp, home = load_partners(path)
    assert (gp.send_origin, home.send_origin) == ("any", "local")
    path.write_text(
        "partners:\n  - name: gp\n    base_url: http://gp.example/fhir\n"
        "    send: {types: [Goal], origin: everything}\n",
        encoding="utf-8",
    )
    from service.exchange.partners import PartnerConfigError

    with pytest.raises(PartnerConfigError, match=r"partners\.yaml:4.*origin"):
        load_partners(path)


def test_goal_status_recorded_again_reaches_the_partner_and_its_document(
    hospital: FhirService,
) -> None:
    config = Config(public_base_url=BASE)
    gp = FakeFhir(the_partner(hospital), ("Patient", "Observation", "Goal", "List", "Provenance"))
    record_conversation(hospital)
    completed = conversation(
        statement("s1", "Walking Bramble, my dog, every morning", "walk"),
        goal(
            "g1",
            "Walk to the end of the lane and back by spring",
            "s1",
            priority="high",
            status="completed",
        ),
        recorded="2027-03-20T10:00:00Z",
    )
    answer = WhatMatters(hospital).record(Actor.system(), "p1", completed, BASE)
    assert answer.status == 200
    # the answer says the goal changed: its entry is an update (200) to a new version
    goal_entries = [e for e in answer.body["entry"] if e["resource"]["resourceType"] == "Goal"]
    assert [e["response"]["status"][:3] for e in goal_entries] == ["200"]
    changed = goal_entries[0]["resource"]
    assert changed["meta"]["versionId"] == "2"
    assert changed["lifecycleStatus"] == "completed"
    assert changed["statusDate"] == "2027-03-20"
    assert changed["achievementStatus"]["coding"][0]["code"] == "achieved"
    assert changed["description"]["text"] == "Walk to the end of the lane and back by spring"
    worker_for(hospital, gp, config).drain()
    (at_gp,) = gp.of_type("Goal")
    assert at_gp["lifecycleStatus"] == "completed"
    # the "What matters to me" document a documents-only partner gets says so too
    name, items = build_worker(config, hospital, ()).summarise("p1")  # type: ignore[misc]
    text = summary_text(name, items, "2027-03-20T10:00:00Z")
    assert "(goal, completed)" in text


def test_recording_the_same_goal_status_again_changes_nothing(hospital: FhirService) -> None:
    record_conversation(hospital)
    same = conversation(
        statement("s1", "Walking Bramble, my dog, every morning", "walk"),
        goal("g1", "Walk to the end of the lane and back by spring", "s1", status="active"),
    )
    before = hospital.read_only(
        lambda tx: tx.resources.read_many(tx.resources.current_keys(None, 100))
    )
    WhatMatters(hospital).record(Actor.system(), "p1", same, BASE)
    goals = [
        s
        for s in hospital.read_only(
            lambda tx: tx.resources.read_many(tx.resources.current_keys(None, 100))
        )
        if s.type == "Goal"
    ]
    assert [g.version for g in goals] == [1]
    assert len(before) > 0


def test_a_row_waiting_on_a_dead_row_is_blocked_and_retry_sends_both(
    hospital: FhirService,
) -> None:
    config = Config(public_base_url=BASE)
    gp = FakeFhir(the_partner(hospital), ("Patient", "Observation", "Goal", "List", "Provenance"))
    refuse_goals = True
    answer = gp.request

    def refusing(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if refuse_goals and method != "GET" and path.startswith("Goal"):
            from service.exchange.partner_client import Answer

            return Answer(422, {}, {"resourceType": "OperationOutcome", "issue": []})
        return answer(method, path, *args, **kwargs)

    gp.request = refusing  # type: ignore[method-assign]
    record_conversation(hospital)
    worker_for(hospital, gp, config).drain()
    states = {t: s for t, s, _ in rows(hospital)}
    assert states["Goal"] == "dead"
    # the List names the goal: it waits for it, blocked (not pending for days), saying why
    blocked = [(t, e) for t, s, e in rows(hospital) if s == "blocked"]
    assert [t for t, _ in blocked] == ["List"]
    assert "which is dead" in (blocked[0][1] or "")
    # the partner takes goals again; the operator retries the dead row: both go
    refuse_goals = False
    from service.exchange import queue

    dead_ids = [r.id for r in hospital.read_only(lambda tx: tx.outbox.rows(states=("dead",)))]
    again = hospital.run(lambda tx: queue.retry(tx, hospital.clock(), dead_ids, None))
    assert {r.res_type for r in again} == {"Goal", "List"}
    assert all(r.attempts == 1 for r in again)  # the attempts made are kept
    worker_for(hospital, gp, config).drain()
    assert {s for _, s, _ in rows(hospital)} == {"done"}
    assert len(gp.of_type("Goal")) == 1


def test_start_up_warns_when_a_partner_names_another_base_or_has_no_statement(
    hospital: FhirService, caplog: pytest.LogCaptureFixture
) -> None:
    aliased = FakeFhir(the_partner(hospital), ("Patient", "Goal"))
    statement = aliased.capability()
    statement["implementation"] = {"description": "GP", "url": "http://127.0.0.1:8232/fhir"}
    aliased.capability = lambda: statement  # type: ignore[method-assign]
    with caplog.at_level("WARNING", logger="whatmatters.exchange"):
        Worker(hospital, (aliased.partner,), BASE, lambda _p: aliased).check_partners()
    assert [r.getMessage() for r in caplog.records] == [
        "partner gp calls its base http://127.0.0.1:8232/fhir, the partners file says "
        "http://gp.example/fhir"
    ]
    caplog.clear()
    silent = FakeFhir(the_partner(hospital), None)
    with caplog.at_level("WARNING", logger="whatmatters.exchange"):
        Worker(hospital, (silent.partner,), BASE, lambda _p: silent).check_partners()
    assert len(caplog.records) == 1
    assert "no usable CapabilityStatement" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    "implementation",
    [
        {"extension": "urn:uuid:x"},
        {"extension": ["urn:uuid:x", {"url": 5}]},
        {"url": 7},
        "a text",
    ],
)
def test_a_malformed_implementation_names_no_instance(implementation: Any) -> None:
    from service.exchange.channels.partner_api import capability_of

    capability = capability_of(
        {
            "resourceType": "CapabilityStatement",
            "implementation": implementation,
            "rest": [{"mode": "server", "resource": [{"type": "Goal"}]}],
        }
    )
    assert capability.usable
    assert (capability.instance, capability.base) == (None, None)
