"""Crash: SIGKILL gunicorn workers, then the master, while clients write; restart; every
acknowledged write is present and complete (its version readable, found by its identifier),
and nothing is half-written (every stored Goal is whole and indexed)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import requests

from tests.reliability.conftest import SECONDS
from tests.reliability.report import Tally
from tests.reliability.traffic import MARK, Traffic, add_patients, lost_writes, served


def children(pid: int) -> list[int]:
    """The gunicorn workers of a master process."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in found.stdout.split()]


def test_killed_workers_and_master_lose_no_acknowledged_write(tmp_path: Path, tally: Tally) -> None:
    service = served("crash", tmp_path, workers=2)
    try:
        patients = add_patients(service.base, 5)
        traffic = Traffic(service.base, tally, patients, seed=11)
        stop = threading.Event()
        clients = threading.Thread(target=traffic.run, args=(8, stop), daemon=True)
        clients.start()
        phase = max(SECONDS / 4, 2.0)
        for _ in range(2):  # gunicorn replaces a killed worker
            time.sleep(phase)
            assert service.process is not None
            workers = children(service.process.pid)
            assert workers
            os.kill(workers[0], signal.SIGKILL)
            tally.fault(f"SIGKILL gunicorn worker {workers[0]}")
        time.sleep(phase)
        assert service.process is not None
        master = service.process.pid
        workers = children(master)
        for pid in [master, *workers]:
            os.kill(pid, signal.SIGKILL)  # the whole server dies at once
        tally.fault(f"SIGKILL gunicorn master {master} and its {len(workers)} workers")
        service.process.wait(timeout=30)
        service.process = None
        time.sleep(1.0)  # clients meet a closed port meanwhile
        service.start()
        time.sleep(phase)
        stop.set()
        clients.join(timeout=60)
        lost = lost_writes(service.base, traffic.acked)
        tally.add(lost_writes=len(lost))
        half_written = whole_and_indexed(service.base)
    finally:
        service.stop()
    assert traffic.acked.versions
    assert lost == []
    assert half_written == []
    assert not [s for s in traffic.statuses if s >= 500], traffic.statuses


def whole_and_indexed(base: str) -> list[str]:
    """Every stored Goal is complete JSON with its words, and its identifier finds it."""
    problems = []
    session = requests.Session()
    url: str | None = f"{base}/Goal?_count=200"
    while url:
        page = session.get(url, timeout=30).json()
        for entry in page.get("entry", []):
            goal = entry["resource"]
            if not goal.get("description", {}).get("text") or not goal.get("identifier"):
                problems.append(f"Goal/{goal.get('id')} is incomplete")
                continue
            value = goal["identifier"][0]["value"]
            found = session.get(
                f"{base}/Goal", params={"identifier": f"{MARK}|{value}"}, timeout=30
            ).json()
            if [e["resource"]["id"] for e in found.get("entry", [])] != [goal["id"]]:
                problems.append(f"Goal/{goal['id']} is not indexed")
        url = next(
            (link["url"] for link in page.get("link", []) if link["relation"] == "next"), None
        )
    return problems
