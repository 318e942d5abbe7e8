"""Limits and addresses when several processes serve: rate limits shared through Redis (and
failing open when it is down), and X-Forwarded-For believed only from configured proxies.

Redis is the one the machine runs on 127.0.0.1:6379 (database 15, emptied by each test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from service import create_app
from service.api.hardening import RateLimiter, limits_storage
from service.config import Config
from tests.conftest import _free_port
from tests.security.support import sign, smart_config

Keys = tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """An empty Redis database for the counters."""
    connection = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        connection.flushdb()
    except redis.ConnectionError:
        pytest.fail("Redis must answer on 127.0.0.1:6379 for these tests (.ci/run waits for it)")
    yield REDIS_URL
    connection.flushdb()
    connection.close()


def _apps(
    config: Config,
    tmp_path: Path,
    key: rsa.RSAPrivateKey,
    count: int,
    folders: dict[str, Any],
    **changes: Any,
) -> list[Flask]:
    return [
        create_app(
            smart_config(
                config, tmp_path, key, rate_limit_per_minute=5, rate_limit_burst=5, **changes
            ),
            **folders,
        )
        for _ in range(count)
    ]


def _round_robin(apps: list[Flask], key: rsa.RSAPrivateKey, requests: int) -> list[int]:
    """Statuses of ``requests`` searches by one client, spread over ``apps`` in turn."""
    token = sign(key, scope="system/*.rs", client_id="busy-app")
    headers = {"Authorization": f"Bearer {token}"}
    try:
        return [
            apps[n % len(apps)].test_client().get("/fhir/Goal", headers=headers).status_code
            for n in range(requests)
        ]
    finally:
        for app in apps:
            app.extensions["whatmatters.store"].close()


def test_limiters_of_two_processes_share_one_count_in_redis(shared_redis: str) -> None:
    first = RateLimiter(per_minute=6, burst=100, storage=limits_storage(shared_redis))
    second = RateLimiter(per_minute=6, burst=100, storage=limits_storage(shared_redis))
    answers = [(first if n % 2 else second).take("client:busy") for n in range(6)]
    assert answers == [0.0] * 6
    assert first.take("client:busy") > 0
    assert second.take("client:busy") > 0


def test_a_limit_holds_across_replicas_with_redis(
    config: Config, tmp_path: Path, keys: Keys, shared_redis: str, folders: dict[str, Any]
) -> None:
    # four apps stand for two workers in each of two replicas: one shared count of 5 a minute
    apps = _apps(config, tmp_path, keys[0], 4, folders, redis_url=shared_redis)
    assert _round_robin(apps, keys[0], 8) == [200] * 5 + [429] * 3


def test_without_redis_each_process_counts_alone(
    config: Config, tmp_path: Path, keys: Keys, folders: dict[str, Any]
) -> None:
    apps = _apps(config, tmp_path, keys[0], 2, folders)
    # five each: the embedded default counts per process
    assert _round_robin(apps, keys[0], 10) == [200] * 10


def test_the_service_answers_when_redis_is_down_and_counts_it(
    config: Config, tmp_path: Path, keys: Keys, folders: dict[str, Any]
) -> None:
    nobody = f"redis://127.0.0.1:{_free_port()}/0"  # nothing listens there
    app = create_app(
        smart_config(
            config, tmp_path, keys[0], rate_limit_per_minute=1, rate_limit_burst=1, redis_url=nobody
        ),
        **folders,
    )
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {sign(keys[0], scope='system/*.rs')}"}
        statuses = [client.get("/fhir/Goal", headers=headers).status_code for _ in range(3)]
        assert statuses == [200, 200, 200]  # fail open: a cache outage is not a service outage
        metrics = client.get("/metrics", headers=headers).get_data(as_text=True)
        line = next(
            x
            for x in metrics.splitlines()
            if x.startswith("whatmatters_rate_limit_store_errors_total")
        )
        assert float(line.split()[-1]) >= 3
    finally:
        app.extensions["whatmatters.store"].close()


def _audit_addresses(app: Flask, admin: dict[str, str]) -> list[str]:
    answer = app.test_client().get(
        "/fhir/AuditEvent?_count=100", headers=admin, environ_base={"REMOTE_ADDR": "127.0.0.9"}
    )
    assert answer.status_code == 200
    events = answer.get_json()
    return [
        e["resource"]["agent"][0].get("network", {}).get("address", "")
        for e in events.get("entry", [])
    ]


@pytest.mark.parametrize(("hops", "believed"), [(1, True), (0, False)])
def test_forwarded_addresses_are_believed_only_from_trusted_proxies(
    config: Config, tmp_path: Path, keys: Keys, hops: int, believed: bool, folders: dict[str, Any]
) -> None:
    app = create_app(
        smart_config(
            config,
            tmp_path,
            keys[0],
            rate_limit_per_minute=2,
            rate_limit_burst=2,
            trusted_proxy_hops=hops,
        ),
        **folders,
    )
    try:
        client = app.test_client()
        anonymous_app = sign(keys[0], scope="system/*.rs", client_id=None, sub=None)
        headers = {"Authorization": f"Bearer {anonymous_app}"}
        # a forged or forwarded client address, changing on every request
        statuses = [
            client.get(
                "/fhir/Goal",
                headers={**headers, "X-Forwarded-For": f"203.0.113.{n}"},
                environ_base={"REMOTE_ADDR": "127.0.0.1"},
            ).status_code
            for n in range(1, 5)
        ]
        auditor = sign(keys[0], scope="system/*.rs", client_id="auditor", sub="auditor")
        admin = {"Authorization": f"Bearer {auditor}"}
        addresses = _audit_addresses(app, admin)
        if believed:
            # each forwarded address has its own count, and the AuditEvents name it
            assert statuses == [200, 200, 200, 200]
            assert {"203.0.113.1", "203.0.113.2"} <= set(addresses)
        else:
            # the header changes nothing: one address (the proxy's), one count
            assert statuses == [200, 200, 429, 429]
            assert not any(a.startswith("203.0.113.") for a in addresses)
            assert "127.0.0.1" in addresses
    finally:
        app.extensions["whatmatters.store"].close()
