"""Builders for test resources: small, valid by default, changed with keyword arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import FIXTURES

FHIR_JSON = "application/fhir+json"
BASE = "http://test.local/fhir"


def fixture(name: str) -> dict[str, Any]:
    """Load a JSON fixture from tests/fixtures."""
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    return data


def patient(**changes: Any) -> dict[str, Any]:
    """A valid Patient with an NHS-number-style identifier."""
    resource = fixture("patient.json")
    resource.update(changes)
    return resource


def goal(**changes: Any) -> dict[str, Any]:
    """A valid what-matters Goal for Patient/p1."""
    resource = fixture("goal.json")
    resource.update(changes)
    return resource


def observation(**changes: Any) -> dict[str, Any]:
    """A valid what-matters statement Observation for Patient/p1."""
    resource = fixture("observation.json")
    resource.update(changes)
    return resource


def outcome_issues(response: Any) -> list[dict[str, Any]]:
    """Assert the response is an OperationOutcome and return its issues."""
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome", body
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    issues: list[dict[str, Any]] = body["issue"]
    assert issues
    return issues


def whatmatters(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the installed whatmatters command, without the caller's WHATMATTERS_* settings."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("WHATMATTERS_")}
    return subprocess.run(
        [str(Path(sys.executable).parent / "whatmatters"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
