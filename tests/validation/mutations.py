"""The mutation corpus: each WMTY profile's valid example and single-fault variants of it.

Each mutant applies one JSON Patch (RFC 6902) to the valid example of a profile and names the
FHIRPath ``expression`` where the fault must be reported. ``base_valid`` says whether the
mutant still meets the base R4 rules (the fault is one only the profile forbids); the agreement
report with an independent validator uses it.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonpatch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "profiles"
BASE = "http://whatmatters.example/fhir/StructureDefinition/"
OTHER_CATEGORY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "exam"}
    ]
}
SURVEY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
    ]
}
SETTING = BASE + "wmty-care-setting"
SETTING_TYPE = BASE + "wmty-care-setting-type"
SETTING_TYPES = "http://whatmatters.example/fhir/CodeSystem/wmty-care-setting-type"
UNKNOWN_MODIFIER = {"url": "http://example.org/fhir/no-such-modifier", "valueBoolean": True}


@dataclass(frozen=True)
class Mutant:
    """One single-fault variant of a profile's valid example."""

    name: str
    profile: str
    resource: dict[str, Any]
    expression: str
    base_valid: bool = True


def example(profile: str) -> dict[str, Any]:
    """The valid example instance of a WMTY profile (a fresh copy)."""
    return copy.deepcopy(_examples()[profile])


@cache
def _examples() -> dict[str, dict[str, Any]]:
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(FIXTURES.glob("wmty-*.json"))
    }


def _ops(*ops: tuple[Any, ...]) -> list[dict[str, Any]]:
    result = []
    for op in ops:
        item: dict[str, Any] = {"op": op[0], "path": op[1]}
        if len(op) > 2:
            item["value"] = op[2]
        result.append(item)
    return result


# (profile, fault name, patch, expression, base_valid)
_FAULTS: list[tuple[str, str, list[dict[str, Any]], str, bool]] = [
    # WMTY Statement
    ("wmty-statement", "no-subject", _ops(("remove", "/subject")), "Observation.subject", True),
    (
        "wmty-statement",
        "subject-is-a-group",
        _ops(("replace", "/subject", {"reference": "Group/g1"})),
        "Observation.subject.reference",
        True,
    ),
    (
        "wmty-statement",
        "no-effective",
        _ops(("remove", "/effectiveDateTime")),
        "Observation.effective",
        True,
    ),
    (
        "wmty-statement",
        "effective-period",
        _ops(
            ("remove", "/effectiveDateTime"), ("add", "/effectivePeriod", {"start": "2026-11-20"})
        ),
        "Observation.effectivePeriod",
        True,
    ),
    (
        "wmty-statement",
        "no-performer",
        _ops(("remove", "/performer")),
        "Observation.performer",
        True,
    ),
    (
        "wmty-statement",
        "performer-is-a-device",
        _ops(("replace", "/performer/0", {"reference": "Device/d1"})),
        "Observation.performer[0].reference",
        False,  # the base targetProfile excludes it too
    ),
    (
        "wmty-statement",
        "wrong-loinc-code",
        _ops(("replace", "/code/coding/0/code", "75773-2")),
        "Observation.code",
        True,
    ),
    (
        "wmty-statement",
        "status-outside-value-set",
        _ops(("replace", "/status", "preliminary")),
        "Observation.status",
        True,
    ),
    (
        "wmty-statement",
        "status-not-a-status",
        _ops(("replace", "/status", "done")),
        "Observation.status",
        False,
    ),
    (
        "wmty-statement",
        "no-what-matters-category",
        _ops(("remove", "/category/1")),
        "Observation.category",
        True,
    ),
    (
        "wmty-statement",
        "survey-category-twice",
        _ops(("add", "/category/-", SURVEY)),
        "Observation.category[2]",
        True,
    ),
    (
        "wmty-statement",
        "value-quantity",
        _ops(("remove", "/valueString"), ("add", "/valueQuantity", {"value": 3})),
        "Observation.valueQuantity",
        True,
    ),
    ("wmty-statement", "no-value", _ops(("remove", "/valueString")), "Observation.value", True),
    (
        "wmty-statement",
        "coded-value-without-words",
        _ops(
            ("remove", "/valueString"),
            (
                "add",
                "/valueCodeableConcept",
                {"coding": [{"system": "http://snomed.info/sct", "code": "73211009"}]},
            ),
        ),
        "Observation",
        True,
    ),
    (
        "wmty-statement",
        "data-absent-reason",
        _ops(("add", "/dataAbsentReason", {"text": "asked later"})),
        "Observation.dataAbsentReason",
        False,  # obs-6: dataAbsentReason only when there is no value
    ),
    (
        "wmty-statement",
        "derived-from-an-observation",
        _ops(("add", "/derivedFrom", [{"reference": "Observation/o1"}])),
        "Observation.derivedFrom[0].reference",
        True,
    ),
    (
        "wmty-statement",
        "component",
        _ops(("add", "/component", [{"code": {"text": "x"}, "valueString": "y"}])),
        "Observation.component[0]",
        True,
    ),
    (
        "wmty-statement",
        "care-setting-as-text",
        _ops(("add", "/extension", [{"url": SETTING, "valueString": "Ward 7"}])),
        "Observation.extension[0].valueString",
        True,
    ),
    (
        "wmty-statement",
        "care-setting-type-outside-value-set",
        _ops(
            (
                "add",
                "/extension",
                [
                    {
                        "url": SETTING_TYPE,
                        "valueCoding": {"system": SETTING_TYPES, "code": "spaceship"},
                    }
                ],
            )
        ),
        "Observation.extension[0].valueCoding",
        True,
    ),
    (
        "wmty-statement",
        "unknown-modifier-extension",
        _ops(("add", "/modifierExtension", [UNKNOWN_MODIFIER])),
        "Observation.modifierExtension[0]",
        True,
    ),
    (
        "wmty-statement",
        "care-setting-on-the-code",
        _ops(
            (
                "add",
                "/code/extension",
                [{"url": SETTING, "valueReference": {"reference": "Location/l1"}}],
            )
        ),
        "Observation.code.extension[0]",
        True,
    ),
    (
        "wmty-statement",
        "unknown-element",
        _ops(("add", "/feeling", "good")),
        "Observation.feeling",
        False,
    ),
    # WMTY Personal Goal
    (
        "wmty-personal-goal",
        "no-description-text",
        _ops(
            (
                "replace",
                "/description",
                {"coding": [{"system": "http://snomed.info/sct", "code": "73211009"}]},
            )
        ),
        "Goal.description.text",
        True,
    ),
    (
        "wmty-personal-goal",
        "no-what-matters-category",
        _ops(("replace", "/category/0", OTHER_CATEGORY)),
        "Goal.category",
        True,
    ),
    ("wmty-personal-goal", "no-category", _ops(("remove", "/category")), "Goal.category", True),
    ("wmty-personal-goal", "no-start-date", _ops(("remove", "/startDate")), "Goal.start", True),
    (
        "wmty-personal-goal",
        "start-as-concept",
        _ops(
            ("remove", "/startDate"), ("add", "/startCodeableConcept", {"text": "after discharge"})
        ),
        "Goal.startCodeableConcept",
        True,
    ),
    (
        "wmty-personal-goal",
        "no-expressed-by",
        _ops(("remove", "/expressedBy")),
        "Goal.expressedBy",
        True,
    ),
    (
        "wmty-personal-goal",
        "expressed-by-a-device",
        _ops(("replace", "/expressedBy", {"reference": "Device/d1"})),
        "Goal.expressedBy.reference",
        False,
    ),
    (
        "wmty-personal-goal",
        "expressed-by-an-organization",
        _ops(("replace", "/expressedBy", {"reference": "Organization/o1"})),
        "Goal.expressedBy.reference",
        False,  # the base targetProfile excludes it too
    ),
    (
        "wmty-personal-goal",
        "addresses-nothing",
        _ops(("remove", "/addresses")),
        "Goal.addresses",
        True,
    ),
    (
        "wmty-personal-goal",
        "addresses-a-condition",
        _ops(("replace", "/addresses/0", {"reference": "Condition/c1"})),
        "Goal.addresses[0].reference",
        True,
    ),
    (
        "wmty-personal-goal",
        "priority-outside-value-set",
        _ops(("replace", "/priority/coding/0/code", "urgent")),
        "Goal.priority",
        True,
    ),
    (
        "wmty-personal-goal",
        "priority-as-text-only",
        _ops(("replace", "/priority", {"text": "very important"})),
        "Goal.priority",
        True,
    ),
    (
        "wmty-personal-goal",
        "rejected-without-reason",
        _ops(("replace", "/lifecycleStatus", "rejected")),
        "Goal",
        True,
    ),
    (
        "wmty-personal-goal",
        "acceptance-without-individual",
        _ops(("remove", "/extension/0/extension/0")),
        "Goal.extension[0].extension",
        True,
    ),
    (
        "wmty-personal-goal",
        "acceptance-status-unknown",
        _ops(("replace", "/extension/0/extension/1/valueCode", "maybe")),
        "Goal.extension[0].extension[1].valueCode",
        True,
    ),
    (
        "wmty-personal-goal",
        "acceptance-twice",
        _ops(
            (
                "add",
                "/extension/-",
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/goal-acceptance",
                    "extension": [
                        {"url": "individual", "valueReference": {"reference": "Patient/example"}}
                    ],
                },
            )
        ),
        "Goal.extension[1]",
        True,
    ),
    (
        "wmty-personal-goal",
        "subject-is-a-group",
        _ops(("replace", "/subject", {"reference": "Group/g1"})),
        "Goal.subject.reference",
        True,
    ),
    (
        "wmty-personal-goal",
        "due-as-duration",
        _ops(
            (
                "replace",
                "/target/0",
                {
                    "dueDuration": {
                        "value": 3,
                        "unit": "months",
                        "system": "http://unitsofmeasure.org",
                        "code": "mo",
                    }
                },
            )
        ),
        "Goal.target[0].dueDuration",
        True,
    ),
    (
        "wmty-personal-goal",
        "lifecycle-status-unknown",
        _ops(("replace", "/lifecycleStatus", "paused")),
        "Goal.lifecycleStatus",
        False,
    ),
    (
        "wmty-personal-goal",
        "care-setting-type-as-code",
        _ops(("add", "/extension/-", {"url": SETTING_TYPE, "valueCode": "hospital"})),
        "Goal.extension[1].valueCode",
        True,
    ),
    # WMTY Priorities List
    (
        "wmty-priorities-list",
        "wrong-code",
        _ops(("replace", "/code/coding/0/code", "95541-9")),
        "List.code",
        True,
    ),
    ("wmty-priorities-list", "no-code", _ops(("remove", "/code")), "List.code", True),
    (
        "wmty-priorities-list",
        "snapshot-mode",
        _ops(("replace", "/mode", "snapshot")),
        "List.mode",
        True,
    ),
    (
        "wmty-priorities-list",
        "ordered-by-date",
        _ops(("replace", "/orderedBy/coding/0/code", "event-date")),
        "List.orderedBy",
        True,
    ),
    ("wmty-priorities-list", "not-ordered", _ops(("remove", "/orderedBy")), "List.orderedBy", True),
    ("wmty-priorities-list", "no-subject", _ops(("remove", "/subject")), "List.subject", True),
    (
        "wmty-priorities-list",
        "subject-is-a-group",
        _ops(("replace", "/subject", {"reference": "Group/g1"})),
        "List.subject.reference",
        True,
    ),
    ("wmty-priorities-list", "no-date", _ops(("remove", "/date")), "List.date", True),
    ("wmty-priorities-list", "no-source", _ops(("remove", "/source")), "List.source", True),
    (
        "wmty-priorities-list",
        "source-is-an-organization",
        _ops(("replace", "/source", {"reference": "Organization/o1"})),
        "List.source.reference",
        False,
    ),
    ("wmty-priorities-list", "no-narrative", _ops(("remove", "/text")), "List.text", True),
    (
        "wmty-priorities-list",
        "item-twice",
        _ops(("add", "/entry/-", {"item": {"reference": "Goal/wmty-personal-goal-example"}})),
        "List",
        True,
    ),
    (
        "wmty-priorities-list",
        "item-is-a-condition",
        _ops(("replace", "/entry/0/item", {"reference": "Condition/c1"})),
        "List.entry[0].item.reference",
        True,
    ),
    (
        "wmty-priorities-list",
        "status-unknown",
        _ops(("replace", "/status", "draft")),
        "List.status",
        False,
    ),
    (
        "wmty-priorities-list",
        "entry-without-item",
        _ops(("replace", "/entry/0", {"flag": {"text": "new"}})),
        "List.entry[0].item",
        False,
    ),
    (
        "wmty-priorities-list",
        "care-setting-type-outside-value-set",
        _ops(
            (
                "add",
                "/extension",
                [
                    {
                        "url": SETTING_TYPE,
                        "valueCoding": {"system": SETTING_TYPES, "code": "moon-base"},
                    }
                ],
            )
        ),
        "List.extension[0].valueCoding",
        True,
    ),
    # WMTY Treatment Preference
    (
        "wmty-treatment-preference",
        "wrong-loinc-code",
        _ops(("replace", "/code/coding/0/code", "95541-9")),
        "Observation.code",
        True,
    ),
    (
        "wmty-treatment-preference",
        "extra-category-in-closed-slicing",
        _ops(("add", "/category/-", OTHER_CATEGORY)),
        "Observation.category[1]",
        True,
    ),
    (
        "wmty-treatment-preference",
        "no-survey-category",
        _ops(("replace", "/category/0", OTHER_CATEGORY)),
        "Observation.category",
        True,
    ),
    (
        "wmty-treatment-preference",
        "survey-category-twice",
        _ops(("add", "/category/-", SURVEY)),
        "Observation.category[1]",
        True,
    ),
    (
        "wmty-treatment-preference",
        "no-subject",
        _ops(("remove", "/subject")),
        "Observation.subject",
        True,
    ),
    (
        "wmty-treatment-preference",
        "subject-is-a-group",
        _ops(("replace", "/subject", {"reference": "Group/g1"})),
        "Observation.subject.reference",
        True,
    ),
    (
        "wmty-treatment-preference",
        "value-quantity",
        _ops(("remove", "/valueString"), ("add", "/valueQuantity", {"value": 3})),
        "Observation.valueQuantity",
        True,
    ),
    (
        "wmty-treatment-preference",
        "no-value",
        _ops(("remove", "/valueString")),
        "Observation.value",
        True,
    ),
    (
        "wmty-treatment-preference",
        "component",
        _ops(("add", "/component", [{"code": {"text": "x"}, "valueString": "y"}])),
        "Observation.component[0]",
        True,
    ),
    (
        "wmty-treatment-preference",
        "performer-is-a-device",
        _ops(("replace", "/performer/0", {"reference": "Device/d1"})),
        "Observation.performer[0].reference",
        False,  # the base targetProfile excludes it too
    ),
    (
        "wmty-treatment-preference",
        "performer-is-an-organization",
        _ops(("replace", "/performer/0", {"reference": "Organization/o1"})),
        "Observation.performer[0].reference",
        True,
    ),
    (
        "wmty-treatment-preference",
        "effective-period",
        _ops(
            ("remove", "/effectiveDateTime"), ("add", "/effectivePeriod", {"start": "2026-11-20"})
        ),
        "Observation.effectivePeriod",
        True,
    ),
    (
        "wmty-treatment-preference",
        "status-not-a-status",
        _ops(("replace", "/status", "done")),
        "Observation.status",
        False,
    ),
    (
        "wmty-treatment-preference",
        "unknown-modifier-extension",
        _ops(("add", "/modifierExtension", [UNKNOWN_MODIFIER])),
        "Observation.modifierExtension[0]",
        True,
    ),
    (
        "wmty-treatment-preference",
        "care-setting-as-text",
        _ops(("add", "/extension", [{"url": SETTING, "valueString": "Ward 7"}])),
        "Observation.extension[0].valueString",
        True,
    ),
    (
        "wmty-treatment-preference",
        "care-setting-on-the-subject",
        _ops(
            (
                "add",
                "/subject/extension",
                [{"url": SETTING, "valueReference": {"reference": "Location/l1"}}],
            )
        ),
        "Observation.subject.extension[0]",
        True,
    ),
]


def mutation_corpus() -> list[Mutant]:
    """Every single-fault variant, named ``profile/fault``."""
    corpus = []
    for profile, fault, patch, expression, base_valid in _FAULTS:
        resource = jsonpatch.apply_patch(example(profile), patch)
        corpus.append(
            Mutant(f"{profile}/{fault}", BASE + profile, resource, expression, base_valid)
        )
    return corpus
