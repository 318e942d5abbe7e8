"""Exchange benchmark: how long until a conversation recorded at the hospital is readable at
the GP (verbatim, ranked, with its provenance), over 50 patients.

Run:  .venv/bin/python -m tests.perf.bench_exchange
      .venv/bin/python -m tests.perf.bench_exchange --database postgresql
Options: --patients 50 --gap 0.2

Two real instances (`whatmatters serve`, each with its embedded outbox worker polling every
0.5 s, the default) run on loopback, each a partner of the other. One patient at a time, the
hospital registers the patient and records a conversation (three statements, one goal, a
ranking); the clock starts when $record-what-matters answers and stops when the GP's
$what-matters shows the same ranked words with a Provenance for each. Patients follow each
other after --gap seconds, like clinicians recording on a ward.

The baseline, measured in the same run, is the hospital's own $what-matters for the same
patient right after recording (what a clinician at the hospital waits for). The ratio is
delivery latency over that read. The target is p95 delivery under 5 s.
Results are printed as Markdown and written to .benchmarks/exchange-<database>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.exchange.instances import PG_ENV, Instance, partner_entry
from tests.exchange.test_end_to_end import (
    MRN,
    add_patient,
    expected_words,
    record,
    seen_at_gp,
)

ROOT = Path(__file__).resolve().parents[2]
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/whatmatters_bench"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--patients", type=int, default=50)
    parser.add_argument("--gap", type=float, default=0.2)
    args = parser.parse_args(argv)
    if args.database == "postgresql":
        os.environ[PG_ENV] = os.environ.get(PG_ENV) or PG_DEFAULT
    else:
        os.environ.pop(PG_ENV, None)
    # the defaults a deployment runs with, not the tests' fast polling
    slow = {"WHATMATTERS_OUTBOX_POLL_SECONDS": "0.5", "WHATMATTERS_OUTBOX_LEASE_SECONDS": "60"}
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        gp = Instance("bench_gp", tmp, env=slow)
        hospital = Instance("bench_hospital", tmp, env=slow)
        hospital.set_partners([partner_entry("gp", gp.base, [MRN])])
        gp.set_partners([partner_entry("hospital", hospital.base, [MRN])])
        gp.start()
        hospital.start()
        latencies: list[float] = []
        reads: list[float] = []
        try:
            for number in range(1, args.patients + 1):
                patient = add_patient(hospital, number)
                record(hospital, patient, number)
                recorded = time.monotonic()
                started = time.monotonic()
                expected = expected_words(hospital, patient, number)
                reads.append(time.monotonic() - started)
                deadline = recorded + 60
                while not seen_at_gp(gp, number, expected):
                    if time.monotonic() > deadline:
                        print(f"patient {number} did not arrive within 60 s", file=sys.stderr)
                        return 1
                    time.sleep(0.02)
                latencies.append(time.monotonic() - recorded)
                time.sleep(args.gap)
            counts_equal = all(
                requests.get(f"{i.base}/Goal", params={"_summary": "count"}, timeout=30).json()[
                    "total"
                ]
                == args.patients
                for i in (gp, hospital)
            )
        finally:
            hospital.stop()
            gp.stop()
    p50, p95 = statistics.median(latencies), _p95(latencies)
    base50, base95 = statistics.median(reads), _p95(reads)
    result = {
        "database": args.database,
        "patients": args.patients,
        "delivery_p50_s": round(p50, 3),
        "delivery_p95_s": round(p95, 3),
        "delivery_max_s": round(max(latencies), 3),
        "baseline_read_p50_s": round(base50, 4),
        "baseline_read_p95_s": round(base95, 4),
        "ratio_p95": round(p95 / base95, 1),
        "goals_counted_equal": counts_equal,
    }
    print(
        "| database | patients | delivery p50 / p95 / max s | local read p50 / p95 s | "
        "ratio (p95) | one Goal each, both sides |"
    )
    print("|---|---|---|---|---|---|")
    print(
        f"| {args.database} | {args.patients} | {p50:.2f} / {p95:.2f} / {max(latencies):.2f} | "
        f"{base50:.3f} / {base95:.3f} | {p95 / base95:.0f} | {counts_equal} |"
    )
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"exchange-{args.database}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
