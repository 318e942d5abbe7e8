"""What SMART authorization costs: reads, searches and writes in the smart mode (token check,
compartment guard, AuditEvent per request, Provenance per write) against the same requests in
the none mode, measured in one process, one after the other, on the same database engine.

Run:  .venv/bin/python -m tests.perf.bench_auth [--database postgresql] [--seconds 2] [--rounds 3]
      [--cpu]  (rates per CPU second of the process: steadier on a shared machine, but the
               waits for the disk's flushes, which the smart mode has more of, do not count)

Each request goes through the Flask test client (no sockets), so the figures are the service's
own work. Both apps (each on a database of its own) are measured in turn, request kind by
request kind, for several rounds; the best rate of each is kept. The ratio (none / smart
requests per second) says how many times more an authorized request costs; the absolute rates
depend on the machine.
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
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from service import create_app
from service.config import Config
from service.storage.schema import metadata
from service.storage.sql import SqlStore

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


def second_database(kind: str, folder: Path, url: str) -> str:
    """A database beside ``url`` for the second mode (both apps live through the rounds)."""
    if kind == "sqlite":
        return f"sqlite:///{folder / f'auth-{uuid.uuid4().hex}.db'}"
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        found = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (f"{name}_smart",)
        ).fetchone()
        if found is None:
            conn.execute(f'CREATE DATABASE "{name}_smart"')
    return f"{base}/{name}_smart"


def empty(url: str) -> None:
    store = SqlStore.from_url(url)
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
        conn.execute(text("SELECT 1"))
    store.migrate()
    store.close()


def rate(work: Callable[[int], None], seconds: float, cpu: bool = False) -> float:
    """Requests per second of ``work`` over ``seconds`` (wall time); with ``cpu``, per CPU
    second of this process (its threads included), so other tenants of a shared machine and
    the disk's waits do not count."""
    done = 0
    start = time.perf_counter()
    used = time.process_time()
    while time.perf_counter() - start < seconds:
        work(done)
        done += 1
    if cpu:
        return done / (time.process_time() - used)
    return done / (time.perf_counter() - start)


Phases = dict[str, Callable[[int], None]]


def prepare(config: Config, headers: dict[str, str]) -> tuple[Flask, Phases]:
    """An app on ``config`` with 20 patients and a goal, and its read, search and write."""
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

    return app, {"read": read, "search": search, "write": write}


def close(app: Flask) -> None:
    app.extensions["whatmatters.audit"].close()  # what the trail still holds is stored
    app.extensions["whatmatters.store"].close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
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
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="rates per CPU second of this process (the disk's waits not counted), not wall",
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
    none_url = fresh_database(args.database, folder, args.postgresql_url)
    smart_url = second_database(args.database, folder, none_url)
    empty(none_url)
    empty(smart_url)
    modes = {
        "none": prepare(Config(database_url=none_url, public_base_url=AUDIENCE), {}),
        "smart": prepare(
            Config(
                database_url=smart_url,
                public_base_url=AUDIENCE,
                auth_mode="smart",
                auth_issuer=ISSUER,
                auth_jwks_url=jwks.as_uri(),
                rate_limit_per_minute=0,
                audit_window_ms=args.audit_window_ms,
            ),
            {"Authorization": f"Bearer {token}"},
        ),
    }
    # each request kind in each mode, one after the other, in several rounds; the best rate
    # of each is kept, so a burst of other work on a shared machine does not decide a ratio
    best: dict[str, dict[str, float]] = {"none": {}, "smart": {}}
    for _ in range(args.rounds):
        for kind in ("read", "search", "write"):
            for mode, (_app, phases) in modes.items():
                measured = rate(phases[kind], args.seconds, args.cpu)
                best[mode][kind] = max(best[mode].get(kind, 0.0), measured)
    for app, _phases in modes.values():
        close(app)
    baseline, smart = best["none"], best["smart"]
    clock = "CPU" if args.cpu else "wall"
    print(f"audit window: {args.audit_window_ms} ms; rates per {clock} second")
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
