"""The official R4 definitions (StructureDefinitions, ValueSets, CodeSystems) the service uses."""

from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from functools import cache, cached_property
from pathlib import Path
from typing import Any

from service.validation.value_sets import Terminology
from service.validation.vendor import DEFINITIONS_DIR
from service.validation.vendor_terminology import TERMINOLOGY_FILE

BASE_SD = "http://hl7.org/fhir/StructureDefinition/"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
FHIRPATH_SYSTEM = "http://hl7.org/fhirpath/System."
_SYSTEM_TYPES = {
    "String": "string",
    "Boolean": "boolean",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
}


@dataclass(frozen=True)
class ElementDef:
    """The parts of an ElementDefinition the structural validator needs."""

    path: str
    name: str  # last path segment, "value[x]" for choices
    min: int
    max: str
    types: tuple[str, ...]
    content_reference: str | None
    binding_strength: str | None
    value_set: str | None
    # (key, severity, human, FHIRPath expression) of each invariant on this element
    constraints: tuple[tuple[str, str, str, str], ...] = ()
    # The resource types a Reference here may point at (from the type's targetProfile)
    targets: tuple[str, ...] = ()
    # The resource types a canonical here may name (from the type's targetProfile)
    canonical_targets: tuple[str, ...] = ()

    @property
    def is_choice(self) -> bool:
        """Whether this is a choice element such as value[x]."""
        return self.name.endswith("[x]")

    @property
    def repeats(self) -> bool:
        """Whether the element may repeat (is a JSON array)."""
        return self.max != "1" and self.max != "0"


@dataclass
class TypeModel:
    """A StructureDefinition's snapshot, indexed by element path."""

    url: str
    type: str
    kind: str
    abstract: bool
    elements: dict[str, ElementDef] = field(default_factory=dict)
    children: dict[str, dict[str, ElementDef]] = field(default_factory=dict)
    regex: re.Pattern[str] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def _type_code(entry: dict[str, Any]) -> str:
    code: str = entry["code"]
    if code.startswith(FHIRPATH_SYSTEM):
        for ext in entry.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                return str(ext.get("valueUrl") or ext.get("valueString"))
        return _SYSTEM_TYPES.get(code[len(FHIRPATH_SYSTEM) :], "string")
    return code


def _build_model(sd: dict[str, Any]) -> TypeModel:
    model = TypeModel(
        url=sd["url"],
        type=sd["type"],
        kind=sd["kind"],
        abstract=bool(sd.get("abstract")),
        raw=sd,
    )
    for element in sd["snapshot"]["element"]:
        path: str = element["path"]
        if "sliceName" in element:
            continue
        binding = element.get("binding", {})
        definition = ElementDef(
            path=path,
            name=path.rsplit(".", 1)[-1],
            min=int(element.get("min", 0)),
            max=str(element.get("max", "*")),
            types=tuple(_type_code(t) for t in element.get("type", [])),
            content_reference=element.get("contentReference"),
            binding_strength=binding.get("strength"),
            value_set=binding["valueSet"].split("|", 1)[0] if "valueSet" in binding else None,
            constraints=tuple(
                (c["key"], c.get("severity", "error"), c.get("human", ""), c["expression"])
                for c in element.get("constraint", [])
                if c.get("expression")
            ),
            targets=tuple(
                str(url).rsplit("/", 1)[-1]
                for t in element.get("type", [])
                if t.get("code") == "Reference"
                for url in t.get("targetProfile", [])
            ),
            canonical_targets=tuple(
                str(url).rsplit("/", 1)[-1]
                for t in element.get("type", [])
                if t.get("code") == "canonical"
                for url in t.get("targetProfile", [])
            ),
        )
        model.elements[path] = definition
        if "." in path:
            parent = path.rsplit(".", 1)[0]
            model.children.setdefault(parent, {})[definition.name] = definition
        if sd["kind"] == "primitive-type" and path == f"{sd['type']}.value":
            for entry in element.get("type", []):
                for ext in entry.get("extension", []):
                    if ext.get("url") == REGEX_EXT:
                        model.regex = re.compile(ext["valueString"])
    return model


class Definitions:
    """Loads the vendored R4 definitions once and answers questions about types and codes."""

    def __init__(self, directory: Path = DEFINITIONS_DIR) -> None:
        self._directory = directory
        self._models: dict[str, TypeModel] = {}
        self._expansions: dict[str, frozenset[tuple[str, str]] | None] = {}

    @classmethod
    @cache
    def shared(cls) -> Definitions:
        """The vendored definitions, loaded once per process (they never change at run time)."""
        return cls()

    @cached_property
    def _structure_definitions(self) -> dict[str, dict[str, Any]]:
        path = self._directory / "r4-structuredefinitions.json"
        sds: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return {sd["type"]: sd for sd in sds}

    @cached_property
    def _terminology(self) -> dict[str, dict[str, Any]]:
        path = self._directory / "r4-terminology.json"
        items: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        items += [r for r in self._vital_signs if r["resourceType"] != "StructureDefinition"]
        full = self._directory / TERMINOLOGY_FILE
        if full.exists():  # the R4 core and THO value sets and code systems (vendor_terminology)
            with gzip.open(full, "rt", encoding="utf-8") as handle:
                items += json.load(handle)
        return {(r["resourceType"] + "|" + r["url"]): r for r in items}

    @cached_property
    def terminology(self) -> Terminology:
        """Expansions, look-ups and code checks over the value sets and code systems held."""
        return Terminology(self._terminology)

    @cached_property
    def _vital_signs(self) -> list[dict[str, Any]]:
        """The core vital-signs profiles and the value sets they bind to (vendor.py)."""
        path = self._directory / "r4-vitalsigns.json"
        if not path.exists():
            return []
        items: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return items

    @cached_property
    def _core_profiles(self) -> dict[str, dict[str, Any]]:
        return {
            r["url"]: r for r in self._vital_signs if r["resourceType"] == "StructureDefinition"
        }

    @cached_property
    def search_parameters(self) -> list[dict[str, Any]]:
        """The official SearchParameters whose base includes a stored resource type."""
        path = self._directory / "r4-searchparameters.json"
        result: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return result

    @cached_property
    def _extensions(self) -> dict[str, dict[str, Any]]:
        path = self._directory / "r4-extensions.json"
        sds: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return {sd["url"]: sd for sd in sds}

    def structure_definition(self, url: str) -> dict[str, Any] | None:
        """A base StructureDefinition or core extension definition (with snapshot), by URL."""
        url = url.split("|", 1)[0]
        if url.startswith(BASE_SD):
            sd = self._structure_definitions.get(url[len(BASE_SD) :])
            if sd is not None and sd["url"] == url:
                return sd
            profile = self._core_profiles.get(url)
            if profile is not None:
                return profile
        return self._extensions.get(url)

    def overlay(self, resources: list[dict[str, Any]]) -> Definitions:
        """These definitions plus the ValueSets and CodeSystems among ``resources``."""
        combined = Definitions(self._directory)
        combined._models = self._models  # base types are the same; share their models
        combined.__dict__["_structure_definitions"] = self._structure_definitions
        combined.__dict__["_vital_signs"] = self._vital_signs
        local = {
            r["resourceType"] + "|" + r["url"]: r
            for r in resources
            if r.get("resourceType") in ("ValueSet", "CodeSystem") and "url" in r
        }
        combined.__dict__["_terminology"] = {**self._terminology, **local}
        return combined

    def canonical_type(self, url: str) -> str | None:
        """The resource type of the conformance resource we hold at a canonical URL, if any."""
        url = url.split("|", 1)[0]
        if self.structure_definition(url) is not None:
            return "StructureDefinition"
        for kind in ("ValueSet", "CodeSystem"):
            if f"{kind}|{url}" in self._terminology:
                return kind
        return None

    def concept(self, system: str, code: str) -> tuple[dict[str, Any] | None] | None:
        """(the concept or None when the code is not defined) for a complete code system we
        hold; None when we do not hold the system completely, so nothing can be said."""
        if not self.terminology.complete(system):
            return None
        return (self.terminology.concept(system, code),)

    def code_system(self, url: str) -> dict[str, Any] | None:
        """A CodeSystem we hold (vendored or from the profiles folder), by URL."""
        return self._terminology.get("CodeSystem|" + url)

    def model(self, type_name: str) -> TypeModel | None:
        """The indexed StructureDefinition of a base type, or None if R4 has no such type."""
        model = self._models.get(type_name)
        if model is None:
            sd = self._structure_definitions.get(type_name)
            if sd is None:
                return None
            model = _build_model(sd)
            self._models[type_name] = model
        return model

    def expand(self, value_set_url: str) -> frozenset[tuple[str, str]] | None:
        """The (system, code) pairs of a value set, or None if it cannot be expanded locally."""
        if value_set_url not in self._expansions:
            entries = self.terminology.expand(value_set_url)
            self._expansions[value_set_url] = (
                None if entries is None else frozenset((e.system, e.code) for e in entries)
            )
        return self._expansions[value_set_url]
