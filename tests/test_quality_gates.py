"""The project's quality gates, run with the suite so that one command checks everything:
ruff (lint and format), mypy strict on service/, and the import-linter layer contracts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "service", "tests", "wsgi.py"],
        ["ruff", "format", "--check", "service", "tests", "wsgi.py"],
        ["mypy"],
        ["lint-imports"],
    ],
    ids=["ruff-lint", "ruff-format", "mypy", "import-linter"],
)
def test_gate_passes(command: list[str]) -> None:
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
