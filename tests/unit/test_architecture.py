"""Rules about the code as a whole, checked on the import graph and the tracked files.

The layer contracts (which package may import which) are import-linter's, in pyproject.toml;
what they cannot express is checked here."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[2]


def test_no_module_of_the_service_takes_part_in_an_import_cycle() -> None:
    """A module never imports, directly or through others, a module that imports it: each
    module can be read (and tested) after the ones it uses. Imports made only for type
    checking count too; a Protocol where the caller is needed breaks such a cycle."""
    graph = grimp.build_graph("service")
    cycles = set()
    for importer in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(importer):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                cycles.add(" -> ".join((importer, *back)))
    assert not cycles, "\n".join(sorted(cycles))


def tracked_files() -> list[Path]:
    """The repository's files under version control (every file but caches and build output
    when the tree is not a git checkout)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        return [ROOT / name for name in listed.decode().split("\0") if name]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", ".venv", "instance", "build", "__pycache__", ".mypy_cache", ".ruff_cache"}
        return [
            path
            for path in ROOT.rglob("*")
            if path.is_file() and not skip & set(path.relative_to(ROOT).parts)
        ]


def test_the_project_refers_to_no_design_notes_outside_the_repository() -> None:
    """The design lives in the repository (README, "How it fits together", and each package's
    docstring): no file points a reader at notes they cannot see."""
    # spelled in pieces, so this file does not name what it looks for
    outside = [("DESIGN" + ".md").encode(), ("../" + "shared").encode()]
    offenders = [
        str(path.relative_to(ROOT))
        for path in tracked_files()
        if path.is_file() and any(name in path.read_bytes() for name in outside)
    ]
    assert offenders == []


def test_no_state_travels_sideways_in_context_variables() -> None:
    """Who acts, on what terms, and what a request touched travel with its session's Actor
    (service/fhir/actor.py), not in module-level context variables. (The validator's own,
    in service/validation, are not covered here yet.)"""
    offenders = [
        str(path.relative_to(ROOT))
        for package in ("fhir", "exchange", "priorities", "api")
        for path in sorted((ROOT / "service" / package).rglob("*.py"))
        if "ContextVar" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []


def test_no_file_of_the_fhir_core_or_the_priorities_is_over_600_lines() -> None:
    """Each module does one job and can be read whole."""
    long = [
        f"{path.relative_to(ROOT)}: {lines}"
        for package in ("fhir", "priorities")
        for path in sorted((ROOT / "service" / package).rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 600
    ]
    assert long == []
