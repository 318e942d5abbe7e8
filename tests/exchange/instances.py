"""Real instances of the service for end-to-end exchange tests: `whatmatters serve` processes
on loopback, each with its own database (SQLite files, or PostgreSQL databases when the suite
runs on PostgreSQL) and its own partners file."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from sqlalchemy.engine import make_url

PROJECT = Path(__file__).resolve().parents[2]
PG_ENV = "WHATMATTERS_TEST_DATABASE_URL"
FAST_OUTBOX = {
    "WHATMATTERS_OUTBOX_POLL_SECONDS": "0.05",
    "WHATMATTERS_OUTBOX_RETRY_BASE_SECONDS": "0.2",
    "WHATMATTERS_OUTBOX_RETRY_CAP_SECONDS": "1.5",
    "WHATMATTERS_OUTBOX_LEASE_SECONDS": "3",
}


def free_port() -> int:
    """A free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def database_for(name: str, folder: Path) -> str:
    """A fresh, empty database for one instance."""
    configured = os.environ.get(PG_ENV)
    if not configured:
        return f"sqlite:///{folder / f'{name}.db'}"
    import psycopg

    url = make_url(configured)
    # one database per instance and test process, so parallel test runs never share one
    database = f"{url.database}_{name}_{os.getpid()}"
    admin = url.set(drivername="postgresql", database="postgres")
    dsn = admin.render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}"')
    return url.set(database=database).render_as_string(hide_password=False)


class Instance:
    """One `whatmatters serve` (and optionally `whatmatters worker`) process."""

    made: list[Instance] = []  # noqa: RUF012 - every instance of the test run, for clean-up

    def __init__(
        self,
        name: str,
        folder: Path,
        *,
        partners: list[dict[str, Any]] | None = None,
        env: dict[str, str] | None = None,
        serve_args: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.serve_args = serve_args
        self.folder = folder
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.root = f"http://127.0.0.1:{self.port}"
        self.database_url = database_for(name, folder)
        self.partners_file = folder / f"{name}-partners.json"
        self.set_partners(partners or [])
        self.env = {
            **os.environ,
            **FAST_OUTBOX,
            "WHATMATTERS_DATABASE_URL": self.database_url,
            "WHATMATTERS_PARTNERS_FILE": str(self.partners_file),
            "WHATMATTERS_PUBLIC_BASE_URL": self.base,
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.log"
        Instance.made.append(self)

    def set_partners(self, partners: list[dict[str, Any]]) -> None:
        """Write the instance's partners file (read at the next start)."""
        self.partners_file.write_text(json.dumps({"partners": partners}), encoding="utf-8")

    def start(self, **env: str) -> Instance:
        """Start serving and wait until the CapabilityStatement answers."""
        self.env.update(env)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service.cli",
                    "serve",
                    "--port",
                    str(self.port),
                    *self.serve_args,
                ],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{self.base}/metadata", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start: {self.log.read_text()[-3000:]}")
            time.sleep(0.1)

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Run `whatmatters worker` as its own process."""
        with self.log.open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker"],
                cwd=PROJECT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.worker

    def kill_worker(self) -> None:
        """SIGKILL the worker process: no chance to finish or clean up."""
        if self.worker is not None:
            self.worker.send_signal(signal.SIGKILL)
            self.worker.wait(timeout=30)
            self.worker = None

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a `whatmatters` command against this instance's database."""
        return subprocess.run(
            [sys.executable, "-m", "service.cli", *args],
            cwd=PROJECT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def stop(self) -> None:
        """Stop the worker and the server."""
        self.kill_worker()
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
            self.process = None

    def drop_database(self) -> None:
        """Remove a PostgreSQL database made for this instance (SQLite files go with tmp)."""
        url = make_url(self.database_url)
        if url.get_backend_name() != "postgresql":
            return
        import psycopg

        admin = url.set(drivername="postgresql", database="postgres")
        with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)')

    def outbox(self, **params: Any) -> dict[str, Any]:
        """The admin view of the outbox."""
        response = requests.get(f"{self.root}/admin/outbox", params=params, timeout=10)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def undelivered(self) -> int:
        """Rows still pending or in flight."""
        return sum(
            line["rows"]
            for line in self.outbox()["summary"]
            if line["state"] in ("pending", "inflight")
        )

    def wait_until_delivered(self, timeout: float = 120.0) -> None:
        """Wait (bounded, so a bug fails instead of hanging) until nothing is undelivered."""
        deadline = time.monotonic() + timeout
        while self.undelivered():
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name}: undelivered rows remain: {self.outbox()}")
            time.sleep(0.1)

    def instance_id(self) -> str:
        """The instance identifier the CapabilityStatement publishes (implementation)."""
        statement = requests.get(f"{self.base}/metadata", timeout=10).json()
        (uri,) = [
            e["valueUri"]
            for e in statement["implementation"].get("extension", [])
            if e["url"].endswith("/instance-identifier")
        ]
        assert uri.startswith("urn:uuid:"), uri
        return str(uri)

    def search(self, type_: str, **params: str) -> list[dict[str, Any]]:
        """Every match of a search (following next links)."""
        found: list[dict[str, Any]] = []
        url: str | None = f"{self.base}/{type_}"
        query: dict[str, str] | None = {**params, "_count": "500"}
        while url:
            response = requests.get(url, params=query, timeout=30)
            assert response.status_code == 200, response.text
            bundle = response.json()
            found += [
                e["resource"]
                for e in bundle.get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"
            ]
            url = next((x["url"] for x in bundle.get("link", []) if x["relation"] == "next"), None)
            query = None
        return found


def partner_entry(name: str, base_url: str, systems: list[str], **extra: Any) -> dict[str, Any]:
    """A partners-file entry sending everything of a patient with an identifier in ``systems``."""
    return {
        "name": name,
        "base_url": base_url,
        "timeout_seconds": 5,
        "send": {
            "types": ["Patient", "Observation", "Goal", "List", "Provenance"],
            "patient_identifier_systems": systems,
        },
        "receive": {"types": ["Observation", "Goal", "List"]},
        **extra,
    }
