"""Database outage: the service's own PostgreSQL stops in the middle of the load. Requests get
503 OperationOutcomes with Retry-After (never another 5xx, never a hang), /readyz says not
ready, and when the database returns the service recovers by itself, with no restart and no
acknowledged write lost."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from tests.exchange.instances import Instance
from tests.reliability.conftest import SECONDS
from tests.reliability.own_postgres import OwnPostgres
from tests.reliability.report import Tally
from tests.reliability.traffic import Traffic, add_patients, lost_writes, served


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return True
        except requests.RequestException:
            pass
        time.sleep(0.2)
    return False


def test_a_database_outage_gives_503_and_the_service_recovers(tmp_path: Path, tally: Tally) -> None:
    database = OwnPostgres()
    service: Instance | None = None
    try:
        database.start()
        service = served("outage", tmp_path, WHATMATTERS_DATABASE_URL=database.url)
        base = service.base
        patients = add_patients(base, 5)
        traffic = Traffic(base, tally, patients, seed=3)
        stop = threading.Event()
        clients = threading.Thread(target=traffic.run, args=(6, stop), daemon=True)
        clients.start()
        phase = max(SECONDS / 3, 3.0)
        time.sleep(phase)
        database.stop()
        tally.fault("PostgreSQL stopped (immediate) under load")
        down = requests.get(f"{base}/Goal", timeout=30)
        assert wait_until(
            lambda: requests.get(f"{base}/Goal", timeout=30).status_code == 503, 30
        ), "no 503 while the database was down"
        down = requests.get(f"{base}/Goal", timeout=30)
        assert down.json()["resourceType"] == "OperationOutcome"
        assert down.headers["Retry-After"]
        assert requests.get(f"{service.root}/readyz", timeout=30).status_code == 503
        assert requests.get(f"{service.root}/healthz", timeout=30).status_code == 200
        time.sleep(phase)
        database.start()
        tally.fault("PostgreSQL started again")
        assert wait_until(
            lambda: requests.get(f"{base}/Goal", timeout=30).status_code == 200, 60
        ), "the service did not recover by itself"
        assert requests.get(f"{service.root}/readyz", timeout=30).status_code == 200
        time.sleep(phase)
        stop.set()
        clients.join(timeout=60)
        lost = lost_writes(base, traffic.acked)
        tally.add(lost_writes=len(lost))
    finally:
        if service is not None:
            service.stop()
        database.remove()
    assert traffic.acked.versions
    assert lost == []
    assert not [s for s in traffic.statuses if s >= 500 and s != 503], traffic.statuses
    assert traffic.statuses.get(503, 0) > 0
    assert traffic.unanswered == 0
