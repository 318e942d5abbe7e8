"""The bare baseline for the search benchmark: a minimal Flask app that runs the same indexed
SQL as the service for the three benchmark searches (index-table IN subqueries, then the
resources by primary key) and for the pages of a patient's Observations (bench_paging.py), and
returns the stored JSON in a Bundle, with no FHIR logic."""

from __future__ import annotations

import os

from flask import Flask, Response, request
from sqlalchemy import text

from service.storage.sql import engine_for

# The shape the service's SearchSql produces: the most selective criterion as an IN
# subquery, every other one as an EXISTS probe on the index's (res_type, res_id) key.
GOALS = text(
    "SELECT r.content FROM resources r WHERE r.res_type = 'Goal' AND r.deleted = false"
    " AND r.res_id IN (SELECT res_id FROM search_reference WHERE res_type = 'Goal'"
    "  AND param = 'patient' AND target_type IN ('Patient', 'Group') AND target_id = :p)"
    " AND EXISTS (SELECT 1 FROM search_token t WHERE t.res_type = 'Goal'"
    "  AND t.res_id = r.res_id AND t.param = 'lifecycle-status' AND t.code = :status)"
    " ORDER BY r.res_id LIMIT 51"
)
STATEMENTS = text(
    "SELECT r.content FROM resources r WHERE r.res_type = 'Observation' AND r.deleted = false"
    " AND r.res_id IN (SELECT res_id FROM search_reference WHERE res_type = 'Observation'"
    "  AND param = 'patient' AND target_type IN ('Patient', 'Group') AND target_id = :p)"
    " AND EXISTS (SELECT 1 FROM search_token t WHERE t.res_type = 'Observation'"
    "  AND t.res_id = r.res_id AND t.param = 'category' AND t.code = :category)"
    " AND EXISTS (SELECT 1 FROM search_date d WHERE d.res_type = 'Observation'"
    "  AND d.res_id = r.res_id AND d.param = 'date'"
    "  AND (d.high > :high OR (d.low >= :low AND d.high <= :high)))"
    " ORDER BY r.res_id LIMIT 51"
)
CHAINED = text(
    "SELECT r.content FROM resources r WHERE r.res_type = 'Observation' AND r.deleted = false"
    " AND r.res_id IN (SELECT res_id FROM search_reference WHERE res_type = 'Observation'"
    "  AND param = 'subject' AND target_type = 'Patient' AND target_id IN ("
    "   SELECT p.res_id FROM resources p WHERE p.res_type = 'Patient' AND p.deleted = false"
    "   AND p.res_id IN (SELECT res_id FROM search_token WHERE res_type = 'Patient'"
    "    AND param = 'identifier' AND system = :system AND code = :code)))"
    " ORDER BY r.res_id LIMIT 51"
)
# A patient's Observations a page at a time (_count=20), as the service pages them: after the
# last id of the page before, among the resources first written by the search's bound.
PAGE = text(
    "SELECT r.content FROM resources r WHERE r.res_type = 'Observation' AND r.deleted = false"
    " AND r.res_id IN (SELECT res_id FROM search_reference WHERE res_type = 'Observation'"
    "  AND param = 'patient' AND target_type IN ('Patient', 'Group') AND target_id = :p)"
    " AND (r.seq <= :bound OR EXISTS (SELECT 1 FROM resource_versions v"
    "  WHERE v.res_type = r.res_type AND v.res_id = r.res_id AND v.seq <= :bound))"
    " AND r.res_id > :after ORDER BY r.res_id ASC LIMIT 21"
)
# The first page, as the service runs it: no cursor and no bound yet.
FIRST_PAGE = text(
    "SELECT r.content FROM resources r WHERE r.res_type = 'Observation' AND r.deleted = false"
    " AND r.res_id IN (SELECT res_id FROM search_reference WHERE res_type = 'Observation'"
    "  AND param = 'patient' AND target_type IN ('Patient', 'Group') AND target_id = :p)"
    " ORDER BY r.res_id ASC LIMIT 21"
)
# ge2026-01-01 as the service computes it: the day's first and last microsecond
DAY_LOW, DAY_HIGH = 1767225600000000, 1767311999999999


def create_baseline_app() -> Flask:
    """Build the baseline search app on WHATMATTERS_DATABASE_URL."""
    engine = engine_for(os.environ["WHATMATTERS_DATABASE_URL"])
    app = Flask(__name__)

    def bundle(rows: list[str]) -> Response:
        entries = ",".join('{"resource":' + row + "}" for row in rows[:50])
        body = '{"resourceType":"Bundle","type":"searchset","entry":[' + entries + "]}"
        return Response(body, content_type="application/fhir+json")

    @app.get("/fhir/Goal")
    def goals() -> Response:
        with engine.connect() as conn:
            params = {"p": request.args["patient"], "status": request.args["lifecycle-status"]}
            return bundle([r.content for r in conn.execute(GOALS, params)])

    @app.get("/fhir/Observation")
    def observations() -> Response:
        with engine.connect() as conn:
            chained = request.args.get("subject:Patient.identifier")
            if "_count" in request.args:
                if "after" not in request.args:
                    first = conn.execute(FIRST_PAGE, {"p": request.args["patient"]})
                    return bundle([r.content for r in first][:20])
                params = {
                    "p": request.args["patient"],
                    "after": request.args["after"],
                    "bound": int(request.args["bound"]),
                }
                return bundle([r.content for r in conn.execute(PAGE, params)][:20])
            if chained is not None:
                system, code = chained.split("|", 1)
                rows = conn.execute(CHAINED, {"system": system, "code": code})
            else:
                rows = conn.execute(
                    STATEMENTS,
                    {
                        "p": request.args["patient"],
                        "category": request.args["category"],
                        "low": DAY_LOW,
                        "high": DAY_HIGH,
                    },
                )
            return bundle([r.content for r in rows])

    return app


app = create_baseline_app() if "WHATMATTERS_DATABASE_URL" in os.environ else None
