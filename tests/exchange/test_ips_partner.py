"""A partner that asks for ``document: ips`` gets the patient's IPS 2.0.0 document whenever
the priorities change: one current document per patient, replaced on change, nothing twice
through an outage and through answers lost after the partner applied the write (the fault
proxy's "reset"). The partner is a small FHIR server over HTTP (FakeFhir) behind the proxy."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from service import build_worker, wire_fhir_service
from service.config import Config
from service.errors import Issue
from service.exchange.partners import Partner
from service.exchange.worker import Worker
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.priorities.operations import WhatMatters
from service.storage.memory import MemoryStore
from tests.conftest import parse_with_r4b_models
from tests.direct import Direct
from tests.exchange.conftest import MRN
from tests.exchange.fakefhir import FakeFhir
from tests.exchange.faultproxy import FaultProxy
from tests.ips_package import ips_checker
from tests.priorities.conversations import conversation, goal, ranking, statement
from tests.priorities.test_summary import _section, _words_in

BASE = "http://hospital.example/fhir"
STORY = "81338-6"


class _FakeOverHttp:
    """FakeFhir answering real HTTP under ``/fhir``."""

    def __init__(self, fake: FakeFhir) -> None:
        self.fake = fake
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                split = urlsplit(self.path)
                path = split.path.removeprefix("/fhir/")
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                params = dict(parse_qsl(split.query)) if self.command == "GET" else None
                if self.command != "GET" and split.query:
                    path = f"{path}?{split.query}"
                with outer.lock:
                    answer = outer.fake.request(
                        self.command, path, body, dict(self.headers.items()), params
                    )
                data = json.dumps(answer.body).encode("utf-8")
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

            def log_message(self, *args: Any) -> None:
                pass

        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _partner_file(tmp_path: Path, base_url: str) -> Path:
    path = tmp_path / "partners.json"
    entry = {
        "name": "care-home",
        "base_url": base_url,
        "send": {
            "types": ["Observation", "Goal", "List"],
            "patient_identifier_systems": [MRN],
            "document": "ips",
        },
    }
    path.write_text(json.dumps({"partners": [entry]}), encoding="utf-8")
    return path


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[_FakeOverHttp]:
    types = getattr(request, "param", ("Bundle",))
    server = _FakeOverHttp(FakeFhir(Partner("care-home", "http://unused"), types))
    yield server
    server.stop()


@pytest.fixture
def proxy(fake_server: _FakeOverHttp) -> Iterator[FaultProxy]:
    with FaultProxy(fake_server.root) as fault_proxy:
        yield fault_proxy


def _hospital(tmp_path: Path, proxy: FaultProxy) -> tuple[FhirService, Worker]:
    config = Config(
        partners_file=_partner_file(tmp_path, f"{proxy.url}/fhir"),
        public_base_url=BASE,
        outbox_retry_base_seconds=0.01,
        outbox_retry_cap_seconds=0.05,
    )
    fhir: Any = Direct(wire_fhir_service(config, MemoryStore()))
    partners = fhir.listeners[0].partners  # type: ignore[attr-defined]
    assert partners[0].send_document == "ips"
    return fhir, build_worker(config, fhir, partners, ips_checker())


def _record(fhir: FhirService, *items: dict[str, Any], recorded: str) -> None:
    body = conversation(*items, recorded=recorded)
    assert WhatMatters(fhir).record(Actor.system(), "p1", body, BASE).status == 200


def _drain(worker: Worker, fhir: FhirService) -> None:
    for _ in range(100):
        worker.drain(timeout=10)
        states = {r.state for r in fhir.read_only(lambda tx: tx.outbox.rows(limit=1000))}
        if states <= {"done"}:
            return
        time.sleep(0.05)  # the backoff of a failed attempt
    rows = [
        (r.res_type, r.state, r.last_error)
        for r in fhir.read_only(lambda tx: tx.outbox.rows(limit=1000))
    ]
    raise AssertionError(f"the outbox did not drain: {rows}")


def _story(document: dict[str, Any]) -> list[str]:
    return _words_in(_section(document, STORY)["text"]["div"])


def _patient(fhir: FhirService) -> None:
    fhir.update(
        "Patient",
        "p1",
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": MRN, "value": "M1"}],
            "name": [{"family": "Okafor"}],
            "birthDate": "1938-05-01",
        },
    )


def test_an_ips_partner_holds_one_current_document_through_faults(
    tmp_path: Path, fake_server: _FakeOverHttp, proxy: FaultProxy
) -> None:
    fhir, worker = _hospital(tmp_path, proxy)
    _patient(fhir)
    _record(
        fhir,
        statement("s1", "Walking Bramble, my dog, every morning 🐕", "walk"),
        goal("g1", "Walk to the end of the lane and back by spring", "s1", priority="high"),
        ranking("g1", "s1"),
        recorded="2026-11-20T10:00:00Z",
    )
    worker.check_partners()  # the partner's CapabilityStatement, read once
    # the first write is applied at the partner but its answer is lost; then a 503
    proxy.fail_next("reset", ("status", 503))
    _drain(worker, fhir)
    (document,) = fake_server.fake.of_type("Bundle")
    assert document["type"] == "document"
    assert _story(document) == [
        "Walking Bramble, my dog, every morning 🐕",
        "Walk to the end of the lane and back by spring",
    ]
    errors = [i for i in ips_checker().validate(document) if i.severity in ("error", "fatal")]
    assert errors == []
    parse_with_r4b_models(document)
    # a change while the partner is down: delivered once it is back, replacing the document
    proxy.go_down()
    _record(
        fhir,
        statement("s1", "Walking Bramble, my dog, every morning 🐕", "walk"),
        statement("s2", "Singing in the chapel choir", "choir"),
        ranking("s2", "s1"),
        recorded="2026-11-28T10:00:00Z",
    )
    worker.drain(timeout=2)
    proxy.come_back()
    _drain(worker, fhir)
    (document,) = fake_server.fake.of_type("Bundle")
    assert _story(document)[:2] == [
        "Singing in the chapel choir",
        "Walking Bramble, my dog, every morning 🐕",
    ]
    writes = [(m, p) for m, p in fake_server.fake.calls if m in ("POST", "PUT")]
    assert writes
    assert all(p.startswith("Bundle") for _, p in writes)


@pytest.mark.parametrize("fake_server", [("Patient", "DocumentReference")], indirect=True)
def test_a_partner_without_bundles_gets_the_ips_in_a_document_reference(
    tmp_path: Path, fake_server: _FakeOverHttp, proxy: FaultProxy
) -> None:
    fhir, worker = _hospital(tmp_path, proxy)
    fake_server.fake.stored[("Patient", "cp1")] = {
        "resourceType": "Patient",
        "id": "cp1",
        "identifier": [{"system": MRN, "value": "M1"}],
    }
    _patient(fhir)
    _record(
        fhir,
        statement("s1", "Tea with Ffion on Sundays", "tea"),
        recorded="2026-11-20T10:00:00Z",
    )
    worker.check_partners()
    proxy.fail_next("reset")
    _drain(worker, fhir)
    _record(
        fhir,
        statement("s1", "Tea with Ffion on Sundays", "tea"),
        statement("s2", "Seeing my grandchildren", "grandchildren"),
        ranking("s2", "s1"),
        recorded="2026-11-28T10:00:00Z",
    )
    _drain(worker, fhir)
    (reference,) = fake_server.fake.of_type("DocumentReference")
    assert reference["subject"] == {"reference": "Patient/cp1"}
    attachment = reference["content"][0]["attachment"]
    assert attachment["contentType"] == "application/fhir+json"
    document = json.loads(base64.b64decode(attachment["data"]))
    assert document["type"] == "document"
    assert _story(document) == ["Seeing my grandchildren", "Tea with Ffion on Sundays"]


class _Refusing:
    """A document check that finds every document broken."""

    def validate(self, document: dict[str, Any]) -> list[Issue]:
        return [Issue("error", "invalid", "broken on purpose", ("Bundle",))]


def test_a_document_that_does_not_conform_is_never_sent(
    tmp_path: Path, fake_server: _FakeOverHttp, proxy: FaultProxy
) -> None:
    fhir, _ = _hospital(tmp_path, proxy)
    partners = fhir.listeners[0].partners
    config = Config(public_base_url=BASE)
    worker = build_worker(config, fhir, partners, _Refusing())  # type: ignore[arg-type]
    _patient(fhir)
    _record(
        fhir, statement("s1", "Tea with Ffion on Sundays", "tea"), recorded="2026-11-20T10:00:00Z"
    )
    worker.drain(timeout=10)
    rows = fhir.read_only(lambda tx: tx.outbox.rows(limit=1000))
    assert {r.state for r in rows} == {"dead"}
    assert all("does not conform" in (r.last_error or "") for r in rows)
    assert fake_server.fake.of_type("Bundle") == []
