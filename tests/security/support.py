"""Helpers of the security tests: a SMART issuer of our own, tokens, and two patients."""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import insert, select

from service import create_app
from service.config import Config
from service.storage.sql import SqlStore, metadata
from tests.conftest import app_config
from tests.priorities.conversations import FHIR_JSON, conversation, goal, ranking, statement

ISSUER = "https://auth.test.local"
AUDIENCE = "http://test.local/fhir"
KID = "test-key-1"
B_WORDS = "Bryn's secret wish"


@pytest.fixture(scope="session")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    """The issuer's signing key, and a stranger's (one pair per run: the shared smart-mode app
    trusts the first)."""
    return (
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )


def sign(key: rsa.RSAPrivateKey, **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-1",
        "client_id": "test-app",
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    return jwt.encode(body, key, algorithm="RS384", headers={"kid": KID})


def smart_config(config: Config, tmp_path: Path, key: rsa.RSAPrivateKey, **changes: Any) -> Config:
    """The test database's Config in the smart mode, trusting ``key`` (a JWKS file)."""
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps({"keys": [{**public, "kid": KID, "alg": "RS384"}]}))
    return Config(
        database_url=config.database_url,
        public_base_url=AUDIENCE,
        auth_mode="smart",
        auth_issuer=ISSUER,
        auth_jwks_url=jwks_file.as_uri(),
        auth_token_url=f"{ISSUER}/token",
        auth_authorize_url=f"{ISSUER}/authorize",
        **changes,
    )


def fresh(application: Flask) -> Flask:
    """``application`` as a newly built one would be for the next test: no requests counted by
    its rate limits (its only state besides the database and the metrics, which tests read as
    differences)."""
    limiter = application.extensions.get("whatmatters.client_limiter")
    if limiter is not None:
        # the per-address and per-client limits count in one storage
        limiter.limiter.storage.reset()
    return application


@pytest.fixture(scope="session")
def shared_smart_app(
    database_url: str,
    sql_store: SqlStore,
    tmp_path_factory: pytest.TempPathFactory,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> Iterator[Flask]:
    """One smart-mode application for the run (building one per test cost more than most of
    the tests)."""
    folder = tmp_path_factory.mktemp("smart")
    application = create_app(smart_config(app_config(database_url), folder, keys[0]), **folders)
    yield application
    application.extensions["whatmatters.store"].close()


@pytest.fixture
def smart_app(config: Config, shared_smart_app: Flask) -> Flask:
    """The smart-mode application, trusting ``keys[0]``, on the database ``config`` has just
    emptied; a test that needs other settings builds its own with ``smart_config``."""
    return fresh(shared_smart_app)


class Caller:
    """A test client that sends one token with every request."""

    def __init__(self, client: FlaskClient, token: str | None) -> None:
        self.client = client
        self.token = token

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, url: str) -> Any:
        return self.client.get(url, headers=self._headers())

    def post(self, url: str, body: Any) -> Any:
        return self.client.post(url, json=body, headers=self._headers(FHIR_JSON))

    def put(self, url: str, body: Any) -> Any:
        return self.client.put(url, json=body, headers=self._headers(FHIR_JSON))

    def delete(self, url: str) -> Any:
        return self.client.delete(url, headers=self._headers())


@pytest.fixture
def world(smart_app: Flask, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]) -> dict[str, Any]:
    """Patients pA and pB with a conversation each, stored by a system client.

    The first time on an application the world is made through the API; its rows are then kept
    and, for the next test on the same application and an empty database, written back as they
    were (the same resources, versions, index rows, audit and outbox rows), which costs a
    fraction of the requests."""
    client = smart_app.test_client()
    store = smart_app.extensions["whatmatters.store"]
    saved: tuple[dict[str, Any], dict[str, list[dict[str, Any]]]] | None
    saved = smart_app.extensions.get(WORLD)
    if not isinstance(store, SqlStore) or not _empty(store):
        return {**_make_world(client, keys), "client": client, "keys": keys}
    if saved is None:
        ids = _make_world(client, keys)
        smart_app.extensions["whatmatters.audit"].flush()  # its AuditEvents are rows too
        smart_app.extensions[WORLD] = (ids, _rows(store))
    else:
        ids, rows = saved
        _write_rows(store, rows)
    return {**copy.deepcopy(ids), "client": client, "keys": keys}


WORLD = "tests.security.world"  # where an application keeps its world's rows
_KEPT = ("schema_migrations", "instance_identity")  # never emptied between tests


def _empty(store: SqlStore) -> bool:
    with store.engine.connect() as conn:
        return all(
            conn.execute(select(table).limit(1)).first() is None
            for table in metadata.sorted_tables
            if table.name not in _KEPT
        )


def _rows(store: SqlStore) -> dict[str, list[dict[str, Any]]]:
    with store.engine.connect() as conn:
        return {
            table.name: [dict(row._mapping) for row in conn.execute(select(table))]
            for table in metadata.sorted_tables
            if table.name not in _KEPT
        }


def _write_rows(store: SqlStore, rows: dict[str, list[dict[str, Any]]]) -> None:
    """Write rows back as they were. Generated keys (version seq, outbox id) keep their values,
    all below what their sequences hand out next, so later writes still come after them."""
    with store.engine.begin() as conn:
        for table in metadata.sorted_tables:
            if rows.get(table.name):
                conn.execute(insert(table), rows[table.name])


def _make_world(
    client: FlaskClient, keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]
) -> dict[str, Any]:
    admin = Caller(client, sign(keys[0], scope="system/*.cruds"))
    ids: dict[str, Any] = {}
    for name, nhs, words in (("pA", "9000000009", "Walk the dog"), ("pB", "9000000017", B_WORDS)):
        patient = {
            "resourceType": "Patient",
            "id": name,
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Jones" if name == "pA" else "Bryn", "given": ["E"]}],
        }
        put = admin.put(f"/fhir/Patient/{name}", patient)
        assert put.status_code == 201, put.get_data(as_text=True)
        body = conversation(
            statement("s1", words), goal("g1", f"{words} goal", "s1"), ranking("s1")
        )
        response = admin.post(f"/fhir/Patient/{name}/$record-what-matters", body)
        assert response.status_code in (200, 201), response.get_data(as_text=True)
        goals = admin.get(f"/fhir/Goal?patient=Patient/{name}").get_json()
        ids[name] = {"goal": goals["entry"][0]["resource"]["id"]}
        observations = admin.get(f"/fhir/Observation?patient=Patient/{name}").get_json()
        ids[name]["observation"] = observations["entry"][0]["resource"]["id"]
    return ids


def caller(world: dict[str, Any], token: str | None) -> Caller:
    return Caller(world["client"], token)


def token_for(world: dict[str, Any], kind: str) -> str | None:
    key, stranger = world["keys"]
    now = int(time.time())
    return {
        "patient-A": lambda: sign(key, scope="launch/patient patient/*.cruds", patient="pA"),
        "patient-A-v1": lambda: sign(key, scope="patient/*.read patient/*.write", patient="pA"),
        "patient-B": lambda: sign(key, scope="patient/*.rs", patient="pB"),
        "user": lambda: sign(key, scope="user/*.rs"),
        "system": lambda: sign(key, scope="system/*.cruds"),
        "expired": lambda: sign(key, scope="system/*.cruds", exp=now - 120, iat=now - 600),
        "not-yet": lambda: sign(key, scope="system/*.cruds", nbf=now + 600),
        "wrong-issuer": lambda: sign(key, scope="system/*.cruds", iss="https://evil.example"),
        "wrong-audience": lambda: sign(key, scope="system/*.cruds", aud="https://other/fhir"),
        "tampered": lambda: _tampered(sign(key, scope="patient/*.rs", patient="pA")),
        "stranger-key": lambda: sign(stranger, scope="system/*.cruds"),
        "no-scope": lambda: sign(key, scope="openid fhirUser", patient="pA"),
        "goal-only": lambda: sign(key, scope="patient/Goal.rs", patient="pA"),
        "none": lambda: None,
    }[kind]()


def _tampered(token: str) -> str:
    head, payload, signature = token.split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["patient"] = "pB"
    forged = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    return f"{head}.{forged}.{signature}"


def plain_goal(patient: str, text: str) -> dict[str, Any]:
    """A Goal for one of the two patients, with no profile."""
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": f"Patient/{patient}"},
    }


def text_of(response: Any) -> str:
    return response.get_data(as_text=True)
