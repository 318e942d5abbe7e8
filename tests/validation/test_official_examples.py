"""No false alarms: every official R4 example of the stored types meets its base definition,
extensions included (https://hl7.org/fhir/R4/extensibility.html), and the vital signs their
core profile (observation-vitalsigns.html), except the four the package itself ships broken,
where exactly the broken elements are reported.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from service.validation.validator import ResourceValidator
from tests.r4_package import STORED_TYPES, examples

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
EXAMPLES = examples(*STORED_TYPES)
# Questionnaire.item.linkId is 1..1; Observation.performer may not be an Encounter; txt-2: a
# narrative of an empty <pre> has no non-whitespace content; f202 is a body temperature (LOINC
# 8310-5) without the effective[x] the bodytemp profile requires (1..1).
BROKEN_IN_THE_PACKAGE = {
    "Observation-f202.json": "Observation.effective",
    "Questionnaire-qs1.json": "Questionnaire.item[0].item[0].linkId",
    "Observation-clinical-gender.json": "Observation.performer[0].reference",
    "Questionnaire-zika-virus-exposure-assessment.json": "Questionnaire.text.div",
}


@pytest.fixture(scope="module")
def validator() -> ResourceValidator:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    return ResourceValidator(registry, invariants=True)


def test_the_package_has_examples_of_every_stored_type() -> None:
    assert {r["resourceType"] for r in EXAMPLES.values()} == set(STORED_TYPES)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_official_example_has_no_errors(validator: ResourceValidator, name: str) -> None:
    resource = EXAMPLES[name]
    issues = validator.validate(resource) + validator.validate_profiles(resource)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if name in BROKEN_IN_THE_PACKAGE:
        assert BROKEN_IN_THE_PACKAGE[name] in {e for i in errors for e in i.expression}
        assert {i.code for i in errors} <= {"required", "structure", "invariant"}
        return
    assert errors == [], [i.to_fhir() for i in errors]
