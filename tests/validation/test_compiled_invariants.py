"""Compiled invariants give the verdicts fhirpathpy gives.

Every base invariant the validator evaluates is run, on every element it applies to, over the
official R4 examples of the stored types and the Bundles (under 200,000 characters: 147 files,
most resource types of R4) and over mutated copies of them
(elements removed, emptied, duplicated, booleans flipped, codes changed), once as a compiled
closure and once interpreted by fhirpathpy. Wherever fhirpathpy reaches a verdict the compiled
closure must reach the same one, or step aside (``Fallback``) for the interpreter. Where
fhirpathpy cannot evaluate (it has no ``hasValue()``) the closure may decide, and only then.
"""

from __future__ import annotations

import copy
import json
import random
from collections import Counter
from typing import Any

import pytest

from service.validation.definitions import Definitions
from service.validation.fhirpath import _TRACE, InvariantEngine, corrected
from service.validation.fhirpath_compiled import Fallback, compile_expression, evaluate
from service.validation.structure import StructureValidator
from tests import r4_package

_FELL_BACK = "fell back"
_LARGEST = 200_000  # characters of JSON


class _Comparing(InvariantEngine):
    """Answers as fhirpathpy does, and records what the compiled closure said beside it."""

    def __init__(self) -> None:
        super().__init__(compiled=False)
        self.verdicts: list[tuple[str, str, Any, Any]] = []
        self._closures_seen: dict[str, Any] = {}

    def holds(
        self,
        node: Any,
        type_path: str,
        expression: str,
        resource: dict[str, Any] | None,
        root: dict[str, Any] | None,
    ) -> bool | None:
        expression = corrected(expression)
        if expression not in self._closures_seen:
            self._closures_seen[expression] = compile_expression(_TRACE.sub("", expression))
        closure = self._closures_seen[expression]
        fast: Any = None
        if closure is not None:
            try:
                fast = evaluate(closure, node, type_path, resource, root)
            except Fallback:
                fast = _FELL_BACK
        slow = self.interpret(node, type_path, expression, resource, root)
        if closure is not None:
            self.verdicts.append((expression, type_path, slow, fast))
        return slow


def _mutants(resource: dict[str, Any], count: int, seed: int) -> list[dict[str, Any]]:
    """Single-fault copies of ``resource``: an element removed, emptied, duplicated, flipped."""
    places: list[tuple[Any, Any]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key in value:
                if key != "resourceType":
                    places.append((value, key))
                    walk(value[key])
        elif isinstance(value, list):
            for index, entry in enumerate(value):
                places.append((value, index))
                walk(entry)

    out = []
    rng = random.Random(seed)
    for _ in range(count):
        mutant = copy.deepcopy(resource)
        places.clear()
        walk(mutant)
        if not places:
            break
        owner, key = rng.choice(places)
        value = owner[key]
        kind = rng.randrange(5)
        if kind == 0 and isinstance(owner, dict):
            del owner[key]
        elif kind == 1 and isinstance(value, list) and value:
            value.append(copy.deepcopy(value[0]))
        elif kind == 2 and isinstance(value, bool):
            owner[key] = not value
        elif kind == 3 and isinstance(value, str):
            owner[key] = rng.choice(["", "document", "#x", "exists", "choice", "1"])
        elif isinstance(value, dict) and value:
            del value[rng.choice(list(value))]
        else:
            owner[key] = copy.deepcopy(value) if not isinstance(value, str) else value + "x"
        out.append(mutant)
    return out


@pytest.fixture(scope="module")
def verdicts() -> list[tuple[str, str, Any, Any]]:
    engine = _Comparing()
    validator = StructureValidator(Definitions.shared(), invariants=True)
    validator._engine = engine
    found = r4_package.examples(*r4_package.STORED_TYPES, "Bundle")
    # the Bundles of the whole specification (definitions, value sets: megabytes) are left out
    small = {n: r for n, r in found.items() if len(json.dumps(r)) < _LARGEST}
    for number, (_, resource) in enumerate(sorted(small.items())):
        for checked in (resource, *_mutants(resource, 6, number)):
            before = copy.deepcopy(checked)
            validator.validate(checked)
            assert checked == before, "invariants must not change the resource they read"
    return engine.verdicts


def test_compiled_invariants_agree_with_fhirpathpy(
    verdicts: list[tuple[str, str, Any, Any]],
) -> None:
    disagreements = Counter(
        (expression, type_path, slow, fast)
        for expression, type_path, slow, fast in verdicts
        if fast != _FELL_BACK and slow is not None and slow != fast
    )
    assert not disagreements, disagreements.most_common(10)


def test_compiled_invariants_decide_alone_only_where_fhirpathpy_cannot(
    verdicts: list[tuple[str, str, Any, Any]],
) -> None:
    alone = {e for e, _, slow, fast in verdicts if slow is None and fast not in (None, _FELL_BACK)}
    assert all("hasValue()" in e for e in alone), alone


def test_most_evaluations_are_compiled(verdicts: list[tuple[str, str, Any, Any]]) -> None:
    """The run covers many compiled shapes, and few evaluations fall back to fhirpathpy."""
    shapes = {e for e, _, _, _ in verdicts}
    fell_back = sum(1 for v in verdicts if v[3] == _FELL_BACK)
    assert len(shapes) >= 40, len(shapes)
    assert len(verdicts) > 5000
    assert fell_back < len(verdicts) * 0.05, (fell_back, len(verdicts))
