"""Bulk Data export in the smart mode: system/ read scopes (SMART Backend Services) export,
patient-context and user/ tokens are refused, and only the client that kicked an export off may
poll it, cancel it and fetch its files (requiresAccessToken)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from service import build_worker, create_app
from service.config import Config
from tests.security.support import sign, smart_config

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


@pytest.fixture
def smart(
    config: Config,
    folders: dict[str, Any],
    tmp_path: Path,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
) -> Iterator[Flask]:
    app = create_app(
        smart_config(config, tmp_path, keys[0], export_dir=tmp_path / "exports"), **folders
    )
    client = app.test_client()
    admin = bearer(keys[0], "system/*.cruds", client_id="loader")
    for n in range(3):
        body = {"resourceType": "Patient", "id": f"sx{n}", "name": [{"family": f"S{n}"}]}
        assert client.put(f"/fhir/Patient/sx{n}", json=body, headers=admin).status_code == 201
        goal = {
            "resourceType": "Goal",
            "id": f"sx-goal{n}",
            "lifecycleStatus": "active",
            "description": {"text": "Dancing"},
            "subject": {"reference": f"Patient/sx{n}"},
        }
        assert client.put(f"/fhir/Goal/sx-goal{n}", json=goal, headers=admin).status_code == 201
    yield app
    app.extensions["whatmatters.store"].close()


def bearer(key: rsa.RSAPrivateKey, scope: str, **claims: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {sign(key, scope=scope, **claims)}"}


def drain(app: Flask) -> None:
    build_worker(app.config["WHATMATTERS"], app.extensions["whatmatters.fhir"], ()).drain()


@pytest.mark.parametrize(
    ("scope", "claims", "words"),
    [
        ("patient/*.rs", {"patient": "sx0"}, "patient-context access token cannot export"),
        ("system/*.rs patient/*.rs", {"patient": "sx0"}, "patient-context"),
        ("user/*.rs", {}, "system/ read scopes"),
        ("system/*.write", {}, "system/ read scopes"),
    ],
)
def test_only_system_read_scopes_export(
    smart: Flask,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    scope: str,
    claims: dict[str, str],
    words: str,
) -> None:
    headers = {**ASYNC, **bearer(keys[0], scope, **claims)}
    response = smart.test_client().get("/fhir/$export", headers=headers)
    assert response.status_code == 403
    assert words in json.dumps(response.get_json())


def test_a_type_scope_exports_only_its_type(
    smart: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> None:
    client = smart.test_client()
    headers = {**ASYNC, **bearer(keys[0], "system/Goal.rs")}
    refused = client.get("/fhir/$export?_type=Patient", headers=headers)
    assert refused.status_code == 403
    assert "Patient" in refused.get_json()["issue"][0]["diagnostics"]
    accepted = client.get("/fhir/$export", headers=headers)
    assert accepted.status_code == 202
    drain(smart)
    status = accepted.headers["Content-Location"].removeprefix("http://test.local")
    body = client.get(status, headers=headers).get_json()
    assert [item["type"] for item in body["output"]] == ["Goal"]


@pytest.mark.parametrize("scope", ["system/*.read", "system/*.rs"])
def test_only_the_exporting_client_polls_and_downloads(
    smart: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey], scope: str
) -> None:
    client = smart.test_client()
    mine = bearer(keys[0], scope, client_id="research-app")
    other = bearer(keys[0], scope, client_id="another-app")
    kicked = client.get("/fhir/Patient/$export", headers={**ASYNC, **mine})
    assert kicked.status_code == 202
    status = kicked.headers["Content-Location"].removeprefix("http://test.local")
    drain(smart)
    assert client.get(status).status_code == 401
    assert client.get(status, headers=other).status_code == 404
    assert client.delete(status, headers=other).status_code == 404
    body = client.get(status, headers=mine).get_json()
    assert body["requiresAccessToken"] is True
    assert {item["type"]: item["count"] for item in body["output"]} == {
        "Goal": 3,
        "Patient": 3,
        "Provenance": 6,  # the smart mode's Provenance of each write: in the compartment
    }
    url = body["output"][0]["url"].removeprefix("http://test.local")
    assert client.get(url).status_code == 401
    assert client.get(url, headers=other).status_code == 404
    response = client.get(url, headers=mine)
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+ndjson"
    assert len(response.get_data().splitlines()) == body["output"][0]["count"]
    response.close()
    assert client.delete(status, headers=mine).status_code == 202
    assert client.get(status, headers=mine).status_code == 404
