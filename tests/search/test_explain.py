"""The main searches are answered through indexes, never by scanning a table (both databases).

Runs EXPLAIN on the SQL the store sends for: a patient's active goals, a patient's
what-matters statements since a date, and a chained search by NHS number.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import text

from service.fhir.search_parser import SearchParser
from service.storage.sql import SqlStore
from tests.conftest import wipe
from tests.perf.dataset import load
from tests.search.conftest import build_service

QUERIES = {
    # (type, query, index tables that must be read through one of their indexes)
    "patient goals": (
        "Goal",
        "patient=p7&lifecycle-status=active",
        ["search_reference", "search_token"],
    ),
    "patient statements since": (
        "Observation",
        "patient=p7&category=what-matters&date=ge2026-01-01",
        ["search_reference", "search_token", "search_date"],
    ),
    "chained identifier": (
        "Observation",
        "subject:Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|9000000007",
        ["search_token", "search_reference"],
    ),
}


@pytest.fixture(scope="module")
def loaded_store(sql_store: SqlStore) -> Iterator[SqlStore]:
    wipe(sql_store)
    load(build_service(sql_store), patients=300)  # 4,800 resources
    with sql_store.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    yield sql_store
    wipe(sql_store)


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_main_searches_use_indexes(loaded_store: SqlStore, name: str) -> None:
    type_, query, tables = QUERIES[name]
    service = build_service(loaded_store)
    request = SearchParser(service.search_params).parse(
        type_, parse_qsl(query), strict=True, default_count=50, max_count=100
    )
    with loaded_store.transaction(write=False) as tx:
        plan = tx.searches.explain(request.query)
    joined = "\n".join(plan)
    for table in tables:
        # SQLite: "USING INDEX ix_search_token_lookup"; PostgreSQL: "using ix_search_token_..."
        assert re.search(rf"(?i)using (covering )?index ix_{table}_|using ix_{table}_", joined), (
            table,
            joined,
        )
    if loaded_store.dialect == "sqlite":
        full_scans = [line for line in plan if re.search(r"\bSCAN\b", line) and "USING" not in line]
        assert full_scans == [], joined
    else:
        assert "Seq Scan" not in joined, joined
    # and the query finds what it should
    with loaded_store.transaction(write=False) as tx:
        assert tx.searches.keys(request.query, 100)
