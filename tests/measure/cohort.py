"""A data set for the What Matters measure with known answers: patients in three care
settings (and a few in two, or in none said), of every age around the bands' edges, with and
without data in the period, statements, goals (agreed or not) and earlier records.

Each patient's facts are drawn first (``Facts``); the resources are written from them, and the
expected figures are worked out from the facts alone (``expected``), by the measure's
definitions, never by the code under test.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import text

from service.fhir.model import dump_json, now_us, with_meta
from service.storage import StoredResource

LOINC = "http://loinc.org"
SETTING_TYPE = "http://whatmatters.example/fhir/StructureDefinition/wmty-care-setting-type"
SETTING_CODES = "http://whatmatters.example/fhir/CodeSystem/wmty-care-setting-type"
SETTINGS = ("hospital", "primary-care", "care-home")
PERIOD = (date(2026, 1, 1), date(2026, 6, 30))
# ages at the period's start, and two birthdays on the 65 edge
AGES = (60, 64, 65, 66, 70, 74, 75, 80, 84, 85, 91)
GOAL_STATUSES = ("active", "accepted", "completed", "on-hold", "proposed", "cancelled")
AGREED = {"active", "accepted", "completed", "on-hold"}


@dataclass
class Facts:
    """What is true of one patient."""

    id: str
    birth: date
    settings: list[str | None]  # the settings of their data in the period (None: unsaid)
    seen_on: date | None  # an ordinary Observation in the period
    old_data: bool  # data before the period only (besides)
    statement_on: date | None  # a what-matters statement in the period
    earlier_gap: int | None  # days from an earlier statement to the one in the period
    goal_status: str | None  # a goal addressing the statement in the period
    list_on: date | None = None  # a priorities List dated in the period
    setting_for: dict[str, str | None] = field(default_factory=dict)


def _birth(age: int, rng: random.Random) -> date:
    start = PERIOD[0]
    born = start.replace(year=start.year - age)
    # within the year before that birthday, so the age at the period start is exactly ``age``
    return born - timedelta(days=rng.randint(0, 364))


def draw(n: int, seed: int = 23) -> Facts:
    """The facts of patient ``n``."""
    rng = random.Random(seed * 1_000_003 + n)
    age = AGES[n % len(AGES)]
    birth = _birth(age, rng)
    if n % 97 == 0:
        birth = date(1961, 1, 1)  # 65 on the period's first day: in
    elif n % 97 == 1:
        birth = date(1961, 1, 2)  # 65 the day after: out
    setting: str | None = SETTINGS[n % 3]
    if rng.random() < 0.04:
        setting = None
    settings = [setting]
    if rng.random() < 0.05:
        settings.append(SETTINGS[(n + 1) % 3])
    span = (PERIOD[1] - PERIOD[0]).days
    seen = PERIOD[0] + timedelta(days=rng.randint(0, span)) if rng.random() < 0.85 else None
    documented = seen is not None and rng.random() < 0.6
    statement_on = PERIOD[0] + timedelta(days=rng.randint(0, span)) if documented else None
    gap = rng.choice((30, 200, 364, 365, 366, 400)) if documented and rng.random() < 0.4 else None
    goal = rng.choice(GOAL_STATUSES) if documented and rng.random() < 0.6 else None
    list_on = statement_on if documented and rng.random() < 0.5 else None
    return Facts(
        id=f"m{n}",
        birth=birth,
        settings=settings if seen is not None else [],
        seen_on=seen,
        old_data=rng.random() < 0.3,
        statement_on=statement_on,
        earlier_gap=gap,
        goal_status=goal,
        list_on=list_on,
    )


def _setting(resource: dict[str, Any], setting: str | None) -> dict[str, Any]:
    if setting is not None:
        coding = {"system": SETTING_CODES, "code": setting}
        resource["extension"] = [{"url": SETTING_TYPE, "valueCoding": coding}]
    return resource


def _observation(
    id_: str, patient: str, day: date, code: str, setting: str | None, words: str | None
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": day.isoformat(),
    }
    if words is None:
        resource["valueQuantity"] = {"value": 70, "unit": "kg"}
    else:
        resource["valueString"] = words
    return _setting(resource, setting)


def resources(facts: Facts) -> Iterator[dict[str, Any]]:
    """The resources that say the facts of one patient."""
    p = facts.id
    yield {"resourceType": "Patient", "id": p, "birthDate": facts.birth.isoformat()}
    first = facts.settings[0] if facts.settings else None
    if facts.old_data:
        old = PERIOD[0] - timedelta(days=500)
        yield _observation(f"{p}-old", p, old, "29463-7", first, None)
    if facts.seen_on is not None:
        for n, setting in enumerate(facts.settings):
            yield _observation(f"{p}-seen{n}", p, facts.seen_on, "29463-7", setting, None)
    if facts.statement_on is not None:
        yield _observation(f"{p}-wm", p, facts.statement_on, "95541-9", first, "My garden")
        if facts.earlier_gap is not None:
            before = facts.statement_on - timedelta(days=facts.earlier_gap)
            yield _observation(f"{p}-wm0", p, before, "95541-9", first, "My garden")
        if facts.goal_status is not None:
            goal = {
                "resourceType": "Goal",
                "id": f"{p}-goal",
                "lifecycleStatus": facts.goal_status,
                "description": {"text": "Back in my garden"},
                "subject": {"reference": f"Patient/{p}"},
                "startDate": facts.statement_on.isoformat(),
                "addresses": [{"reference": f"Observation/{p}-wm"}],
            }
            yield _setting(goal, first)
    if facts.list_on is not None:
        ranking = {
            "resourceType": "List",
            "id": f"{p}-list",
            "status": "current",
            "mode": "working",
            "code": {"coding": [{"system": LOINC, "code": "81340-2"}]},
            "subject": {"reference": f"Patient/{p}"},
            "date": facts.list_on.isoformat(),
            "entry": [{"item": {"reference": f"Observation/{p}-wm"}}],
        }
        yield _setting(ranking, first)


def age_at_start(birth: date) -> int:
    start = PERIOD[0]
    return start.year - birth.year - ((start.month, start.day) < (birth.month, birth.day))


def band(age: int) -> str:
    return "85+" if age >= 85 else "75-84" if age >= 75 else "65-74"


@dataclass
class Expected:
    """The answers: per population key (overall, setting or band) the patients in each."""

    population: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    numerators: dict[str, list[set[str]]] = field(
        default_factory=lambda: defaultdict(lambda: [set(), set(), set()])
    )


def expected(all_facts: list[Facts], review_days: int = 365) -> Expected:
    """The measure's answers worked out from the facts, by its definitions."""
    out = Expected()
    for f in all_facts:
        if age_at_start(f.birth) < 65 or f.seen_on is None:
            continue
        said = {s for s in f.settings if s is not None}
        keys = ["overall", band(age_at_start(f.birth)), *(said or {"unspecified"})]
        documented = f.statement_on is not None
        acted = documented and f.goal_status in AGREED
        reviewed = documented and f.earlier_gap is not None and f.earlier_gap <= review_days
        for key in keys:
            out.population[key].add(f.id)
            for n, flag in enumerate((documented, acted, reviewed)):
                if flag:
                    out.numerators[key][n].add(f.id)
    return out


def load(fhir: Any, all_facts: list[Facts], batch: int = 5000) -> int:
    """Write the resources of the facts in bulk through ``fhir`` (a FhirService)."""
    pending: list[tuple[StoredResource, Any]] = []
    written = 0

    def flush() -> None:
        nonlocal written
        items = list(pending)
        fhir.run(lambda tx: tx.resources.insert_new(items), retry=False)
        written += len(items)
        pending.clear()

    for facts in all_facts:
        for resource in resources(facts):
            moment = now_us()
            content = with_meta(resource, resource["id"], 1, moment)
            stored = StoredResource(
                resource["resourceType"], resource["id"], 1, moment, False, dump_json(content)
            )
            pending.append((stored, fhir.search_params.index(content)))
            if len(pending) >= batch:
                flush()
    if pending:
        flush()
    engine = getattr(fhir.store, "engine", None)
    if engine is not None and engine.dialect.name == "postgresql":
        # what autovacuum does to a running database after a bulk load: without statistics
        # PostgreSQL plans every join for one row
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return written
