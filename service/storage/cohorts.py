"""Cohorts: the populations of a measure, counted and listed over the search index."""

from __future__ import annotations

from dataclasses import dataclass

from service.storage.queries import Criterion


@dataclass(frozen=True)
class Evidence:
    """Resources of ``type`` matching ``criteria`` that name a subject through the reference
    parameter ``link`` (e.g. Observations whose ``patient`` is the Patient)."""

    type: str
    link: str
    criteria: tuple[Criterion, ...] = ()


@dataclass(frozen=True)
class Repeat:
    """Subjects with a record (any of ``records``, dated by their ``date`` parameter's low end)
    inside [``start_us``, ``end_us``] that follows an earlier record by at most ``within_us``."""

    records: tuple[Evidence, ...]
    date: str
    start_us: int
    end_us: int
    within_us: int


@dataclass(frozen=True)
class CohortQuery:
    """Subjects of ``subject_type`` in age-like bands, members through ``members``, each with
    a stratum per value of ``stratum_param`` on its members' evidence, and boolean flags.

    ``bands`` are (label, bound), oldest first: a subject is in the first band whose
    ``band_param`` date ends before the bound; a subject in no band is not counted. Evidence
    without a ``stratum_param`` value gives the stratum ``""``, only
    to a subject with no other stratum. A flag is true when any of its
    evidence names the subject (or, for a ``Repeat``, when a record repeats in time).
    ``subjects`` restricts the count to those ids.
    """

    subject_type: str
    band_param: str
    bands: tuple[tuple[str, int], ...]
    members: tuple[Evidence, ...]
    stratum_param: str
    flags: tuple[tuple[Evidence, ...] | Repeat, ...] = ()
    subjects: tuple[str, ...] | None = None


@dataclass(frozen=True)
class CohortCount:
    """How many subjects share a stratum (None: every stratum, each subject once), a band and
    the flag values."""

    stratum: str | None
    band: str
    flags: tuple[bool, ...]
    count: int


@dataclass(frozen=True)
class CohortMember:
    """One subject of a cohort: its band, its strata and its flags."""

    id: str
    band: str
    strata: tuple[str, ...]
    flags: tuple[bool, ...]
