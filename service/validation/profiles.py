"""Load the profiles folder: StructureDefinitions, ValueSets, CodeSystems, SearchParameters, ...

At start-up every StructureDefinition gets a snapshot generated from its differential (on the
R4 base or on another profile of the folder), and every file is checked: broken files stop the
service with the file, the line and the element of the problem.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.validation.definitions import BASE_SD, Definitions
from service.validation.fhirpath import InvariantEngine
from service.validation.snapshots import SnapshotError, generate_snapshot
from service.validation.structure import StructureValidator

# The base (not a profile) the service's own canonical URLs start with; one constant, so it can
# be replaced once the project has a domain.
CANONICAL_BASE = "http://whatmatters.example/fhir"


_NAME = ("StructureDefinition.name",)


def _lenient(item: ProfileFile) -> list[str]:
    """Accept what the reference validator accepts with a warning: a StructureDefinition without
    ``name`` (a computer name only tools use), and ``abstract`` written as a string."""
    resource = item.resource
    if resource["resourceType"] != "StructureDefinition":
        return []
    found: list[str] = []
    if "name" not in resource:
        found.append(f"{item.where()}: StructureDefinition has no name")
    abstract = resource.get("abstract")
    if isinstance(abstract, str) and abstract in ("true", "false"):
        resource["abstract"] = abstract == "true"
        found.append(f"{item.where()}: abstract is the string {abstract!r}, read as a boolean")
    return found


class ProfileError(ValueError):
    """A file in the profiles folder cannot be used."""


@dataclass(frozen=True)
class ProfileFile:
    """One resource of the profiles folder and the file it came from."""

    path: Path
    text: str
    resource: dict[str, Any]

    def where(self, element_id: str | None = None) -> str:
        """``file:line`` of an element id (or of the file), for error messages."""
        if element_id:
            match = re.search(r'"id"\s*:\s*"' + re.escape(element_id) + '"', self.text)
            if match is not None:
                return f"{self.path}:{self.text.count(chr(10), 0, match.start()) + 1}"
        return f"{self.path}:1"


def load_profile_files(directory: Path) -> list[ProfileFile]:
    """Read every ``*.json`` FHIR resource in ``directory`` (sorted by name)."""
    if not directory.exists():
        return []
    loaded: list[ProfileFile] = []
    for path in sorted(directory.glob("*.json")):
        try:
            text = path.read_text(encoding="utf-8")
            resource = json.loads(text)
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
        loaded.append(ProfileFile(path, text, resource))
    return loaded


def load_profile_resources(directory: Path) -> list[dict[str, Any]]:
    """The resources of the profiles folder, without their file names."""
    return [f.resource for f in load_profile_files(directory)]


def search_parameters(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The SearchParameter resources among the loaded profile resources."""
    return [r for r in resources if r.get("resourceType") == "SearchParameter"]


@dataclass
class ProfileRegistry:
    """The base definitions plus the folder's profiles, with generated snapshots."""

    definitions: Definitions
    files: list[ProfileFile] = field(default_factory=list)
    snapshots: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    local: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what was accepted although not quite right, as the reference validator accepts it
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, base: Definitions, directory: Path) -> ProfileRegistry:
        """Load and check ``directory``; raise ProfileError naming the file and element."""
        return cls.from_files(base, load_profile_files(directory))

    @classmethod
    def from_files(cls, base: Definitions, files: list[ProfileFile]) -> ProfileRegistry:
        """Load and check profile files (of a folder, or of an npm package: packages.py)."""
        warnings = [w for f in files for w in _lenient(f)]
        definitions = base.overlay([f.resource for f in files])
        registry = cls(definitions, files, warnings=warnings)
        registry._check_files()
        for item in files:
            resource = item.resource
            if resource["resourceType"] == "StructureDefinition":
                url = resource.get("url")
                if not isinstance(url, str):
                    raise ProfileError(f"{item.where()}: StructureDefinition has no url")
                if url in registry.local:
                    raise ProfileError(f"{item.where()}: a second StructureDefinition {url}")
                registry.local[url] = resource
        for url in registry.local:
            registry.snapshot(url)
        for item in files:
            if item.resource["resourceType"] == "StructureDefinition":
                registry._check_references(item)
        return registry

    def _check_files(self) -> None:
        validator = StructureValidator(self.definitions)
        for item in self.files:
            issues = [
                i
                for i in validator.validate(item.resource)
                if i.severity in ("error", "fatal") and i.expression != _NAME
            ]
            if issues:
                first = issues[0]
                where = ", ".join(first.expression) or item.resource["resourceType"]
                raise ProfileError(f"{item.where()}: {where}: {first.diagnostics}")
            if item.resource["resourceType"] == "SearchParameter":
                problem = InvariantEngine().compiles(str(item.resource["expression"]))
                if problem is not None:
                    raise ProfileError(
                        f"{item.where()}: SearchParameter.expression does not compile: {problem}"
                    )

    def file_of(self, url: str) -> ProfileFile | None:
        """The file a local StructureDefinition came from."""
        for item in self.files:
            if item.resource.get("url") == url:
                return item
        return None

    def structure_definition(self, url: str) -> dict[str, Any] | None:
        """A profile of the folder, a base definition or a core extension, by canonical URL."""
        url = url.split("|", 1)[0]
        return self.local.get(url) or self.definitions.structure_definition(url)

    def snapshot(self, url: str, _seen: tuple[str, ...] = ()) -> list[dict[str, Any]] | None:
        """The snapshot elements of ``url``; generated (once) for the folder's profiles."""
        url = url.split("|", 1)[0]
        if url in self.snapshots:
            return self.snapshots[url]
        sd = self.local.get(url)
        if sd is None:
            found = self.definitions.structure_definition(url)
            return None if found is None else list(found["snapshot"]["element"])
        item = self.file_of(url)
        where = item.where() if item is not None else url
        if url in _seen:
            raise ProfileError(f"{where}: baseDefinition loops back to {url}")
        base_url = sd.get("baseDefinition")
        if not isinstance(base_url, str):
            raise ProfileError(f"{where}: StructureDefinition {url} has no baseDefinition")
        base = self.snapshot(base_url, (*_seen, url))
        if base is None:
            raise ProfileError(f"{where}: the baseDefinition {base_url} is not known")
        base_sd = self.structure_definition(base_url)
        if base_sd is not None and base_sd.get("type") != sd.get("type"):
            raise ProfileError(
                f"{where}: type {sd.get('type')!r} differs from the base's {base_sd.get('type')!r}"
            )
        try:
            elements = generate_snapshot(sd, base, self._type_elements)
        except SnapshotError as exc:
            element_id = str(exc).split("'")[1] if "'" in str(exc) else None
            raise ProfileError(f"{item.where(element_id) if item else url}: {exc}") from exc
        self.snapshots[url] = elements
        return elements

    def _type_elements(self, type_code: str) -> list[dict[str, Any]] | None:
        sd = self.definitions.structure_definition(BASE_SD + type_code)
        return None if sd is None else list(sd["snapshot"]["element"])

    def profiles_of(self, resource_type: str) -> list[str]:
        """The URLs of the folder's profiles on a resource type."""
        return [
            url
            for url, sd in self.local.items()
            if sd.get("type") == resource_type and sd.get("kind") == "resource"
        ]

    def _narrows(self, code: str, allowed: set[Any]) -> bool:
        """Whether a profile's type is one the base allows, or a resource type where the base
        allows any resource (``Patient.contained`` narrowed to Practitioner)."""
        if code in allowed:
            return True
        model = self.definitions.model(code)
        resource = model is not None and model.kind == "resource"
        return resource and bool(allowed & {"Resource", "DomainResource"})

    def _check_references(self, item: ProfileFile) -> None:
        """Fail on bindings, target profiles, type profiles and invariants that cannot work."""
        url = item.resource["url"]
        engine = InvariantEngine()
        base_types = {
            e["id"]: {t.get("code") for t in e.get("type", [])}
            for e in self.snapshot(item.resource["baseDefinition"]) or []
        }
        for element in self.snapshots[url]:
            changed = set(element.get("_changed", ()))
            if not changed:
                continue
            where = f"{item.where(element['id'])}: {element['id']}"
            if "type" in changed:
                allowed = base_types.get(element["id"])
                for entry in element.get("type", []):
                    if allowed and not self._narrows(str(entry.get("code")), allowed):
                        raise ProfileError(
                            f"{where}: type {entry.get('code')!r} is not allowed by the base"
                        )
                    for target in entry.get("targetProfile", []) + entry.get("profile", []):
                        if self.structure_definition(target) is None:
                            raise ProfileError(f"{where}: {target} is not a known definition")
            binding = element.get("binding", {})
            value_set = str(binding.get("valueSet", "")).split("|", 1)[0]
            local_set = "binding" in changed and value_set.startswith(CANONICAL_BASE)
            if local_set and self.definitions.expand(value_set) is None:
                raise ProfileError(f"{where}: the value set {value_set} cannot be expanded")
            for constraint in element.get("constraint", []):
                if f"constraint:{constraint.get('key')}" not in changed:
                    continue
                problem = engine.compiles(str(constraint.get("expression", "")))
                if problem is not None or not constraint.get("expression"):
                    raise ProfileError(
                        f"{where}: invariant {constraint.get('key')} does not compile: {problem}"
                    )
