"""The official FHIR R4 examples package (npm ``hl7.fhir.r4.examples`` 4.0.1, CC0).

It is fetched once with ``npm pack`` into a cache folder (``WHATMATTERS_CACHE``, default
``~/.cache/whatmatters``); ``WHATMATTERS_R4_PACKAGE`` may name a copy that is already on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from functools import cache
from pathlib import Path
from typing import Any

PACKAGE = "hl7.fhir.r4.examples"
VERSION = "4.0.1"
FILE_NAME = f"{PACKAGE}-{VERSION}.tgz"
# The resource types the service stores, whose examples the tests walk.
STORED_TYPES = (
    "Goal",
    "Observation",
    "Patient",
    "List",
    "QuestionnaireResponse",
    "Questionnaire",
    "Provenance",
)


def package_path() -> Path:
    """Return the package tarball, fetching it with npm if it is not cached yet."""
    configured = os.environ.get("WHATMATTERS_R4_PACKAGE")
    if configured:
        return Path(configured)
    cache_dir = Path(os.environ.get("WHATMATTERS_CACHE", Path.home() / ".cache" / "whatmatters"))
    target = cache_dir / FILE_NAME
    if target.exists():
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"The R4 examples package is needed: install npm, or set WHATMATTERS_R4_PACKAGE "
            f"to a downloaded {FILE_NAME}"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache_dir)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return target


@cache
def examples(*types: str) -> dict[str, dict[str, Any]]:
    """The example resources of the given types, by file name."""
    found: dict[str, dict[str, Any]] = {}
    with tarfile.open(package_path()) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name.split("-", 1)[0] not in types:
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            resource = json.load(handle)
            if resource.get("resourceType") in types:
                found[name] = resource
    return found
