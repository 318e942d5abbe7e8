"""Bulk Data export benchmark: a system-level export of a whole data set (default 100,000
resources, tests/perf/dataset.py) written by the outbox worker's export channel, with the
process's resident memory sampled as the pages go by.

Run:  .venv/bin/python -m tests.perf.bench_export --resources 100000
      .venv/bin/python -m tests.perf.bench_export --resources 20000 --database-url postgresql://...
Options: --database-url (default: a fresh SQLite file), --keep (reuse a loaded database)

The data set is loaded by a separate process (so loading leaves nothing in this one's memory);
this process then kicks the export off and runs the worker until the manifest is written.
Memory is the resident set size read from /proc at the start of the export and after 10%, 25%,
50%, 75% and 100% of the resources; a streamed export keeps it flat. Every line of every file
is then parsed and counted against the store. Results are printed as Markdown and written to
.benchmarks/export-<database>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from service import build_fhir_service, build_worker
from service.config import Config
from service.exchange.bulk_export import ExportFolder, ExportJob, new_job_id, start
from service.fhir.model import SUPPORTED_TYPES, now_us
from service.storage import Query

ROOT = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--database-url")
    parser.add_argument("--keep", action="store_true", help="the database is loaded already")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="wm-bench-export-"))
    url = args.database_url or f"sqlite:///{tmp}/export.db"
    if not args.keep:
        started = time.monotonic()
        subprocess.run(
            [
                sys.executable,
                *("-m", "tests.perf.dataset", "--resources", str(args.resources)),
                *("--database-url", url),
            ],
            cwd=ROOT,
            check=True,
        )
        print(f"loaded in {time.monotonic() - started:.0f} s", file=sys.stderr)
    config = Config(database_url=url, export_dir=tmp / "exports", outbox_lease_seconds=60)
    fhir = build_fhir_service(config)
    total = fhir.read_only(lambda tx: sum(tx.searches.count(Query(t)) for t in SUPPORTED_TYPES))
    folder = ExportFolder(config.export_dir)
    worker = build_worker(config, fhir, ())
    channel = worker.bulk_export
    assert channel is not None
    samples: list[tuple[int, float]] = [(0, _rss_mb())]
    written: dict[str, Any] = {"lines": 0, "type": "", "base": 0}
    marks = [0.10, 0.25, 0.50, 0.75]
    record = channel._record

    def sampled(key: str, after: Any, lines: int) -> None:
        record(key, after, lines)
        if after[0] != written["type"]:
            written["type"] = after[0]
            written["base"] = written["lines"]
        written["lines"] = written["base"] + lines
        while marks and written["lines"] >= marks[0] * total:
            samples.append((written["lines"], _rss_mb()))
            marks.pop(0)

    channel._record = sampled  # type: ignore[method-assign]
    job = ExportJob(
        id=new_job_id(),
        level="system",
        types=tuple(sorted(SUPPORTED_TYPES)),
        since_us=None,
        request="http://bench.local/fhir/$export",
        transaction_us=now_us(),
        files_base="http://bench.local/bulk-export",
    )
    started = time.monotonic()
    start(fhir, folder, job)
    worker.drain(timeout=24 * 3600)
    elapsed = time.monotonic() - started
    manifest = folder.manifest(job.id)
    assert manifest is not None, "the export did not complete"
    samples.append((total, _rss_mb()))
    parsed = 0
    for item in manifest["output"]:
        with open(tmp / "exports" / job.id / f"{item['type']}.ndjson", encoding="utf-8") as f:
            count = sum(1 for line in f if json.loads(line)["resourceType"] == item["type"])
        assert count == item["count"]
        parsed += count
    assert parsed == total, (parsed, total)
    database = url.split(":", 1)[0].split("+")[0]
    result = {
        "database": database,
        "resources": total,
        "seconds": round(elapsed, 1),
        "resources_per_second": round(total / elapsed),
        "rss_mb": [{"written": n, "rss_mb": round(mb, 1)} for n, mb in samples],
        "rss_growth_mb": round(samples[-1][1] - samples[1][1], 1) if len(samples) > 2 else None,
    }
    points = len(samples) - 1
    print(f"| database | resources | seconds | resources/s | RSS MB at 0 and {points} points |")
    print("|---|---|---|---|---|")
    rss = " / ".join(f"{mb:.0f}" for _, mb in samples)
    print(f"| {database} | {total} | {elapsed:.1f} | {total / elapsed:.0f} | {rss} |")
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"export-{database}.json").write_text(json.dumps(result, indent=2))
    fhir.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
