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
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from tests.perf.driver import ROOT, Request, drive, start, stop

PATIENT = json.dumps(
    {
        "resourceType": "Patient",
        # a hospital number: no two Patients may share an NHS number, and every create sends this
        "identifier": [{"system": "https://hospital.example/Id/mrn", "value": "9000000009"}],
        "name": [{"family": "Okafor", "given": ["Adaeze"]}],
        "gender": "female",
        "birthDate": "1941-03-07",
    }
).encode()


def _measure(app: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    process, port = start(app, database_url, args.workers, args.threads)
    creates: list[Request] = [("POST", "/fhir/Patient", PATIENT)]
    try:
        drive(port, creates, args.clients, 1.0)  # warm up connections and caches
        create = drive(port, creates, args.clients, args.seconds, keep=2000)
        ids = [json.loads(body)["id"] for body in create.pop("bodies")]
        reads: list[Request] = [("GET", f"/fhir/Patient/{i}", None) for i in ids]
        read = drive(port, reads, args.clients, args.seconds)
        read.pop("bodies")
    finally:
        stop(process)
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
