"""Clients for the reliability tests: concurrent readers, searchers and writers that remember
every write the service acknowledged, and the check that each one is still there, complete."""

from __future__ import annotations

import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.exchange.instances import Instance
from tests.reliability.report import Tally

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
MARK = "urn:whatmatters:reliability"


@dataclass
class Acked:
    """Writes the service acknowledged: (Goal id, version) -> the words written."""

    versions: dict[tuple[str, int], str] = field(default_factory=dict)
    identifiers: dict[str, str] = field(default_factory=dict)  # Goal id -> identifier value
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, id_: str, version: int, words: str, identifier: str) -> None:
        with self.lock:
            self.versions[(id_, version)] = words
            self.identifiers[id_] = identifier


def goal_body(patient: str, words: str, identifier: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "identifier": [{"system": MARK, "value": identifier}],
        "lifecycleStatus": "active",
        "description": {"text": words},
        "subject": {"reference": f"Patient/{patient}"},
    }


class Traffic:
    """Mixed traffic against one base URL until ``stop`` is set."""

    def __init__(self, base: str, tally: Tally, patients: list[str], seed: int) -> None:
        self.base = base
        self.tally = tally
        self.patients = patients
        self.acked = Acked()
        self.statuses: dict[int, int] = {}
        self.unanswered = 0
        self._lock = threading.Lock()
        self.seed = seed

    def run(self, threads: int, stop: threading.Event) -> None:
        workers = [
            threading.Thread(target=self._client, args=(n, stop), daemon=True)
            for n in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=120)

    def _count(self, status: int | None) -> None:
        with self._lock:
            if status is None:
                self.unanswered += 1
            else:
                self.statuses[status] = self.statuses.get(status, 0) + 1
        unavailable = status == 503
        failed = status is not None and status >= 500 and not unavailable
        self.tally.add(requests=1, status_5xx=int(failed), status_503=int(unavailable))

    def _client(self, number: int, stop: threading.Event) -> None:
        rng = random.Random(self.seed * 100 + number)
        session = requests.Session()
        mine: list[tuple[str, dict[str, Any]]] = []
        while not stop.is_set():
            roll = rng.random()
            try:
                if roll < 0.35 or not mine:
                    self._create(session, rng, mine)
                elif roll < 0.5:
                    self._update(session, rng, mine)
                elif roll < 0.8:
                    id_, _ = rng.choice(mine)
                    response = session.get(f"{self.base}/Goal/{id_}", timeout=15)
                    self._count(response.status_code)
                else:
                    patient = rng.choice(self.patients)
                    response = session.get(
                        f"{self.base}/Goal",
                        params={"patient": f"Patient/{patient}", "_count": "20"},
                        timeout=15,
                    )
                    self._count(response.status_code)
            except requests.RequestException:
                self._count(None)  # no answer: the write, if any, was not acknowledged
                time.sleep(0.05)

    def _create(
        self, session: requests.Session, rng: random.Random, mine: list[tuple[str, dict[str, Any]]]
    ) -> None:
        identifier = uuid.uuid4().hex
        words = f"Reliability goal {identifier[:8]}"
        body = goal_body(rng.choice(self.patients), words, identifier)
        response = session.post(f"{self.base}/Goal", json=body, headers=FHIR_JSON, timeout=15)
        self._count(response.status_code)
        if response.status_code == 201:
            stored = response.json()
            self.acked.add(stored["id"], int(stored["meta"]["versionId"]), words, identifier)
            self.tally.add(acknowledged_writes=1)
            mine.append((stored["id"], stored))

    def _update(
        self, session: requests.Session, rng: random.Random, mine: list[tuple[str, dict[str, Any]]]
    ) -> None:
        index = rng.randrange(len(mine))
        id_, current = mine[index]
        next_version = int(current["meta"]["versionId"]) + 1
        words = f"{current['description']['text'].split(' (')[0]} (v{next_version})"
        body = {**current, "description": {"text": words}}
        response = session.put(
            f"{self.base}/Goal/{id_}",
            json=body,
            headers={**FHIR_JSON, "If-Match": f'W/"{current["meta"]["versionId"]}"'},
            timeout=15,
        )
        self._count(response.status_code)
        if response.status_code == 200:
            stored = response.json()
            self.acked.add(
                id_, int(stored["meta"]["versionId"]), words, current["identifier"][0]["value"]
            )
            self.tally.add(acknowledged_writes=1)
            mine[index] = (id_, stored)


def lost_writes(base: str, acked: Acked) -> list[str]:
    """Each acknowledged version that cannot be read back exactly, or whose Goal the identifier
    search does not find (index rows are written with the resource)."""
    session = requests.Session()
    lost = []
    for (id_, version), words in sorted(acked.versions.items()):
        response = session.get(f"{base}/Goal/{id_}/_history/{version}", timeout=30)
        if response.status_code != 200 or response.json()["description"]["text"] != words:
            lost.append(f"Goal/{id_}/_history/{version}: {response.status_code}")
    for id_, identifier in sorted(acked.identifiers.items()):
        found = session.get(
            f"{base}/Goal", params={"identifier": f"{MARK}|{identifier}"}, timeout=30
        ).json()
        if [e["resource"]["id"] for e in found.get("entry", [])] != [id_]:
            lost.append(f"Goal/{id_} is not found by its identifier")
    return lost


def add_patients(base: str, count: int) -> list[str]:
    """Store ``count`` patients; return their ids."""
    ids = []
    for n in range(count):
        id_ = f"rel-{n}"
        body = {"resourceType": "Patient", "id": id_, "name": [{"family": f"Prawf{n}"}]}
        response = requests.put(f"{base}/Patient/{id_}", json=body, headers=FHIR_JSON, timeout=30)
        assert response.status_code in (200, 201), response.text
        ids.append(id_)
    return ids


def served(name: str, folder: Path, workers: int = 1, **env: str) -> Instance:
    """A running `whatmatters serve` for a reliability test (no outbox thread: nothing to
    deliver), ``workers`` gunicorn processes of 4 threads."""
    return Instance(
        name,
        folder,
        env={"WHATMATTERS_OUTBOX_WORKER": "false", **env},
        serve_args=("--workers", str(workers), "--threads", "4"),
    ).start()
