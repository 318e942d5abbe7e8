"""Who may evaluate the measure and see the quality page: user/ or system/ scopes reading
Patient, Observation, Goal and List; patient-context tokens and missing scopes are refused."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.support import caller, sign, token_for

URL = "/fhir/Measure/what-matters/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-12-31"
PAGE = "/reports/what-matters?period=2026-01..2026-02"


@pytest.mark.parametrize(
    ("kind", "status"),
    [("system", 200), ("user", 200), ("patient-A", 403), ("goal-only", 403), ("none", 401)],
)
def test_measure_and_page_follow_the_read_rules(
    world: dict[str, Any], kind: str, status: int
) -> None:
    who = caller(world, token_for(world, kind))
    assert who.get(URL).status_code == status
    assert who.get(PAGE).status_code == status


def test_a_scope_without_list_is_refused(world: dict[str, Any]) -> None:
    key, _ = world["keys"]
    token = sign(key, scope="system/Patient.rs system/Observation.rs system/Goal.rs")
    response = caller(world, token).get(URL)
    assert response.status_code == 403
    assert "List" in response.get_data(as_text=True)
