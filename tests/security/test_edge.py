"""The HTTP edge: who may connect in the none mode, which Host names are answered, how long a
token may live, and who may read /metrics.

Specs: RFC 7519 section 2 (NumericDate) and 4.1.4 (exp), RFC 9110 section 7.2 (Host). Peer
addresses are set through the WSGI environ's REMOTE_ADDR: no traffic leaves this machine.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from tests.security.support import sign, smart_config, text_of

# -- finding 6: the none mode answers loopback peers only, however the app was started -----------

DOORS = ["/fhir/metadata", "/fhir/Patient", "/admin/outbox", "/patients/p1/what-matters"]


@pytest.mark.parametrize("peer", ["203.0.113.7", "10.0.0.5", "192.168.1.20", "2001:db8::1"])
@pytest.mark.parametrize("door", DOORS)
def test_the_none_mode_refuses_a_peer_off_this_machine(
    client: FlaskClient, peer: str, door: str
) -> None:
    response = client.get(door, environ_base={"REMOTE_ADDR": peer})
    assert response.status_code == 403
    assert "WHATMATTERS_AUTH_MODE=none" in text_of(response)
    if door.startswith("/fhir/"):  # the clinician's page answers in HTML
        outcome = response.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "forbidden"


def test_the_none_mode_refuses_writes_from_off_this_machine(client: FlaskClient) -> None:
    body = {"resourceType": "Patient", "id": "p1"}
    response = client.put("/fhir/Patient/p1", json=body, environ_base={"REMOTE_ADDR": "192.0.2.1"})
    assert response.status_code == 403
    assert client.get("/fhir/Patient/p1").status_code == 404


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.0.0.53", "::1"])
def test_the_none_mode_answers_loopback_peers(client: FlaskClient, peer: str) -> None:
    response = client.get("/fhir/metadata", environ_base={"REMOTE_ADDR": peer})
    assert response.status_code == 200


def test_the_smart_mode_answers_any_peer(
    config: Config,
    tmp_path: Path,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> None:
    application = create_app(smart_config(config, tmp_path, keys[0]), **folders)
    try:
        client = application.test_client()
        response = client.get("/fhir/metadata", environ_base={"REMOTE_ADDR": "203.0.113.7"})
        assert response.status_code == 200
    finally:
        application.extensions["whatmatters.store"].close()


# -- finding 10: Host header poisoning ----------------------------------------------------------


@pytest.fixture
def hostless(config: Config, folders: dict[str, Any]) -> Iterator[Flask]:
    """The app without a public base URL: links come from the Host header."""
    application = create_app(replace(config, public_base_url=None), **folders)
    yield application
    application.extensions["whatmatters.store"].close()


PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Okafor"}]}


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "localhost.evil.example"])
def test_a_foreign_host_header_is_400(hostless: Flask, host: str) -> None:
    client = hostless.test_client()
    created = client.put("/fhir/Patient/p1", json=PATIENT, headers={"Host": host})
    assert created.status_code == 400
    issue = created.get_json()["issue"][0]
    assert issue["expression"] == ["Host"]
    assert "evil" not in text_of(created)
    searched = client.get("/fhir/Patient?_count=1", headers={"Host": host})
    assert searched.status_code == 400
    assert client.get("/fhir/Patient/p1").status_code == 404


@pytest.mark.parametrize("host", ["localhost", "localhost:8080", "127.0.0.1:9", "[::1]:8080"])
def test_loopback_host_names_build_the_links(hostless: Flask, host: str) -> None:
    client = hostless.test_client()
    created = client.put("/fhir/Patient/p1", json=PATIENT, headers={"Host": host})
    assert created.status_code == 201, text_of(created)
    assert created.headers["Location"].startswith(f"http://{host}/fhir/Patient/p1")


def test_configured_hosts_are_answered(config: Config, folders: dict[str, Any]) -> None:
    application = create_app(
        replace(config, public_base_url=None, allowed_hosts=("fhir.example.org",)), **folders
    )
    try:
        client = application.test_client()
        good = client.get("/fhir/Patient", headers={"Host": "fhir.example.org:443"})
        assert good.status_code == 200
        assert good.get_json()["link"][0]["url"].startswith("http://fhir.example.org:443/fhir/")
        assert client.get("/fhir/Patient", headers={"Host": "localhost"}).status_code == 400
    finally:
        application.extensions["whatmatters.store"].close()


def test_a_public_base_url_decides_the_links_whatever_the_host(client: FlaskClient) -> None:
    created = client.put("/fhir/Patient/p1", json=PATIENT, headers={"Host": "evil.example"})
    assert created.status_code == 201
    assert created.headers["Location"].startswith("http://test.local/fhir/Patient/p1")


# -- finding 12: token lifetime, exp as a number, /metrics ---------------------------------------


@pytest.fixture
def smart(
    smart_app: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> tuple[FlaskClient, rsa.RSAPrivateKey]:
    return smart_app.test_client(), keys[0]


def _get(client: FlaskClient, url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(url, headers=headers)


def test_a_token_living_for_centuries_is_401(
    smart: tuple[FlaskClient, rsa.RSAPrivateKey],
) -> None:
    client, key = smart
    year_3000 = 32503680000
    for claims in ({"exp": year_3000}, {"exp": year_3000, "iat": None}):
        response = _get(client, "/fhir/Goal", sign(key, scope="system/*.rs", **claims))
        assert response.status_code == 401
        assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
        assert "longer" in response.headers["WWW-Authenticate"]


def test_an_exp_sent_as_a_string_is_401(smart: tuple[FlaskClient, rsa.RSAPrivateKey]) -> None:
    client, key = smart
    exp = str(int(time.time()) + 300)
    response = _get(client, "/fhir/Goal", sign(key, scope="system/*.rs", exp=exp))
    assert response.status_code == 401
    assert "NumericDate" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_an_nbf_or_iat_sent_as_a_string_is_401(
    smart: tuple[FlaskClient, rsa.RSAPrivateKey], claim: str
) -> None:
    client, key = smart
    # a string the JWT library would read as a number: "0" is long past
    response = _get(client, "/fhir/Goal", sign(key, scope="system/*.rs", **{claim: "0"}))
    assert response.status_code == 401
    assert f"{claim} is not a number" in response.headers["WWW-Authenticate"]


def test_a_token_of_the_longest_lifetime_is_accepted(
    smart: tuple[FlaskClient, rsa.RSAPrivateKey],
) -> None:
    client, key = smart
    now = int(time.time())
    token = sign(key, scope="system/*.rs", iat=now, exp=now + 3600)
    assert _get(client, "/fhir/Goal", token).status_code == 200


def test_metrics_need_a_system_token_in_the_smart_mode(
    smart: tuple[FlaskClient, rsa.RSAPrivateKey],
) -> None:
    client, key = smart
    assert _get(client, "/metrics", None).status_code == 401
    patient = sign(key, scope="patient/*.rs", patient="pA")
    assert _get(client, "/metrics", patient).status_code == 403
    assert _get(client, "/metrics", sign(key, scope="user/*.rs")).status_code == 403
    system = _get(client, "/metrics", sign(key, scope="system/*.rs"))
    assert system.status_code == 200
    assert "whatmatters" in text_of(system)


def test_metrics_may_be_made_public(
    config: Config,
    tmp_path: Path,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> None:
    application = create_app(
        smart_config(config, tmp_path, keys[0], metrics_public=True), **folders
    )
    try:
        assert application.test_client().get("/metrics").status_code == 200
    finally:
        application.extensions["whatmatters.store"].close()
