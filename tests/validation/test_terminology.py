"""Local terminology: expansion rules of valueset.html#compose over held code systems, the
binding "not checked" warning given once per element, and what the vendored file may hold."""

from __future__ import annotations

import gzip
import json
from typing import Any

from service.validation.bindings import add_once, binding_issues
from service.validation.definitions import Definitions
from service.validation.value_sets import Terminology
from service.validation.vendor import DEFINITIONS_DIR
from service.validation.vendor_terminology import TERMINOLOGY_FILE, system_allowed

CS = "http://example.org/cs"
_CONCEPTS = [
    {
        "code": "animal",
        "display": "Animal",
        "concept": [
            {"code": "dog", "display": "Dog", "designation": [{"value": "Canine"}]},
            {"code": "cat", "display": "Cat"},
        ],
    },
    {"code": "puppy", "display": "Puppy", "property": [{"code": "subsumedBy", "valueCode": "dog"}]},
    {"code": "rock", "display": "Rock", "property": [{"code": "hard", "valueBoolean": True}]},
]


def _terminology(*value_sets: dict[str, Any]) -> Terminology:
    resources: dict[str, dict[str, Any]] = {
        f"CodeSystem|{CS}": {
            "resourceType": "CodeSystem",
            "url": CS,
            "name": "Example",
            "content": "complete",
            "concept": _CONCEPTS,
        }
    }
    for i, compose in enumerate(value_sets):
        url = f"http://example.org/vs{i}"
        resources[f"ValueSet|{url}"] = {"resourceType": "ValueSet", "url": url, "compose": compose}
    return Terminology(resources)


def _codes(t: Terminology, index: int = 0) -> set[str]:
    found = t.expand(f"http://example.org/vs{index}")
    assert found is not None
    return {e.code for e in found}


def _filter(prop: str, op: str, value: str) -> dict[str, Any]:
    return {"include": [{"system": CS, "filter": [{"property": prop, "op": op, "value": value}]}]}


def test_whole_system_and_hierarchy_filters() -> None:
    t = _terminology(
        {"include": [{"system": CS}]},
        _filter("concept", "is-a", "dog"),
        _filter("concept", "descendent-of", "animal"),
        _filter("concept", "is-not-a", "animal"),
        _filter("concept", "generalizes", "puppy"),
    )
    assert _codes(t, 0) == {"animal", "dog", "cat", "puppy", "rock"}
    assert _codes(t, 1) == {"dog", "puppy"}  # subsumedBy counts as nesting
    assert _codes(t, 2) == {"dog", "cat", "puppy"}
    assert _codes(t, 3) == {"rock"}
    assert _codes(t, 4) == {"puppy", "dog", "animal"}


def test_other_filters_exclude_and_nested_value_sets() -> None:
    t = _terminology(
        _filter("code", "regex", "[cd].*"),
        _filter("concept", "in", "cat,rock"),
        _filter("hard", "=", "true"),
        {"include": [{"system": CS}], "exclude": [{"system": CS, "concept": [{"code": "rock"}]}]},
        {"include": [{"valueSet": ["http://example.org/vs0"]}]},
        _filter("colour", "sounds-like", "red"),
    )
    assert _codes(t, 0) == {"cat", "dog"}
    assert _codes(t, 1) == {"cat", "rock"}
    assert _codes(t, 2) == {"rock"}
    assert _codes(t, 3) == {"animal", "dog", "cat", "puppy"}
    assert _codes(t, 4) == {"cat", "dog"}
    assert t.expand("http://example.org/vs5") is None  # a filter not implemented: not expanded


def test_a_system_not_held_cannot_be_expanded_but_enumerations_can() -> None:
    t = _terminology(
        {"include": [{"system": "http://loinc.org"}]},
        {"include": [{"system": "http://loinc.org", "concept": [{"code": "8480-6"}]}]},
    )
    assert t.expand("http://example.org/vs0") is None
    assert _codes(t, 1) == {"8480-6"}


def test_check_code_displays_and_designations() -> None:
    t = _terminology({"include": [{"system": CS}]})
    vs = "http://example.org/vs0"
    assert t.check_code(CS, "dog", "canine", vs) == t.check_code(CS, "dog", None, vs)
    wrong = t.check_code(CS, "dog", "Wolf", vs)
    assert wrong is not None
    assert wrong.result
    assert wrong.message
    assert wrong.display == "Dog"
    unknown = t.check_code(CS, "wolf", None, None)
    assert unknown is not None
    assert not unknown.result
    assert t.check_code("http://loinc.org", "8480-6", None, None) is None


def test_not_checked_is_reported_once_per_element() -> None:
    definitions = Definitions.shared()
    issues: list[Any] = []
    url = "http://hl7.org/fhir/ValueSet/observation-codes"
    for index in range(3):
        value = {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}
        found = binding_issues(
            definitions,
            "required",
            url,
            value,
            "Observation.component.code",
            f"Observation.component[{index}].code",
        )
        add_once(issues, found)
    assert [(i.severity, i.code, i.expression) for i in issues] == [
        ("warning", "not-supported", ("Observation.component[0].code",))
    ]


def test_ucum_m_is_not_an_age_unit() -> None:
    definitions = Definitions.shared()
    url = "http://hl7.org/fhir/ValueSet/age-units"
    metre = {"value": 3, "system": "http://unitsofmeasure.org", "code": "m"}
    found = binding_issues(definitions, "required", url, metre, "Age", "Observation.valueQuantity")
    assert [(i.severity, i.code) for i in found] == [("error", "code-invalid")]
    minutes = dict(metre, code="min")
    assert binding_issues(definitions, "required", url, minutes, "Age", "x") == []


def test_the_vendored_file_holds_only_redistributable_content() -> None:
    with gzip.open(DEFINITIONS_DIR / TERMINOLOGY_FILE, "rt", encoding="utf-8") as handle:
        items = json.load(handle)
    kinds = {r["resourceType"] for r in items}
    assert kinds == {"ValueSet", "CodeSystem"}
    for item in items:
        if item["resourceType"] == "CodeSystem":
            assert system_allowed(item["url"]), item["url"]
            continue
        compose = item.get("compose", {})
        for part in compose.get("include", []) + compose.get("exclude", []):
            assert "system" not in part or system_allowed(part["system"]), item["url"]
    held = {r["url"] for r in items}
    assert "http://hl7.org/fhir/ValueSet/age-units" in held
    assert "http://terminology.hl7.org/CodeSystem/v3-ActCode" in held
    assert not any("snomed" in url or "loinc" in url for url in held)
