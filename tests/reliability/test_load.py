"""Load: many concurrent clients mixing reads, searches and writes for a fixed time against a
real `whatmatters serve` (gunicorn); zero 5xx, and every acknowledged write readable after."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.reliability.conftest import SECONDS
from tests.reliability.report import Tally
from tests.reliability.traffic import Traffic, add_patients, lost_writes, served


def test_mixed_load_gives_no_server_errors_and_loses_no_write(tmp_path: Path, tally: Tally) -> None:
    service = served("load", tmp_path, workers=2)
    try:
        patients = add_patients(service.base, 10)
        traffic = Traffic(service.base, tally, patients, seed=7)
        stop = threading.Event()
        timer = threading.Timer(SECONDS, stop.set)
        timer.start()
        traffic.run(threads=12, stop=stop)
        timer.cancel()
        lost = lost_writes(service.base, traffic.acked)
        tally.add(lost_writes=len(lost))
    finally:
        service.stop()
    answered = sum(traffic.statuses.values())
    assert answered > 0
    assert not [s for s in traffic.statuses if s >= 500], traffic.statuses
    assert traffic.unanswered == 0
    assert traffic.acked.versions
    assert lost == []
