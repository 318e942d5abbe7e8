"""REST benchmark: create and read throughput and latency of the service under gunicorn,
beside a bare baseline app (baseline_app.py) measured in the same run on the same machine.

Run:  .venv/bin/python -m tests.perf.bench_rest [--seconds 10] [--database sqlite|postgresql]

The load driver is bounded: a fixed number of client processes, each with keep-alive
connections, sends requests for a fixed time and then stops. Each app is measured twice,
interleaved (baseline, service, baseline, service), and the better run of each is kept, so a
burst of noise from other work on the machine does not decide the ratio. Results are printed
as a Markdown table and written to .benchmarks/rest.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PATIENT = json.dumps(
    {
        "resourceType": "Patient",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
        "name": [{"family": "Okafor", "given": ["Adaeze"]}],
        "gender": "female",
        "birthDate": "1941-03-07",
    }
).encode()
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(
    app: str, database_url: str, workers: int, threads: int
) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = {**os.environ, "WHATMATTERS_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
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


def _client(port: int, kind: str, ids: list[str], seconds: float, out: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    created: list[str] = []
    errors = 0
    index = 0
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        start = time.perf_counter()
        if kind == "create":
            conn.request("POST", "/fhir/Patient", body=PATIENT, headers=HEADERS)
        else:
            conn.request("GET", f"/fhir/Patient/{ids[index % len(ids)]}", headers=HEADERS)
            index += 1
        response = conn.getresponse()
        body = response.read()
        latencies.append(time.perf_counter() - start)
        if response.status not in (200, 201):
            errors += 1
        elif kind == "create" and len(created) < 2000:
            created.append(json.loads(body)["id"])
    out.put((latencies, created, errors))


def _load(port: int, kind: str, ids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    queue: Any = mp.Queue()
    procs = [
        mp.Process(target=_client, args=(port, kind, ids, seconds, queue)) for _ in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    latencies = sorted(lat for r in results for lat in r[0])
    return {
        "requests": len(latencies),
        "errors": sum(r[2] for r in results),
        "throughput": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "ids": [i for r in results for i in r[1]],
    }


def _measure(app: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    process, port = _start(app, database_url, args.workers, args.threads)
    try:
        _load(port, "create", [], args.clients, 1.0)  # warm up connections and caches
        create = _load(port, "create", [], args.clients, args.seconds)
        read = _load(port, "read", create["ids"], args.clients, args.seconds)
    finally:
        process.terminate()
        process.wait(timeout=30)
    return {"create": create, "read": read}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgresql-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.database == "sqlite":
            urls = {
                "baseline": f"sqlite:///{tmp}/baseline.db",
                "service": f"sqlite:///{tmp}/service.db",
            }
        else:
            urls = {"baseline": args.postgresql_url, "service": args.postgresql_url}
        subprocess.run(
            [sys.executable, "-m", "service.cli", "init-db"],
            cwd=ROOT,
            check=True,
            env={**os.environ, "WHATMATTERS_DATABASE_URL": urls["service"]},
            stdout=subprocess.DEVNULL,
        )
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "service": []}
        for _ in range(args.rounds):
            runs["baseline"].append(_measure("tests.perf.baseline_app:app", urls["baseline"], args))
            runs["service"].append(_measure("wsgi:app", urls["service"], args))
    best = {
        app: {
            kind: max((r[kind] for r in results), key=lambda m: m["throughput"])
            for kind in ("create", "read")
        }
        for app, results in runs.items()
    }
    rows = []
    report: dict[str, Any] = {
        "database": args.database,
        "seconds": args.seconds,
        "clients": args.clients,
        "workers": args.workers,
        "threads": args.threads,
        "results": {},
    }
    for kind in ("create", "read"):
        base, svc = best["baseline"][kind], best["service"][kind]
        ratio = svc["throughput"] / base["throughput"]
        report["results"][kind] = {
            "baseline": {k: v for k, v in base.items() if k != "ids"},
            "service": {k: v for k, v in svc.items() if k != "ids"},
            "ratio": ratio,
        }
        rows.append(
            f"| {kind} | {args.database} | {base['throughput']:.0f} | {svc['throughput']:.0f} | "
            f"**{ratio:.2f}** | {base['p50_ms']:.1f} / {base['p95_ms']:.1f} | "
            f"{svc['p50_ms']:.1f} / {svc['p95_ms']:.1f} | {base['errors'] + svc['errors']} |"
        )
    print(
        "| interaction | database | baseline req/s | service req/s | ratio | "
        "baseline p50/p95 ms | service p50/p95 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"rest-{args.database}.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
