"""The R4 MeasureReport of the What Matters measure (measure.py gives the figures): one group
per numerator (documented, acted on, reviewed) with its initial population, denominator and
numerator, the proportion, and the stratifiers care-setting-type and age-band.

``summary`` gives counts; ``subject-list`` adds, on every population of every group and
stratum, ``subjectResults``: a contained List of the patients counted there (the same List
is referenced wherever the same patients are); ``individual`` is a summary for one subject.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from service.priorities.codes import CARE_SETTING_TYPES
from service.priorities.measure import GROUPS, UNSPECIFIED, Figures, Tally
from service.storage import CohortMember
from service.validation.profiles import CANONICAL_BASE

MEASURE_URL = f"{CANONICAL_BASE}/Measure/what-matters"
POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
_POPULATIONS = (
    ("initial-population", "Initial Population"),
    ("denominator", "Denominator"),
    ("numerator", "Numerator"),
)
REPORT_TYPES = ("summary", "subject-list", "individual")
Chosen = Callable[[CohortMember], bool]


class _Lists:
    """The contained Lists of a subject-list report, one per distinct set of patients."""

    def __init__(self) -> None:
        self.contained: list[dict[str, Any]] = []
        self._ids: dict[tuple[str, ...], str] = {}

    def reference(self, ids: Sequence[str], title: str) -> dict[str, str]:
        key = tuple(ids)
        if key not in self._ids:
            list_id = f"list-{len(self._ids) + 1}"
            self._ids[key] = list_id
            entry = [{"item": {"reference": f"Patient/{i}"}} for i in ids]
            resource: dict[str, Any] = {
                "resourceType": "List",
                "id": list_id,
                "status": "current",
                "mode": "snapshot",
                "title": title,
            }
            if entry:
                resource["entry"] = entry
            else:
                resource["emptyReason"] = {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                            "code": "nilknown",
                        }
                    ]
                }
            self.contained.append(resource)
        return {"reference": f"#{self._ids[key]}"}


def _populations(
    tally: Tally,
    group: int,
    lists: _Lists | None,
    members: list[CohortMember],
    where: Chosen,
    title: str,
) -> list[dict[str, Any]]:
    counts = (tally.population, tally.population, tally.numerators[group])
    out = []
    for (code, display), count in zip(_POPULATIONS, counts, strict=True):
        population: dict[str, Any] = {
            "code": {"coding": [{"system": POPULATION, "code": code, "display": display}]},
            "count": count,
        }
        if lists is not None:
            ids = [m.id for m in members if where(m) and (code != "numerator" or m.flags[group])]
            population["subjectResults"] = lists.reference(ids, f"{title}: {display}")
        out.append(population)
    return out


def _score(tally: Tally, group: int) -> dict[str, Any] | None:
    score = tally.score(group)
    return None if score is None else {"value": round(score, 4)}


def _setting_value(name: str) -> dict[str, Any]:
    if name == UNSPECIFIED:
        return {"text": UNSPECIFIED}
    return {"coding": [{"system": CARE_SETTING_TYPES, "code": name}], "text": name}


def measure_report(
    figures: Figures, report_type: str, date: str, subject: str | None = None
) -> dict[str, Any]:
    """The MeasureReport of ``figures`` (``report_type`` one of ``REPORT_TYPES``)."""
    lists = _Lists() if report_type == "subject-list" else None
    members = figures.members or []
    groups = []
    for g, name in enumerate(GROUPS):
        group: dict[str, Any] = {
            "id": name,
            "code": {"text": name},
            "population": _populations(
                figures.overall, g, lists, members, lambda m: True, f"{name}, everyone"
            ),
        }
        score = _score(figures.overall, g)
        if score is not None:
            group["measureScore"] = score
        strata_settings = []
        for setting, tally in sorted(figures.settings.items()):
            key = "" if setting == UNSPECIFIED else setting

            def in_setting(m: CohortMember, key: str = key) -> bool:
                return key in m.strata

            stratum: dict[str, Any] = {
                "value": _setting_value(setting),
                "population": _populations(
                    tally, g, lists, members, in_setting, f"{name}, {setting}"
                ),
            }
            if (score := _score(tally, g)) is not None:
                stratum["measureScore"] = score
            strata_settings.append(stratum)
        strata_bands = []
        for band, tally in figures.bands.items():

            def in_band(m: CohortMember, band: str = band) -> bool:
                return m.band == band

            stratum = {
                "value": {"text": band},
                "population": _populations(tally, g, lists, members, in_band, f"{name}, {band}"),
            }
            if (score := _score(tally, g)) is not None:
                stratum["measureScore"] = score
            strata_bands.append(stratum)
        group["stratifier"] = [
            {"code": [{"text": "care-setting-type"}], "stratum": strata_settings},
            {"code": [{"text": "age-band"}], "stratum": strata_bands},
        ]
        groups.append(group)
    report: dict[str, Any] = {"resourceType": "MeasureReport"}
    if lists is not None and lists.contained:
        report["contained"] = lists.contained
    report.update(
        {
            "status": "complete",
            "type": report_type,
            "measure": MEASURE_URL,
            "date": date,
            "period": {"start": figures.period.start, "end": figures.period.end},
            "improvementNotation": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/"
                        "measure-improvement-notation",
                        "code": "increase",
                    }
                ]
            },
            "group": groups,
        }
    )
    if subject is not None:
        report["subject"] = {"reference": subject}
    return report
