"""R4 invariants whose expression contradicts their text are evaluated as the text says, as the
HL7 reference validator does (service/validation/fhirpath.py, CORRECTED)."""

from __future__ import annotations

from typing import Any

import pytest

from service.validation.definitions import Definitions
from service.validation.fhirpath import CORRECTED, InvariantEngine
from service.validation.structure import StructureValidator

NARRATIVE = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def _questionnaire(conditions: int, behaviour: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "linkId": "later",
        "type": "boolean",
        "enableWhen": [
            {"question": "first", "operator": "exists", "answerBoolean": True}
            for _ in range(conditions)
        ],
    }
    if behaviour is not None:
        item["enableBehavior"] = behaviour
    return {
        "resourceType": "Questionnaire",
        "text": NARRATIVE,
        "status": "draft",
        "item": [{"linkId": "first", "type": "boolean"}, item],
    }


def _invariant_errors(resource: dict[str, Any], compiled: bool = True) -> list[tuple[str, ...]]:
    validator = StructureValidator(Definitions.shared(), invariants=True, compiled=compiled)
    return [
        (i.diagnostics.split(":", 1)[0], *i.expression)
        for i in validator.validate(resource)
        if i.code == "invariant"
    ]


@pytest.mark.parametrize("compiled", [True, False])
def test_que_12_two_conditions_need_enable_behavior(compiled: bool) -> None:
    """questionnaire.html#invs que-12: "If there are more than one enableWhen, enableBehavior
    must be specified" (published as count() > 2)."""
    assert _invariant_errors(_questionnaire(2), compiled) == [("que-12", "Questionnaire.item[1]")]
    assert _invariant_errors(_questionnaire(3), compiled) == [("que-12", "Questionnaire.item[1]")]
    assert _invariant_errors(_questionnaire(2, "any"), compiled) == []
    assert _invariant_errors(_questionnaire(1), compiled) == []


def test_dom_6_asks_only_the_root_resource_for_a_narrative() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "active": True}
    container = {
        "resourceType": "Observation",
        "text": NARRATIVE,
        "contained": [patient],
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": "#p1"},
    }
    assert ("dom-6", "Observation.contained[0]") not in _invariant_errors(container)
    assert ("dom-6", "Patient") in _invariant_errors(patient)


def test_every_correction_replaces_a_published_r4_expression() -> None:
    definitions = Definitions.shared()
    published = {
        constraint[3]
        for type_ in ("Questionnaire", "DomainResource", "Bundle", "RiskAssessment", "ValueSet")
        for element in (definitions.model(type_) or _missing(type_)).elements.values()
        for constraint in element.constraints
    }
    assert set(CORRECTED) <= published, set(CORRECTED) - published
    engine = InvariantEngine()
    assert all(engine.compiles(e) is None for e in CORRECTED.values())


def _missing(type_: str) -> Any:
    raise AssertionError(f"no definition of {type_}")
