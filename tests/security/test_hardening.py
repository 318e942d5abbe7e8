"""Hardening: rate limits per client (429 with Retry-After, RFC 6585 section 4), CORS for
SMART apps in browsers (Fetch standard, CORS protocol), headers of the HTML page, and no stack
traces in responses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from service import create_app
from service.api.hardening import RateLimiter
from service.config import Config
from tests.security.support import caller, sign, smart_config, token_for

Keys = tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]


def test_a_limiter_allows_its_burst_then_refuses_with_the_wait() -> None:
    limiter = RateLimiter(per_minute=60, burst=3)
    assert [limiter.take("c") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("c")
    assert 0 < wait <= 1.0  # the burst window is one second
    assert limiter.take("other") == 0.0  # counters are per client


def test_the_minute_limit_holds_beyond_the_burst() -> None:
    limiter = RateLimiter(per_minute=4, burst=100)
    assert [limiter.take("c") for _ in range(4)] == [0.0] * 4
    wait = limiter.take("c")
    assert 1 < wait <= 60  # the next one frees up when the first leaves the minute


@pytest.fixture
def hardened(
    config: Config, tmp_path: Path, keys: Keys, folders: dict[str, Any]
) -> Iterator[Flask]:
    app = create_app(
        smart_config(
            config,
            tmp_path,
            keys[0],
            rate_limit_per_minute=60,
            rate_limit_burst=3,
            cors_origins=("https://app.example",),
        ),
        **folders,
    )
    yield app
    app.extensions["whatmatters.store"].close()


def test_a_client_over_its_limit_gets_429_with_retry_after(hardened: Flask, keys: Keys) -> None:
    client = hardened.test_client()
    token = sign(keys[0], scope="system/*.rs", client_id="busy-app")
    headers = {"Authorization": f"Bearer {token}"}
    statuses = [client.get("/fhir/Goal", headers=headers).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = client.get("/fhir/Goal", headers=headers)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.get_json()["issue"][0]["code"] == "throttled"


def test_cors_preflight_and_responses_for_a_configured_origin(hardened: Flask, keys: Keys) -> None:
    client = hardened.test_client()
    preflight = client.options(
        "/fhir/Goal",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    token = sign(keys[0], scope="system/*.rs")
    answer = client.get(
        "/fhir/Goal", headers={"Origin": "https://app.example", "Authorization": f"Bearer {token}"}
    )
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Location" in answer.headers["Access-Control-Expose-Headers"]
    stranger = client.get(
        "/fhir/Goal", headers={"Origin": "https://evil.example", "Authorization": f"Bearer {token}"}
    )
    assert "Access-Control-Allow-Origin" not in stranger.headers
    assert "Origin" in stranger.headers["Vary"]


def test_without_configured_origins_there_is_no_cors(smart_app: Flask) -> None:
    answer = smart_app.test_client().get(
        "/fhir/metadata", headers={"Origin": "https://app.example"}
    )
    assert "Access-Control-Allow-Origin" not in answer.headers


def test_the_page_carries_security_headers(world: dict[str, Any]) -> None:
    page = caller(world, token_for(world, "patient-A")).get("/patients/pA/what-matters")
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["X-Frame-Options"] == "DENY"


def test_an_unexpected_error_shows_no_stack_trace(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.priorities.operations import WhatMatters

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyError("internal detail")

    monkeypatch.setattr(WhatMatters, "what_matters", broken)
    response = caller(world, token_for(world, "system")).get("/fhir/Patient/pA/$what-matters")
    assert response.status_code == 500
    body = response.get_data(as_text=True)
    assert response.get_json()["resourceType"] == "OperationOutcome"
    for revealing in ("Traceback", "internal detail", "KeyError", ".py"):
        assert revealing not in body
