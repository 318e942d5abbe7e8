"""Whole metrics: under `whatmatters serve` with several gunicorn workers, one scrape of
/metrics sums what every worker counted (prometheus_client's multiprocess mode)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from tests.reliability.traffic import served

BATCH = 16  # requests in flight at once: more than one worker has to take some
MAX_SENT = 800


def _searches_counted(base: str) -> float:
    text = requests.get(base.removesuffix("/fhir") + "/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('whatmatters_requests_total{interaction="search-type"')
    )


def test_one_scrape_sums_every_worker(tmp_path: Path) -> None:
    folder = tmp_path / "metrics"
    service = served("metrics", tmp_path, workers=4, PROMETHEUS_MULTIPROC_DIR=str(folder))
    try:
        before = _searches_counted(service.base)
        sent = 0

        def search(_: int) -> int:
            # a new connection each time, so the kernel hands requests to different workers
            return requests.get(f"{service.base}/Goal", timeout=10).status_code

        # the kernel may hand a burst to one worker; concurrent requests keep a worker busy so
        # the next connection goes to another (bounded: 800 requests at most)
        with ThreadPoolExecutor(max_workers=BATCH) as pool:
            while sent < MAX_SENT:
                assert set(pool.map(search, range(BATCH))) == {200}
                sent += BATCH
                if len(set(folder.glob("counter_*.db"))) >= 2:
                    break
        scrapes = [_searches_counted(service.base) for _ in range(6)]
        # more than one worker wrote counters, and every scrape (whichever worker answers it)
        # sees the sum of all of them
        writers = {f.name for f in folder.glob("counter_*.db")}
        assert len(writers) >= 2, writers
        assert scrapes == [before + sent] * 6
    finally:
        service.stop()
