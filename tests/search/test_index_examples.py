"""Every search parameter expression evaluates without error on every official R4 example of
the stored types, and the examples give the index rows their content implies."""

from __future__ import annotations

import json

import pytest
from fhirpathpy import evaluate as fhirpath_evaluate
from fhirpathpy.models import models

from service.fhir.search_index import SearchParameters
from service.storage.memory import MemoryStore
from tests.r4_package import STORED_TYPES, examples
from tests.search.conftest import build_service

TYPES = STORED_TYPES
EXAMPLES = examples(*TYPES)


@pytest.fixture(scope="module")
def params() -> SearchParameters:
    return build_service(MemoryStore()).search_params


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_expression_evaluates(params: SearchParameters, name: str) -> None:
    resource = EXAMPLES[name]
    for param in params.for_type(resource["resourceType"]).values():
        param.evaluate(resource, strict=True)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_fast_path_walk_agrees_with_fhirpathpy(params: SearchParameters, name: str) -> None:
    resource = EXAMPLES[name]
    for param in params.for_type(resource["resourceType"]).values():
        for (evaluator, _), text in zip(param.evaluators, param.texts, strict=True):
            expected = fhirpath_evaluate(resource, text, None, models["r4"])
            assert _plain(evaluator(resource)) == _plain(expected), (param.code, text)


def _plain(values: list[object]) -> object:
    # fhirpathpy hands back decimals as Decimal; the index reads both the same way
    return json.loads(json.dumps(values, default=float))


def test_example_observation_gives_expected_rows(params: SearchParameters) -> None:
    rows = params.index(EXAMPLES["Observation-blood-pressure.json"])
    assert ("http://loinc.org", "85354-9") in {
        (t.system, t.code) for t in rows.tokens if t.param == "code"
    }
    assert {(q.param, q.low) for q in rows.quantities} >= {
        ("component-value-quantity", 107.0),
        ("component-value-quantity", 60.0),
    }
    assert any(r.param == "subject" and r.target_type == "Patient" for r in rows.references)
    assert any(
        c.param == "component-code-value-quantity" and c.code == "8480-6" for c in rows.composites
    )
