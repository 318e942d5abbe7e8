"""The IPS 2.0.0 package through the profile loader: its profiles and what they need from
the extensions and R4 packages, the package's own example documents valid, its rules
enforced (including a primitive present only through a data-absent-reason extension)."""

from __future__ import annotations

import json
import logging
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from service.validation.packages import IPS, IPS_BUNDLE, load_ips
from tests.ips_package import ips_checker, ips_package_path


@cache
def _examples() -> dict[str, dict[str, Any]]:
    found = {}
    with tarfile.open(ips_package_path()) as tar:
        for member in tar:
            if member.name.startswith("package/example/Bundle-") and member.name.endswith(".json"):
                handle = tar.extractfile(member)
                assert handle is not None
                found[member.name.rsplit("/", 1)[-1]] = json.load(handle)
    return found


def test_the_loader_reads_the_ips_profiles_and_what_they_need() -> None:
    local = ips_checker().registry.local
    assert f"{IPS}/Bundle-uv-ips" in local
    assert f"{IPS}/Composition-uv-ips" in local
    # from hl7.fhir.uv.extensions.r4 and the R4 examples package, as the profiles name them
    assert "http://hl7.org/fhir/StructureDefinition/note" in local
    assert "http://hl7.org/fhir/StructureDefinition/vitalsigns" in local
    # no logical models
    assert not [sd for sd in local.values() if sd.get("kind") == "logical"]


@pytest.mark.parametrize("name", sorted(_examples()))
def test_the_packages_own_example_documents_are_valid(name: str) -> None:
    document = _examples()[name]
    errors = [i for i in ips_checker().validate(document) if i.severity in ("error", "fatal")]
    assert errors == [], [e.diagnostics for e in errors]


def test_the_ips_rules_are_enforced() -> None:
    document = _examples()["Bundle-bundle-minimal.json"]
    patient = next(
        e["resource"] for e in document["entry"] if e["resource"]["resourceType"] == "Patient"
    )
    profiles = ips_checker().validator.profiles
    without = {k: v for k, v in patient.items() if k != "birthDate"}
    found = profiles.validate(without, f"{IPS}/Patient-uv-ips")
    assert any("birthDate needs at least 1" in i.diagnostics for i in found)
    absent = {
        **without,
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                    "valueCode": "unknown",
                }
            ]
        },
    }
    assert [
        i for i in profiles.validate(absent, f"{IPS}/Patient-uv-ips") if i.severity == "error"
    ] == []
    composition = document["entry"][0]["resource"]
    broken = {
        **document,
        "entry": [
            {
                **document["entry"][0],
                "resource": {**composition, "section": composition["section"][1:]},
            },
            *document["entry"][1:],
        ],
    }
    problems = [i.diagnostics for i in ips_checker().validate(broken) if i.severity == "error"]
    assert any("sectionProblems" in p for p in problems)
    assert IPS_BUNDLE in document["meta"]["profile"]


def test_without_the_package_there_is_no_check_and_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert load_ips(tmp_path / "hl7.fhir.uv.ips-2.0.0.tgz") is None
        assert load_ips(None) is None
    assert "without validation against IPS 2.0.0" in caplog.text
    lonely = tmp_path / "hl7.fhir.uv.ips-2.0.0.tgz"
    lonely.write_bytes(ips_package_path().read_bytes())  # its dependencies are not beside it
    with caplog.at_level(logging.WARNING):
        assert load_ips(lonely) is None
    assert "The packages IPS needs are not there" in caplog.text
