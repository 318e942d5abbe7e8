"""whatmatters reindex: rebuilds every index row, resumes after an interruption."""

from __future__ import annotations

import pytest

from service.fhir.interactions import FhirService
from service.storage import IdCriterion, IndexRows, ParamCriterion, Query, TokenMatch
from service.storage.sql import SqlStore
from tests.search.conftest import loaded_service
from tests.search.dataset import resources


@pytest.fixture(params=["memory", "sql"])
def service(request: pytest.FixtureRequest, sql_store: SqlStore) -> FhirService:
    """The data set, loaded afresh for each test (reindexing changes the index)."""
    return loaded_service(request.param, sql_store)


def _female(service: FhirService) -> list[str]:
    query = Query(
        "Patient", criteria=(ParamCriterion("token", "gender", (TokenMatch(None, "female"),)),)
    )
    return sorted(k[1] for k in service.read_only(lambda tx: tx.searches.keys(query, 100)))


def _drop_all_index_rows(service: FhirService) -> None:
    def work(tx):  # type: ignore[no-untyped-def]
        for type_, id_ in tx.resources.current_keys(None, 10_000):
            tx.index.replace(type_, id_, IndexRows())

    service.run(work)


def test_reindex_rebuilds_index_rows(service: FhirService) -> None:
    assert _female(service) == ["pat-ada", "pat-bjo"]
    _drop_all_index_rows(service)
    assert _female(service) == []
    seen: list[tuple[int, int]] = []
    count = service.reindex(batch_size=4, progress=lambda done, total: seen.append((done, total)))
    assert count == len(resources())
    assert _female(service) == ["pat-ada", "pat-bjo"]
    assert seen[-1] == (count, count)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_reindex_resumes_after_interruption(service: FhirService) -> None:
    _drop_all_index_rows(service)
    calls = 0

    def stop_after_two_batches(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        service.reindex(batch_size=5, progress=stop_after_two_batches)
    state = service.read_only(lambda tx: tx.jobs.progress("reindex"))
    assert state is not None
    assert state[1] == 10
    reports: list[int] = []
    resumed = service.reindex(batch_size=5, progress=lambda done, total: reports.append(done))
    assert reports[0] == 15  # 10 done before the interruption, then one batch of 5
    assert resumed == len(resources())
    assert _female(service) == ["pat-ada", "pat-bjo"]
    assert service.read_only(lambda tx: tx.jobs.progress("reindex")) is None
    by_id = Query("Patient", criteria=(IdCriterion(("pat-ada",)),))
    assert service.read_only(lambda tx: tx.searches.count(by_id)) == 1
