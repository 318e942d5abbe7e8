"""search, conditional create/update/delete, batch and transaction on the FHIR core:
https://hl7.org/fhir/R4/search.html and https://hl7.org/fhir/R4/http.html. Each test cites the
section it checks."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from service.errors import BadRequest, FhirError, NotFound, PreconditionFailed
from service.fhir.bundles import process_bundle
from tests.builders import BASE, goal, patient
from tests.direct import Direct
from tests.fhir.conftest import body

NHS = "https://fhir.nhs.uk/Id/nhs-number"


# a hospital's record numbers may repeat across its registers; NHS numbers may not (the
# service refuses a second Patient with one), so tests of several matches use record numbers
MRN = "urn:oid:2.16.840.1.113883.19.5"


def with_number(number: str, system: str = NHS, **changes: Any) -> dict[str, Any]:
    return patient(identifier=[{"system": system, "value": number}], **changes)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return sorted(
        e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode
    )


# -- search: search.html ------------------------------------------------------------------------


def test_search_returns_a_searchset_of_the_matches_only(fhir: Direct) -> None:
    """search.html#Summary: the result is a Bundle of type searchset; each match has
    search.mode = match and a fullUrl."""
    fhir.update("Patient", "a", with_number("9000000009", id="a"))
    fhir.update("Patient", "b", with_number("9000000017", id="b"))
    found = body(fhir.search_type("Patient", [("identifier", f"{NHS}|9000000017")], BASE))
    assert (found["resourceType"], found["type"]) == ("Bundle", "searchset")
    assert ids(found) == ["b"]
    assert found["entry"][0]["fullUrl"] == f"{BASE}/Patient/b"


def test_search_leaves_out_deleted_resources(fhir: Direct) -> None:
    fhir.update("Patient", "a", with_number("9000000009", MRN, id="a"))
    fhir.update("Patient", "b", with_number("9000000009", MRN, id="b"))
    fhir.delete("Patient", "a")
    assert ids(body(fhir.search_type("Patient", [("identifier", "9000000009")], BASE))) == ["b"]


def test_search_total_counts_every_match_across_pages(fhir: Direct) -> None:
    """search.html#total and #count: _count limits the page; a next link leads on; the
    pages together hold each match once."""
    for n in range(5):
        fhir.update("Goal", f"g{n}", goal(id=f"g{n}"))
    params = [("subject", "Patient/p1"), ("_count", "2"), ("_total", "accurate")]
    page = body(fhir.search_type("Goal", params, BASE))
    assert page["total"] == 5
    seen = ids(page)
    while True:
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        page = body(fhir.search_type("Goal", parse_qsl(urlsplit(following[0]).query), BASE))
        seen += ids(page)
    assert sorted(seen) == [f"g{n}" for n in range(5)]


def test_search_includes_what_the_matches_reference(fhir: Direct) -> None:
    """search.html#include: _include adds the referenced resources with mode include."""
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Goal", "g1", goal(id="g1"))
    found = body(fhir.search_type("Goal", [("_include", "Goal:subject")], BASE))
    assert ids(found) == ["g1"]
    assert ids(found, "include") == ["p1"]


def test_unknown_search_parameter_is_refused_in_strict_mode(fhir: Direct) -> None:
    """search.html#errors: with Prefer: handling=strict an unknown parameter is an error;
    lenient handling ignores it and says so in an OperationOutcome entry."""
    with pytest.raises(BadRequest):
        fhir.search_type("Patient", [("shoe-size", "9")], BASE, strict=True)
    lenient = body(fhir.search_type("Patient", [("shoe-size", "9")], BASE))
    modes = [e["search"]["mode"] for e in lenient.get("entry", [])]
    assert modes == ["outcome"]


# -- conditional create: http.html#ccreate ------------------------------------------------------


def test_conditional_create_with_no_match_creates(fhir: Direct) -> None:
    created = fhir.create("Patient", with_number("9000000009"), f"identifier={NHS}|9000000009")
    assert created.status == 201


def test_conditional_create_with_one_match_returns_it_and_creates_nothing(
    fhir: Direct,
) -> None:
    """ "One Match: The server ignores the post and returns 200 OK"."""
    fhir.update("Patient", "a", with_number("9000000009", id="a"))
    again = fhir.create("Patient", with_number("9000000009"), f"identifier={NHS}|9000000009")
    assert again.status == 200
    assert again.stored is not None
    assert again.stored.id == "a"
    assert ids(body(fhir.search_type("Patient", [], BASE))) == ["a"]


def test_conditional_create_with_several_matches_is_412(fhir: Direct) -> None:
    """ "Multiple matches: The server returns a 412 Precondition Failed error indicating the
    client's criteria were not selective enough"."""
    fhir.update("Patient", "a", with_number("9000000009", MRN, id="a"))
    fhir.update("Patient", "b", with_number("9000000009", MRN, id="b"))
    with pytest.raises(PreconditionFailed) as several:
        fhir.create("Patient", with_number("9000000009", MRN), f"identifier={MRN}|9000000009")
    assert several.value.status == 412


# -- conditional update and delete: http.html#cond-update, http.html#3.1.0.7.1 -------------------


def test_conditional_update_updates_the_one_match(fhir: Direct) -> None:
    fhir.update("Patient", "a", with_number("9000000009", id="a"))
    updated = fhir.conditional_update(
        "Patient", f"identifier={NHS}|9000000009", with_number("9000000009", gender="male")
    )
    assert updated.status == 200
    assert updated.stored is not None
    assert (updated.stored.id, updated.stored.version) == ("a", 2)


def test_conditional_update_and_delete_with_several_matches_are_412(fhir: Direct) -> None:
    fhir.update("Patient", "a", with_number("9000000009", MRN, id="a"))
    fhir.update("Patient", "b", with_number("9000000009", MRN, id="b"))
    criteria = f"identifier={MRN}|9000000009"
    with pytest.raises(PreconditionFailed):
        fhir.conditional_update("Patient", criteria, with_number("9000000009", MRN))
    with pytest.raises(PreconditionFailed):
        fhir.conditional_delete("Patient", criteria)
    assert fhir.read("Patient", "a").status == fhir.read("Patient", "b").status == 200


# -- transaction and batch: http.html#transaction -----------------------------------------------


def transaction(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def test_transaction_resolves_urn_uuid_references_to_the_ids_it_assigns(
    fhir: Direct,
) -> None:
    """http.html#trules: references to an entry's fullUrl are rewritten to the new id."""
    patient_url = "urn:uuid:6b2c5d8e-1f0a-4e7b-9c3d-2a1b0c9d8e7f"
    result = process_bundle(
        fhir,
        fhir.actor,
        transaction(
            {
                "fullUrl": patient_url,
                "resource": with_number("9000000009"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": goal(subject={"reference": patient_url}),
                "request": {"method": "POST", "url": "Goal"},
            },
        ),
        BASE,
    )
    response = body(result)
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    new_patient = response["entry"][0]["resource"]["id"]
    assert response["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{new_patient}"


def test_transaction_is_all_or_nothing(fhir: Direct) -> None:
    """ "If any resource action fails, the server SHALL reject the whole transaction": the
    valid first entry is not written either, and the error names the failing entry."""
    with pytest.raises(FhirError) as failed:
        process_bundle(
            fhir,
            fhir.actor,
            transaction(
                {
                    "resource": patient(id="kept-out"),
                    "request": {"method": "PUT", "url": "Patient/kept-out"},
                },
                {
                    "resource": goal(id="g1", lifecycleStatus="not-a-status"),
                    "request": {"method": "PUT", "url": "Goal/g1"},
                },
            ),
            BASE,
        )
    assert failed.value.status in (400, 422)
    expressions = [e for issue in failed.value.outcome_issues() for e in issue.expression]
    assert any(e.startswith("Bundle.entry[1]") for e in expressions), expressions
    with pytest.raises(NotFound):
        fhir.read("Patient", "kept-out")


def test_transaction_with_a_stale_if_match_is_412_and_writes_nothing(fhir: Direct) -> None:
    fhir.update("Goal", "g1", goal(id="g1"))
    fhir.update("Goal", "g1", goal(id="g1", lifecycleStatus="accepted"))
    with pytest.raises(PreconditionFailed):
        process_bundle(
            fhir,
            fhir.actor,
            transaction(
                {
                    "resource": patient(id="p9"),
                    "request": {"method": "PUT", "url": "Patient/p9"},
                },
                {
                    "resource": goal(id="g1", lifecycleStatus="completed"),
                    "request": {"method": "PUT", "url": "Goal/g1", "ifMatch": 'W/"1"'},
                },
            ),
            BASE,
        )
    with pytest.raises(NotFound):
        fhir.read("Patient", "p9")
    assert body(fhir.read("Goal", "g1"))["lifecycleStatus"] == "accepted"


def test_batch_entries_succeed_or_fail_on_their_own(fhir: Direct) -> None:
    """http.html#brules: in a batch each entry is processed on its own; a failing entry gets
    its own error status and OperationOutcome, the others still happen."""
    result = process_bundle(
        fhir,
        fhir.actor,
        transaction(
            {"resource": patient(id="p1"), "request": {"method": "PUT", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": "Patient/nobody"}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
            kind="batch",
        ),
        BASE,
    )
    entries = body(result)["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "404 Not Found", "200 OK"]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[2]["resource"]["id"] == "p1"


def test_only_batch_and_transaction_bundles_are_processed(fhir: Direct) -> None:
    with pytest.raises(BadRequest) as refused:
        process_bundle(fhir, fhir.actor, transaction(kind="collection"), BASE)
    assert ("Bundle.type",) in [i.expression for i in refused.value.outcome_issues()]
