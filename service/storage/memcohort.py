"""Cohorts in memory, with the same meaning as the SQL of sqlcohort.py: the subjects of a
``CohortQuery`` by band, stratum and flags, read from the index rows (never resource bodies)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence

from service.storage import (
    CohortCount,
    CohortMember,
    CohortQuery,
    Criterion,
    Evidence,
    IndexRows,
    Key,
    Repeat,
    StoredResource,
)

# whether a stored resource of a type meets criteria (MemorySearches._matches)
Matches = Callable[[str, StoredResource, Sequence[Criterion]], bool]


class MemoryCohorts:
    """Cohorts over a memory store's versions and index rows (part of its ``tx.searches``)."""

    def __init__(
        self,
        versions: dict[Key, list[StoredResource]],
        index: dict[Key, IndexRows],
        matches: Matches,
    ) -> None:
        self.versions = versions
        self.index = index
        self._matches = matches

    def _current(self, type_: str) -> Iterator[StoredResource]:
        for (t, _), versions in self.versions.items():
            if t == type_ and not versions[-1].deleted:
                yield versions[-1]

    def _evidence(self, subject_type: str, ev: Evidence) -> Iterator[tuple[str, StoredResource]]:
        """(subject id, resource) for each resource of ``ev`` naming a subject."""
        for stored in self._current(ev.type):
            rows = self.index.get((ev.type, stored.id), IndexRows())
            links = {
                r.target_id
                for r in rows.references
                if r.param == ev.link and r.target_type == subject_type and r.target_id
            }
            if links and self._matches(ev.type, stored, ev.criteria):
                for subject in links:
                    yield subject, stored

    def _rows(self, stored: StoredResource) -> IndexRows:
        return self.index.get((stored.type, stored.id), IndexRows())

    def _flag(self, subject_type: str, flag: tuple[Evidence, ...] | Repeat) -> set[str]:
        if not isinstance(flag, Repeat):
            return {s for ev in flag for s, _ in self._evidence(subject_type, ev)}
        records: dict[str, list[float]] = defaultdict(list)
        for ev in flag.records:
            for subject, stored in self._evidence(subject_type, ev):
                records[subject] += [
                    r.low for r in self._rows(stored).dates if r.param == flag.date
                ]
        found = set()
        for subject, lows in records.items():
            for later in lows:
                if flag.start_us <= later <= flag.end_us and any(
                    earlier < later and earlier >= later - flag.within_us for earlier in lows
                ):
                    found.add(subject)
                    break
        return found

    def _cohort(self, query: CohortQuery) -> list[CohortMember]:
        bands: dict[str, str] = {}
        for stored in self._current(query.subject_type):
            if query.subjects is not None and stored.id not in query.subjects:
                continue
            for row in self._rows(stored).dates:
                if row.param != query.band_param:
                    continue
                band = next((label for label, bound in query.bands if row.high < bound), None)
                if band is not None:
                    bands[stored.id] = band
        strata: dict[str, set[str]] = defaultdict(set)
        for ev in query.members:
            for subject, stored in self._evidence(query.subject_type, ev):
                if subject not in bands:
                    continue
                codes = {
                    r.code for r in self._rows(stored).tokens if r.param == query.stratum_param
                }
                strata[subject] |= codes or {""}
        for found in strata.values():
            if len(found) > 1:
                found.discard("")
        flags = [self._flag(query.subject_type, flag) for flag in query.flags]
        return [
            CohortMember(
                id_, bands[id_], tuple(sorted(strata[id_])), tuple(id_ in f for f in flags)
            )
            for id_ in sorted(strata)
        ]

    def counts(self, query: CohortQuery) -> list[CohortCount]:
        """Count subjects by stratum, band and flags (stratum None: each subject once)."""
        counts: dict[tuple[str | None, str, tuple[bool, ...]], int] = defaultdict(int)
        for member in self._cohort(query):
            counts[(None, member.band, member.flags)] += 1
            for stratum in member.strata:
                counts[(stratum, member.band, member.flags)] += 1
        return [CohortCount(s, b, f, n) for (s, b, f), n in counts.items()]

    def members(self, query: CohortQuery) -> list[CohortMember]:
        """Every subject of the cohort with its band, strata and flags, in id order."""
        return self._cohort(query)
