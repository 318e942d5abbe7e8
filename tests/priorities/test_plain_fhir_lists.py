"""What an EHR writes with plain FHIR REST, read back as the patient's priorities.

An outside EHR engineer posted a new ranking List each time the patient re-ranked (as many
EHRs do, rather than updating one), a List in ``changes`` mode, goals the patient rejected,
and statements dated in local time with an offset. Each case is what a clinician would read
off the page wrongly: a withdrawn ranking still ranked, a change list taken as a ranking, a
rejected goal shown as a priority, the newest statement listed second.
"""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from tests.priorities.conversations import FHIR_JSON, add_patient, ranked_texts, what_matters

LOINC = "http://loinc.org"
PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"
CATEGORY = [{"coding": [{"system": PCO, "code": "what-matters"}]}]


def _put(client: FlaskClient, resource: dict[str, Any]) -> None:
    url = f"/fhir/{resource['resourceType']}/{resource['id']}"
    response = client.put(url, json=resource, headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.get_data(as_text=True)


def _statement(client: FlaskClient, id_: str, words: str, when: str = "2026-06-01") -> None:
    _put(
        client,
        {
            "resourceType": "Observation",
            "id": id_,
            "status": "final",
            "category": CATEGORY,
            "code": {"coding": [{"system": LOINC, "code": "95541-9"}]},
            "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": when,
            "valueString": words,
        },
    )


def _ranking(
    client: FlaskClient,
    id_: str,
    date: str,
    *entries: str | tuple[str, bool],
    mode: str = "snapshot",
) -> None:
    listed = []
    for entry in entries:
        ref, deleted = (entry, False) if isinstance(entry, str) else entry
        item: dict[str, Any] = {"item": {"reference": f"Observation/{ref}"}}
        if deleted:
            item["deleted"] = True
        listed.append(item)
    _put(
        client,
        {
            "resourceType": "List",
            "id": id_,
            "status": "current",
            "mode": mode,
            "code": {"coding": [{"system": LOINC, "code": "81340-2"}]},
            "subject": {"reference": "Patient/p1"},
            "date": date,
            "entry": listed,
        },
    )


def _shown(client: FlaskClient) -> list[str]:
    """Every item of the merged List, ranked first, in order, as the patient's words."""
    return ranked_texts(what_matters(client))


def test_a_newer_ranking_from_the_same_setting_replaces_the_older(client: FlaskClient) -> None:
    add_patient(client)
    for id_, words in (("a", "A"), ("b", "B"), ("c", "C"), ("d", "D"), ("e", "E")):
        _statement(client, id_, words)
    _ranking(client, "list-old", "2026-06-10", "a", "b", "c")
    assert ranked_texts(what_matters(client))[:3] == ["A", "B", "C"]
    # re-ranked ten days later, posted as a new List: B withdrawn (deleted), A dropped
    _ranking(client, "list-new", "2026-06-20", "d", ("b", True), "e", "c")
    shown = _shown(client)
    assert shown[:3] == ["D", "E", "C"]
    assert set(shown[3:]) == {"A", "B"}
    # A and B are still said, but no longer ranked: flagged "not yet ranked"
    entries = what_matters(client)["entry"][0]["resource"]["entry"]
    assert ["flag" in e for e in entries] == [False, False, False, True, True]


def test_a_list_of_changes_is_not_a_ranking(client: FlaskClient) -> None:
    # R4 List.mode "changes": the list is a set of changes, not a whole list
    add_patient(client)
    for id_, words in (("a", "A"), ("b", "B"), ("c", "C")):
        _statement(client, id_, words)
    _ranking(client, "ranked", "2026-06-10", "b", "c", "a")
    _ranking(client, "changed", "2026-06-25", "a", ("c", True), mode="changes")
    assert _shown(client) == ["B", "C", "A"]


def test_the_not_yet_ranked_are_newest_first_across_time_zones(client: FlaskClient) -> None:
    add_patient(client)
    _statement(client, "east", "Said at 01:00 UTC", "2026-03-13T01:00:00Z")
    _statement(client, "west", "Said at 03:00 UTC (22:00 in Chicago)", "2026-03-12T22:00:00-05:00")
    _statement(client, "day", "Said on the 11th", "2026-03-11")
    assert _shown(client) == [
        "Said at 03:00 UTC (22:00 in Chicago)",
        "Said at 01:00 UTC",
        "Said on the 11th",
    ]


def test_goals_the_patient_rejected_or_that_were_cancelled_are_not_priorities(
    client: FlaskClient,
) -> None:
    # R4 goal-status: rejected ("the goal was not accepted"), cancelled ("abandoned before
    # being met"): neither is something the patient is working towards
    add_patient(client)
    for status in ("proposed", "active", "completed", "rejected", "cancelled", "entered-in-error"):
        _put(
            client,
            {
                "resourceType": "Goal",
                "id": f"g-{status}",
                "lifecycleStatus": status,
                "category": CATEGORY,
                "description": {"text": f"A goal that is {status}"},
                "subject": {"reference": "Patient/p1"},
            },
        )
    assert set(_shown(client)) == {
        "A goal that is proposed",
        "A goal that is active",
        "A goal that is completed",
    }
    summary = client.get("/fhir/Patient/p1/$summary")
    assert summary.status_code == 200, summary.get_data(as_text=True)[:300]
    text = summary.get_data(as_text=True)
    assert "A goal that is rejected" not in text
    assert "A goal that is cancelled" not in text
    assert "Goals agreed with the patient" not in text  # proposed is not agreed


def test_a_goal_held_only_as_a_code_is_not_shown_as_if_the_patient_said_a_number(
    client: FlaskClient,
) -> None:
    add_patient(client)
    _put(
        client,
        {
            "resourceType": "Goal",
            "id": "coded",
            "lifecycleStatus": "active",
            "category": CATEGORY,
            "description": {"coding": [{"system": "http://snomed.info/sct", "code": "713052003"}]},
            "subject": {"reference": "Patient/p1"},
        },
    )
    page = client.get("/patients/p1/what-matters").get_data(as_text=True)
    assert ">713052003<" not in page
    assert "SNOMED CT 713052003" in page
    assert "no words recorded" in page
