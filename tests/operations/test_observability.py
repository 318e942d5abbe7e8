"""Operating the service: health and readiness probes, Prometheus metrics that move, request
ids on responses and in JSON log lines (Prometheus exposition format 0.0.4)."""

from __future__ import annotations

import io
import json
import logging
import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.api.observability import JsonFormatter, RequestIdFilter
from service.storage import StoreUnavailable
from service.storage.outbox import OutboxRow
from tests.builders import patient

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a Prometheus text exposition (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = (
            ",".join(sorted((match.group(2) or "{}")[1:-1].split(","))) if match.group(2) else ""
        )
        if found == wanted:
            return float(match.group(3))
    return 0.0


def test_healthz_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "up"}


def test_readyz_checks_database_schema_and_profiles(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["checks"] == {
        "database": "up",
        "schema": "current",
        "profiles": "loaded",
    }


def test_readyz_is_503_when_the_database_is_down(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.extensions["whatmatters.fhir"].store

    def down() -> None:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(store, "check", down)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.get_json()["checks"]["database"] == "down (StoreUnavailable)"


def test_readyz_is_503_while_migrations_are_pending(
    app: Flask, client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = app.extensions["whatmatters.fhir"].store
    monkeypatch.setattr(store, "pending_migrations", lambda: [4])
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["schema"] == "migrations [4] pending"


def test_metrics_move_with_requests_validation_failures_and_the_outbox(
    app: Flask, client: FlaskClient
) -> None:
    assert client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=FHIR_JSON).status_code in (
        200,
        201,
    )
    before = client.get("/metrics")
    assert before.status_code == 200
    assert before.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = before.get_data(as_text=True)
    reads = sample(text, "whatmatters_requests_total", interaction="read", status="200")
    refused = sample(text, "whatmatters_validation_failures_total", status="400")
    timed = sample(text, "whatmatters_request_duration_seconds_count", interaction="read")
    assert client.get("/fhir/Patient/p1").status_code == 200
    assert client.get("/fhir/Patient/p1").status_code == 200
    bad = {"resourceType": "Goal", "lifecycleStatus": "nonsense"}
    assert client.post("/fhir/Goal", json=bad, headers=FHIR_JSON).status_code == 400
    fhir = app.extensions["whatmatters.fhir"]
    row = OutboxRow(
        "partner:gp", "Patient/p1", "resource", "Goal", "g1", 1, created_us=fhir.clock() - 5_000_000
    )
    fhir.run(lambda tx: tx.outbox.add([row]))
    after = client.get("/metrics").get_data(as_text=True)
    assert (
        sample(after, "whatmatters_requests_total", interaction="read", status="200") == reads + 2
    )
    assert sample(after, "whatmatters_validation_failures_total", status="400") == refused + 1
    assert (
        sample(after, "whatmatters_request_duration_seconds_count", interaction="read") == timed + 2
    )
    assert sample(after, "whatmatters_outbox_rows", destination="partner:gp", state="pending") == 1
    assert (
        sample(
            after,
            "whatmatters_outbox_oldest_age_seconds",
            destination="partner:gp",
            state="pending",
        )
        >= 5
    )


def test_request_ids_are_kept_or_made_and_returned(client: FlaskClient) -> None:
    kept = client.get("/fhir/metadata", headers={"X-Request-ID": "ehr-7f3a.1"})
    assert kept.headers["X-Request-ID"] == "ehr-7f3a.1"
    made = client.get("/fhir/metadata")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    replaced = client.get("/fhir/metadata", headers={"X-Request-ID": "bad id\twith spaces"})
    assert replaced.headers["X-Request-ID"] != "bad id\twith spaces"
    assert client.get("/fhir/Goal/missing").headers["X-Request-ID"]  # errors carry it too


def test_log_lines_are_json_with_the_request_id(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    logger = logging.getLogger("whatmatters.api")
    logger.addHandler(handler)
    try:
        from service.priorities.operations import WhatMatters

        def broken(*_args: Any, **_kwargs: Any) -> Any:
            raise RuntimeError("boom")

        monkeypatch.setattr(WhatMatters, "what_matters", broken)
        client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=FHIR_JSON)
        response = client.get(
            "/fhir/Patient/p1/$what-matters", headers={"X-Request-ID": "trace-42"}
        )
        assert response.status_code == 500
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines
    assert lines[-1]["request_id"] == "trace-42"
    assert lines[-1]["level"] == "error"
    assert "unexpected error" in lines[-1]["message"]
