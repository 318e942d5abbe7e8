"""The What Matters measure (profiles/Measure-what-matters.json), evaluated over the search
indexes: who is in the initial population and the three numerators, by care-setting type and
age band, counted in the database (``tx.searches.cohort_counts``; the store's SQL, never the
resources themselves).

- initial population (= denominator): patients aged ``min_age`` or more at the period's start
  (Patient ``birthdate``) with any data in the period: an Observation or List (``date``), a
  Goal (``start-date``) or a QuestionnaireResponse (``authored``) of theirs dated in it;
- documented: a what-matters statement (LOINC 95541-9 or 75773-2) dated in the period;
- acted on: a Goal with an agreed status (accepted, active, on-hold, completed) addressing a
  statement dated in the period;
- reviewed: a statement or priorities List (LOINC 81340-2) dated in the period within
  ``review_days`` of an earlier one (priorities recorded again, or confirmed unchanged).

The care setting of a patient is the ``wmty-care-setting-type`` of the data that put them in
the population (what ``$record-what-matters`` writes on its Observations, Goals and Lists when
given ``setting-type``); data without one counts as ``unspecified`` unless the patient has a
setting besides. A patient seen in two settings is in both strata, once in the totals.

May import: the FHIR core and storage (criteria), never Flask or SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

from service.errors import BadRequest, Forbidden
from service.fhir.access import Access
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.priorities.codes import LOINC, PRIORITIES_CODE, STATEMENT_CODES
from service.storage import (
    CohortMember,
    CohortQuery,
    Criterion,
    Evidence,
    ParamCriterion,
    RangeMatch,
    ReferenceMatch,
    Repeat,
    TokenMatch,
)
from service.validation.dates import date_range

GROUPS = ("documented", "acted-on", "reviewed")
AGREED = ("accepted", "active", "on-hold", "completed")
UNSPECIFIED = "unspecified"
READ_TYPES = ("Patient", "Observation", "Goal", "List")
_DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Period:
    """The measurement period: first and last microsecond, and the first day."""

    start_us: int
    end_us: int
    first_day: date
    start: str
    end: str


def parse_period(start: str | None, end: str | None) -> Period:
    """``periodStart`` and ``periodEnd`` (a date, or a year or month) as a Period."""
    if not start or not end:
        raise BadRequest("periodStart and periodEnd are required", expression=("periodStart",))
    low = date_range(start)
    high = date_range(end)
    if low is None or high is None:
        raise BadRequest("periodStart and periodEnd are dates (YYYY-MM-DD)", ("periodStart",))
    if high[1] < low[0]:
        raise BadRequest("periodEnd is before periodStart", expression=("periodEnd",))
    first = date.fromisoformat((start + "-01-01")[:10]) if len(start) < 10 else None
    first = first or date.fromisoformat(start[:10])
    return Period(low[0], high[1], first, start, end)


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def age_bands(first_day: date, min_age: int) -> tuple[tuple[str, int], ...]:
    """(label, bound) oldest first: a birthdate ending before the bound is that old or more at
    ``first_day``; bands of ten years from 75 and 85, the youngest from ``min_age``."""
    edges = sorted({min_age, *(a for a in (75, 85) if a > min_age)}, reverse=True)
    bands = []
    for n, age in enumerate(edges):
        label = f"{age}+" if n == 0 else f"{age}-{edges[n - 1] - 1}"
        born_by = _years_before(first_day, age) + timedelta(days=1)
        bound = date_range(born_by.isoformat())
        assert bound is not None
        bands.append((label, bound[0]))
    return tuple(bands)


def _token(param: str, system: str | None, *codes: str) -> ParamCriterion:
    return ParamCriterion("token", param, tuple(TokenMatch(system, c) for c in codes))


def _dated(param: str, period: Period) -> ParamCriterion:
    return ParamCriterion("date", param, (RangeMatch("eq", period.start_us, period.end_us),))


def cohort_query(
    period: Period, min_age: int, review_days: int, subjects: Sequence[str] | None = None
) -> CohortQuery:
    """The measure as a cohort of the store (see the module's docstring)."""
    statement: tuple[Criterion, ...] = (_token("code", LOINC, *STATEMENT_CODES),)
    in_period = (*statement, _dated("date", period))
    addresses = ReferenceMatch(types=("Observation",), chain=in_period)
    return CohortQuery(
        subject_type="Patient",
        band_param="birthdate",
        bands=age_bands(period.first_day, min_age),
        members=(
            Evidence("Observation", "patient", (_dated("date", period),)),
            Evidence("List", "patient", (_dated("date", period),)),
            Evidence("Goal", "patient", (_dated("start-date", period),)),
            Evidence("QuestionnaireResponse", "patient", (_dated("authored", period),)),
        ),
        stratum_param="care-setting-type",
        flags=(
            (Evidence("Observation", "patient", in_period),),
            (
                Evidence(
                    "Goal",
                    "patient",
                    (
                        _token("lifecycle-status", None, *AGREED),
                        ParamCriterion("reference", "addresses", (addresses,)),
                    ),
                ),
            ),
            Repeat(
                records=(
                    Evidence("Observation", "patient", statement),
                    Evidence("List", "patient", (_token("code", LOINC, PRIORITIES_CODE),)),
                ),
                date="date",
                start_us=period.start_us,
                end_us=period.end_us,
                within_us=review_days * _DAY_US,
            ),
        ),
        subjects=tuple(subjects) if subjects is not None else None,
    )


@dataclass
class Tally:
    """The initial population and the three numerators of one stratum (or of everyone)."""

    population: int = 0
    numerators: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, flags: Sequence[bool], count: int) -> None:
        """Count ``count`` patients with these numerator flags."""
        self.population += count
        for n, flag in enumerate(flags):
            if flag:
                self.numerators[n] += count

    def score(self, group: int) -> float | None:
        """The proportion of one numerator (None for an empty population)."""
        return self.numerators[group] / self.population if self.population else None


@dataclass
class Figures:
    """The measure's counts: overall, per care-setting type and per age band."""

    period: Period
    review_days: int
    overall: Tally = field(default_factory=Tally)
    settings: dict[str, Tally] = field(default_factory=dict)
    bands: dict[str, Tally] = field(default_factory=dict)
    members: list[CohortMember] | None = None


def require_population_read(access: Access | None) -> None:
    """The measure reads every patient's data: a user/ or system/ read of Patient,
    Observation, Goal and List, never a patient-context token."""
    if access is None:
        return
    for type_ in READ_TYPES:
        if access.reach(type_, "r") is not None:
            raise Forbidden(
                "The What Matters measure counts every patient: it needs user/ or system/ "
                f"read access to {', '.join(READ_TYPES)}; a patient/ scope is not enough"
            )


class WhatMattersMeasure:
    """Evaluates the measure for a period, in one read session of the actor."""

    def __init__(self, fhir: FhirService, min_age: int = 65) -> None:
        self.fhir = fhir
        self.min_age = min_age

    def evaluate(
        self,
        actor: Actor,
        period: Period,
        review_days: int = 365,
        members: bool = False,
        subjects: Sequence[str] | None = None,
    ) -> Figures:
        """The counts (and, with ``members``, every patient with their flags)."""
        require_population_read(actor.access)
        if review_days < 1:
            raise BadRequest("review-days must be 1 or more", expression=("review-days",))
        query = cohort_query(period, self.min_age, review_days, subjects)
        labels = [label for label, _ in query.bands]
        figures = Figures(period, review_days, bands={label: Tally() for label in labels})
        with self.fhir.session(actor) as session:
            counts = session.tx.searches.cohort_counts(query)
            if members:
                figures.members = session.tx.searches.cohort_members(query)
        for row in sorted(counts, key=lambda r: (r.stratum or "", r.band, r.flags)):
            if row.stratum is None:
                figures.overall.add(row.flags, row.count)
                figures.bands[row.band].add(row.flags, row.count)
            else:
                name = row.stratum or UNSPECIFIED
                figures.settings.setdefault(name, Tally()).add(row.flags, row.count)
        return figures
