"""WMTY profiles: each valid example passes, each single fault is found where it is.

Profiling rules: https://hl7.org/fhir/R4/profiling.html (slicing, fixed and pattern values,
bindings, invariants); reference targets: https://hl7.org/fhir/R4/references.html.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from service.validation.definitions import Definitions
from service.validation.profiles import ProfileError, ProfileRegistry
from service.validation.validator import ResourceValidator
from tests.validation.mutations import BASE, Mutant, example, mutation_corpus

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
PROFILES = (
    "wmty-statement",
    "wmty-personal-goal",
    "wmty-priorities-list",
    "wmty-treatment-preference",
)
CORPUS = mutation_corpus()


@pytest.fixture(scope="module")
def validator() -> ResourceValidator:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    return ResourceValidator(registry, invariants=True)


def _errors(validator: ResourceValidator, resource: dict[str, object], profile: str) -> list:
    issues = validator.validate(resource) + validator.validate_profiles(resource, profile)
    return [i for i in issues if i.severity in ("error", "fatal")]


@pytest.mark.parametrize("profile", PROFILES)
def test_valid_example_meets_its_profile(validator: ResourceValidator, profile: str) -> None:
    assert _errors(validator, example(profile), BASE + profile) == []


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_has_at_least_15_single_fault_mutants(profile: str) -> None:
    counts = Counter(m.profile for m in CORPUS)
    assert counts[BASE + profile] >= 15


@pytest.mark.parametrize("mutant", CORPUS, ids=[m.name for m in CORPUS])
def test_fault_is_reported_at_its_expression(validator: ResourceValidator, mutant: Mutant) -> None:
    errors = _errors(validator, mutant.resource, mutant.profile)
    where = [e for issue in errors for e in issue.expression]
    assert mutant.expression in where, [i.to_fhir() for i in errors]
    for issue in errors:
        assert issue.diagnostics
        assert issue.expression


def test_claimed_profile_is_checked_without_being_asked(validator: ResourceValidator) -> None:
    goal = example("wmty-personal-goal")
    del goal["expressedBy"]
    found = {e for i in validator.validate_profiles(goal) for e in i.expression}
    assert "Goal.expressedBy" in found


def test_unknown_claimed_profile_is_a_warning(validator: ResourceValidator) -> None:
    goal = example("wmty-personal-goal")
    goal["meta"]["profile"].append("http://example.org/fhir/StructureDefinition/other")
    issues = validator.validate_profiles(goal)
    assert [(i.severity, i.expression) for i in issues] == [("warning", ("Goal.meta.profile[1]",))]


def test_unknown_requested_profile_is_an_error(validator: ResourceValidator) -> None:
    issues = validator.validate_profiles(
        example("wmty-statement"), "http://example.org/fhir/StructureDefinition/other"
    )
    assert [(i.severity, i.code) for i in issues] == [("error", "not-supported")]


def test_profile_for_another_type_is_an_error(validator: ResourceValidator) -> None:
    issues = validator.validate_profiles(example("wmty-statement"), BASE + "wmty-personal-goal")
    assert ("error", ("resourceType",)) in [(i.severity, i.expression) for i in issues]


def test_unknown_extension_is_a_warning_not_an_error(validator: ResourceValidator) -> None:
    goal = example("wmty-personal-goal")
    goal["extension"].append({"url": "http://example.org/fhir/mood", "valueString": "hopeful"})
    issues = validator.validate_profiles(goal)
    assert [(i.severity, i.code, i.expression) for i in issues] == [
        ("warning", "extension", ("Goal.extension[1]",))
    ]


def test_required_profile_applies_to_resources_that_claim_nothing() -> None:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    strict = ResourceValidator(registry, required_profiles={"Goal": (BASE + "wmty-personal-goal",)})
    plain = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "Sleep through the night"},
        "subject": {"reference": "Patient/example"},
    }
    errors = [i for i in strict.validate_profiles(plain) if i.severity == "error"]
    assert errors[0].code == "processing"
    assert {"Goal.expressedBy", "Goal.addresses", "Goal.category"} <= {
        e for i in errors for e in i.expression
    }
    assert [i for i in strict.validate_profiles(example("wmty-personal-goal"))] == []


def test_required_profile_must_be_a_known_profile_of_the_type() -> None:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    with pytest.raises(ProfileError, match="not a known profile of Goal"):
        ResourceValidator(registry, required_profiles={"Goal": (BASE + "wmty-statement",)})
