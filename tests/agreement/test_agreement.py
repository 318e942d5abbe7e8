"""Our base-R4 validator and medplum's validateResource give the same verdicts.

Every disagreement on the corpus must be explained in ``report.REASONS``; the report
(``python -m tests.agreement.report``) shows them all. Node.js and npm are required: without
them these tests fail, they are not skipped.
"""

from __future__ import annotations

import pytest

from tests.agreement import report
from tests.agreement.medplum import MedplumUnavailable

# Resources that both validators must judge as stated, run in the same Node process as the
# corpus: they show that neither side passes everything (an empty definitions index, say).
CANARIES = [
    report.Case("canary:minimal-patient", {"resourceType": "Patient", "id": "a"}, "canary", True),
    report.Case("canary:unknown-element", {"resourceType": "Patient", "foo": 1}, "canary", False),
    report.Case(
        "canary:bad-date", {"resourceType": "Patient", "birthDate": "1990-13-01"}, "canary", False
    ),
    report.Case(
        "canary:missing-subject",
        {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "walk"}},
        "canary",
        False,
    ),
    report.Case(
        "canary:obs-6",
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "mood"},
            "valueString": "good",
            "dataAbsentReason": {"text": "asked"},
        },
        "canary",
        False,
    ),
]


@pytest.fixture(scope="module")
def comparison() -> report.Comparison:
    cases = report.corpus()
    assert cases, "the agreement corpus is empty: the official R4 examples did not load"
    try:
        return report.compare([*cases, *CANARIES])
    except MedplumUnavailable as exc:
        pytest.fail(f"medplum could not run, so agreement was not checked: {exc}")


def test_canaries_are_judged_alike(comparison: report.Comparison) -> None:
    wrong = [
        f"{row.case.name}: expected {'valid' if row.case.base_valid else 'invalid'}; "
        f"ours {row.ours or 'valid'}; medplum {row.medplum or 'valid'}"
        for row in comparison.rows
        if row.case.source == "canary"
        and (row.ours_valid != row.case.base_valid or row.medplum_valid != row.case.base_valid)
    ]
    assert not wrong, "\n".join(wrong)


def test_every_disagreement_is_explained(comparison: report.Comparison) -> None:
    corpus_rows = [row for row in comparison.rows if row.case.source != "canary"]
    assert corpus_rows, "the agreement corpus is empty"
    unexplained = [row for row in comparison.unexplained if row.case.source != "canary"]
    details = "\n".join(
        f"- {row.case.name} (expected {report.expected_label(row.case)}):\n"
        f"    ours:    {row.ours or 'valid'}\n"
        f"    medplum: {row.medplum or 'valid'}"
        for row in unexplained
    )
    assert not unexplained, (
        f"{len(unexplained)} disagreement(s) between our validator and medplum have no entry "
        "in tests/agreement/report.py REASONS. Check each against the FHIR R4 spec, record "
        "which side is right and why (add the name to KNOWN if ours is), and regenerate "
        f"tests/agreement/REPORT.md:\n{details}"
    )


def test_known_disagreements_have_reasons() -> None:
    missing = sorted(report.KNOWN - report.REASONS.keys())
    assert not missing, f"KNOWN names without a reason in REASONS: {missing}"
