"""Whole metrics: under `whatmatters serve` with several gunicorn workers, one scrape of
/metrics sums what every worker counted (prometheus_client's multiprocess mode)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import requests
from flask.testing import FlaskClient
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from service import create_app
from service.config import Config
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


def _worker_counted(folder: Path, pid: int, count: float) -> None:
    """What a worker's counter file holds after it answered ``count`` Goal searches."""
    counters = MmapedDict(str(folder / f"counter_{pid}.db"))
    key = mmap_key(
        "whatmatters_requests",
        "whatmatters_requests_total",
        ["interaction", "status"],
        ["search-type", "200"],
        "HTTP requests by FHIR interaction and status",
    )
    counters.write_value(key, count, 0.0)
    counters.close()


def test_a_scrape_while_a_worker_creates_its_file_still_answers(
    tmp_path: Path, config: Config, folders: dict[str, Any]
) -> None:
    # A worker starting to count creates its file empty and sizes it a moment later
    # (prometheus_client's MmapedDict); a scrape in that moment used to fail with a 500.
    folder = tmp_path / "metrics"
    folder.mkdir()
    _worker_counted(folder, 101, 7)
    (folder / "counter_102.db").touch()  # the other worker, caught between create and size
    app = create_app(replace(config, metrics_dir=folder), **folders)
    try:
        client: FlaskClient = app.test_client()
        response = client.get("/metrics")
        assert response.status_code == 200, response.get_data(as_text=True)
        lines = response.get_data(as_text=True).splitlines()
        assert 'whatmatters_requests_total{interaction="search-type",status="200"} 7.0' in lines
        assert response.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    finally:
        app.extensions["whatmatters.store"].close()
