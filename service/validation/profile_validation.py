"""Validate a resource against a profile: https://hl7.org/fhir/R4/profiling.html.

The base validator (``structure.py``) has already checked the base R4 rules; a profile adds
cardinality, types and reference targets, ``fixed[x]`` and ``pattern[x]``, bindings, invariants
and slicing. ``ProfileValidator`` builds each profile's element tree once (``profile_tree.py``)
and walks an instance against it (``profile_walk.py``); ``validate_extensions`` resolves every
extension of a resource, checks its context and validates it against its definition
(``extensions.py``).
"""

from __future__ import annotations

from typing import Any

from service.errors import Issue
from service.validation.definitions import Definitions
from service.validation.extensions import ExtensionValidator
from service.validation.fhirpath import InvariantEngine
from service.validation.profile_tree import ElementNode, build_tree
from service.validation.profile_walk import ProfileWalk
from service.validation.profiles import ProfileRegistry


class ProfileValidator:
    """Validate resources against the profiles of a registry (and extensions against theirs)."""

    def __init__(
        self, registry: ProfileRegistry, unknown_extensions: str = "warning", compiled: bool = True
    ) -> None:
        self.registry = registry
        # the severity of an extension whose definition is not known (a modifier: always error)
        self.unknown_extensions = unknown_extensions
        self.definitions: Definitions = registry.definitions
        self._trees: dict[tuple[str, bool], ElementNode | None] = {}
        self.engine = InvariantEngine(compiled=compiled)
        self._extensions = ExtensionValidator(self)

    def tree(self, url: str, everything: bool = False) -> ElementNode | None:
        """The element tree of a profile or extension definition, built once."""
        key = (url.split("|", 1)[0], everything)
        if key not in self._trees:
            elements = self.registry.snapshot(key[0])
            self._trees[key] = None if elements is None else build_tree(elements, everything)
        return self._trees[key]

    def knows(self, url: str) -> bool:
        """Whether ``url`` is a profile this validator can check."""
        return self.registry.structure_definition(url) is not None

    def profile_type(self, url: str) -> str | None:
        """The resource type a profile constrains."""
        sd = self.registry.structure_definition(url)
        return None if sd is None else sd.get("type")

    def validate(self, resource: dict[str, Any], url: str) -> list[Issue]:
        """Every way ``resource`` fails the profile ``url`` (which must be known)."""
        tree = self.tree(url)
        sd = self.registry.structure_definition(url)
        if tree is None or sd is None:
            return [Issue("error", "not-found", f"The profile {url} is not known", ())]
        kind = resource.get("resourceType")
        if sd.get("type") != kind:
            return [
                Issue(
                    "error",
                    "invalid",
                    f"The profile {url} is for {sd.get('type')}, not {kind}",
                    ("resourceType",),
                )
            ]
        walk = ProfileWalk(self, resource, str(sd.get("name") or url))
        walk.item(resource, tree, str(kind))
        return walk.issues

    def conforms(self, value: Any, url: str, root: dict[str, Any]) -> bool:
        """Whether ``value`` (a resource or a data type) meets the definition ``url``."""
        sd = self.registry.structure_definition(url)
        tree = self.tree(
            url, everything=sd is not None and sd.get("url") not in self.registry.local
        )
        if tree is None:
            return False
        if isinstance(value, dict) and "resourceType" in value:
            if sd is None or value["resourceType"] != sd.get("type"):
                return False
            root = value
        walk = ProfileWalk(self, root, url)
        walk.item(value, tree, tree.path)
        return not any(i.severity in ("error", "fatal") for i in walk.issues)

    def validate_extensions(self, resource: dict[str, Any]) -> list[Issue]:
        """Resolve every extension: unknown ones are warned, misplaced or invalid ones errors."""
        return self._extensions.validate(resource)
