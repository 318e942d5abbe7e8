"""Rules about the code as a whole, checked on the import graph and the tracked files.

The layer contracts (which package may import which) are import-linter's, in pyproject.toml;
what they cannot express is checked here."""

from __future__ import annotations

import ast
import re
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
    (service/fhir/actor.py); the validation walk carries its resource and root in a ``Walk``.
    No module of the service keeps a module-level context variable, but one holding the
    request id for log lines, were it ever needed (today the id lives in Flask's ``g``)."""
    found = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level only
            value = node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None
            if isinstance(value, ast.Call):
                func = value.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "ContextVar":
                    found[f"{path.relative_to(ROOT)}:{node.lineno}"] = ast.unparse(value.args[0])
    allowed = {"'whatmatters_request_id'"}
    assert {where: name for where, name in found.items() if name not in allowed} == {}
    # nor imported at all elsewhere (a ContextVar made in a function is just as sideways)
    importers = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "service").rglob("*.py"))
        if "contextvars" in path.read_text(encoding="utf-8")
    ]
    assert importers == []


def test_no_file_of_the_service_is_over_600_lines() -> None:
    """Each module does one job and can be read whole."""
    long = [
        f"{path.relative_to(ROOT)}: {lines}"
        for path in sorted((ROOT / "service").rglob("*.py"))
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > 600
    ]
    assert long == []


def test_no_interaction_is_written_twice() -> None:
    """Each interaction is one Session method: no ``read``/``read_in`` twins (one opening its
    own transaction, one inside an open one)."""
    twins = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        names = {
            node.name
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        twins += [
            f"{path.relative_to(ROOT)}: {name}"
            for name in sorted(names)
            if name.endswith("_in") and name.removesuffix("_in") in names
        ]
    assert twins == []


def test_the_readme_layout_names_every_module() -> None:
    """README "How the code is laid out" matches the tree: every module of the service is
    named in its table (by path, or by file name in a row of its folder), and every path the
    table names exists, so a newcomer finds any module in one step."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## How the code is laid out")
    section = readme[start : readme.index("\n## ", start + 1)]
    rows = [line for line in section.splitlines() if line.startswith("| `service/")]
    unnamed = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py":
            folder = f"`{rel.parent}/`"
            top_package = rel.parent.parent == Path("service")
            if top_package or any(folder in row or f"`{rel}`" in row for row in rows):
                continue  # a package's own docstring describes it; a sub-package has a row
        elif any(
            f"`{rel}`" in row or (f"`{rel.parent}/" in row and f"`{path.name}`" in row)
            for row in rows
        ):
            continue
        unnamed.append(str(rel))
    assert unnamed == []
    named = {m for row in rows for m in re.findall(r"`(service/[\w/]+(?:\.py)?/?)`", row)}
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
