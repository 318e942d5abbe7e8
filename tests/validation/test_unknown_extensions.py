"""The unknown-extension policy (WHATMATTERS_UNKNOWN_EXTENSIONS): warning by default, error on
request; an unknown modifier extension is always an error (extensibility.html#modifierExtension)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Config, ConfigError
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from service.validation.validator import ResourceValidator

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
UNKNOWN = {"url": "http://example.org/fhir/StructureDefinition/shoe-size", "valueInteger": 9}


def _severities(policy: str, key: str = "extension") -> list[str]:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    validator = ResourceValidator(registry, unknown_extensions=policy)
    patient = {"resourceType": "Patient", key: [UNKNOWN]}
    return [
        i.severity
        for i in validator.validate_profiles(patient)
        if i.expression == (f"Patient.{key}[0]",)
    ]


def test_unknown_extension_is_a_warning_by_default() -> None:
    assert Config().unknown_extensions == "warning"
    assert _severities("warning") == ["warning"]


def test_unknown_extension_is_an_error_when_configured() -> None:
    assert Config.from_env({"WHATMATTERS_UNKNOWN_EXTENSIONS": "error"}).unknown_extensions == (
        "error"
    )
    assert _severities("error") == ["error"]


def test_unknown_modifier_extension_is_always_an_error() -> None:
    assert _severities("warning", "modifierExtension") == ["error"]


def test_other_policies_are_refused_at_start_up() -> None:
    with pytest.raises(ConfigError, match="WHATMATTERS_UNKNOWN_EXTENSIONS"):
        Config.from_env({"WHATMATTERS_UNKNOWN_EXTENSIONS": "ignore"})
