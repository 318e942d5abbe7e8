"""Regenerate the vendored terminology: every R4 core ValueSet and CodeSystem, and HL7's THO.

Sources (both CC0-1.0, fetched with ``npm pack``):

- the R4 core definitions, from ``hl7.fhir.r4.examples`` 4.0.1 (the npm registry does not carry
  ``hl7.fhir.r4.core``; the examples package holds the same 1,326 ValueSets and 1,076
  CodeSystems of the 4.0.1 specification);
- HL7 Terminology (THO), ``hl7.terminology.r4`` (7.0.1 when vendored).

Run ``whatmatters vendor-terminology EXAMPLES.tgz THO.tgz``; the result is
``service/validation/definitions/terminology.json.gz``. Kept: of each ValueSet its identity and
``compose`` (and ``expansion`` when the package has one); of each CodeSystem its identity,
``content``, ``caseSensitive``, ``property`` and its concepts (code, display, designations,
properties). Definitions and narrative are dropped.

Left out, for their licences: content of external code systems (SNOMED CT, LOINC and any
other code system not defined by HL7, except the open standards UCUM, BCP-47, BCP-13, ISO 3166
and ISO 4217 whose codes value sets enumerate): a ValueSet whose compose draws on such a system
is not shipped, nor a THO CodeSystem whose copyright names another owner (DICOM, ISO, ASTM).
Where both packages define a canonical URL, the R4 core definition is kept (the specification
this service implements).
"""

from __future__ import annotations

import gzip
import json
import tarfile
from pathlib import Path
from typing import Any

from service.validation.vendor import DEFINITIONS_DIR

TERMINOLOGY_FILE = "terminology.json.gz"
_HL7_PREFIXES = ("http://hl7.org/fhir/", "http://terminology.hl7.org/")
# Open standards whose codes HL7 value sets enumerate; their use carries no licence restriction.
OPEN_SYSTEMS = frozenset(
    {
        "http://unitsofmeasure.org",
        "urn:ietf:bcp:47",
        "urn:ietf:bcp:13",
        "urn:iso:std:iso:3166",
        "urn:iso:std:iso:4217",
    }
)
_COPYRIGHT_OK = ("HL7 Terminology", "Copyright HL7", "public domain")
_VS_KEEP = ("resourceType", "id", "url", "version", "name", "title", "status", "compose")
_CS_KEEP = (
    "resourceType",
    "id",
    "url",
    "version",
    "name",
    "title",
    "status",
    "content",
    "caseSensitive",
    "hierarchyMeaning",
)


def _concepts(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in concepts:
        item: dict[str, Any] = {"code": c["code"]}
        if "display" in c:
            item["display"] = c["display"]
        if c.get("designation"):
            item["designation"] = [
                {k: v for k, v in d.items() if k in ("language", "use", "value")}
                for d in c["designation"]
            ]
        if c.get("property"):
            item["property"] = [
                {k: v for k, v in p.items() if k != "extension"} for p in c["property"]
            ]
        if c.get("concept"):
            item["concept"] = _concepts(c["concept"])
        out.append(item)
    return out


def _contains(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in entries:
        item: dict[str, Any] = {
            k: e[k] for k in ("system", "version", "code", "display", "abstract") if k in e
        }
        if e.get("contains"):
            item["contains"] = _contains(e["contains"])
        out.append(item)
    return out


def _systems(vs: dict[str, Any]) -> set[str]:
    compose = vs.get("compose", {})
    found = {
        p["system"]
        for p in compose.get("include", []) + compose.get("exclude", [])
        if "system" in p
    }

    def walk(entries: list[dict[str, Any]]) -> None:
        for e in entries:
            if "system" in e:
                found.add(e["system"])
            walk(e.get("contains", []))

    walk(vs.get("expansion", {}).get("contains", []))
    return found


def system_allowed(system: str) -> bool:
    """Whether codes of ``system`` may be redistributed here (HL7-defined or an open standard)."""
    return system.startswith(_HL7_PREFIXES) or system in OPEN_SYSTEMS


def _code_system_allowed(cs: dict[str, Any]) -> bool:
    if cs.get("content") != "complete" or not system_allowed(cs.get("url", "")):
        return False
    notice = str(cs.get("copyright", ""))
    return not notice or any(mark in notice for mark in _COPYRIGHT_OK)


def _read(path: Path) -> list[dict[str, Any]]:
    found = []
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not member.isfile() or not name.startswith(("ValueSet-", "CodeSystem-")):
                continue
            if not name.endswith(".json"):
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                found.append(json.load(handle))
    return found


def _compact(resource: dict[str, Any]) -> dict[str, Any] | None:
    if resource.get("resourceType") == "ValueSet":
        if not all(system_allowed(s) for s in _systems(resource)):
            return None
        kept = {k: resource[k] for k in _VS_KEEP if k in resource}
        if "compose" not in kept and "expansion" not in resource:
            return None
        if "expansion" in resource:
            kept["expansion"] = {"contains": _contains(resource["expansion"].get("contains", []))}
        return kept
    if resource.get("resourceType") == "CodeSystem":
        if not _code_system_allowed(resource):
            return None
        kept = {k: resource[k] for k in _CS_KEEP if k in resource}
        if resource.get("property"):
            kept["property"] = [
                {k: v for k, v in p.items() if k in ("code", "type", "uri")}
                for p in resource["property"]
            ]
        kept["concept"] = _concepts(resource.get("concept", []))
        return kept
    return None


def vendor_terminology(core: Path, tho: Path, target: Path = DEFINITIONS_DIR) -> dict[str, int]:
    """Write the compact terminology file from the two packages; return counts per type."""
    chosen: dict[str, dict[str, Any]] = {}
    for package in (core, tho):  # core first: it wins where both define a URL
        for resource in _read(package):
            if "url" not in resource:
                continue
            key = resource["resourceType"] + "|" + resource["url"]
            if key in chosen:
                continue
            kept = _compact(resource)
            if kept is not None:
                chosen[key] = kept
    items = sorted(chosen.values(), key=lambda r: (r["resourceType"], r["url"]))
    data = json.dumps(items, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    target.mkdir(parents=True, exist_ok=True)
    # mtime=0: the same packages give the same bytes
    with gzip.GzipFile(target / TERMINOLOGY_FILE, "wb", compresslevel=9, mtime=0) as out:
        out.write(data.encode("utf-8"))
    counts: dict[str, int] = {}
    for item in items:
        counts[item["resourceType"]] = counts.get(item["resourceType"], 0) + 1
    return counts
