"""Regenerate the vendored subset of the official FHIR R4 definitions.

The source is the npm package ``hl7.fhir.r4.examples`` 4.0.1 (CC0-1.0), fetched with
``npm pack hl7.fhir.r4.examples``. Run ``whatmatters vendor-definitions PACKAGE.tgz``; the
result is written to ``service/validation/definitions/``. Only what the service needs is kept:
every base StructureDefinition (resources and data types, without narrative, mappings and
documentation prose), the ValueSets and CodeSystems reached from their required bindings, and
the SearchParameters of the resource types the service stores, and the core extension
definitions (so extensions such as goal-acceptance are checked, not only tolerated), and the
core vital-signs profiles (observation-vitalsigns.html) with the value sets they bind to, which
every Observation with a vital-sign code must meet (``vital_signs.py``).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

DEFINITIONS_DIR = Path(__file__).parent / "definitions"

# Documentation prose that the validator never reads; dropping it keeps the vendored files small.
_ELEMENT_PROSE = ("definition", "comment", "requirements", "alias", "mapping", "example", "short")
_SD_KEEP = (
    "resourceType",
    "id",
    "url",
    "version",
    "name",
    "status",
    "fhirVersion",
    "kind",
    "abstract",
    "type",
    "baseDefinition",
    "derivation",
    "context",
    "snapshot",
)
# The core profiles R4 requires by code (observation-vitalsigns.html), and the value sets they bind
VITAL_SIGNS = (
    "vitalsigns",
    "vitalspanel",
    "resprate",
    "heartrate",
    "oxygensat",
    "bodytemp",
    "bodyheight",
    "headcircum",
    "bodyweight",
    "bmi",
    "bp",
)
SEARCH_TYPES = (
    "Resource",
    "DomainResource",
    "Patient",
    "Goal",
    "Observation",
    "List",
    "QuestionnaireResponse",
    "Questionnaire",
    "Provenance",
    "Subscription",
    "AuditEvent",
)


def _strip_element(element: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in element.items() if k not in _ELEMENT_PROSE}
    if "constraint" in kept:
        kept["constraint"] = [
            {k: v for k, v in c.items() if k != "xpath"} for c in kept["constraint"]
        ]
    if "binding" in kept:
        kept["binding"] = {
            k: v for k, v in kept["binding"].items() if k in ("strength", "valueSet")
        }
    return kept


def _strip_structure_definition(sd: dict[str, Any]) -> dict[str, Any]:
    kept = {k: sd[k] for k in _SD_KEEP if k in sd}
    kept["snapshot"] = {"element": [_strip_element(e) for e in sd["snapshot"]["element"]]}
    return kept


def _strip_concepts(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in concepts:
        item: dict[str, Any] = {"code": c["code"]}
        if "display" in c:
            item["display"] = c["display"]
        if "concept" in c:
            item["concept"] = _strip_concepts(c["concept"])
        out.append(item)
    return out


def _canonical(url: str) -> str:
    return url.split("|", 1)[0]


def _read_package(path: Path) -> dict[str, dict[str, Any]]:
    resources: dict[str, dict[str, Any]] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.endswith(".json"):
                continue
            if not name.startswith(("StructureDefinition-", "ValueSet-", "CodeSystem-", "SearchP")):
                continue
            handle = tar.extractfile(member)
            if handle is None:
                continue
            resources[name] = json.load(handle)
    return resources


def vendor(package: Path, target: Path = DEFINITIONS_DIR) -> dict[str, int]:
    """Extract the subset of the R4 package that the service needs into ``target``."""
    resources = _read_package(package)
    sds = [
        r
        for r in resources.values()
        if r.get("resourceType") == "StructureDefinition"
        and r.get("derivation", "specialization") == "specialization"
        and r.get("kind") in ("resource", "complex-type", "primitive-type")
    ]
    extensions = [
        r
        for r in resources.values()
        if r.get("resourceType") == "StructureDefinition"
        and r.get("type") == "Extension"
        and r.get("derivation") == "constraint"
    ]
    value_sets = {
        _canonical(r["url"]): r for r in resources.values() if r.get("resourceType") == "ValueSet"
    }
    code_systems = {
        _canonical(r["url"]): r for r in resources.values() if r.get("resourceType") == "CodeSystem"
    }
    wanted_vs: set[str] = set()
    for sd in sds + extensions:
        for element in sd["snapshot"]["element"]:
            binding = element.get("binding", {})
            if binding.get("strength") == "required" and "valueSet" in binding:
                wanted_vs.add(_canonical(binding["valueSet"]))
    kept_vs: dict[str, dict[str, Any]] = {}
    kept_cs: dict[str, dict[str, Any]] = {}
    pending = sorted(wanted_vs)
    while pending:
        url = pending.pop()
        if url in kept_vs or url not in value_sets:
            continue
        vs = value_sets[url]
        kept_vs[url] = {k: vs[k] for k in ("resourceType", "url", "name", "compose") if k in vs}
        for part in vs.get("compose", {}).get("include", []) + vs.get("compose", {}).get(
            "exclude", []
        ):
            pending.extend(_canonical(u) for u in part.get("valueSet", []))
            system = part.get("system")
            if system and system in code_systems and system not in kept_cs:
                cs = code_systems[system]
                kept_cs[system] = {
                    k: cs[k] for k in ("resourceType", "url", "name", "content") if k in cs
                }
                kept_cs[system]["concept"] = _strip_concepts(cs.get("concept", []))
    search_parameters = [
        {k: v for k, v in r.items() if k not in ("text", "description", "extension", "contact")}
        for r in resources.values()
        if r.get("resourceType") == "SearchParameter"
        and any(base in SEARCH_TYPES for base in r.get("base", []))
    ]
    vital_signs = [
        r
        for r in resources.values()
        if r.get("resourceType") == "StructureDefinition"
        and r.get("url") in {f"http://hl7.org/fhir/StructureDefinition/{n}" for n in VITAL_SIGNS}
    ]
    vital_sets = sorted(
        {
            _canonical(e["binding"]["valueSet"])
            for sd in vital_signs
            for e in sd["snapshot"]["element"]
            if e.get("binding", {}).get("strength") in ("required", "extensible")
            and "valueSet" in e["binding"]
        }
        - set(kept_vs)
    )
    target.mkdir(parents=True, exist_ok=True)
    files = {
        "r4-structuredefinitions.json": sorted(
            (_strip_structure_definition(sd) for sd in sds), key=lambda s: s["url"]
        ),
        "r4-terminology.json": sorted(
            list(kept_vs.values()) + list(kept_cs.values()), key=lambda r: r["url"]
        ),
        "r4-searchparameters.json": sorted(search_parameters, key=lambda r: r["url"]),
        "r4-extensions.json": sorted(
            (_strip_structure_definition(sd) for sd in extensions), key=lambda s: s["url"]
        ),
        "r4-vitalsigns.json": sorted(
            (_strip_structure_definition(sd) for sd in vital_signs), key=lambda s: s["url"]
        )
        + [
            {k: value_sets[url][k] for k in ("resourceType", "url", "name", "compose")}
            for url in vital_sets
            if url in value_sets
        ],
    }
    for name, content in files.items():
        (target / name).write_text(
            json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True) + "\n",
            encoding="utf-8",
        )
    return {name: len(content) for name, content in files.items()}
