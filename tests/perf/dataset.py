"""Realistic benchmark data: patients, each with what-matters statements, goals, a ranked
priorities List, a QuestionnaireResponse, a Provenance and ordinary vital-sign Observations.

Sixteen resources per patient; ids are deterministic (``p{n}``, ``p{n}-wm1`` ...), so a
benchmark can name a patient. Loading goes through the same indexing as the REST API, in bulk
transactions (``tx.resources.insert_new``), without HTTP.

    .venv/bin/python -m tests.perf.dataset --resources 100000 --database-url sqlite:///big.db
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from service.fhir.model import dump_json, now_us, with_meta
from service.storage import StoredResource

NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
RESOURCES_PER_PATIENT = 16
SETTINGS = ["Ward 7, St James's Hospital", "Beeston GP practice", "Oak Lodge care home"]
WORDS = [
    "Being at home with my cat",
    "Walking to church on Sundays",
    "Seeing my granddaughter graduate",
    "Not being in pain at night",
    "Être chez moi pour Noël",
    "Gardening again in the spring",
    "Staying independent with my shopping",
    "Cooking for my family",
    "Ir a la playa con mis nietos",
    "Reading without my glasses hurting",
]
VITALS = [
    ("8867-4", "Heart rate", "/min", 55, 110),
    ("29463-7", "Body weight", "kg", 45, 120),
    ("8310-5", "Body temperature", "Cel", 35.5, 39.5),
    ("9279-1", "Respiratory rate", "/min", 10, 28),
]


def _cc(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _day(rng: random.Random, year: int = 2026) -> str:
    return f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"


def patient_resources(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """The sixteen resources of patient number ``n``."""
    pid = f"p{n}"
    subject = {"reference": f"Patient/{pid}"}
    out: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": NHS, "value": f"9{n:09d}"}],
            "name": [{"family": f"Family{n % 997}", "given": [f"Given{n % 101}"]}],
            "gender": rng.choice(["female", "male", "other", "unknown"]),
            "birthDate": _day(rng, rng.randint(1925, 1990)),
        }
    ]
    for k in range(1, 4):
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-wm{k}",
                "status": "final",
                "category": [_cc(OBS_CAT, "survey"), _cc(PCO, "what-matters")],
                "code": _cc(LOINC, "95541-9", "Care experience preference"),
                "subject": subject,
                "effectiveDateTime": f"{_day(rng)}T{rng.randint(8, 18):02d}:00:00Z",
                "performer": [{"display": rng.choice(SETTINGS)}],
                "valueString": rng.choice(WORDS),
            }
        )
    for k in range(1, 3):
        out.append(
            {
                "resourceType": "Goal",
                "id": f"{pid}-goal{k}",
                "lifecycleStatus": rng.choice(["active", "active", "completed", "on-hold"]),
                "category": [_cc(PCO, "what-matters")],
                "description": {"text": rng.choice(WORDS)},
                "subject": subject,
                "startDate": _day(rng),
                "addresses": [{"reference": f"Observation/{pid}-wm{k}"}],
            }
        )
    out.append(
        {
            "resourceType": "List",
            "id": f"{pid}-priorities",
            "status": "current",
            "mode": "working",
            "code": _cc(LOINC, "81340-2"),
            "subject": subject,
            "date": f"{_day(rng)}T12:00:00Z",
            "orderedBy": _cc("http://terminology.hl7.org/CodeSystem/list-order", "priority"),
            "entry": [{"item": {"reference": f"Goal/{pid}-goal{k}"}} for k in (1, 2)],
        }
    )
    out.append(
        {
            "resourceType": "QuestionnaireResponse",
            "id": f"{pid}-qr",
            "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty",
            "status": "completed",
            "subject": subject,
            "authored": f"{_day(rng)}T10:00:00Z",
            "item": [{"linkId": "1", "answer": [{"valueString": rng.choice(WORDS)}]}],
        }
    )
    out.append(
        {
            "resourceType": "Provenance",
            "id": f"{pid}-prov",
            "target": [{"reference": f"Observation/{pid}-wm1"}, {"reference": f"Goal/{pid}-goal1"}],
            "recorded": f"{_day(rng)}T10:05:00Z",
            "agent": [{"who": {"display": rng.choice(SETTINGS)}}],
        }
    )
    for k in range(1, 8):
        code, display, unit, low, high = VITALS[k % len(VITALS)]
        out.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-v{k}",
                "status": "final",
                "category": [_cc(OBS_CAT, "vital-signs")],
                "code": _cc(LOINC, code, display),
                "subject": subject,
                "effectiveDateTime": f"{_day(rng, rng.choice([2024, 2025, 2026]))}T09:00:00Z",
                "valueQuantity": {
                    "value": round(rng.uniform(low, high), 1),
                    "unit": unit,
                    "system": UCUM,
                    "code": unit,
                },
            }
        )
    return out


def generate(patients: int, first: int = 0, seed: int = 7) -> Iterator[dict[str, Any]]:
    """Yield the resources of ``patients`` patients, numbered from ``first``."""
    for n in range(first, first + patients):
        yield from patient_resources(n, random.Random(seed * 1_000_003 + n))


def load(
    service: Any,
    patients: int,
    first: int = 0,
    batch: int = 2000,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the data set through ``service`` (a FhirService) in bulk; return how many."""
    pending: list[tuple[StoredResource, Any]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        items = list(pending)
        service.run(lambda tx: tx.resources.insert_new(items), retry=False)
        written += len(items)
        pending.clear()
        if progress is not None:
            progress(written)

    for resource in generate(patients, first):
        moment = now_us()
        content = with_meta(resource, resource["id"], 1, moment)
        stored = StoredResource(
            type=resource["resourceType"],
            id=resource["id"],
            version=1,
            last_updated_us=moment,
            deleted=False,
            content=dump_json(content),
            method="PUT",
        )
        pending.append((stored, service.search_params.index(content)))
        if len(pending) >= batch:
            flush()
    if pending:
        flush()
    return written


def main() -> int:
    """Load a data set of about --resources resources into --database-url."""
    from service import build_fhir_service
    from service.config import Config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resources", type=int, default=10_000)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--first-patient", type=int, default=0)
    args = parser.parse_args()
    service = build_fhir_service(Config(database_url=args.database_url))
    patients = max(1, args.resources // RESOURCES_PER_PATIENT)
    started = time.monotonic()

    def show(done: int) -> None:
        rate = done / max(time.monotonic() - started, 1e-6)
        sys.stderr.write(f"\rloaded {done} resources ({rate:.0f}/s)")
        sys.stderr.flush()

    count = load(service, patients, first=args.first_patient, progress=show)
    sys.stderr.write("\n")
    print(f"loaded {count} resources for {patients} patients")
    service.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
