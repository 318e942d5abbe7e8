"""Ingest de-duplication never crosses patients (issue finding 5).

Rule (README, Authorization): ``$ingest`` needs a ``user/`` or ``system/`` scope; a row counts
as "already present" only when a stored resource holds the same identifier (whose system is
the source feed) and is about the same patient. So a row sent for A cannot pre-empt B's row
with the same source row id, and the answer to a patient token never depends on B's rows.
"""

from __future__ import annotations

from typing import Any

from tests.security.support import B_WORDS, caller, sign, text_of, token_for

A_NHS, B_NHS = "9000000009", "9000000017"
HEADER = "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
CSV = "text/csv"


def ingest(who: Any, number: str, words: str, row_id: str = "r-7") -> Any:
    rows = f"{HEADER}{row_id},{number},2026-11-20 10:15,{words},,,\n"
    return who.client.post(
        "/fhir/$ingest?mapping=survey-csv",
        data=rows,
        headers=who._headers({"Content-Type": CSV}),
    )


def words_of(world: dict[str, Any], patient: str) -> list[str]:
    admin = caller(world, token_for(world, "system"))
    found = admin.get(f"/fhir/Observation?patient=Patient/{patient}&_count=100").get_json()
    return sorted(e["resource"].get("valueString", "") for e in found.get("entry", []))


def test_a_row_sent_for_a_does_not_stand_in_for_bs_row_with_the_same_id(
    world: dict[str, Any],
) -> None:
    feed = caller(world, sign(world["keys"][0], scope="user/*.cruds"))
    first = ingest(feed, A_NHS, "Planted by A")
    assert "1 resources created" in text_of(first), text_of(first)
    b_before = words_of(world, "pB")
    real = ingest(feed, B_NHS, "Seeing the sea at Aberdaron")
    assert real.status_code == 200
    assert "1 resources created, 0 already present" in text_of(real)
    assert words_of(world, "pB") == sorted([*b_before, "Seeing the sea at Aberdaron"])
    again = ingest(feed, B_NHS, "Seeing the sea at Aberdaron")
    assert "0 resources created, 1 already present" in text_of(again)
    assert words_of(world, "pB") == sorted([*b_before, "Seeing the sea at Aberdaron"])
    assert "Planted by A" in words_of(world, "pA")


def test_a_patient_token_cannot_ingest_nor_learn_which_rows_exist(world: dict[str, Any]) -> None:
    a = caller(world, token_for(world, "patient-A"))
    feed = caller(world, sign(world["keys"][0], scope="system/*.cruds"))
    b_before = words_of(world, "pB")
    unknown = ingest(a, B_NHS, "Planted by A", row_id="r-9")
    assert ingest(feed, B_NHS, B_WORDS, row_id="r-9").status_code == 200
    b_after_feed = words_of(world, "pB")
    known = ingest(a, B_NHS, "Planted by A", row_id="r-9")
    own = ingest(a, A_NHS, "Planted by A", row_id="r-9")
    assert unknown.status_code == known.status_code == own.status_code == 403
    assert text_of(unknown) == text_of(known) == text_of(own)
    assert known.get_json()["issue"][0]["code"] == "forbidden"
    assert b_after_feed == sorted([*b_before, B_WORDS])
    assert words_of(world, "pB") == b_after_feed
    assert "Planted by A" not in words_of(world, "pA")
