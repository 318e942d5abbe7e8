"""Exchange under loss: 20 patients' conversations, hospital to GP, with a proxy losing 20 % of
the requests in front of the GP; each arrives exactly once, and how long each took.

Run:  .venv/bin/python -m tests.perf.bench_exchange_loss
      .venv/bin/python -m tests.perf.bench_exchange_loss --database postgresql
Options: --patients 20 --loss 0.2 --seed 18

Two real instances (`whatmatters serve` with the deployed outbox defaults: poll 0.5 s, backoff
from 1 s capped at 300 s) run on loopback; the hospital's partner is the GP behind the
fault-injecting proxy (tests/exchange/faultproxy.py), which drops, resets after forwarding,
answers 503 to, or delays by 1 s, a random --loss share of the requests. Each patient's
conversation is three statements (Welsh, Russian, Japanese with an emoji), two goals, a ranking
and a re-ranking, recorded one patient after the other. Per patient, the clock runs from the
first $record-what-matters answer until the GP's $what-matters shows the re-ranked words, each
with its Provenance, and both goals (tests/exchange/lossy_exchange.py).

The baseline is the same run with 0 % loss first, with patients of their own; the ratio is
p95 under loss over p95 without. Exactly once: per type the GP holds what the hospital holds,
each statement identifier once, two goals per patient, no dead row.
Results are printed as Markdown and written to .benchmarks/exchange-loss-<database>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.exchange.instances import PG_ENV
from tests.exchange.lossy_exchange import DEPLOYED, exactly_once, run_phase, start_pair

ROOT = Path(__file__).resolve().parents[2]
PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/whatmatters_bench"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--loss", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=18)
    args = parser.parse_args(argv)
    if args.database == "postgresql":
        os.environ[PG_ENV] = os.environ.get(PG_ENV) or PG_DEFAULT
    else:
        os.environ.pop(PG_ENV, None)
    with tempfile.TemporaryDirectory() as folder:
        hospital, gp, proxy = start_pair(Path(folder), DEPLOYED)
        try:
            n = args.patients
            baseline = run_phase(hospital, gp, proxy, range(1, n + 1), 0.0, args.seed)
            lossy = run_phase(hospital, gp, proxy, range(n + 1, 2 * n + 1), args.loss, args.seed)
            problems = exactly_once(hospital, gp, [baseline, lossy])
        finally:
            hospital.stop()
            gp.stop()
            proxy.stop()
            hospital.drop_database()
            gp.drop_database()
    base, loss = baseline.stats(), lossy.stats()
    result = {
        "database": args.database,
        "patients_per_phase": args.patients,
        "loss": args.loss,
        "seed": args.seed,
        "baseline_s": {k: round(v, 3) for k, v in base.items()},
        "loss_s": {k: round(v, 3) for k, v in loss.items()},
        "ratio_p95": round(loss["p95"] / base["p95"], 2),
        "requests_through_proxy": lossy.requests,
        "faults_injected": lossy.faults,
        "rows": len(lossy.attempts),
        "attempts_per_row": {str(n): lossy.attempts.count(n) for n in sorted(set(lossy.attempts))},
        "exactly_once": not problems,
        "problems": problems,
    }
    print(
        "| database | patients | loss | faults / requests | baseline p50 / p95 / max s | "
        "under loss p50 / p95 / max s | ratio (p95) | exactly once |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.database} | {args.patients} | {args.loss:.0%} | "
        f"{lossy.faults} / {lossy.requests} | "
        f"{base['p50']:.2f} / {base['p95']:.2f} / {base['max']:.2f} | "
        f"{loss['p50']:.2f} / {loss['p95']:.2f} / {loss['max']:.2f} | "
        f"{loss['p95'] / base['p95']:.1f} | {'yes' if not problems else 'NO'} |"
    )
    print(f"rows to the GP under loss, by attempts needed: {result['attempts_per_row']}")
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"exchange-loss-{args.database}.json").write_text(json.dumps(result, indent=2))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
