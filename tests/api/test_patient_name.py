"""The patient's display name: one rule for the clinician's page and the documents sent to
partners (``service.api.page.patient_name``)."""

from __future__ import annotations

from typing import Any

import pytest

from service.api.page import patient_name


@pytest.mark.parametrize(
    ("patient", "shown"),
    [
        ({"name": [{"text": "Anna Müller", "given": ["A"], "family": "M"}]}, "Anna Müller"),
        ({"name": [{"given": ["Anna", "Maria"], "family": "Müller"}]}, "Anna Maria Müller"),
        ({"name": [{"family": "Müller"}]}, "Müller"),
        ({"name": [{"use": "old"}, {"given": ["Anna"]}]}, "Anna"),
        ({"name": [{"given": [""], "family": ""}]}, None),
        ({"name": []}, None),
        ({}, None),
    ],
)
def test_the_first_name_that_says_something_is_shown(
    patient: dict[str, Any], shown: str | None
) -> None:
    assert patient_name(patient) == shown
