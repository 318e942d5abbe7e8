"""Paging through 10,000 matches with _count=50 returns each match exactly once while other
clients write (https://hl7.org/fhir/R4/http.html#paging): against gunicorn, with a writer
creating new matches and updating existing ones between and during page requests."""

from __future__ import annotations

import threading
from typing import Any

import requests
from flask.testing import FlaskClient
from sqlalchemy import event, select

from service.config import Config
from service.fhir.model import dump_json, now_us, with_meta
from service.storage import StoredResource
from service.storage.sql import SqlStore, metadata
from tests.builders import FHIR_JSON, observation, patient
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


def _every_row(store: SqlStore) -> dict[str, list[str]]:
    """The content of every table of the schema (resources, versions, index rows, kept
    searches, outbox, counters ...), each row as text, sorted."""
    with store.engine.connect() as conn:
        return {
            table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
            for table in metadata.sorted_tables
        }


def _pages(client: FlaskClient, url: str) -> tuple[list[str], int]:
    seen: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        response = client.get(next_url)
        assert response.status_code == 200, response.get_data(as_text=True)
        bundle = response.get_json()
        pages += 1
        seen += [
            e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
        ]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        next_url = links.get("next", "").replace("http://test.local/fhir", "/fhir") or None
    return seen, pages


def test_a_search_pages_without_writing(client: FlaskClient, sql_store: SqlStore) -> None:
    """Paging a search ordered by id (the default) writes no row anywhere: no kept search, no
    outbox row, no counter; only a _sort on a value an update may change keeps its matches."""
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers={"Content-Type": FHIR_JSON})
    for n in range(45):
        body = observation(id=f"o{n:02d}", subject={"reference": "Patient/p1"})
        client.put(f"/fhir/Observation/o{n:02d}", json=body, headers={"Content-Type": FHIR_JSON})
    before = _every_row(sql_store)
    for url in (
        "/fhir/Observation?patient=p1&_count=10",
        "/fhir/Observation?subject=Patient/p1&_count=7&_total=accurate&_include=Observation:subject",
        "/fhir/Observation?_count=20&_offset=5",
        "/fhir/Observation?patient=p1&_count=10&_sort=-_id",
    ):
        seen, pages = _pages(client, url)
        expected = [f"o{n:02d}" for n in range(45)]
        if "_offset=5" in url:
            expected = expected[5:]
        if "-_id" in url:
            expected.reverse()
        assert seen == expected, url
        assert pages > 1
    assert _every_row(sql_store) == before
    # a _sort on a value that changes between versions keeps its matches: that search alone
    seen, _ = _pages(client, "/fhir/Observation?patient=p1&_count=10&_sort=date")
    assert sorted(seen) == [f"o{n:02d}" for n in range(45)]
    after = _every_row(sql_store)
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {"saved_search", "saved_search_result"}


def test_previous_links_page_back_by_cursor(client: FlaskClient) -> None:
    for n in range(9):
        mrn = [{"system": "https://hospital.example/Id/mrn", "value": f"p{n}"}]
        body = patient(id=f"p{n}", identifier=mrn)
        created = client.put(f"/fhir/Patient/p{n}", json=body, headers={"Content-Type": FHIR_JSON})
        assert created.status_code == 201
    first = client.get("/fhir/Patient?_count=4").get_json()
    nxt = {link["relation"]: link["url"] for link in first["link"]}["next"]
    second = client.get(nxt.replace("http://test.local/fhir", "/fhir")).get_json()
    assert [e["resource"]["id"] for e in second["entry"]] == ["p4", "p5", "p6", "p7"]
    links = {link["relation"]: link["url"] for link in second["link"]}
    back = client.get(links["previous"].replace("http://test.local/fhir", "/fhir")).get_json()
    assert [e["resource"]["id"] for e in back["entry"]] == ["p0", "p1", "p2", "p3"]
    assert "previous" not in {link["relation"] for link in back["link"]}
    tampered = links["next"].replace("_page_token=c.", "_page_token=c.x")
    assert client.get(tampered.replace("http://test.local/fhir", "/fhir")).status_code == 404


def test_a_page_of_a_search_is_one_read_transaction(
    client: FlaskClient, sql_store: SqlStore
) -> None:
    """A search, its _include, its total and its paging run in one read transaction."""
    for n in range(12):
        mrn = [{"system": "https://hospital.example/Id/mrn", "value": f"q{n}"}]
        body = patient(id=f"q{n}", identifier=mrn)
        client.put(f"/fhir/Patient/q{n}", json=body, headers={"Content-Type": FHIR_JSON})
        obs = observation(id=f"q{n}", subject={"reference": f"Patient/q{n}"})
        client.put(f"/fhir/Observation/q{n}", json=obs, headers={"Content-Type": FHIR_JSON})
    engine = client.application.extensions["whatmatters.store"].engine
    began: list[bool] = []

    def _began(conn: Any) -> None:
        began.append(bool(conn.get_execution_options().get("whatmatters_write", False)))

    event.listen(engine, "begin", _began)
    try:
        url: str | None = "/fhir/Observation?_count=5&_total=accurate&_include=Observation:subject"
        pages = 0
        while url:
            response = client.get(url)
            assert response.status_code == 200
            pages += 1
            assert began == [False] * pages  # one more read transaction, no write
            links = {link["relation"]: link["url"] for link in response.get_json()["link"]}
            url = links.get("next", "").replace("http://test.local/fhir", "/fhir") or None
    finally:
        event.remove(engine, "begin", _began)
    assert pages == 3


def test_the_self_link_of_a_page_asked_for_at_an_offset_gives_that_page(
    client: FlaskClient,
) -> None:
    """bundle.html#searchset: self is the search as performed, so following it gives the same
    page; a first page asked for with _offset keeps its _offset."""
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers={"Content-Type": FHIR_JSON})
    for n in range(6):
        body = observation(id=f"o{n}", subject={"reference": "Patient/p1"})
        client.put(f"/fhir/Observation/o{n}", json=body, headers={"Content-Type": FHIR_JSON})
    page = client.get("/fhir/Observation?_offset=3&_count=2").get_json()
    ids = [e["resource"]["id"] for e in page["entry"]]
    assert ids == ["o3", "o4"]
    self_url = {link["relation"]: link["url"] for link in page["link"]}["self"]
    assert "_offset=3" in self_url
    again = client.get(self_url.replace("http://test.local/fhir", "/fhir")).get_json()
    assert [e["resource"]["id"] for e in again["entry"]] == ids
