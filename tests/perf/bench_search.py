"""Search benchmark: latency of three clinical searches as the data grows from 10 thousand to
1 million resources, and throughput beside a bare baseline app that runs the same indexed SQL
(baseline_search_app.py) in the same run.

Run:  .venv/bin/python -m tests.perf.bench_search --database sqlite
      .venv/bin/python -m tests.perf.bench_search --database postgresql
Options: --sizes 10000,100000,1000000 --seconds 5 --clients 4

The database grows in place (the 100k set is the 10k set plus 90k more, ...). Results are
printed as a Markdown table and written to .benchmarks/search-<database>.json.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from typing import Any
from urllib.parse import quote

import psycopg
from sqlalchemy import text

from service import build_fhir_service
from service.config import Config
from service.storage.schema import metadata
from tests.perf.dataset import RESOURCES_PER_PATIENT, load
from tests.perf.driver import ROOT, Request, drive, start, stop

NHS = "https://fhir.nhs.uk/Id/nhs-number"
QUERIES = {
    "Goal?patient=X&lifecycle-status=active": lambda n: (
        f"/fhir/Goal?patient=p{n}&lifecycle-status=active"
    ),
    "Observation?patient=X&category=what-matters&date=ge2026-01-01": lambda n: (
        f"/fhir/Observation?patient=p{n}&category=what-matters&date=ge2026-01-01"
    ),
    "Observation?subject:Patient.identifier=NHS|X": lambda n: (
        "/fhir/Observation?subject:Patient.identifier=" + quote(f"{NHS}|9{n:09d}", safe="")
    ),
}


def _postgres(url: str) -> str:
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = 'whatmatters_bench'"
        ).fetchone()
        if not exists:
            conn.execute("CREATE DATABASE whatmatters_bench")
    return url.rsplit("/", 1)[0] + "/whatmatters_bench"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgresql-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = tempfile.mkdtemp(prefix="wm-bench-")
    if args.database == "sqlite":
        url = f"sqlite:///{tmp}/search.db"
    else:
        url = _postgres(args.postgresql_url)
    service = build_fhir_service(Config(database_url=url, auto_migrate=False))
    with service.store.engine.begin() as conn:  # type: ignore[attr-defined]
        metadata.drop_all(conn)
    service.store.migrate()
    loaded = 0
    results: list[dict[str, Any]] = []
    rng = random.Random(11)
    for size in sizes:
        patients = size // RESOURCES_PER_PATIENT
        started = time.monotonic()
        load(service, patients - loaded, first=loaded)
        load_seconds = time.monotonic() - started
        loaded = patients
        with service.store.engine.begin() as conn:  # type: ignore[attr-defined]
            conn.execute(text("ANALYZE"))
        sample = [rng.randrange(patients) for _ in range(500)]
        measured: dict[str, Any] = {}
        for app in ("wsgi:app", "tests.perf.baseline_search_app:app"):
            process, port = start(app, url, args.workers, args.threads)
            try:
                for name, make in QUERIES.items():
                    requests_: list[Request] = [("GET", make(n), None) for n in sample]
                    drive(port, requests_[:50], args.clients, 1.0)  # warm-up
                    stats = drive(port, requests_, args.clients, args.seconds)
                    stats.pop("bodies")
                    measured.setdefault(name, {})[app] = stats
            finally:
                stop(process)
        for name, by_app in measured.items():
            svc = by_app["wsgi:app"]
            base = by_app["tests.perf.baseline_search_app:app"]
            results.append(
                {
                    "size": size,
                    "query": name,
                    "load_seconds": load_seconds,
                    "service": svc,
                    "baseline": base,
                    "throughput_ratio": svc["throughput"] / base["throughput"],
                }
            )
            print(
                f"{size:>9} {name}: service p50 {svc['p50_ms']:.1f} p95 {svc['p95_ms']:.1f} ms,"
                f" ratio {svc['throughput'] / base['throughput']:.2f}, errors"
                f" {svc['errors'] + base['errors']}",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| query | resources | database | service p50 / p95 ms | baseline p50 / p95 ms |"
        " throughput ratio | p95 ÷ p95 at smallest |"
    )
    print("|---|---|---|---|---|---|---|")
    smallest: dict[str, float] = {}
    for row in results:
        svc, base = row["service"], row["baseline"]
        smallest.setdefault(row["query"], svc["p95_ms"])
        growth = svc["p95_ms"] / smallest[row["query"]]
        row["p95_growth"] = growth
        print(
            f"| `{row['query']}` | {row['size']:,} | {args.database} | {svc['p50_ms']:.1f} /"
            f" {svc['p95_ms']:.1f} | {base['p50_ms']:.1f} / {base['p95_ms']:.1f} |"
            f" **{row['throughput_ratio']:.2f}** | {growth:.2f} |"
        )
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"search-{args.database}.json").write_text(json.dumps(results, indent=2))
    service.store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
