"""Paging through 10,000 matches with _count=50 returns each match exactly once while other
clients write (https://hl7.org/fhir/R4/http.html#paging): against gunicorn, with a writer
creating new matches and updating existing ones between and during page requests."""

from __future__ import annotations

import threading

import requests

from service.config import Config
from service.fhir.model import dump_json, now_us, with_meta
from service.storage import StoredResource
from service.storage.sql import SqlStore
from tests.builders import FHIR_JSON, observation
from tests.search.conftest import build_service

MATCHES = 10_000


def _bulk_observations(store: SqlStore) -> list[str]:
    service = build_service(store)
    ids = [f"page-{n:05d}" for n in range(MATCHES)]
    items = []
    for id_ in ids:
        content = with_meta(observation(id=id_), id_, 1, now_us())
        stored = StoredResource("Observation", id_, 1, now_us(), False, dump_json(content), "PUT")
        items.append((stored, service.search_params.index(content)))
    for start in range(0, MATCHES, 2000):
        batch = items[start : start + 2000]
        service.run(lambda tx, batch=batch: tx.resources.insert_new(batch), retry=False)
    return ids


def test_paging_returns_each_match_once_during_writes(
    live_server: str, config: Config, sql_store: SqlStore
) -> None:
    original = _bulk_observations(sql_store)
    stop = threading.Event()
    written = {"created": 0, "updated": 0}

    failures: list[str] = []

    def writer() -> None:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - reported to the test below
            failures.append(repr(exc))

    def write() -> None:
        with requests.Session() as session:
            n = 0
            while not stop.is_set():
                created = session.post(
                    f"{live_server}/Observation",
                    json=observation(),
                    headers={"Content-Type": FHIR_JSON},
                    timeout=30,
                )
                assert created.status_code == 201, created.text
                written["created"] += 1
                target = original[(n * 37) % MATCHES]
                updated = session.put(
                    f"{live_server}/Observation/{target}",
                    json=observation(id=target, status="amended"),
                    headers={"Content-Type": FHIR_JSON},
                    timeout=30,
                )
                assert updated.status_code == 200, updated.text
                written["updated"] += 1
                n += 1

    thread = threading.Thread(target=writer)
    seen: list[str] = []
    pages = 0
    try:
        with requests.Session() as session:
            url: str | None = f"{live_server}/Observation?code=http://loinc.org|95541-9&_count=50"
            while url:
                bundle = session.get(url, timeout=60).json()
                pages += 1
                seen += [
                    e["resource"]["id"]
                    for e in bundle.get("entry", [])
                    if e["search"]["mode"] == "match"
                ]
                url = next(
                    (link["url"] for link in bundle["link"] if link["relation"] == "next"), None
                )
                assert pages <= 1000, "paging did not end"
                if pages == 1:
                    thread.start()  # writes begin once the search has its first page
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=60)
    assert failures == []
    assert written["created"] > 0
    assert written["updated"] > 0
    assert len(seen) == len(set(seen)), "a match was returned twice"
    assert set(seen) == set(original), "a match was skipped"
    assert pages == MATCHES // 50
