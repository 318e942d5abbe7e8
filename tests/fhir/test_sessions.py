"""Sessions and actors of the FHIR core, below HTTP: one transaction per session, the access
of the actor enforced on it, Provenance as the actor's policy says, and search as typed pages.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import BadRequest, Forbidden
from service.fhir.access import Access, parse_scopes
from service.fhir.actor import Actor
from service.fhir.session import Session
from service.storage import Query
from tests.builders import BASE, goal, patient
from tests.direct import Direct
from tests.fhir.conftest import body

NURSE = Access(grants=parse_scopes("user/*.cruds"), subject="nurse-1", client_id="ward-app")


def provenances(fhir: Direct) -> int:
    return fhir.read_only(lambda tx: tx.searches.count(Query("Provenance")))


def another_patient(id_: str) -> dict[str, Any]:
    """A valid Patient without the NHS number of ``patient()`` (no two may share one)."""
    return {k: v for k, v in patient(id=id_).items() if k != "identifier"}


def test_a_session_reads_its_own_writes_and_a_failed_one_keeps_none(fhir: Direct) -> None:
    def write_then_fail(s: Session) -> None:
        s.update("Patient", "p1", patient(id="p1"))
        assert s.read("Patient", "p1").status == 200  # seen inside its own transaction
        s.update("Patient", "p2", {**another_patient("p2"), "gender": "sometimes"})  # invalid: 400

    with pytest.raises(BadRequest):
        fhir.perform(Actor.system(), write_then_fail)
    assert "entry" not in body(fhir.history("Patient", None, [], BASE))


def test_a_write_with_a_token_gets_its_provenance_unless_the_actor_brings_its_own(
    fhir: Direct,
) -> None:
    nurse = Actor.client(NURSE)
    fhir.perform(nurse, lambda s: s.update("Patient", "p1", patient(id="p1")))
    assert provenances(fhir) == 1
    recorder = nurse.supplying_provenance()
    fhir.perform(recorder, lambda s: s.update("Goal", "g1", goal(id="g1")))
    assert provenances(fhir) == 1
    fhir.perform(Actor.system(), lambda s: s.update("Goal", "g2", goal(id="g2")))
    assert provenances(fhir) == 1  # the service's own writes have no token to name


def test_the_actor_notes_what_it_touched_and_its_access_is_enforced(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Patient", "p2", another_patient("p2"))
    reader = Actor.client(
        Access(grants=parse_scopes("patient/*.rs"), patient="p1", client_id="app")
    )
    with fhir.session(reader) as session:
        assert session.read("Patient", "p1").status == 200
        with pytest.raises(Forbidden):
            session.read("Patient", "p2")
    assert reader.touched == [("Patient", "p1"), ("Patient", "p2")]
    assert Actor.system().touched == []  # each actor has its own list


def test_search_returns_typed_pages_with_a_cursor_to_the_next(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    for n in range(5):
        fhir.update("Goal", f"g{n}", goal(id=f"g{n}"))
    seen: list[str] = []
    params: list[tuple[str, str]] | None = [("_count", "2"), ("_total", "accurate")]
    with fhir.session(Actor.system()) as session:
        while params is not None:
            page = session.search("Goal", params, base=BASE)
            assert page.total == 5
            seen += [stored.id for stored in page.matches]
            params = page.next_params
    assert sorted(seen) == [f"g{n}" for n in range(5)]
