"""The conformance corpus: each case is a resource and the issues the specification expects.

The cases (``corpus/*.json``) were written from the R4 specification's rules, one rule per case:
QuestionnaireResponses against their Questionnaire (questionnaireresponse.html, the item
definitions and the core extensions of questionnaire.html), Bundle rules (bundle.html,
documents.html, messaging.html) and URI syntax (datatypes.html#uri, terminologies.html).
``expect`` lists every error (severity and FHIRPath expression), exactly; ``warnings`` lists
warnings that must be among those reported. ``corpus/questionnaires.json`` plays the server's
store: the Questionnaires responses name by canonical URL; ``corpus/profiles/`` holds the
profiles that cases name in ``profile``.
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

HERE = Path(__file__).parent / "corpus"
PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
STORE = {q["url"]: q for q in json.loads((HERE / "questionnaires.json").read_text())}


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    for path in sorted(HERE.glob("*.json")):
        if path.name != "questionnaires.json":
            cases += json.loads(path.read_text(encoding="utf-8"))
    return cases


CASES = _cases()


def _store(type_: str, canonical: str) -> dict[str, Any] | None:
    found = STORE.get(canonical.split("|", 1)[0])
    return found if found is not None and found["resourceType"] == type_ else None


@pytest.fixture(scope="module")
def validator(tmp_path_factory: pytest.TempPathFactory) -> ResourceValidator:
    # the repository's profiles plus the corpus's own (slicing cases need profiles of their own)
    folder = tmp_path_factory.mktemp("profiles")
    for path in [*PROFILES_DIR.glob("*.json"), *(HERE / "profiles").glob("*.json")]:
        shutil.copy(path, folder / path.name)
    return ResourceValidator(ProfileRegistry.load(Definitions.shared(), folder), True)


def test_case_names_are_unique() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("case", CASES, ids=[f"{c['group']}:{c['name']}" for c in CASES])
def test_case_gets_exactly_its_expected_errors(
    validator: ResourceValidator, case: dict[str, Any]
) -> None:
    resource = case["resource"]
    profile = case.get("profile")
    issues = validator.validate(resource) + validator.validate_profiles(resource, profile, _store)
    errors = sorted(
        (i.severity, e) for i in issues if i.severity in ("error", "fatal") for e in i.expression
    )
    shown = [i.to_fhir() for i in issues]
    assert errors == sorted(tuple(x) for x in case["expect"]), shown
    warnings = {(i.severity, e) for i in issues if i.severity == "warning" for e in i.expression}
    for wanted in case["warnings"]:
        assert tuple(wanted) in warnings, shown
