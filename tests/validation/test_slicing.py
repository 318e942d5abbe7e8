"""Slicing: https://hl7.org/fhir/R4/profiling.html#slicing, every discriminator type and rule.

A test profile on Observation slices five elements: component by pattern (ordered, closed),
category by pattern (openAtEnd), identifier by exists, value[x] by type, extension by profile.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from service.validation.validator import ResourceValidator
from tests.validation.mutations import BASE

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
URL = "http://example.org/fhir/StructureDefinition/sliced-observation"
LOINC = "http://loinc.org"
CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"


def _code(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


def _element(element_id: str, **values: Any) -> dict[str, Any]:
    path = ".".join(part.split(":", 1)[0] for part in element_id.split("."))
    return {"id": element_id, "path": path, **values}


PROFILE = {
    "resourceType": "StructureDefinition",
    "id": "sliced-observation",
    "url": URL,
    "name": "SlicedObservation",
    "status": "draft",
    "kind": "resource",
    "abstract": False,
    "type": "Observation",
    "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
    "derivation": "constraint",
    "differential": {
        "element": [
            _element(
                "Observation.extension",
                slicing={"discriminator": [{"type": "profile", "path": "$this"}], "rules": "open"},
            ),
            _element(
                "Observation.extension:setting",
                sliceName="setting",
                min=1,
                max="1",
                type=[{"code": "Extension", "profile": [BASE + "wmty-care-setting"]}],
            ),
            _element(
                "Observation.identifier",
                slicing={
                    "discriminator": [{"type": "exists", "path": "period"}],
                    "rules": "openAtEnd",
                },
            ),
            _element("Observation.identifier:current", sliceName="current", min=1, max="1"),
            _element("Observation.identifier:current.period", max="0"),
            _element("Observation.identifier:past", sliceName="past", min=0, max="*"),
            _element("Observation.identifier:past.period", min=1),
            _element(
                "Observation.category",
                slicing={
                    "discriminator": [{"type": "pattern", "path": "$this"}],
                    "rules": "openAtEnd",
                },
            ),
            _element(
                "Observation.category:survey",
                sliceName="survey",
                min=0,
                max="1",
                patternCodeableConcept={"coding": [{"system": CATEGORIES, "code": "survey"}]},
            ),
            _element(
                "Observation.value[x]",
                slicing={"discriminator": [{"type": "type", "path": "$this"}], "rules": "closed"},
            ),
            _element(
                "Observation.value[x]:valueString",
                sliceName="valueString",
                min=1,
                type=[{"code": "string"}],
            ),
            _element(
                "Observation.component",
                slicing={
                    "discriminator": [{"type": "pattern", "path": "code"}],
                    "rules": "closed",
                    "ordered": True,
                },
            ),
            _element("Observation.component:first", sliceName="first", min=1, max="1"),
            _element("Observation.component:first.code", patternCodeableConcept=_code("8480-6")),
            _element("Observation.component:second", sliceName="second", min=0, max="1"),
            _element("Observation.component:second.code", patternCodeableConcept=_code("8462-4")),
        ]
    },
}


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> ResourceValidator:
    folder = tmp_path_factory.mktemp("sliced") / "profiles"
    shutil.copytree(PROFILES_DIR, folder)
    (folder / "StructureDefinition-sliced-observation.json").write_text(json.dumps(PROFILE))
    return ResourceValidator(ProfileRegistry.load(Definitions.shared(), folder))


def _valid() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "meta": {"profile": [URL]},
        "extension": [{"url": BASE + "wmty-care-setting", "valueReference": {"display": "Ward 7"}}],
        "identifier": [{"value": "now"}, {"value": "then", "period": {"end": "2020"}}],
        "status": "final",
        "code": {"text": "blood pressure"},
        "valueString": "fine",
        "component": [
            {"code": _code("8480-6"), "valueString": "120"},
            {"code": _code("8462-4"), "valueString": "80"},
        ],
    }


def _errors(validator: ResourceValidator, resource: dict[str, Any]) -> list[tuple[str, str]]:
    assert validator.validate(resource) == []  # every variant is valid base R4
    return [
        (i.expression[0], i.diagnostics)
        for i in validator.validate_profiles(resource)
        if i.severity == "error"
    ]


def test_the_valid_instance_fills_every_slice(validator: ResourceValidator) -> None:
    assert _errors(validator, _valid()) == []


def test_pattern_slices_out_of_order_are_an_error(validator: ResourceValidator) -> None:
    resource = _valid()
    resource["component"].reverse()
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.component[1]"]
    assert "out of order" in errors[0][1]


def test_an_item_outside_a_closed_slicing_is_an_error(validator: ResourceValidator) -> None:
    resource = _valid()
    resource["component"].append({"code": _code("8867-4"), "valueString": "60"})
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.component[2]"]
    assert "closed" in errors[0][1]


def test_a_required_pattern_slice_missing_is_an_error(validator: ResourceValidator) -> None:
    resource = _valid()
    del resource["component"][0]
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.component"]
    assert "slice 'first'" in errors[0][1]


def test_exists_discriminator_sorts_items_by_presence(validator: ResourceValidator) -> None:
    resource = _valid()
    resource["identifier"][0]["period"] = {"start": "2021"}  # now both are 'past'
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.identifier"]
    assert "slice 'current'" in errors[0][1]


def test_a_slice_holds_no_more_than_its_maximum(validator: ResourceValidator) -> None:
    resource = _valid()
    resource["identifier"].insert(0, {"value": "also now"})  # 'current' twice; its max is 1
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.identifier[1]"]
    assert "at most 1" in errors[0][1]


def test_open_at_end_wants_items_outside_the_slices_last(validator: ResourceValidator) -> None:
    exam = {"coding": [{"system": CATEGORIES, "code": "exam"}]}
    survey = {"coding": [{"system": CATEGORIES, "code": "survey"}]}
    resource = _valid()
    resource["category"] = [survey, exam]
    assert _errors(validator, resource) == []
    resource["category"] = [exam, survey]
    errors = _errors(validator, resource)
    assert [e for e, _ in errors] == ["Observation.category[1]"]
    assert "openAtEnd" in errors[0][1]


def test_type_discriminator_closes_value_to_string(validator: ResourceValidator) -> None:
    resource = _valid()
    del resource["valueString"]
    resource["valueBoolean"] = True
    found = [e for e, _ in _errors(validator, resource)]
    assert "Observation.valueBoolean" in found  # outside the closed slicing
    assert "Observation.value" in found  # the valueString slice is required


def test_profile_discriminator_checks_the_extension_against_its_definition(
    validator: ResourceValidator,
) -> None:
    resource = _valid()
    resource["extension"][0] = {"url": BASE + "wmty-care-setting", "valueString": "Ward 7"}
    found = [e for e, _ in _errors(validator, resource)]
    assert "Observation.extension" in found  # the slice 'setting' finds no conforming item
    assert "Observation.extension[0].valueString" in found  # and the extension says why
