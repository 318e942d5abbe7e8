"""Paging benchmark: a patient's 400 Observations, 20 to a page (the first page, and the later
ones through the ``next`` links), against a bare baseline app that runs the same indexed SQL
(baseline_search_app.py: keyset paging after the last id, under the search's bound), both under
gunicorn, measured in the same run, interleaved, the better of ``--rounds`` kept.

Run:  .venv/bin/python -m tests.perf.bench_paging [--database postgresql --postgresql-url URL]
Options: --patients 25 --seconds 5 --clients 4 --rounds 2

The service writes nothing per search (the cursor is in the link); the baseline is what any
keyset-paged SQL app would do. Results: a Markdown table, and .benchmarks/paging-<db>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from sqlalchemy import text

from service import build_fhir_service
from service.config import Config
from service.fhir.model import dump_json, now_us, with_meta
from service.storage import StoredResource
from service.storage.schema import metadata
from tests.perf.driver import ROOT, Request, drive, start, stop

PER_PATIENT = 400
COUNT = 20


def _observation(patient: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T10:00:00Z",
        "valueQuantity": {
            "value": 60 + n % 40,
            "unit": "/min",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def load(url: str, patients: int) -> None:
    """An empty schema, then ``patients`` Patients with 400 Observations each, in bulk."""
    service = build_fhir_service(Config(database_url=url, auto_migrate=False))
    with service.store.engine.begin() as conn:  # type: ignore[attr-defined]
        metadata.drop_all(conn)
    service.store.migrate()
    for p in range(patients):
        items = []
        patient = {"resourceType": "Patient", "id": f"p{p}"}
        batch = [("Patient", f"p{p}", patient)] + [
            ("Observation", f"p{p}-o{n:03d}", _observation(f"p{p}", n)) for n in range(PER_PATIENT)
        ]
        for type_, id_, body in batch:
            content = with_meta({**body, "id": id_}, id_, 1, now_us())
            stored = StoredResource(type_, id_, 1, now_us(), False, dump_json(content), "PUT")
            items.append((stored, service.search_params.index(content)))
        service.run(lambda tx, items=items: tx.resources.insert_new(items), retry=False)
    with service.store.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("ANALYZE"))
    service.store.close()


def walk(
    port: int, patients: int
) -> tuple[list[Request], list[Request], list[Request], list[Request]]:
    """Walk every page of every patient once against the service: the service's first pages
    and later pages (its own next links), and the baseline's same pages (after the same ids,
    under the same bound)."""
    first: list[Request] = []
    later: list[Request] = []
    base_first: list[Request] = []
    base_later: list[Request] = []
    with requests.Session() as session:
        for p in range(patients):
            path = f"/fhir/Observation?patient=p{p}&_count={COUNT}"
            first.append(("GET", path, None))
            base_first.append(("GET", path, None))
            url: str | None = f"http://127.0.0.1:{port}{path}"
            pages = 0
            while url:
                bundle = session.get(url, timeout=30).json()
                pages += 1
                ids = [e["resource"]["id"] for e in bundle.get("entry", [])]
                links = {link["relation"]: link["url"] for link in bundle["link"]}
                url = links.get("next")
                if url:
                    split = urlsplit(url)
                    later.append(("GET", f"{split.path}?{split.query}", None))
                    token = parse_qs(split.query)["_page_token"][0]
                    bound = json.loads(_decoded(token))[0]
                    base_later.append(("GET", f"{path}&after={ids[-1]}&bound={bound}", None))
            assert pages == PER_PATIENT // COUNT, pages
    return first, later, base_first, base_later


def _decoded(token: str) -> str:
    import base64

    body = token[2:].rpartition(".")[0]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--postgresql-url", default="postgresql://postgres@127.0.0.1:5432/wm_bench")
    parser.add_argument("--patients", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="wm-paging-")
    url = f"sqlite:///{tmp}/paging.db" if args.database == "sqlite" else args.postgresql_url
    load(url, args.patients)
    process, port = start("wsgi:app", url, args.workers, args.threads)
    try:
        first, later, base_first, base_later = walk(port, args.patients)
    finally:
        stop(process)
    apps = {
        "service": ("wsgi:app", {"first page": first, "later pages": later}),
        "baseline": (
            "tests.perf.baseline_search_app:app",
            {"first page": base_first, "later pages": base_later},
        ),
    }
    best: dict[str, dict[str, dict[str, Any]]] = {"service": {}, "baseline": {}}
    for _ in range(args.rounds):
        for name in ("baseline", "service"):
            app, scenarios = apps[name]
            process, port = start(app, url, args.workers, args.threads)
            try:
                for scenario, requests_ in scenarios.items():
                    drive(port, requests_[:50], args.clients, 1.0)  # warm-up
                    stats = drive(port, requests_, args.clients, args.seconds)
                    stats.pop("bodies")
                    kept = best[name].get(scenario)
                    if kept is None or stats["throughput"] > kept["throughput"]:
                        best[name][scenario] = stats
            finally:
                stop(process)
    print(
        "| search | database | baseline req/s | service req/s | ratio |"
        " baseline p50 / p95 ms | service p50 / p95 ms | errors |"
    )
    print("|---|---|---|---|---|---|---|---|")
    report = {}
    for scenario in ("first page", "later pages"):
        svc, base = best["service"][scenario], best["baseline"][scenario]
        ratio = svc["throughput"] / base["throughput"]
        report[scenario] = {"service": svc, "baseline": base, "ratio": ratio}
        print(
            f"| `Observation?patient=X&_count=20`, {scenario} | {args.database} |"
            f" {base['throughput']:.0f} | {svc['throughput']:.0f} | **{ratio:.2f}** |"
            f" {base['p50_ms']:.1f} / {base['p95_ms']:.1f} | {svc['p50_ms']:.1f} /"
            f" {svc['p95_ms']:.1f} | {svc['errors'] + base['errors']} |"
        )
    out = ROOT / ".benchmarks"
    out.mkdir(exist_ok=True)
    (out / f"paging-{args.database}.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
