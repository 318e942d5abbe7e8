"""Cohorts in SQL: the subjects of a ``CohortQuery`` counted (or listed) in one statement over
the index tables, never over resource bodies.

The statement is a chain of common table expressions: ``subj`` (the subjects in a band, from
their date index row), ``mem`` (subject and stratum of every member's evidence), one ``f<n>``
per flag (the subjects its evidence names; for a ``Repeat``, the records ``rec<n>`` joined with
themselves), and ``cohort`` (one row per subject and stratum with its band and flags). The
counts are two ``GROUP BY`` over ``cohort``: by stratum, and over every stratum with each
subject once. Criteria on evidence are the search criteria of ``sqlsearch.SqlBuilder``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection

from service.storage import CohortCount, CohortMember, CohortQuery, Evidence, Repeat
from service.storage.sqlsearch import SqlBuilder, SqlSearches, param_mark


def _evidence(
    b: SqlBuilder,
    subject_type: str,
    ev: Evidence,
    cols: str,
    join: Callable[[str], str] | None = None,
) -> str:
    """A SELECT over one kind of evidence: link row ``l`` joined to its resource ``e``;
    ``cols`` names it ``{ln}``, ``join`` is given it (placeholders are made in text order)."""
    ln, e = b.alias("l"), b.alias("e")
    head = (
        f"SELECT {cols.format(ln=ln)} FROM search_reference {ln} JOIN resources {e} ON "
        f"{e}.res_type = {ln}.res_type AND {e}.res_id = {ln}.res_id"
    )
    if join is not None:
        head += join(ln)
    where = [
        f"{ln}.res_type = {b.p(ev.type)}",
        f"{ln}.param = {b.p(ev.link)}",
        f"{ln}.target_type = {b.p(subject_type)}",
        f"{e}.deleted = {b.p(False)}",
    ]
    where += b.conditions(ev.type, e, ev.criteria)
    return head + " WHERE " + " AND ".join(where)


def cohort_sql(query: CohortQuery, placeholder: str) -> tuple[str, list[Any]]:
    """The CTEs of a cohort, ending with ``cohort(id, band, stratum, f0, f1, ...)``."""
    b = SqlBuilder(placeholder)
    ctes: list[str] = []
    # subjects in a band
    cases = " ".join(
        f"WHEN d.high < {b.p(bound)} THEN {b.p(label)}" for label, bound in query.bands
    )
    band_param = b.p(query.band_param)  # placeholders are made in text order
    where = [
        f"r.res_type = {b.p(query.subject_type)}",
        f"r.deleted = {b.p(False)}",
        f"d.high < {b.p(query.bands[-1][1])}",
    ]
    if query.subjects is not None:
        marks = ", ".join(b.p(s) for s in query.subjects) or b.p("")
        where.append(f"r.res_id IN ({marks})")
    ctes.append(
        f"subj(id, band) AS (SELECT r.res_id, CASE {cases} END FROM resources r JOIN search_date"
        f" d ON d.res_type = r.res_type AND d.res_id = r.res_id AND d.param = "
        f"{band_param} WHERE " + " AND ".join(where) + ")"
    )
    # members and their strata
    parts = []
    for ev in query.members:
        k = b.alias("k")

        def stratum(ln: str, k: str = k) -> str:
            return (
                f" LEFT JOIN search_token {k} ON {k}.res_type = {ln}.res_type AND {k}.res_id = "
                f"{ln}.res_id AND {k}.param = {b.p(query.stratum_param)}"
            )

        parts.append(
            _evidence(
                b,
                query.subject_type,
                ev,
                "{ln}.target_id, COALESCE(" + k + ".code, '')",
                stratum,
            )
        )
    ctes.append("mem(id, stratum) AS (" + " UNION ".join(parts) + ")")
    # flags
    for n, flag in enumerate(query.flags):
        if isinstance(flag, Repeat):
            recs = []
            for ev in flag.records:
                t = b.alias("t")

                def dated(ln: str, t: str = t, date: str = flag.date) -> str:
                    return (
                        f" JOIN search_date {t} ON {t}.res_type = {ln}.res_type AND {t}.res_id = "
                        f"{ln}.res_id AND {t}.param = {b.p(date)}"
                    )

                recs.append(
                    _evidence(b, query.subject_type, ev, "{ln}.target_id, " + t + ".low", dated)
                )
            ctes.append(f"rec{n}(id, low) AS (" + " UNION ALL ".join(recs) + ")")
            ctes.append(
                f"f{n}(id) AS (SELECT DISTINCT y.id FROM rec{n} y JOIN rec{n} x ON x.id = y.id"
                f" AND x.low < y.low AND x.low >= y.low - {b.p(flag.within_us)} WHERE y.low >= "
                f"{b.p(flag.start_us)} AND y.low <= {b.p(flag.end_us)})"
            )
        else:
            found = [_evidence(b, query.subject_type, ev, "{ln}.target_id") for ev in flag]
            ctes.append(f"f{n}(id) AS (" + " UNION ".join(found) + ")")
    flags = "".join(
        f", CASE WHEN s.id IN (SELECT id FROM f{n}) THEN 1 ELSE 0 END"
        for n in range(len(query.flags))
    )
    names = "".join(f", f{n}" for n in range(len(query.flags)))
    ctes.append(
        f"cohort(id, band, stratum{names}) AS (SELECT s.id, s.band, m.stratum{flags} FROM subj s"
        " JOIN mem m ON m.id = s.id WHERE m.stratum <> '' OR NOT EXISTS (SELECT 1 FROM mem n"
        " WHERE n.id = s.id AND n.stratum <> ''))"
    )
    return "WITH " + ", ".join(ctes), b.params


class SqlCohortSearches(SqlSearches):
    """``tx.searches`` of a SQL transaction: the searches of sqlsearch.py and cohorts."""

    def __init__(self, conn: Connection, dialect: str) -> None:
        super().__init__(conn, dialect)
        self._conn = conn
        self._dialect = dialect

    def cohort_counts(self, query: CohortQuery) -> list[CohortCount]:
        """Count subjects by stratum, band and flags (stratum None: each subject once)."""
        head, params = cohort_sql(query, param_mark(self._dialect))
        names = "".join(f", f{n}" for n in range(len(query.flags)))
        sql = (
            f"{head} SELECT stratum, band{names}, COUNT(DISTINCT id) FROM cohort GROUP BY "
            f"stratum, band{names} UNION ALL SELECT NULL, band{names}, COUNT(DISTINCT id) FROM "
            f"cohort GROUP BY band{names}"
        )
        width = len(query.flags)
        return [
            CohortCount(
                row[0], row[1], tuple(bool(v) for v in row[2 : 2 + width]), int(row[2 + width])
            )
            for row in self._conn.exec_driver_sql(sql, tuple(params))
        ]

    def cohort_members(self, query: CohortQuery) -> list[CohortMember]:
        """Every subject of the cohort with its band, strata and flags, in id order."""
        head, params = cohort_sql(query, param_mark(self._dialect))
        names = "".join(f", f{n}" for n in range(len(query.flags)))
        sql = f"{head} SELECT id, band, stratum{names} FROM cohort ORDER BY id, stratum"
        members: list[CohortMember] = []
        for row in self._conn.exec_driver_sql(sql, tuple(params)):
            flags = tuple(bool(v) for v in row[3:])
            if members and members[-1].id == row[0]:
                last = members[-1]
                members[-1] = CohortMember(last.id, last.band, (*last.strata, row[2]), last.flags)
            else:
                members.append(CohortMember(row[0], row[1], (row[2],), flags))
        return members
