"""The Dockerfile's own commands, run outside a container (no Docker engine runs here).

The test reads the Dockerfile: the build stage's COPY and RUN (a fresh virtual environment
and ``pip install .``), the final stage's COPY, WORKDIR, ENV, HEALTHCHECK and CMD. It runs them
with the image's paths mapped into a temporary folder and the port mapped to a free one, then
checks the health check passes, the service is ready and answers FHIR, and that SIGTERM shuts
it down cleanly (gunicorn finishes in-flight requests first).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.conftest import _free_port

ROOT = Path(__file__).resolve().parents[2]


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions per stage, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    result: list[list[tuple[str, str]]] = []
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            result.append([])
        result[-1].append((keyword.upper(), rest.strip()))
    return result


def test_the_dockerfile_is_multi_stage_slim_and_non_root() -> None:
    build, final = stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    assert "slim" in build[0][1]
    assert "slim" in final[0][1]
    assert ("USER", "whatmatters") in final
    assert any(k == "HEALTHCHECK" for k, _ in final)
    assert not any(k == "COPY" and "tests" in v for k, v in build + final)


def test_the_dockerfile_commands_install_and_start_the_service(tmp_path: Path) -> None:
    build, final = stages((ROOT / "Dockerfile").read_text(encoding="utf-8"))
    venv = tmp_path / "opt-whatmatters"
    src = tmp_path / "src"
    app = tmp_path / "app"
    src.mkdir()
    app.mkdir()

    def mapped(text: str) -> str:
        # the image's python is this interpreter's version (python:3.11-slim)
        text = re.sub(r"(^|&& |; )python ", rf"\g<1>{sys.executable} ", text)
        return (
            text.replace("/opt/whatmatters", str(venv))
            .replace("/app/", f"{app}/")
            .replace("/src", str(src))
        )

    for keyword, value in build:
        if keyword == "COPY":
            *sources, _target = value.split()
            for source in sources:
                copy(ROOT / source, src / Path(source).name)
        elif keyword == "RUN":
            run = subprocess.run(
                ["sh", "-c", mapped(value)], cwd=src, capture_output=True, text=True, timeout=900
            )
            assert run.returncode == 0, run.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHATMATTERS_")}
    command = ""
    health = ""
    for keyword, value in final:
        if keyword == "COPY" and "--from" not in value:
            *sources, _target = value.split()
            for source in sources:
                copy(ROOT / source, app / Path(source).name)
        elif keyword == "ENV":
            for pair in shlex.split(value):
                name, _, setting = pair.partition("=")
                env[name] = mapped(setting.replace("$PATH", os.environ["PATH"]))
        elif keyword == "HEALTHCHECK":
            health = value.split(" CMD ", 1)[1]
        elif keyword == "CMD":
            command = json.loads(value)[-1]
    assert command
    assert health
    port = _free_port()
    (app / "instance").mkdir(exist_ok=True)
    # the image listens on every interface, so it runs the smart mode (README, Docker)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": "k"}]}))
    env.update(
        WHATMATTERS_AUTH_MODE="smart",
        WHATMATTERS_AUTH_ISSUER="https://auth.example.org",
        WHATMATTERS_AUTH_JWKS_URL=(tmp_path / "jwks.json").as_uri(),
        WHATMATTERS_DATABASE_URL=f"sqlite:///{app / 'instance' / 'whatmatters.db'}",
        WHATMATTERS_PUBLIC_BASE_URL=f"http://127.0.0.1:{port}/fhir",
    )
    server = subprocess.Popen(
        ["sh", "-c", command.replace("8080", str(port))],
        cwd=app,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{base}/healthz", timeout=2).status_code == 200, server)
        probe = subprocess.run(
            [str(venv / "bin" / "python"), *shlex.split(health.replace("8080", str(port)))[1:]],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert probe.returncode == 0, probe.stderr
        assert requests.get(f"{base}/readyz", timeout=5).json()["status"] == "ready"
        assert requests.get(f"{base}/fhir/metadata", timeout=5).status_code == 200
        assert requests.get(f"{base}/fhir/Goal", timeout=5).status_code == 401  # smart mode
        # SIGTERM while a large transaction is in flight: it still completes, then the
        # service exits cleanly
        now = int(time.time())
        claims = {
            "iss": "https://auth.example.org",
            "aud": f"http://127.0.0.1:{port}/fhir",
            "exp": now + 300,
            "sub": "ops",
            "scope": "system/*.cruds",
        }
        token = jwt.encode(claims, key, algorithm="RS384", headers={"kid": "k"})
        answers: list[int] = []
        writer = threading.Thread(
            target=lambda: answers.append(big_transaction(base, token)), daemon=True
        )
        writer.start()
        time.sleep(0.5)
        os.killpg(server.pid, signal.SIGTERM)
        writer.join(timeout=120)
        assert answers == [200]
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        output = server.stdout.read() if server.stdout else ""
        if server.stdout:
            server.stdout.close()
    assert "What Matters FHIR service on" in output


def big_transaction(base: str, token: str) -> int:
    """POST a transaction of 2,000 Goals (seconds of work); return the status."""
    entries = [
        {
            "resource": {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "description": {"text": f"Goal {n}"},
                "subject": {"display": "a patient"},
            },
            "request": {"method": "POST", "url": "Goal"},
        }
        for n in range(2000)
    ]
    response = requests.post(
        f"{base}/fhir",
        json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"},
        timeout=120,
    )
    return response.status_code


def copy(source: Path, target: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    else:
        shutil.copy2(source, target)


def wait_for(check: object, server: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            output = server.stdout.read() if server.stdout else ""
            raise AssertionError(f"the service stopped: {output[-3000:]}")
        try:
            if check():  # type: ignore[operator]
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise AssertionError("the service did not answer in time")
