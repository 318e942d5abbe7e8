"""Ingest benchmark: a 100,000-row CSV survey export through mappings/survey-csv.yaml, on
SQLite or PostgreSQL, with the process's memory sampled as the rows stream through.

Run:  .venv/bin/python -m tests.perf.bench_ingest --database sqlite
      .venv/bin/python -m tests.perf.bench_ingest --database postgresql
Options: --rows 100000 --patients 1000 --postgresql-url postgresql://user@host:5432/db (its
benchmark databases are named after that one)

The baseline, measured in the same run on a fresh database of the same kind, writes the same
Observations (built directly in Python, with literal patient references), validated the same
way, through the same batched conditional create in one transaction: it is what ingesting
would cost if reading the CSV, mapping and resolving the patient were free. The ratio is
ingest rows/s over baseline rows/s, printed beside the ratio first recorded in the README,
which it must not fall below. Memory is the resident set size read from /proc after 10%, 50%
and 100% of the rows, and the peak resident set of the ingest (VmHWM, read before the
baseline runs); a streamed ingest keeps it flat.
Results are printed as Markdown and written to .benchmarks/ingest-<database>.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from service import build_fhir_service, load_mappings
from service.config import Config
from service.fhir.actor import Actor
from service.fhir.ingest import BATCH, ingest
from service.fhir.interactions import FhirService
from service.fhir.session import Session

ROOT = Path(__file__).resolve().parents[2]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
SETTINGS = (("Ward 7", "WARD"), ("Bodnant Surgery", "GP"), ("Plas Newydd", "CH"), ("", ""))
WORDS = (
    "Walking my dog every morning",
    "Seeing my grandchildren at Christmas",
    "Gweld y môr o fy ffenest",
    "Keeping my own front door key",
    "Singing in the chapel choir",
)


# the ingest/baseline ratios of the README's first ingest table (today's throughput, as
# issue 20 names it): a run must not fall below them
README_RATIO = {"sqlite": 0.57, "postgresql": 0.82}
SAMPLES = ((0.1, "10%"), (0.5, "50%"), (1.0, "100%"))


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1_048_576


def _peak_rss_mb() -> float:
    """The process's peak resident set so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _database(kind: str, tmp: Path, name: str, pg_url: str) -> str:
    """A fresh database: ``name`` prefixed with the database of ``pg_url`` (unless that is the
    ``postgres`` one), so that two people sharing a server do not drop each other's."""
    if kind == "sqlite":
        return f"sqlite:///{tmp}/{name}.db"
    given = pg_url.rsplit("/", 1)[1]
    name = f"{given}_{name.removeprefix('whatmatters_')}" if given != "postgres" else name
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return pg_url.rsplit("/", 1)[0] + f"/{name}"


def _service(url: str, patients: int) -> FhirService:
    fhir = build_fhir_service(Config(database_url=url))

    def load(session: Session) -> None:
        for n in range(patients):
            patient = {
                "resourceType": "Patient",
                "identifier": [{"system": NHS, "value": f"9{n:09d}"}],
            }
            session.create("Patient", patient, new_id=f"p{n}", checked=True)

    fhir.perform(Actor.system(), load)
    return fhir


def _write_csv(path: Path, rows: int, patients: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "response_id",
                "nhs_number",
                "answered_at",
                "what_matters",
                "recorded_by",
                "setting",
                "setting_type",
            ]
        )
        for n in range(rows):
            setting, code = SETTINGS[n % len(SETTINGS)]
            writer.writerow(
                [
                    f"r-{n}",
                    f"9{n % patients:09d}",
                    f"2026-{1 + n % 12:02d}-{1 + n % 28:02d} 10:15",
                    WORDS[n % len(WORDS)],
                    "Nurse Ada Okafor" if n % 2 else "",
                    setting,
                    code,
                ]
            )


def _baseline(fhir: FhirService, rows: int, patients: int) -> float:
    profile = "http://whatmatters.example/fhir/StructureDefinition/wmty-statement"
    start = time.perf_counter()

    def write(session: Session) -> None:
        batch: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        for n in range(rows):
            identifier = {
                "system": "http://whatmatters.example/fhir/identifier/survey-csv",
                "value": f"r-{n}",
            }
            resource = {
                "resourceType": "Observation",
                "meta": {"profile": [profile]},
                "identifier": [identifier],
                "status": "final",
                "category": [
                    {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                "code": "survey",
                            }
                        ]
                    },
                    {
                        "coding": [
                            {
                                "system": "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary",
                                "code": "what-matters",
                            }
                        ]
                    },
                ],
                "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
                "subject": {"reference": f"Patient/p{n % patients}"},
                "effectiveDateTime": f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T10:15:00+00:00",
                "performer": [{"display": "Nurse Ada Okafor"}],
                "valueString": WORDS[n % len(WORDS)],
            }
            session.check(resource, "Observation")
            batch.append(("Observation", resource, identifier))
            if len(batch) == BATCH:
                session.create_many(batch)
                batch.clear()
        session.create_many(batch)

    fhir.perform(Actor.system(), write, retry=False)
    return rows / (time.perf_counter() - start)


def main() -> int:
    """Run the benchmark and print its table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgresql-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--patients", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="whatmatters-ingest-"))
    try:
        source = tmp / "survey.csv"
        _write_csv(source, args.rows, args.patients)
        config = Config()
        mappings = load_mappings(config)
        mapping = mappings.files["survey-csv"]

        fhir = _service(
            _database(args.database, tmp, "whatmatters_bench_ingest", args.postgresql_url),
            args.patients,
        )
        samples: dict[str, float] = {"start": _rss_mb()}

        def progress(records: int) -> None:
            for share, name in SAMPLES:
                if records >= args.rows * share and name not in samples:
                    samples[name] = _rss_mb()

        def lines() -> Any:
            with source.open(encoding="utf-8", newline="") as handle:
                yield from handle

        start = time.perf_counter()
        _, report = ingest(
            fhir,
            Actor.system(),
            mapping,
            lines(),
            mappings.questionnaires,
            progress=progress,
            conceptmaps=mappings.conceptmaps,
        )
        seconds = time.perf_counter() - start
        samples["end"] = _rss_mb()
        peak = _peak_rss_mb()
        assert report.created == args.rows, report.summary()
        fhir.store.close()
        base = _service(
            _database(args.database, tmp, "whatmatters_bench_base", args.postgresql_url),
            args.patients,
        )
        baseline = _baseline(base, args.rows, args.patients)
        base.store.close()
        rate = args.rows / seconds
        result = {
            "database": args.database,
            "rows": args.rows,
            "ingest_rows_per_second": round(rate),
            "baseline_rows_per_second": round(baseline),
            "ratio": round(rate / baseline, 2),
            "readme_ratio": README_RATIO[args.database],
            "rss_mb": {k: round(v, 1) for k, v in samples.items()},
            "peak_rss_mb": round(peak, 1),
        }
        rss = result["rss_mb"]
        print(
            "| database | rows | ingest rows/s | baseline rows/s | ratio (README) | "
            "RSS at 10% / 50% / 100% (MB) | peak RSS (MB) |"
        )
        print("|---|---|---|---|---|---|---|")
        print(
            f"| {args.database} | {args.rows} | {result['ingest_rows_per_second']} | "
            f"{result['baseline_rows_per_second']} | {result['ratio']} "
            f"({result['readme_ratio']}) | "
            f"{rss.get('10%')} / {rss.get('50%')} / {rss.get('100%')} | {result['peak_rss_mb']} |"
        )
        if result["ratio"] < result["readme_ratio"]:
            print(f"below the README's ratio ({result['readme_ratio']})", file=sys.stderr)
        out = ROOT / ".benchmarks"
        out.mkdir(exist_ok=True)
        (out / f"ingest-{args.database}.json").write_text(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
