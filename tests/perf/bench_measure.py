"""Benchmark: the What Matters measure over many patients, against a bare SQL count of the same
populations.

Loads ``--patients`` patients of the measure's test data set (tests/measure/cohort.py: three
settings, ages around the bands, statements, goals, earlier records) into a fresh database,
then times ``$evaluate-measure``'s work (``WhatMattersMeasure.evaluate``: the cohort SQL with
strata, bands and three numerators, and the figures) and a hand-written SQL that only counts
the initial population and the three numerators (no strata, no bands), each the median of
``--runs``. The measure should take less than 10x the bare count.

    .venv/bin/python -m tests.perf.bench_measure --patients 100000
    .venv/bin/python -m tests.perf.bench_measure --patients 20000 \
        --database-url postgresql://postgres@127.0.0.1:5432/wm_bench
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from service import build_fhir_service
from service.config import Config
from service.fhir.actor import Actor
from service.priorities.measure import WhatMattersMeasure, age_bands, parse_period
from service.storage.sql import metadata
from tests.measure import cohort

_DAY = 86_400_000_000


def bare_sql(start: int, end: int, bound: int, within: int) -> dict[str, str]:
    """The same populations as plain counts, written by hand over the index tables."""
    patient = (
        "SELECT d.res_id FROM search_date d WHERE d.res_type = 'Patient' AND d.param = "
        f"'birthdate' AND d.high < {bound}"
    )
    seen = (
        "SELECT l.target_id FROM search_reference l JOIN search_date t ON t.res_type = "
        "l.res_type AND t.res_id = l.res_id WHERE l.param = 'patient' AND l.target_type = "
        "'Patient' AND t.param IN ('date', 'start-date', 'authored') AND t.low >= "
        f"{start} AND t.high <= {end}"
    )
    statements = (
        "SELECT l.target_id AS id, l.res_id AS obs, t.low FROM search_reference l JOIN "
        "search_token c ON c.res_type = l.res_type AND c.res_id = l.res_id AND c.param = 'code' "
        "AND c.code IN ('95541-9', '75773-2') JOIN search_date t ON t.res_type = l.res_type AND "
        "t.res_id = l.res_id AND t.param = 'date' WHERE l.res_type = 'Observation' AND "
        "l.param = 'patient'"
    )
    ip = f"SELECT DISTINCT s.target_id AS id FROM ({seen}) s WHERE s.target_id IN ({patient})"
    documented = (
        f"SELECT DISTINCT s.id FROM ({statements}) s WHERE s.low >= {start} AND s.low <= {end}"
    )
    acted = (
        "SELECT DISTINCT s.id FROM search_reference a JOIN search_token g ON g.res_type = "
        "'Goal' AND g.res_id = a.res_id AND g.param = 'lifecycle-status' AND g.code IN "
        "('accepted', 'active', 'on-hold', 'completed') JOIN "
        f"({statements}) s ON s.obs = a.target_id WHERE a.res_type = 'Goal' AND a.param = "
        f"'addresses' AND s.low >= {start} AND s.low <= {end}"
    )
    reviewed = (
        f"SELECT DISTINCT y.id FROM ({statements}) y JOIN ({statements}) x ON x.id = y.id AND "
        f"x.low < y.low AND x.low >= y.low - {within} WHERE y.low >= {start} AND y.low <= {end}"
    )
    return {
        "initial population": f"SELECT COUNT(*) FROM ({ip}) p",
        "documented": f"SELECT COUNT(*) FROM ({documented}) n WHERE n.id IN ({ip})",
        "acted on": f"SELECT COUNT(*) FROM ({acted}) n WHERE n.id IN ({ip})",
        "reviewed": f"SELECT COUNT(*) FROM ({reviewed}) n WHERE n.id IN ({ip})",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=100_000)
    parser.add_argument("--database-url")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{Path(tempfile.mkdtemp()) / 'measure.db'}"
    fhir = build_fhir_service(Config(database_url=url, auto_migrate=False))
    store = fhir.store
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        metadata.drop_all(conn)
    store.migrate()
    started = time.monotonic()
    facts = [cohort.draw(n) for n in range(args.patients)]
    written = cohort.load(fhir, facts)
    loaded = time.monotonic() - started
    with store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("ANALYZE"))  # the statistics a running database keeps
    print(f"{args.patients} patients, {written} resources loaded in {loaded:.0f} s ({url[:40]})")
    period = parse_period("2026-01-01", "2026-06-30")
    measure = WhatMattersMeasure(fhir)
    actor = Actor.client(None)
    bound = age_bands(period.first_day, 65)[-1][1]
    queries = bare_sql(period.start_us, period.end_us, bound, 365 * _DAY)
    measure_times, bare_times = [], []
    bare: dict[str, int] = {}
    figures = None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        figures = measure.evaluate(actor, period)
        measure_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with store.engine.connect() as conn:  # type: ignore[attr-defined]
            bare = {
                name: int(conn.execute(text(sql)).scalar_one()) for name, sql in queries.items()
            }
        bare_times.append(time.perf_counter() - t0)
    assert figures is not None
    got = {
        "initial population": figures.overall.population,
        "documented": figures.overall.numerators[0],
        "acted on": figures.overall.numerators[1],
        "reviewed": figures.overall.numerators[2],
    }
    expected = cohort.expected(facts)
    known = {
        "initial population": len(expected.population["overall"]),
        "documented": len(expected.numerators["overall"][0]),
        "acted on": len(expected.numerators["overall"][1]),
        "reviewed": len(expected.numerators["overall"][2]),
    }
    print(f"measure  {got}")
    print(f"bare SQL {bare}")
    print(f"expected {known}")
    m, b = statistics.median(measure_times), statistics.median(bare_times)
    print(f"measure (strata, bands, 3 numerators): {m * 1000:.0f} ms median of {args.runs}")
    print(f"bare SQL counts (4 queries, no strata): {b * 1000:.0f} ms median of {args.runs}")
    print(f"ratio: {m / b:.2f}x (goal: < 10x)")
    store.close()
    ok = got == bare == known and m < 10 * b
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
