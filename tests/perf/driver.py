"""A bounded HTTP load driver for the benchmarks, and a helper to start apps under gunicorn.

Client processes (not threads, so the driver is not held back by one interpreter) each keep
one keep-alive connection and send requests from a list, round robin, for a fixed time, then
stop. Nothing here has a wall-clock assertion: the benchmarks report ratios measured in the
same run.
"""

from __future__ import annotations

import http.client
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
Request = tuple[str, str, bytes | None]  # method, path, body


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start(
    app: str, database_url: str, workers: int, threads: int
) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``app`` (module:variable) under gunicorn and wait until it answers."""
    port = free_port()
    env = {
        **os.environ,
        "WHATMATTERS_DATABASE_URL": database_url,
        "WHATMATTERS_AUTO_MIGRATE": "false",
        "PYTHONPATH": str(ROOT),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            app,
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--threads",
            str(threads),
            "--worker-class",
            "gthread",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/fhir/Patient/warmup")
            conn.getresponse().read()
            return process, port
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{app} did not start")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server started by ``start``."""
    process.terminate()
    process.wait(timeout=30)


def _client(
    port: int, requests: list[Request], offset: int, seconds: float, keep: int, out: Any
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    latencies: list[float] = []
    bodies: list[bytes] = []
    errors = 0
    index = offset
    stop_at = time.monotonic() + seconds
    while time.monotonic() < stop_at:
        method, path, body = requests[index % len(requests)]
        index += 1
        start_at = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=HEADERS)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            # a dropped connection is an error of the run, not the end of the client
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            continue
        latencies.append(time.perf_counter() - start_at)
        if response.status >= 300:
            errors += 1
        elif len(bodies) < keep:
            bodies.append(data)
    out.put((latencies, bodies, errors))


def drive(
    port: int, requests: list[Request], clients: int, seconds: float, keep: int = 0
) -> dict[str, Any]:
    """Send ``requests`` from ``clients`` processes for ``seconds``; return the statistics."""
    queue: Any = mp.Queue()
    step = max(1, len(requests) // clients)
    procs = [
        mp.Process(target=_client, args=(port, requests, i * step, seconds, keep, queue))
        for i in range(clients)
    ]
    for proc in procs:
        proc.start()
    results = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    latencies = sorted(lat for r in results for lat in r[0])
    return {
        "requests": len(latencies),
        "errors": sum(r[2] for r in results),
        "throughput": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "bodies": [b for r in results for b in r[1]],
    }
