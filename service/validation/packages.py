"""FHIR npm packages (an implementation guide's ``.tgz``) read into the profile loader, and the
check of our International Patient Summary documents against IPS 2.0.0 built on them.

``package_files`` takes the StructureDefinitions a package defines (its profiles and
extensions, not its logical models) and, from the packages it depends on, every definition
they refer to that the vendored R4 definitions do not hold; ``ProfileRegistry.from_files``
then generates their snapshots and checks them exactly as it checks the profiles folder.

IPS 2.0.0 (``hl7.fhir.uv.ips``) refers to extensions published in
``hl7.fhir.uv.extensions.r4`` 5.3.0-ballot-tc1 (``note``, ``translation``, ...; its
package.json names 5.2.0, the version npm does not hold, while its profiles name
5.3.0-ballot-tc1) and to the R4 core ``vitalsigns`` profile, which the R4 examples package
carries. They are looked for beside the IPS package, under their npm file names.
"""

from __future__ import annotations

import json
import logging
import tarfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from service.errors import Issue
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileError, ProfileFile, ProfileRegistry
from service.validation.validator import ResourceValidator

log = logging.getLogger(__name__)

IPS_FILE = "hl7.fhir.uv.ips-2.0.0.tgz"
IPS_DEPENDENCIES = (
    "hl7.fhir.uv.extensions.r4-5.3.0-ballot-tc1.tgz",
    "hl7.fhir.r4.examples-4.0.1.tgz",
)
IPS = "http://hl7.org/fhir/uv/ips/StructureDefinition"
IPS_BUNDLE = f"{IPS}/Bundle-uv-ips"
IPS_COMPOSITION = f"{IPS}/Composition-uv-ips"
# the IPS profile each entry of an IPS Bundle of ours must meet, by resource type
IPS_ENTRY_PROFILES = {
    "Composition": IPS_COMPOSITION,
    "Patient": f"{IPS}/Patient-uv-ips",
    "Practitioner": f"{IPS}/Practitioner-uv-ips",
    "Organization": f"{IPS}/Organization-uv-ips",
}


class _Package:
    """One package's StructureDefinitions, read from its ``.tgz`` once and parsed on demand."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._texts: dict[str, bytes] | None = None
        self._parsed: dict[str, ProfileFile | None] = {}

    def _members(self) -> dict[str, bytes]:
        """Every ``package/StructureDefinition-*.json`` of the package, unparsed, by name."""
        if self._texts is None:
            self._texts = {}
            with tarfile.open(self.path) as tar:
                for member in tar:
                    name = member.name
                    if (
                        name.startswith("package/StructureDefinition-")
                        and name.endswith(".json")
                        and name.count("/") == 1
                    ):
                        handle = tar.extractfile(member)
                        if handle is not None:
                            self._texts[name] = handle.read()
        return self._texts

    def _file(self, name: str) -> ProfileFile | None:
        if name not in self._parsed:
            raw = self._members().get(name)
            item = None
            if raw is not None:
                text = raw.decode("utf-8")
                resource = json.loads(text)
                if resource.get("resourceType") == "StructureDefinition" and resource.get("url"):
                    item = ProfileFile(Path(f"{self.path}!{name}"), text, resource)
            self._parsed[name] = item
        return self._parsed[name]

    def files(self) -> dict[str, ProfileFile]:
        """Every StructureDefinition of the package, by canonical URL."""
        found = (self._file(name) for name in self._members())
        return {str(item.resource["url"]): item for item in found if item is not None}

    def find(self, url: str) -> ProfileFile | None:
        """The StructureDefinition ``url``: by its usual file name, else by reading them all."""
        item = self._file(f"package/StructureDefinition-{url.rsplit('/', 1)[-1]}.json")
        if item is not None and item.resource.get("url") == url:
            return item
        return self.files().get(url)


def _referenced(resource: dict[str, Any]) -> set[str]:
    """The canonical URLs (without version) a StructureDefinition builds on or refers to."""
    found = {str(resource.get("baseDefinition", ""))}
    for part in ("snapshot", "differential"):
        for element in (resource.get(part) or {}).get("element", []):
            for type_ in element.get("type", []):
                found.update(type_.get("profile", []))
                found.update(type_.get("targetProfile", []))
    return {url.split("|", 1)[0] for url in found if url}


def package_files(
    main: Path, dependencies: Iterable[Path], known: Callable[[str], bool]
) -> list[ProfileFile]:
    """The profiles and extensions ``main`` defines, and what they need from ``dependencies``
    that ``known`` (the vendored definitions) does not hold; ProfileError for a reference
    no package holds."""
    own = _Package(main).files()
    picked = {
        url: item
        for url, item in own.items()
        if item.resource.get("kind") != "logical"
        and item.resource.get("derivation") == "constraint"
    }
    others = [_Package(path) for path in dependencies]
    wanted = [url for item in picked.values() for url in _referenced(item.resource)]
    while wanted:
        url = wanted.pop()
        if url in picked or known(url):
            continue
        item = own.get(url) or next((f for p in others if (f := p.find(url))), None)
        if item is None:
            raise ProfileError(
                f"{main}: {url} is referred to but no package holds it (looked in "
                + ", ".join(str(p.path) for p in others)
                + ")"
            )
        picked[url] = item
        wanted += _referenced(item.resource)
    return sorted(picked.values(), key=lambda item: str(item.path))


class DocumentChecker:
    """An IPS document (a Bundle of type document) against the IPS 2.0.0 profiles: the base
    R4 rules and Bundle rules, the IPS Bundle profile, and each entry's IPS profile."""

    def __init__(self, registry: ProfileRegistry) -> None:
        self.registry = registry
        self.validator = ResourceValidator(registry, invariants=True)

    def validate(self, bundle: dict[str, Any]) -> list[Issue]:
        """Every issue of the document; errors mean it must not be sent."""
        issues = self.validator.validate(bundle)
        issues += self.validator.validate_profiles(bundle, IPS_BUNDLE)
        for index, entry in enumerate(bundle.get("entry") or []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                continue
            profile = IPS_ENTRY_PROFILES.get(str(resource.get("resourceType")))
            if profile is None:
                continue
            for issue in self.validator.profiles.validate(resource, profile):
                where = tuple(f"Bundle.entry[{index}].resource/{e}" for e in issue.expression)
                issues.append(Issue(issue.severity, issue.code, issue.diagnostics, where))
        return issues


def load_ips(path: Path | None, base: Definitions | None = None) -> DocumentChecker | None:
    """The IPS document check from the IPS package at ``path`` (its dependencies beside it);
    None, with a warning logged, when a package is not there: the service then serves its
    summaries unchecked. A package that is there but broken is a ProfileError."""
    if path is None or not path.is_file():
        log.warning(
            "The IPS package (%s) is not there: $summary documents are served without "
            "validation against IPS 2.0.0 (set WHATMATTERS_IPS_PACKAGE)",
            path or IPS_FILE,
        )
        return None
    dependencies = [path.parent / name for name in IPS_DEPENDENCIES]
    missing = [str(p) for p in dependencies if not p.is_file()]
    if missing:
        log.warning(
            "The packages IPS needs are not there (%s): $summary documents are served "
            "without validation against IPS 2.0.0",
            ", ".join(missing),
        )
        return None
    base = base or Definitions.shared()
    files = package_files(
        path, dependencies, lambda url: base.structure_definition(url) is not None
    )
    return DocumentChecker(ProfileRegistry.from_files(base, files))
