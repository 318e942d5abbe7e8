"""Shared fixtures: the database under test (SQLite by default, PostgreSQL when
WHATMATTERS_TEST_DATABASE_URL names one), the Flask app and a test client."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import Client

from service import create_app, load_mappings
from service.config import Config
from service.fhir.audit_trail import flush_all
from service.storage.sql import SqlStore, metadata
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry

PG_ENV = "WHATMATTERS_TEST_DATABASE_URL"


def _database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get(PG_ENV)
    worker = os.environ.get("PYTEST_XDIST_WORKER")  # gw0, gw1, … under ``pytest -n``
    if configured:
        return _worker_database(configured, worker, make=True) if worker else configured
    # each xdist worker has a base temporary folder of its own
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"


def _worker_database(configured: str, worker: str, make: bool) -> str:
    """The PostgreSQL database of one xdist worker, next to the configured one (its name with
    ``_gw0`` added): made empty (``make``), or dropped."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(configured)
    database = f"{url.database}_{worker}"
    admin = url.set(drivername="postgresql", database="postgres")
    with psycopg.connect(admin.render_as_string(hide_password=False), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        if make:
            conn.execute(f'CREATE DATABASE "{database}"')
    return url.set(database=database).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The database all tests of this run (or of this xdist worker) use."""
    yield _database_url(tmp_path_factory)
    configured, worker = os.environ.get(PG_ENV), os.environ.get("PYTEST_XDIST_WORKER")
    if configured and worker:
        _worker_database(configured, worker, make=False)


@pytest.fixture(scope="session")
def sql_store(database_url: str) -> Iterator[SqlStore]:
    """One migrated SqlStore for the session."""
    store = SqlStore.from_url(database_url)
    with store.engine.begin() as conn:
        metadata.drop_all(conn)
    store.migrate()
    yield store
    store.close()


def wipe(store: SqlStore) -> None:
    """Remove every row, keeping the schema and the installation's identity (both made by the
    migrations; an installation never loses its identity, and making it again inside a write
    would wait on that write's own lock under SQLite). AuditEvents an application still holds
    in its audit buffer are stored first, so none reaches the emptied database later."""
    flush_all()
    with store.engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            if table.name not in ("schema_migrations", "instance_identity"):
                conn.execute(text(f"DELETE FROM {table.name}"))


def app_config(database_url: str) -> Config:
    """The settings of the tests' application."""
    return Config(database_url=database_url, public_base_url="http://test.local/fhir")


@pytest.fixture
def config(database_url: str, sql_store: SqlStore) -> Config:
    """A Config pointing at the (emptied) test database."""
    wipe(sql_store)
    return app_config(database_url)


@pytest.fixture(scope="session")
def folders() -> dict[str, Any]:
    """The profiles and mapping folders, read and checked once per run: most of an app's
    start-up. ``create_app(config, **folders)`` builds an app on them (for any Config that
    keeps the default folders)."""
    registry = ProfileRegistry.load(Definitions.shared(), Config().profiles_dir)
    return {
        "registry": registry,
        "mappings": load_mappings(Config(), [f.resource for f in registry.files]),
    }


@pytest.fixture(scope="session")
def shared_app(database_url: str, sql_store: SqlStore, folders: dict[str, Any]) -> Iterator[Flask]:
    """One application for the run: building one costs more than most tests (URL rules,
    validators, the database engine). It keeps no state of its own between requests beyond
    metrics, which tests read as differences."""
    application = create_app(app_config(database_url), **folders)
    yield application
    application.extensions["whatmatters.store"].close()


@pytest.fixture
def app(config: Config, shared_app: Flask) -> Flask:
    """The application under test, on the database ``config`` has just emptied; a test that
    needs other settings builds its own with ``create_app(config, **folders)``."""
    assert shared_app.config["WHATMATTERS"] == config
    return shared_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client for the application."""
    return app.test_client()


FIXTURES = Path(__file__).parent / "fixtures"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def live_server(database_url: str, sql_store: SqlStore) -> Iterator[str]:
    """The service under gunicorn (4 worker processes) on a free loopback port."""
    import subprocess
    import sys
    import time

    import requests

    port = _free_port()
    env = {
        **os.environ,
        "WHATMATTERS_DATABASE_URL": database_url,
        "WHATMATTERS_AUTO_MIGRATE": "false",
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "wsgi:app",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "4",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
        ],
        cwd=Path(__file__).parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}/fhir"
    deadline = time.monotonic() + 60
    while True:
        try:
            if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                break
        except requests.RequestException:  # refused, or a worker still starting up
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            _, err = process.communicate()
            raise RuntimeError(f"gunicorn did not start: {err.decode()[-2000:]}")
        time.sleep(0.2)
    yield base
    process.terminate()
    process.wait(timeout=30)
    if process.stderr is not None:
        process.stderr.close()


# The slow tier (README, "The two commands"): whole folders and files by path, so a new test
# there is slow without a mark, and every test that needs the gunicorn ``live_server``.
# Heavy tests elsewhere carry ``@pytest.mark.slow`` themselves.
TESTS = Path(__file__).parent
SLOW_PATHS = (
    "agreement/",
    "browser/",
    "perf/",
    "reliability/",
    "exchange/test_end_to_end.py",
    "exchange/test_identity.py",  # two `whatmatters serve` instances and their workers
    "operations/test_dockerfile.py",
    "operations/test_metrics_workers.py",  # `whatmatters serve` with four gunicorn workers
    "search/test_explain.py",
    "test_quality_gates.py",
)
SLOW_FIXTURES = frozenset({"live_server"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the slow tier (see SLOW_PATHS)."""
    for item in items:
        where = item.path.relative_to(TESTS).as_posix() if item.path.is_relative_to(TESTS) else ""
        if where.startswith(SLOW_PATHS) or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def pytest_configure(config: pytest.Config) -> None:
    """A new run starts a new reliability report (in the controlling process only)."""
    from tests.reliability import report

    if not hasattr(config, "workerinput"):
        report.clear()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print (and write) the reliability report when its tests ran (tests/reliability)."""
    from tests.reliability import report

    line = report.merge()
    if line:
        terminalreporter.write_sep("=", "reliability report")
        terminalreporter.write_line(line)
        terminalreporter.write_line(f"details: {os.path.abspath(report.FOLDER / 'report.json')}")


# Every resource a test gets back through the Flask test client is also parsed with the
# fhir.resources R4B models: an independent check, written by others from the specification,
# that what the service emits is well-formed FHIR, whatever the test itself asserts.


def parse_with_r4b_models(body: Any) -> None:
    """Raise when a FHIR resource does not parse with the R4B model of its type."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        return
    model = get_fhir_model_class(body["resourceType"])
    model.model_validate(body)


@pytest.fixture(autouse=True)
def _responses_parse_as_r4(monkeypatch: pytest.MonkeyPatch) -> None:
    original = Client.open

    def open_and_parse(self: Client, *args: Any, **kwargs: Any) -> Any:
        response = original(self, *args, **kwargs)
        if "json" in (response.mimetype or "") and response.status_code != 204:
            try:
                body = json.loads(response.get_data())
            except ValueError:
                return response
            try:
                parse_with_r4b_models(body)
            except Exception as exc:
                raise AssertionError(
                    f"{body.get('resourceType')} from the API does not parse as R4: {exc}"
                ) from exc
        return response

    monkeypatch.setattr(Client, "open", open_and_parse)
