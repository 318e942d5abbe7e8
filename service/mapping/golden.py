"""The golden tests inside mapping files: each input must map to exactly the expected
resources (or fail with the expected error), so a channel can be unit-tested like code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from service.mapping.engine import Mapper, Output
from service.mapping.files import MappingError, MappingFile
from service.mapping.sources import mapping_records


@dataclass(frozen=True)
class GoldenResult:
    """The outcome of one golden test."""

    mapping: str
    name: str
    where: str
    passed: bool
    detail: str = ""
    outputs: tuple[dict[str, Any], ...] = ()


def map_input(
    mapping: MappingFile,
    data: Any,
    questionnaires: dict[str, dict[str, Any]],
    conceptmaps: dict[str, dict[str, Any]] | None = None,
) -> list[Output]:
    """Every resource ``data`` maps to; the first MappingError stops it."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    mapper = Mapper(mapping, conceptmaps)
    outputs: list[Output] = []
    for mapped in mapper.mapped(mapping_records(mapping, text, questionnaires)):
        if mapped.error is not None:
            raise mapped.error
        outputs += mapped.outputs
    return outputs


def _plain(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: float(v) if isinstance(v, Decimal) else str(v))
    )


def run_golden(
    mapping: MappingFile,
    questionnaires: dict[str, dict[str, Any]],
    conceptmaps: dict[str, dict[str, Any]] | None = None,
) -> list[GoldenResult]:
    """Run the tests of one mapping file."""
    results = []
    for index, test in enumerate(mapping.content.get("tests", [])):
        where = mapping.where(f"tests[{index}]")
        try:
            outputs = map_input(mapping, test["input"], questionnaires, conceptmaps)
        except MappingError as exc:
            expected = test.get("error")
            passed = expected is not None and expected in str(exc)
            if passed:
                detail = ""
            elif expected is not None:
                detail = f"the error does not contain {expected!r}; it was: {exc}"
            else:
                detail = f"unexpected error: {exc}"
            results.append(GoldenResult(mapping.name, test["name"], where, passed, detail))
            continue
        produced = tuple(_plain(o.resource) for o in outputs)
        if "error" in test:
            results.append(
                GoldenResult(
                    mapping.name,
                    test["name"],
                    where,
                    False,
                    f"expected an error containing {test['error']!r}, but it mapped",
                    produced,
                )
            )
            continue
        expected = _plain(test["expect"])
        if list(produced) == expected:
            results.append(GoldenResult(mapping.name, test["name"], where, True, "", produced))
            continue
        detail = _difference(expected, list(produced))
        results.append(GoldenResult(mapping.name, test["name"], where, False, detail, produced))
    return results


def _difference(expected: list[Any], produced: list[Any]) -> str:
    if len(expected) != len(produced):
        return f"expected {len(expected)} resources, the mapping made {len(produced)}"
    for number, (want, got) in enumerate(zip(expected, produced, strict=True)):
        if want != got:
            keys = sorted(set(want) | set(got))
            differing = [k for k in keys if want.get(k) != got.get(k)]
            shown = "; ".join(
                f"{k}: expected {json.dumps(want.get(k), ensure_ascii=False)}, "
                f"made {json.dumps(got.get(k), ensure_ascii=False)}"
                for k in differing[:3]
            )
            return f"resource {number + 1} differs: {shown}"
    return "differs"  # pragma: no cover
