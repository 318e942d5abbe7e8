"""Loading the profiles folder: snapshots generated from differentials, broken files refused
at start-up with the file, line and element (https://hl7.org/fhir/R4/profiling.html#snapshot).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.validation.definitions import Definitions
from service.validation.profiles import ProfileError, ProfileRegistry
from service.validation.validator import ResourceValidator
from tests.builders import whatmatters
from tests.validation.mutations import BASE, FIXTURES, example

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
GOAL_FILE = "StructureDefinition-wmty-personal-goal.json"


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "profiles"
    shutil.copytree(PROFILES_DIR, target)
    return target


def _edit(folder: Path, name: str, change: Any) -> None:
    path = folder / name
    resource = json.loads(path.read_text(encoding="utf-8"))
    change(resource)
    path.write_text(json.dumps(resource, indent=2), encoding="utf-8")


def _diff(resource: dict[str, Any], element_id: str) -> dict[str, Any]:
    for element in resource["differential"]["element"]:
        if element["id"] == element_id:
            return dict(element)
    raise KeyError(element_id)


def test_snapshots_unfold_data_types_and_place_slices_after_the_sliced_element() -> None:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    ids = [e["id"] for e in registry.snapshots[BASE + "wmty-statement"]]
    category = ids.index("Observation.category")
    assert ids.index("Observation.category:survey") > category
    assert ids.index("Observation.category:whatMatters") > ids.index("Observation.category:survey")
    assert ids.index("Observation.category:whatMatters") < ids.index("Observation.code")
    # every element of the base is there, once
    base = Definitions.shared().structure_definition(
        "http://hl7.org/fhir/StructureDefinition/Observation"
    )
    assert base is not None
    assert {e["id"] for e in base["snapshot"]["element"]} <= set(ids)
    assert len(ids) == len(set(ids))


def test_every_type_of_the_folder_is_a_supported_profile() -> None:
    registry = ProfileRegistry.load(Definitions.shared(), PROFILES_DIR)
    assert registry.profiles_of("Goal") == [BASE + "wmty-personal-goal"]
    assert sorted(registry.profiles_of("Observation")) == [
        BASE + "wmty-statement",
        BASE + "wmty-treatment-preference",
    ]


def test_a_profile_on_a_profile_keeps_the_parent_rules(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    child = {
        "resourceType": "StructureDefinition",
        "id": "ward-goal",
        "url": "http://example.org/fhir/StructureDefinition/ward-goal",
        "name": "WardGoal",
        "status": "draft",
        "kind": "resource",
        "abstract": False,
        "type": "Goal",
        "baseDefinition": BASE + "wmty-personal-goal",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Goal.priority", "path": "Goal.priority", "min": 1}]},
    }
    (folder / "StructureDefinition-ward-goal.json").write_text(json.dumps(child))
    validator = ResourceValidator(ProfileRegistry.load(Definitions.shared(), folder))
    resource = example("wmty-personal-goal")
    del resource["priority"]
    del resource["expressedBy"]
    issues = validator.validate_profiles(resource, child["url"])
    found = {e for i in issues if i.severity == "error" for e in i.expression}
    assert {"Goal.priority", "Goal.expressedBy"} <= found


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda r: r["differential"]["element"].append({"id": "Goal.mood", "path": "Goal.mood"}),
            "Goal.mood",
        ),
        (
            lambda r: r["differential"]["element"].append(
                {"id": "Goal.note", "path": "Goal.note", "min": 2, "max": "1"}
            ),
            "max 1 is less than min 2",
        ),
        (
            lambda r: r["differential"]["element"].append(
                {"id": "Goal.subject", "path": "Goal.subject", "min": 0}
            ),
            "below the base minimum",
        ),
        (lambda r: r.update(baseDefinition=BASE + "nothing"), "is not known"),
        (
            lambda r: r["differential"]["element"].append(
                {"id": "Goal.start[x]", "path": "Goal.start[x]", "type": [{"code": "Period"}]}
            ),
            "type 'Period' is not allowed by the base",
        ),
        (
            lambda r: (
                _diff(r, "Goal.addresses")["type"][0].update(targetProfile=[BASE + "nope"])
                or r["differential"]["element"].__setitem__(
                    [e["id"] for e in r["differential"]["element"]].index("Goal.addresses"),
                    {
                        **_diff(r, "Goal.addresses"),
                        "type": [{"code": "Reference", "targetProfile": [BASE + "nope"]}],
                    },
                )
            ),
            "is not a known definition",
        ),
        (
            lambda r: _diff_set(
                r,
                "Goal",
                constraint=[
                    {
                        "key": "x-1",
                        "severity": "error",
                        "human": "x",
                        "expression": "lifecycleStatus = = 'a'",
                    }
                ],
            ),
            "does not compile",
        ),
        (
            lambda r: _diff_set(
                r,
                "Goal.priority",
                binding={
                    "strength": "required",
                    "valueSet": BASE.replace("StructureDefinition", "ValueSet") + "missing",
                },
            ),
            "cannot be expanded",
        ),
        (lambda r: r.update(status="finished"), "status"),
    ],
)
def test_a_broken_profile_stops_loading_with_file_and_element(
    tmp_path: Path, change: Any, message: str
) -> None:
    folder = _copy(tmp_path)
    _edit(folder, GOAL_FILE, change)
    with pytest.raises(ProfileError, match=message) as caught:
        ProfileRegistry.load(Definitions.shared(), folder)
    assert f"{GOAL_FILE}:" in str(caught.value)


def _diff_set(resource: dict[str, Any], element_id: str, **values: Any) -> None:
    for element in resource["differential"]["element"]:
        if element["id"] == element_id:
            element.update(values)
            return
    resource["differential"]["element"].append({"id": element_id, "path": element_id, **values})


def test_broken_json_names_file_and_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    (folder / GOAL_FILE).write_text('{\n  "resourceType": "StructureDefinition",\n  oops\n}')
    with pytest.raises(ProfileError, match=f"{GOAL_FILE}:3"):
        ProfileRegistry.load(Definitions.shared(), folder)


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_validate_command_checks_a_named_profile(tmp_path: Path) -> None:
    good = FIXTURES / "wmty-personal-goal.json"
    result = whatmatters("validate", str(good), "--profile", BASE + "wmty-personal-goal")
    assert result.returncode == 0, result.stdout
    bad_goal = example("wmty-personal-goal")
    del bad_goal["addresses"]
    bad = tmp_path / "goal.json"
    bad.write_text(json.dumps(bad_goal))
    result = whatmatters("validate", str(bad))
    assert result.returncode == 1
    assert "Goal.addresses" in result.stdout


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_serve_and_validate_refuse_a_broken_profiles_folder(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit(
        folder,
        GOAL_FILE,
        lambda r: r["differential"]["element"].append({"id": "Goal.mood", "path": "Goal.mood"}),
    )
    env = {
        "WHATMATTERS_PROFILES_DIR": str(folder),
        "WHATMATTERS_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    for command in (("validate", str(FIXTURES / "wmty-statement.json")), ("serve", "--port", "1")):
        result = whatmatters(*command, env=env)
        assert result.returncode == 2
        assert GOAL_FILE in result.stderr
        assert "Goal.mood" in result.stderr


def test_a_profile_without_name_loads_with_a_warning(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit(folder, GOAL_FILE, lambda sd: sd.pop("name"))
    registry = ProfileRegistry.load(Definitions.shared(), folder)
    assert any(GOAL_FILE in w and "no name" in w for w in registry.warnings)
    assert BASE + "wmty-personal-goal" in registry.profiles_of("Goal")


def test_abstract_written_as_a_string_is_read_as_a_boolean(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    _edit(folder, GOAL_FILE, lambda sd: sd.update(abstract="false"))
    registry = ProfileRegistry.load(Definitions.shared(), folder)
    assert any("abstract" in w for w in registry.warnings)
    validator = ResourceValidator(registry)
    goal = example("wmty-personal-goal")
    assert validator.validate_profiles(goal, BASE + "wmty-personal-goal") == []


def test_contained_may_be_narrowed_to_one_resource_type(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    url = "http://example.org/fhir/StructureDefinition/patient-with-practitioner"
    narrowed = {
        "resourceType": "StructureDefinition",
        "id": "patient-with-practitioner",
        "url": url,
        "name": "PatientWithPractitioner",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Patient",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Patient",
        "derivation": "constraint",
        "differential": {
            "element": [
                {
                    "id": "Patient.contained",
                    "path": "Patient.contained",
                    "type": [{"code": "Practitioner"}],
                }
            ]
        },
    }
    (folder / "StructureDefinition-patient-with-practitioner.json").write_text(
        json.dumps(narrowed), encoding="utf-8"
    )
    validator = ResourceValidator(ProfileRegistry.load(Definitions.shared(), folder))
    good = {"resourceType": "Patient", "contained": [{"resourceType": "Practitioner", "id": "a"}]}
    bad = {"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "a"}]}
    assert not [i for i in validator.validate_profiles(good, url) if i.severity == "error"]
    assert [i for i in validator.validate_profiles(bad, url) if i.severity == "error"]
