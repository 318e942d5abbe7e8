"""The audit trail's window (service/fhir/audit_trail.py): an answered request's AuditEvent is
stored within the window without anyone reading the trail, reading the trail shows every
answered request, and while the trail cannot be written no read is answered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from sqlalchemy import func, select

from service import create_app
from service.config import Config
from service.errors import StoreUnavailable
from service.fhir import audit_trail
from service.storage.schema import resources
from service.storage.sql import SqlStore
from tests.security.support import Caller, sign, smart_config

WINDOW_MS = 100


@pytest.fixture
def batched(
    config: Config,
    tmp_path: Path,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> Iterator[Flask]:
    """A smart-mode application whose trail stores AuditEvents in batches, within 100 ms."""
    app = create_app(smart_config(config, tmp_path, keys[0], audit_window_ms=WINDOW_MS), **folders)
    yield app
    app.extensions["whatmatters.audit"].close()
    app.extensions["whatmatters.store"].close()


def _stored_events(app: Flask) -> int:
    store: SqlStore = app.extensions["whatmatters.store"]
    with store.engine.connect() as conn:
        count = select(func.count()).where(resources.c.res_type == "AuditEvent")
        return int(conn.execute(count).scalar_one())


def _admin(app: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> Caller:
    return Caller(app.test_client(), sign(keys[0], scope="system/*.cruds"))


def test_an_answered_read_is_on_record_within_the_window(
    batched: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    admin = _admin(batched, keys)
    assert admin.get("/fhir/Patient/nobody").status_code == 404
    answered = time.monotonic()
    while _stored_events(batched) < 1:
        assert time.monotonic() - answered < 5, "the AuditEvent was not stored"
        time.sleep(0.01)
    # the window, plus one transaction on a busy shared machine
    assert time.monotonic() - answered < WINDOW_MS / 1000 + 2


def test_reading_the_trail_shows_every_answered_request(
    batched: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    admin = _admin(batched, keys)
    for n in range(5):
        assert admin.get(f"/fhir/Goal?_id=g{n}").status_code == 200
    found = admin.get("/fhir/AuditEvent?_count=100&_total=accurate").get_json()
    assert found["total"] == 5  # the searches before this one; its own is recorded after it
    system = admin.get("/fhir/AuditEvent?subtype=search-type&_summary=count").get_json()
    assert system["total"] == 6


def _break_the_trail(
    admin: Caller, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> Callable[..., None]:
    """Make the trail's writes raise ``error``, wait until reads are refused for it, and
    give back the real store_events (to mend the trail with)."""
    real: Callable[..., None] = audit_trail.store_events

    def broken(*_args: Any) -> None:
        raise error

    monkeypatch.setattr(audit_trail, "store_events", broken)
    assert admin.get("/fhir/Goal").status_code == 200  # buffered: the failure is not known yet
    deadline = time.monotonic() + 5
    while admin.get("/fhir/Goal").status_code == 200:
        assert time.monotonic() < deadline, "reads were answered while the trail failed"
        time.sleep(0.02)
    return real


def test_no_read_is_answered_while_the_trail_cannot_be_written(
    batched: Flask,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _admin(batched, keys)
    real = _break_the_trail(admin, monkeypatch, StoreUnavailable("the database is away"))
    trail = batched.extensions["whatmatters.audit"]
    refused_read = admin.get("/fhir/Goal")
    assert refused_read.status_code == 503
    assert refused_read.headers["Retry-After"] == "5"
    monkeypatch.setattr(audit_trail, "store_events", real)
    trail.flush()  # the database is back: what was buffered is written, reads are answered
    assert trail.pending() == 0
    assert admin.get("/fhir/Goal").status_code == 200
    assert _stored_events(batched) >= 2


def test_closing_the_trail_stores_what_it_holds(
    batched: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    admin = _admin(batched, keys)
    for _ in range(3):
        assert admin.get("/fhir/Goal").status_code == 200
    batched.extensions["whatmatters.audit"].close()
    assert _stored_events(batched) == 3


def test_while_requests_come_they_store_the_buffer_themselves(
    batched: Flask,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # no timer thread at all: only the requests that find the buffer due can store it
    monkeypatch.setattr(audit_trail.AuditTrail, "_start", lambda _self: None)
    admin = _admin(batched, keys)
    trail = batched.extensions["whatmatters.audit"]
    assert admin.get("/fhir/Goal").status_code == 200
    time.sleep(WINDOW_MS / 1000)  # the first event is now due
    assert trail.pending() == 1
    assert admin.get("/fhir/Goal").status_code == 200  # this request stores both on its way out
    assert trail.pending() == 0
    assert _stored_events(batched) == 2


def test_the_trail_recovers_on_its_own_from_any_failure_of_a_write(
    batched: Flask,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    admin = _admin(batched, keys)
    real = _break_the_trail(admin, monkeypatch, RuntimeError("a bug, not the database"))
    monkeypatch.setattr(audit_trail, "store_events", real)
    # nobody flushes: the timer retries by itself and reads are answered again
    deadline = time.monotonic() + 5
    while admin.get("/fhir/Goal").status_code != 200:
        assert time.monotonic() < deadline, "the trail did not recover"
        time.sleep(0.05)
    batched.extensions["whatmatters.audit"].flush()
    assert _stored_events(batched) >= 2


def _events(app: Flask) -> list[dict[str, Any]]:
    """The stored AuditEvents, read from the database (not through the API, which would flush
    the trail first)."""
    store: SqlStore = app.extensions["whatmatters.store"]
    with store.engine.connect() as conn:
        rows = conn.execute(select(resources.c.content).where(resources.c.res_type == "AuditEvent"))
        return [json.loads(row.content) for row in rows]


def test_a_refused_write_is_recorded_once_with_its_failure(
    batched: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    admin = _admin(batched, keys)
    refused = admin.post("/fhir/Goal", {"resourceType": "Goal", "lifecycleStatus": "dreaming"})
    assert refused.status_code in (400, 422)
    batched.extensions["whatmatters.audit"].flush()
    events = _events(batched)
    assert [(e["subtype"][0]["code"], e["outcome"]) for e in events] == [("create", "4")]
