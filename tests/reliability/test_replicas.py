"""Scale out: three `whatmatters serve` replicas (two workers each, each delivering the outbox)
on one PostgreSQL and one Redis, reached in turn through a round-robin client, under a mixed
load of writes, paged searches across replicas and `$record-what-matters`, with a GP instance
receiving deliveries; one replica is SIGKILLed mid-load and started again.

Afterwards: every acknowledged write is present, every delivery was made exactly once, every
paged search saw each match exactly once, the rate limit held across replicas (Redis), and the
summed metrics of each replica equal the requests it was sent. PostgreSQL only: replicas share
one database server, which an SQLite file is not meant for."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from requests.adapters import HTTPAdapter

from tests.exchange.instances import FAST_OUTBOX, Instance, database_for, partner_entry
from tests.priorities.conversations import conversation, ranking, statement
from tests.reliability.conftest import SECONDS
from tests.reliability.report import Tally
from tests.reliability.traffic import FHIR_JSON, MARK, goal_body

PG_ENV = "WHATMATTERS_TEST_DATABASE_URL"
MRN = "urn:oid:2.16.840.1.113883.19.5"
REDIS_URL = "redis://127.0.0.1:6379/14"
LIMIT = 120  # requests a minute per network address, across all replicas
WRITES = 15  # Goals each writer creates at most: enough to cross the kill, few enough to deliver
ADDRESSES = [f"127.0.0.{n}" for n in range(10, 90)]  # load clients spread over these

pytestmark = pytest.mark.skipif(
    not os.environ.get(PG_ENV),
    reason="replicas share a PostgreSQL server (run with " + PG_ENV + ")",
)


class _From(HTTPAdapter):
    """Connections from one loopback source address (each address has its own limit)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def session_from(address: str) -> requests.Session:
    session = requests.Session()
    session.mount("http://", _From(address))
    return session


class RoundRobin:
    """Sends each request to the next replica; counts what each replica was sent."""

    def __init__(self, replicas: list[Instance]) -> None:
        self.replicas = replicas
        self._next = itertools.cycle(range(len(replicas)))
        self.sent = [0] * len(replicas)
        self.lock = threading.Lock()
        self.statuses: dict[int, int] = {}

    def pick(self) -> int:
        with self.lock:
            index = next(self._next)
            self.sent[index] += 1
            return index

    def call(self, session: requests.Session, method: str, path: str, **kw: Any) -> Any:
        index = self.pick()
        try:
            answer = session.request(method, self.replicas[index].base + path, timeout=30, **kw)
        except requests.RequestException:
            return None  # a replica being killed: not acknowledged
        with self.lock:
            self.statuses[answer.status_code] = self.statuses.get(answer.status_code, 0) + 1
        return answer


def counted_requests(instance: Instance) -> float:
    text = requests.get(f"{instance.root}/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("whatmatters_requests_total{")
    )


def kill_tree(instance: Instance) -> None:
    assert instance.process is not None
    found = subprocess.run(
        ["pgrep", "-P", str(instance.process.pid)], capture_output=True, text=True, check=False
    )
    for pid in [instance.process.pid, *map(int, found.stdout.split())]:
        os.kill(pid, signal.SIGKILL)
    instance.process.wait(timeout=30)
    instance.process = None


def test_three_replicas_keep_every_promise(tmp_path: Path, tally: Tally) -> None:
    store = redis.Redis.from_url(REDIS_URL)
    store.flushdb()
    gp = Instance("gp", tmp_path).start()
    shared = database_for("replicas", tmp_path)
    env = {
        **FAST_OUTBOX,
        "WHATMATTERS_DATABASE_URL": shared,
        "WHATMATTERS_REDIS_URL": REDIS_URL,
        "WHATMATTERS_RATE_LIMIT_PER_MINUTE": str(LIMIT),
        "WHATMATTERS_RATE_LIMIT_BURST": str(LIMIT),
    }
    replicas = [
        Instance(f"replica{n}", tmp_path, env=env, serve_args=("--workers", "2", "--threads", "4"))
        for n in range(3)
    ]
    for replica in replicas:
        replica.set_partners([partner_entry("gp", gp.base, [MRN])])
        replica.start()
    try:
        rr = RoundRobin(replicas)
        baseline = [counted_requests(r) for r in replicas]
        rr.sent = [0, 0, 0]
        setup = session_from("127.0.0.3")
        patients = []
        for n in range(4):
            body = {
                "resourceType": "Patient",
                "id": f"rep-{n}",
                "identifier": [{"system": MRN, "value": f"REP-{n}"}],
                "name": [{"family": f"Replica{n}"}],
            }
            answer = rr.call(setup, "PUT", f"/Patient/rep-{n}", json=body, headers=FHIR_JSON)
            assert answer is not None
            assert answer.status_code in (200, 201), answer.text
            patients.append(f"rep-{n}")

        acked: dict[str, tuple[str, str]] = {}  # identifier -> (Goal id, words)
        pages_inconsistent: list[str] = []
        stop = threading.Event()
        lock = threading.Lock()
        addresses = itertools.cycle(ADDRESSES)

        def writer(seed: int) -> None:
            sessions = [session_from(next(addresses)) for _ in range(10)]
            for n in range(WRITES):
                if stop.is_set():
                    return
                time.sleep(0.1)
                identifier = f"w{seed}-{n}-{uuid.uuid4().hex[:6]}"
                words = f"Replica words {identifier} — bore da 🌿"
                patient = patients[n % len(patients)]
                answer = rr.call(
                    sessions[n % 10],
                    "POST",
                    "/Goal",
                    json={**goal_body(patient, words, identifier)},
                    headers=FHIR_JSON,
                )
                if answer is not None and answer.status_code == 201:
                    with lock:
                        acked[identifier] = (answer.json()["id"], words)

        def pager(seed: int) -> None:
            sessions = [session_from(next(addresses)) for _ in range(10)]
            while not stop.is_set():
                with lock:
                    known_before = {goal_id for goal_id, _ in acked.values()}
                first = rr.call(sessions[0], "GET", f"/Goal?identifier={MARK}|&_count=7")
                if first is None or first.status_code != 200:
                    first = rr.call(sessions[0], "GET", "/Goal?_count=7")
                if first is None or first.status_code != 200:
                    continue
                seen: list[str] = []
                page: Any = first.json()
                hops = 0
                while page is not None:
                    seen += [e["resource"]["id"] for e in page.get("entry", [])]
                    link = next(
                        (x["url"] for x in page.get("link", []) if x["relation"] == "next"), None
                    )
                    if link is None or hops > 400:
                        break
                    hops += 1
                    path = link.split("/fhir", 1)[1]
                    answer = None
                    for session in sessions[1:] * 3:  # another replica serves the next page
                        answer = rr.call(session, "GET", path)
                        if answer is not None and answer.status_code == 200:
                            break
                    page = (
                        answer.json() if answer is not None and answer.status_code == 200 else None
                    )
                    if page is None:
                        pages_inconsistent.append(f"pager {seed}: a next page was not served")
                if len(seen) != len(set(seen)):
                    pages_inconsistent.append(f"pager {seed}: a match seen twice")
                missing = known_before - set(seen)
                if page is not None and missing:
                    pages_inconsistent.append(
                        f"pager {seed}: {len(missing)} earlier matches missing"
                    )

        def recorder() -> None:
            sessions = [session_from(next(addresses)) for _ in range(10)]
            for n in itertools.count():
                if stop.is_set():
                    return
                words = f"Recorded on a replica, round {n}"
                body = conversation(statement("s1", words), ranking("s1"))
                rr.call(
                    sessions[n % 10],
                    "POST",
                    f"/Patient/{patients[n % len(patients)]}/$record-what-matters",
                    json=body,
                    headers=FHIR_JSON,
                )
                time.sleep(1.0)

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
        threads += [threading.Thread(target=pager, args=(n,)) for n in range(2)]
        threads.append(threading.Thread(target=recorder))
        for thread in threads:
            thread.start()
        phase = max(SECONDS / 2, 4.0)
        time.sleep(phase)
        killed = replicas[2]
        kill_tree(killed)
        tally.fault("SIGKILL of replica2 (master and workers) under load")
        time.sleep(phase / 2)
        killed.start()
        time.sleep(phase)
        stop.set()
        for thread in threads:
            thread.join(timeout=120)

        # the rate limit held across replicas: one address, one count, wherever it lands
        probe = session_from("127.0.0.2")
        allowed = sum(
            1
            for _ in range(LIMIT + 40)
            if (a := rr.call(probe, "GET", "/Goal?_count=1")) is not None and a.status_code == 200
        )

        # metrics first (the checks below also reach replica0): each replica that was not
        # killed counted exactly what it was sent, whichever of its workers answered
        counted = [counted_requests(r) - b for r, b in zip(replicas, baseline, strict=True)]

        # deliveries: every outbox settles, then the GP holds each acknowledged Goal once
        deadline = time.monotonic() + 300
        while replicas[0].undelivered() and time.monotonic() < deadline:
            time.sleep(2)  # slowly: this address has its limit too
        outbox = replicas[0].outbox()["summary"]
        # the checks come from addresses the load never used, so no limit stands in their way
        readers = itertools.cycle([session_from(f"127.0.2.{n}") for n in range(1, 250)])
        lost, duplicated = [], []
        for identifier, (goal_id, words) in sorted(acked.items()):
            here = next(readers).get(f"{replicas[0].base}/Goal/{goal_id}", timeout=30)
            if here.status_code != 200 or here.json()["description"]["text"] != words:
                lost.append(f"{identifier}: {here.status_code}")
            there = requests.get(
                f"{gp.base}/Goal", params={"identifier": f"{MARK}|{identifier}"}, timeout=30
            ).json()
            if len(there.get("entry", [])) != 1:
                duplicated.append(f"{identifier}: {len(there.get('entry', []))} at the GP")

        report = (
            f"requests {sum(rr.sent)}, kills 1, acknowledged writes {len(acked)}, "
            f"lost {len(lost)}, "
            f"deliveries missing or duplicated {len(duplicated)}, pages inconsistent "
            f"{len(pages_inconsistent)}, rate limit allowed {allowed} of {LIMIT}; outbox {outbox}"
        )
        print(report)
        tally.add(
            requests=sum(rr.sent),
            acknowledged_writes=len(acked),
            lost_writes=len(lost),
            status_5xx=sum(v for k, v in rr.statuses.items() if k >= 500),
        )
        assert len(acked) > 20, report
        assert lost == [], lost[:5]
        assert duplicated == [], duplicated[:5]
        assert pages_inconsistent == [], pages_inconsistent[:5]
        assert LIMIT - 5 <= allowed <= LIMIT, report  # never above the limit; within one burst
        assert counted[:2] == [float(n) for n in rr.sent[:2]], (counted, rr.sent)
        assert not [k for k in rr.statuses if k >= 500 and k != 503], rr.statuses
    finally:
        for instance in [*replicas, gp]:
            instance.stop()
        store.flushdb()
