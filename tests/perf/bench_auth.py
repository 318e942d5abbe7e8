"""What SMART authorization costs: reads, searches and writes in the smart mode (token check,
compartment guard, AuditEvent per request, Provenance per write) against the same requests in
the none mode, measured in one process, one after the other, on the same database engine.

Run:  .venv/bin/python -m tests.perf.bench_auth [--database postgresql] [--seconds 5]

Each request goes through the Flask test client (no sockets), so the figures are the service's
own work. The ratio (none / smart requests per second) says how many times more an authorized
request costs; the absolute rates depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from flask.testing import FlaskClient
from sqlalchemy import text

from service import create_app
from service.config import Config
from service.storage.sql import SqlStore, metadata

PG_URL = "postgresql://postgres@127.0.0.1:5432/whatmatters_bench"
ISSUER = "https://auth.bench.local"
AUDIENCE = "http://bench.local/fhir"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def fresh_database(kind: str, folder: Path, url: str | None = None) -> str:
    if kind == "sqlite":
        return f"sqlite:///{folder / f'auth-{uuid.uuid4().hex}.db'}"
    if url is not None:
        return url  # emptied by empty() before each mode
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS whatmatters_bench")
        conn.execute("CREATE DATABASE whatmatters_bench")
    return PG_URL


def empty(url: str) -> None:
    store = SqlStore.from_url(url)
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("SELECT 1"))
    store.migrate()
    store.close()


def rate(work: Callable[[int], None], seconds: float) -> float:
    done = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        work(done)
        done += 1
    return done / (time.perf_counter() - start)


def measure(config: Config, headers: dict[str, str], seconds: float) -> dict[str, float]:
    app = create_app(config)
    client: FlaskClient = app.test_client()
    for n in range(20):
        patient = {"resourceType": "Patient", "id": f"p{n}"}
        assert (
            client.put(
                f"/fhir/Patient/p{n}", json=patient, headers={**FHIR_JSON, **headers}
            ).status_code
            == 201
        )
    goal = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "Walk to the shop"},
        "subject": {"reference": "Patient/p1"},
    }
    created = client.post("/fhir/Goal", json=goal, headers={**FHIR_JSON, **headers})
    goal_id = created.get_json()["id"]

    def read(_n: int) -> None:
        assert client.get(f"/fhir/Goal/{goal_id}", headers=headers).status_code == 200

    def search(_n: int) -> None:
        assert client.get("/fhir/Goal?patient=Patient/p1", headers=headers).status_code == 200

    def write(_n: int) -> None:
        response = client.post("/fhir/Goal", json=goal, headers={**FHIR_JSON, **headers})
        assert response.status_code == 201

    results = {
        "read": rate(read, seconds),
        "search": rate(search, seconds),
        "write": rate(write, seconds),
    }
    app.extensions["whatmatters.audit"].close()  # what the trail still holds is stored
    app.extensions["whatmatters.store"].close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--postgresql-url",
        help="a database of its own (emptied); default: whatmatters_bench, dropped and made again",
    )
    parser.add_argument(
        "--audit-window-ms",
        type=int,
        default=Config().audit_window_ms,
        help="the smart mode's audit window (0: each AuditEvent before its answer)",
    )
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="wm-auth-bench-"))
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k1", "alg": "RS384"}]}))
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "bench",
            "client_id": "bench",
            "exp": now + 3600,
            "scope": "user/*.cruds",
        },
        key,
        algorithm="RS384",
        headers={"kid": "k1"},
    )
    url = fresh_database(args.database, folder, args.postgresql_url)
    empty(url)
    baseline = measure(Config(database_url=url, public_base_url=AUDIENCE), {}, args.seconds)
    empty(url)
    smart = measure(
        Config(
            database_url=url,
            public_base_url=AUDIENCE,
            auth_mode="smart",
            auth_issuer=ISSUER,
            auth_jwks_url=jwks.as_uri(),
            rate_limit_per_minute=0,
            audit_window_ms=args.audit_window_ms,
        ),
        {"Authorization": f"Bearer {token}"},
        args.seconds,
    )
    print(f"audit window: {args.audit_window_ms} ms")
    print("| database | request | none mode /s | smart mode /s | ratio (none / smart) |")
    print("|---|---|---|---|---|")
    for name in ("read", "search", "write"):
        print(
            f"| {args.database} | {name} | {baseline[name]:.0f} | {smart[name]:.0f} | "
            f"{baseline[name] / smart[name]:.2f} |"
        )
    out = Path(".benchmarks")
    out.mkdir(exist_ok=True)
    (out / f"auth-{args.database}.json").write_text(
        json.dumps({"none": baseline, "smart": smart}, indent=2), encoding="utf-8"
    )


if __name__ == "__main__":
    main()
