"""Priorities travel between care settings: two real instances, "hospital" and "GP", each a
partner of the other, with a fault-injecting proxy in front of the GP.

What is checked is what a clinician at the GP would see: every statement verbatim, in rank
order, with its provenance; counted at the GP, nothing missing and nothing twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.exchange.faultproxy import FaultProxy
from tests.exchange.instances import Instance, partner_entry
from tests.priorities.conversations import conversation, goal, ranking, statement

MRN = "urn:oid:2.16.840.1.113883.19.5"
ORIGIN_TAGS = "http://whatmatters.example/fhir/CodeSystem/origin-instance"
TYPES = ("Patient", "Observation", "Goal", "List", "Provenance")


@pytest.fixture
def gp(tmp_path: Path) -> Iterator[Instance]:
    """The GP practice's instance."""
    instance = Instance("gp", tmp_path)
    yield instance
    instance.stop()


@pytest.fixture
def proxy(gp: Instance) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the GP."""
    with FaultProxy(gp.root) as fault_proxy:
        yield fault_proxy


@pytest.fixture
def hospital(tmp_path: Path, gp: Instance, proxy: FaultProxy) -> Iterator[Instance]:
    """The hospital's instance; its partner is the GP behind the proxy, and the GP's is it."""
    instance = Instance(
        "hospital", tmp_path, partners=[partner_entry("gp", f"{proxy.url}/fhir", [MRN])]
    )
    gp.set_partners([partner_entry("hospital", instance.base, [MRN])])
    gp.start()
    yield instance
    instance.stop()


def add_patient(instance: Instance, number: int) -> str:
    """Register a patient (with a hospital number) and return its id."""
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": f"MRN{number:05d}"}],
        "name": [{"family": "Evans", "given": [f"Gwen{number}"]}],
    }
    response = requests.post(f"{instance.base}/Patient", json=patient, timeout=30)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def words(number: int) -> list[str]:
    """What patient ``number`` said, in several languages, exactly as heard."""
    return [
        f"Seeing my granddaughter's wedding in June — #{number}",
        f"Dal i fynd i'r capel ar y Sul ({number})",
        f"回家过年 🏮 {number}",
    ]


def record(instance: Instance, patient: str, number: int) -> None:
    """Record a what-matters conversation: three statements, one goal, a ranking."""
    said = words(number)
    body = conversation(
        statement("s1", said[0], f"wedding-{number}"),
        statement("s2", said[1], f"chapel-{number}"),
        statement("s3", said[2], f"new-year-{number}"),
        goal("g1", f"Walk 200 m with a frame by June ({number})", "s1", priority="high"),
        ranking("s2", "s1", "s3"),
    )
    response = requests.post(
        f"{instance.base}/Patient/{patient}/$record-what-matters", json=body, timeout=30
    )
    assert response.status_code in (200, 201), response.text


def gp_patient(gp: Instance, number: int) -> str | None:
    """The GP's id for patient ``number``, once it is there."""
    found = gp.search("Patient", identifier=f"{MRN}|MRN{number:05d}")
    assert len(found) <= 1, f"patient {number} is at the GP {len(found)} times"
    return str(found[0]["id"]) if found else None


def ranked_words(instance: Instance, patient: str) -> list[str] | None:
    """The patient's ranked priorities as ``$what-matters`` shows them (their words, in rank
    order), or None while a ranked item has no Provenance."""
    response = requests.get(f"{instance.base}/Patient/{patient}/$what-matters", timeout=30)
    if response.status_code != 200:
        return None
    resources = [e["resource"] for e in response.json().get("entry", [])]
    by_ref = {f"{r['resourceType']}/{r.get('id')}": r for r in resources[1:]}
    provenance_targets = {
        t["reference"]
        for r in resources
        if r["resourceType"] == "Provenance"
        for t in r.get("target", [])
    }
    ranked = []
    for entry in resources[0].get("entry", []):
        reference = entry["item"]["reference"]
        if reference not in by_ref or reference not in provenance_targets:
            return None
        item = by_ref[reference]
        ranked.append(item.get("valueString") or item["description"]["text"])
    return ranked


def expected_words(hospital: Instance, patient: str, number: int) -> list[str]:
    """What the hospital shows for the patient: the ranking recorded there."""
    shown = ranked_words(hospital, patient)
    said = words(number)
    assert shown is not None
    assert shown[:3] == [said[1], said[0], said[2]], shown
    return shown


def seen_at_gp(gp: Instance, number: int, expected: list[str]) -> bool:
    """Whether the GP shows patient ``number``'s priorities verbatim, ranked, with provenance."""
    patient = gp_patient(gp, number)
    return patient is not None and ranked_words(gp, patient) == expected


def counts(instance: Instance) -> dict[str, int]:
    """How many resources of each exchanged type an instance holds."""
    return {
        type_: int(
            requests.get(
                f"{instance.base}/{type_}", params={"_summary": "count"}, timeout=30
            ).json()["total"]
        )
        for type_ in TYPES
    }


def wait_for(check: Any, timeout: float = 60.0) -> float:
    """Wait until ``check()`` holds; return the seconds it took (bounded: fails, never hangs)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not true after {timeout} s: {check}")
        time.sleep(0.05)
    return time.monotonic() - started


def test_conversation_recorded_at_hospital_is_readable_at_gp(
    hospital: Instance, gp: Instance
) -> None:
    hospital.start()
    patient = add_patient(hospital, 1)
    record(hospital, patient, 1)
    expected = expected_words(hospital, patient, 1)
    wait_for(lambda: seen_at_gp(gp, 1, expected))
    hospital.wait_until_delivered()
    assert counts(gp) == counts(hospital)
    # the GP's copies name the hospital as their source and are not sent back to it
    goal_at_gp = gp.search("Goal")[0]
    hospital_uri = hospital.instance_id()
    assert goal_at_gp["meta"]["source"].startswith(f"{hospital_uri}#Goal/")
    assert {"system": ORIGIN_TAGS, "code": hospital_uri.removeprefix("urn:uuid:")} in goal_at_gp[
        "meta"
    ]["tag"]
    gp.wait_until_delivered()
    assert gp.outbox()["summary"] == []
    assert counts(hospital)["Goal"] == 1


def test_every_change_arrives_once_after_downtime_and_flaky_recovery(
    hospital: Instance, gp: Instance, proxy: FaultProxy
) -> None:
    hospital.start()
    proxy.go_down()
    patients = {number: add_patient(hospital, number) for number in range(1, 9)}
    for number, patient in patients.items():
        record(hospital, patient, number)
    # a second conversation for some patients: new versions of the same resources
    for number in (2, 5):
        record(hospital, patients[number], number)
    time.sleep(1.0)
    assert hospital.undelivered() > 0
    before = counts(gp)
    assert before == dict.fromkeys(TYPES, 0)
    proxy.come_back()
    flaky: list[Any] = ["drop", "reset", ("status", 503), ("retry-after", 429, 1), ("status", 502)]
    proxy.fail_every(flaky, 0.15, seed=7)
    hospital.wait_until_delivered(timeout=180)
    proxy.clear()
    for number, patient in patients.items():
        expected = expected_words(hospital, patient, number)
        assert seen_at_gp(gp, number, expected), f"patient {number} is not complete at the GP"
    assert counts(gp) == counts(hospital)
    dead = [line for line in hospital.outbox()["summary"] if line["state"] == "dead"]
    assert dead == []
    assert proxy.faults_injected > 0


def test_sigkill_of_the_worker_mid_delivery_loses_and_duplicates_nothing(
    hospital: Instance, gp: Instance, proxy: FaultProxy
) -> None:
    hospital.start(WHATMATTERS_OUTBOX_WORKER="false")
    patients = {number: add_patient(hospital, number) for number in range(1, 6)}
    for number, patient in patients.items():
        record(hospital, patient, number)
    proxy.fail_every(("delay", 0.3), 1.0, seed=1)  # keep deliveries in flight
    for kill in range(1, 4):
        seen = 3 * kill
        hospital.start_worker()
        wait_for(lambda seen=seen: len(proxy.requests) > seen, timeout=60)
        hospital.kill_worker()
    assert hospital.undelivered() > 0
    proxy.clear()
    hospital.start_worker()
    hospital.wait_until_delivered(timeout=180)
    for number, patient in patients.items():
        assert seen_at_gp(gp, number, expected_words(hospital, patient, number))
    assert counts(gp) == counts(hospital)


def test_rejected_resource_is_dead_with_reason_then_retry_delivers_it(
    hospital: Instance, gp: Instance
) -> None:
    # the GP requires its own profile on Goals; the hospital sends a plain Goal
    gp.stop()
    required = "Goal=http://whatmatters.example/fhir/StructureDefinition/wmty-personal-goal"
    gp.start(WHATMATTERS_REQUIRED_PROFILES=required)
    hospital.start()
    patient = add_patient(hospital, 1)
    plain_goal = {
        "resourceType": "Goal",
        "identifier": [{"system": "urn:ehr:goals", "value": "G-1"}],
        "lifecycleStatus": "active",
        "description": {"text": "Keep living at home with my cat"},
        "subject": {"reference": f"Patient/{patient}"},
    }
    response = requests.post(f"{hospital.base}/Goal", json=plain_goal, timeout=30)
    assert response.status_code == 201, response.text
    hospital.wait_until_delivered()
    status = hospital.cli("outbox", "status")
    assert status.returncode == 0, status.stderr
    dead_lines = [line for line in status.stdout.splitlines() if line.startswith("#")]
    assert len(dead_lines) == 1, status.stdout
    assert "dead partner:gp resource Goal/" in dead_lines[0]
    assert "status=422" in dead_lines[0]
    assert "wmty-personal-goal" in dead_lines[0]  # the GP's own OperationOutcome
    assert gp.search("Goal") == []
    # the GP's operator drops the requirement; the hospital's operator retries
    gp.stop()
    gp.start(WHATMATTERS_REQUIRED_PROFILES="")
    retried = hospital.cli("outbox", "retry", "--partner", "gp")
    assert retried.returncode == 0, retried.stderr
    assert "1 rows queued again" in retried.stdout, retried.stdout
    hospital.wait_until_delivered()
    goals = gp.search("Goal", identifier="urn:ehr:goals|G-1")
    assert [g["description"]["text"] for g in goals] == ["Keep living at home with my cat"]
    summary = {(x["destination"], x["state"]): x["rows"] for x in hospital.outbox()["summary"]}
    assert ("partner:gp", "dead") not in summary


def test_outbox_admin_endpoint_lists_and_discards(hospital: Instance, proxy: FaultProxy) -> None:
    hospital.start()
    proxy.go_down()
    add_patient(hospital, 1)
    # the worker may hold the row in flight for a moment (its failed attempt at the downed
    # partner); between attempts it waits pending
    deadline = time.monotonic() + 20
    view = hospital.outbox(state="pending")
    while not view["rows"] and time.monotonic() < deadline:
        time.sleep(0.05)
        view = hospital.outbox(state="pending")
    assert [r["res_type"] for r in view["rows"]] == ["Patient"], hospital.outbox()
    row_id = view["rows"][0]["id"]
    refused = requests.post(f"{hospital.root}/admin/outbox/discard", timeout=10)
    assert refused.status_code == 400
    assert refused.json()["resourceType"] == "OperationOutcome"
    discarded = requests.post(
        f"{hospital.root}/admin/outbox/discard", params={"id": str(row_id)}, timeout=10
    )
    assert discarded.json() == {"discarded": [row_id]}
    assert hospital.outbox(id=str(row_id))["rows"][0]["state"] == "discarded"
    assert json.loads(json.dumps(hospital.outbox()["summary"]))[0]["state"] == "discarded"
