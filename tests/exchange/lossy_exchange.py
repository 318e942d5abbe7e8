"""Conversations of many patients travelling hospital -> GP through a lossy network.

Shared by the slow test (``test_exchange_under_loss.py``) and the benchmark
(``tests/perf/bench_exchange_loss.py``): two real instances on loopback, the hospital's partner
is the GP behind a fault-injecting proxy that drops, resets, refuses (503) or delays a share of
the requests. Each patient's conversation is three statements (in several scripts), two goals,
a ranking, then a re-ranking (the same conversation recorded again in another order). A
patient is complete at the GP when the GP's ``$what-matters`` shows the same ranked words as
the hospital's, each with its Provenance, and the same goals with their status.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.exchange.faultproxy import FaultProxy
from tests.exchange.instances import Instance, partner_entry
from tests.exchange.test_end_to_end import counts, ranked_words
from tests.priorities.conversations import conversation, goal, ranking, statement

MRN = "urn:oid:2.16.840.1.113883.19.5"
# what a lossy network does to a request: lost before the GP, lost after the GP applied it,
# refused by an overloaded gateway, or late
FAULTS: list[Any] = ["drop", "reset", ("status", 503), ("delay", 1.0)]
# the defaults a deployment runs with (poll, lease, backoff base and cap), not the tests' fast ones
DEPLOYED = {
    "WHATMATTERS_OUTBOX_POLL_SECONDS": "0.5",
    "WHATMATTERS_OUTBOX_LEASE_SECONDS": "60",
    "WHATMATTERS_OUTBOX_RETRY_BASE_SECONDS": "1",
    "WHATMATTERS_OUTBOX_RETRY_CAP_SECONDS": "300",
}


def said(number: int) -> list[str]:
    """What patient ``number`` said, exactly as heard."""
    return [
        f"Gweld priodas fy wyres ym Mehefin — #{number}",
        f"Читать внукам по вечерам ({number})",
        f"毎朝、犬のハナと散歩すること 🐕 {number}",
    ]


def talk(number: int, order: tuple[str, ...]) -> dict[str, Any]:
    """Patient ``number``'s conversation, ranked in ``order``."""
    words = said(number)
    return conversation(
        statement("s1", words[0], f"loss-wedding-{number}"),
        statement("s2", words[1], f"loss-reading-{number}"),
        statement("s3", words[2], f"loss-walk-{number}"),
        goal("g1", f"Stand for the photographs ({number})", "s1", priority="high"),
        goal("g2", f"Walk Hana to the park gate ({number})", "s3"),
        ranking(*order),
    )


@dataclass
class Patient:
    """One patient of the run: ids on each side, when recording ended, when it arrived."""

    number: int
    hospital_id: str
    recorded: float = 0.0  # monotonic time the first $record-what-matters answered
    done: float | None = None  # monotonic time the GP showed all of it
    expected: tuple[Any, ...] = ()

    @property
    def seconds(self) -> float:
        assert self.done is not None
        return self.done - self.recorded


@dataclass
class Run:
    """One phase: its patients and what the proxy did meanwhile."""

    loss: float
    patients: list[Patient] = field(default_factory=list)
    faults: int = 0
    requests: int = 0
    attempts: list[int] = field(default_factory=list)  # per row delivered to the GP

    def latencies(self) -> list[float]:
        return [p.seconds for p in self.patients]

    def stats(self) -> dict[str, float]:
        values = sorted(self.latencies())
        p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
        return {
            "p50": statistics.median(values),
            "p95": p95,
            "max": values[-1],
        }


def post(instance: Instance, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST to the instance and return the answer (2xx asserted)."""
    response = requests.post(f"{instance.base}/{path}", json=body, timeout=60)
    assert response.status_code in (200, 201), response.text
    answer: dict[str, Any] = response.json()
    return answer


def view(instance: Instance, patient: str) -> tuple[Any, ...] | None:
    """What a clinician sees for the patient: ranked words (each with its Provenance) and the
    goals with their status; None while something is missing."""
    ranked = ranked_words(instance, patient)
    if ranked is None:
        return None
    goals = instance.search("Goal", patient=f"Patient/{patient}")
    return (
        tuple(ranked),
        tuple(sorted((g["description"]["text"], g["lifecycleStatus"]) for g in goals)),
    )


def gp_id(gp: Instance, number: int) -> str | None:
    """The GP's id of patient ``number``, once it is there."""
    found = gp.search("Patient", identifier=f"{MRN}|LOSS{number:05d}")
    assert len(found) <= 1, f"patient {number} is at the GP {len(found)} times"
    return str(found[0]["id"]) if found else None


def converse(hospital: Instance, number: int) -> Patient:
    """Register patient ``number`` at the hospital, record the conversation, then re-rank it."""
    body = {
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": f"LOSS{number:05d}"}],
        "name": [{"family": "Pritchard", "given": [f"Nia{number}"]}],
    }
    patient = Patient(number, str(post(hospital, "Patient", body)["id"]))
    path = f"Patient/{patient.hospital_id}/$record-what-matters"
    post(hospital, path, talk(number, ("s2", "s1", "s3")))
    patient.recorded = time.monotonic()
    post(hospital, path, talk(number, ("s3", "s1", "s2")))  # the re-ranking
    shown = view(hospital, patient.hospital_id)
    assert shown is not None
    assert shown[0][0] == said(number)[2], shown
    patient.expected = shown
    return patient


def rows_to_gp(hospital: Instance) -> list[dict[str, Any]]:
    """Every outbox row of the hospital for the GP (following the admin view's pages)."""
    rows: list[dict[str, Any]] = []
    after = 0
    while True:
        page = hospital.outbox(_count="1000", after=str(after))
        rows += [r for r in page["rows"] if r["destination"] == "partner:gp"]
        if not page["link"]:
            return rows
        after = page["rows"][-1]["id"]


def run_phase(
    hospital: Instance, gp: Instance, proxy: FaultProxy, numbers: range, loss: float, seed: int
) -> Run:
    """Record every patient's conversation (one after the other, as on a busy ward) with the
    proxy losing ``loss`` of the requests, and time each until complete at the GP."""
    run = Run(loss)
    before_faults, before_requests = proxy.faults_injected, len(proxy.requests)
    known = {r["id"] for r in rows_to_gp(hospital)}
    if loss:
        proxy.fail_every(FAULTS, loss, seed=seed)
    else:
        proxy.clear()
    for number in numbers:
        run.patients.append(converse(hospital, number))
    deadline = time.monotonic() + 600  # bounded: a bug fails the run, never hangs it
    waiting = list(run.patients)
    while waiting:
        for patient in list(waiting):
            at_gp = gp_id(gp, patient.number)
            if at_gp is not None and view(gp, at_gp) == patient.expected:
                patient.done = time.monotonic()
                waiting.remove(patient)
        if waiting and time.monotonic() > deadline:
            raise AssertionError(f"not complete at the GP: {[p.number for p in waiting]}")
        time.sleep(0.1)
    hospital.wait_until_delivered(timeout=600)
    proxy.clear()
    run.faults = proxy.faults_injected - before_faults
    run.requests = len(proxy.requests) - before_requests
    run.attempts = [r.get("attempts", 0) for r in rows_to_gp(hospital) if r["id"] not in known]
    return run


def exactly_once(hospital: Instance, gp: Instance, runs: list[Run]) -> list[str]:
    """What arrived other than exactly once (empty when all is well): per type, the GP holds
    what the hospital holds, each statement and goal once, and no outbox row is dead."""
    problems = []
    here, there = counts(hospital), counts(gp)
    if here != there:
        problems.append(f"counts differ: hospital {here}, GP {there}")
    for run in runs:
        for patient in run.patients:
            for key in ("wedding", "reading", "walk"):
                ident = f"urn:ehr:ids|loss-{key}-{patient.number}"
                found = len(gp.search("Observation", identifier=ident))
                if found != 1:
                    problems.append(f"statement {ident} is at the GP {found} times")
            at_gp = gp_id(gp, patient.number)
            goals = gp.search("Goal", patient=f"Patient/{at_gp}") if at_gp else []
            if len(goals) != 2:
                problems.append(f"patient {patient.number} has {len(goals)} goals at the GP")
    dead = [line for line in hospital.outbox()["summary"] if line["state"] == "dead"]
    if dead:
        problems.append(f"dead rows: {dead}")
    return problems


def start_pair(folder: Path, env: dict[str, str] | None = None) -> tuple[Instance, Instance, Any]:
    """The GP, a proxy in front of it, and the hospital partnered with the GP via the proxy
    (the GP is the hospital's partner back, directly). Returns (hospital, GP, proxy)."""
    gp = Instance("loss_gp", folder, env=env)
    proxy = FaultProxy(gp.root)
    proxy.start()
    hospital = Instance(
        "loss_hospital",
        folder,
        env=env,
        partners=[partner_entry("gp", f"{proxy.url}/fhir", [MRN])],
    )
    gp.set_partners([partner_entry("hospital", hospital.base, [MRN])])
    gp.start()
    hospital.start()
    return hospital, gp, proxy
