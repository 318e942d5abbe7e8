"""Load the resources of the profiles folder (StructureDefinitions, SearchParameters, ...).

Broken files stop the service at start-up with the file and line of the problem.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class ProfileError(ValueError):
    """A file in the profiles folder cannot be used."""


def load_profile_resources(directory: Path) -> list[dict[str, Any]]:
    """Read every ``*.json`` FHIR resource in ``directory`` (sorted by name)."""
    if not directory.exists():
        return []
    loaded: list[dict[str, Any]] = []
    for path in sorted(directory.glob("*.json")):
        try:
            resource = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ProfileError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}") from exc
        except UnicodeDecodeError as exc:
            raise ProfileError(f"{path}: not UTF-8 ({exc.reason})") from exc
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise ProfileError(f"{path}:1: not a FHIR resource (no resourceType)")
        if resource["resourceType"] == "SearchParameter":
            for key in ("url", "code", "type", "base", "expression"):
                if key not in resource:
                    raise ProfileError(f"{path}: SearchParameter has no {key!r}")
        loaded.append(resource)
    return loaded


def search_parameters(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SearchParameter resources among the loaded profile resources."""
    return [r for r in resources if r.get("resourceType") == "SearchParameter"]
