"""The whatmatters command: init-db and serve on the embedded SQLite default."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.builders import whatmatters
from tests.conftest import _free_port

BIN = Path(sys.executable).parent / "whatmatters"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHATMATTERS_")}
    return env


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_init_db_creates_the_sqlite_schema_and_is_idempotent(tmp_path: Path) -> None:
    first = whatmatters("init-db", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied migration 1" in first.stdout
    assert (tmp_path / "instance" / "whatmatters.db").exists()
    again = whatmatters("init-db", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "schema is current" in again.stdout


@pytest.mark.slow  # starts `whatmatters serve`
def test_serve_answers_metadata_on_the_sqlite_default(tmp_path: Path) -> None:
    port = _free_port()
    process = subprocess.Popen(
        [str(BIN), "serve", "--port", str(port)],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline:
            try:
                # the first answer builds the CapabilityStatement: on a busy machine that takes
                # longer than a connection attempt, so only refusals are retried
                response = requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=30)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                time.sleep(0.2)
        assert response is not None
        assert response.status_code == 200
        assert response.json()["fhirVersion"] == "4.0.1"
        assert (tmp_path / "instance" / "whatmatters.db").exists()
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_bad_configuration_is_refused_with_a_message(tmp_path: Path) -> None:
    result = whatmatters("init-db", cwd=tmp_path, env={"WHATMATTERS_PORT": "eighty"})
    assert result.returncode == 2
    assert "WHATMATTERS_PORT" in result.stderr


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_serve_refuses_the_network_without_authorization(tmp_path: Path) -> None:
    result = whatmatters(
        "serve",
        "--host",
        "0.0.0.0",  # noqa: S104 - the address whose refusal is tested
        env={"WHATMATTERS_DATABASE_URL": f"sqlite:///{tmp_path / 'refused.db'}"},
    )
    assert result.returncode == 2
    assert "WHATMATTERS_AUTH_MODE=smart" in result.stderr
    assert not (tmp_path / "refused.db").exists()  # refused before touching anything


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),  # noqa: S104 - a non-loopback address for the check
        ("10.0.0.4", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    from service.config import is_loopback

    assert is_loopback(host) is loopback
