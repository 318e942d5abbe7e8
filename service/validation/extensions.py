"""Extensions: every extension of a resource resolved, placed and validated.

``ExtensionValidator`` walks a resource to each ``extension`` and ``modifierExtension``: an
extension whose definition is not known is warned about (a modifier one is an error, since it
cannot be understood), one placed where its definition's context does not allow is an error,
and a known one is validated against its definition like a profile (a ``ProfileWalk``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from service.errors import Issue
from service.validation.definitions import TypeModel
from service.validation.profile_tree import ElementNode
from service.validation.profile_walk import Profiles, ProfileWalk
from service.validation.profiles import ProfileRegistry
from service.validation.structure import lookup_element


class ExtensionProfiles(Profiles, Protocol):
    """What the extension walk asks of the profiles (``ProfileValidator``)."""

    @property
    def registry(self) -> ProfileRegistry: ...

    @property
    def unknown_extensions(self) -> str: ...

    def tree(self, url: str, everything: bool = False) -> ElementNode | None:
        """The element tree of an extension definition."""
        ...


class ExtensionValidator:
    """Validate the extensions of resources against the definitions ``profiles`` knows."""

    def __init__(self, profiles: ExtensionProfiles) -> None:
        self.profiles = profiles
        self.registry = profiles.registry
        self.definitions = profiles.definitions

    def validate(self, resource: dict[str, Any]) -> list[Issue]:
        """Resolve every extension: unknown ones are warned, misplaced or invalid ones errors."""
        issues: list[Issue] = []
        kind = resource.get("resourceType")
        model = self.definitions.model(kind) if isinstance(kind, str) else None
        if model is not None and _has_extensions(resource):
            self._walk(resource, _Place(model, str(kind), str(kind), str(kind)), resource, issues)
        return issues

    def _walk(
        self, node: dict[str, Any], place: _Place, root: dict[str, Any], issues: list[Issue]
    ) -> None:
        model = place.model
        children = model.children.get(place.path, {})
        choices = {d.name[:-3]: d for d in children.values() if d.is_choice}
        for key, value in node.items():
            if key in ("extension", "modifierExtension") and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        where = f"{place.expr}.{key}[{index}]"
                        self._extension(item, key, place, where, root, issues)
                continue
            if not isinstance(value, dict | list) or not _has_extensions(value):
                continue  # nothing below here to check
            name = key[1:] if key.startswith("_") else key
            definition, type_code = lookup_element(children, choices, name)
            if definition is None:
                continue
            epath = f"{place.epath}.{definition.name}"
            # the names an extension's context may use for this element
            names = {epath, f"{place.epath}.{name}", definition.path}
            if type_code and type_code != "#":
                names.add(type_code)
            items = value if isinstance(value, list) else [value]
            for index, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                where = (
                    f"{place.expr}.{key}[{index}]"
                    if isinstance(value, list)
                    else f"{place.expr}.{key}"
                )
                if key.startswith("_"):
                    element_model = self.definitions.model("Element")
                    if element_model is not None:
                        inner_place = _Place(
                            element_model, "Element", epath, where, frozenset(names)
                        )
                        self._walk(item, inner_place, root, issues)
                    continue
                if definition.content_reference is not None:
                    target = definition.content_reference.lstrip("#")
                    names.add("BackboneElement")
                    self._walk(
                        item, _Place(model, target, epath, where, frozenset(names)), root, issues
                    )
                elif (
                    type_code in ("BackboneElement", "Element")
                    and definition.path in model.children
                ):
                    names.add("BackboneElement")
                    inner_place = _Place(model, definition.path, epath, where, frozenset(names))
                    self._walk(item, inner_place, root, issues)
                elif type_code == "Resource" and isinstance(item.get("resourceType"), str):
                    kind = item["resourceType"]
                    inner = self.definitions.model(kind)
                    if inner is not None:
                        self._walk(item, _Place(inner, kind, kind, where), item, issues)
                elif type_code is not None:
                    inner = self.definitions.model(type_code)
                    if inner is not None and inner.kind == "complex-type":
                        inner_place = _Place(inner, type_code, epath, where, frozenset(names))
                        self._walk(item, inner_place, root, issues)

    def _extension(
        self,
        item: dict[str, Any],
        key: str,
        place: _Place,
        expr: str,
        root: dict[str, Any],
        issues: list[Issue],
    ) -> None:
        url = item.get("url")
        if not isinstance(url, str):
            return  # the base validator reports the missing url
        sd = self.registry.structure_definition(url)
        if sd is None or sd.get("type") != "Extension":
            modifier = key == "modifierExtension"
            issues.append(
                Issue(
                    "error" if modifier else self.profiles.unknown_extensions,
                    "extension",
                    f"The extension {url} is not known to this server, so its content was not "
                    "checked"
                    + (
                        "; a modifier extension that is not understood cannot be accepted"
                        if modifier
                        else ""
                    ),
                    (expr,),
                )
            )
            return
        contexts = sd.get("context", [])
        if contexts and not any(place.allows(c) for c in contexts):
            allowed = ", ".join(str(c.get("expression")) for c in contexts)
            issues.append(
                Issue(
                    "error",
                    "structure",
                    f"The extension {url} is not allowed on {place.epath}; its definition allows "
                    f"it on: {allowed}",
                    (expr,),
                )
            )
        local = sd.get("url") in self.registry.local
        tree = self.profiles.tree(url, everything=not local)
        if tree is not None:
            walk = ProfileWalk(
                self.profiles, root, str(sd.get("title") or sd.get("name")) if local else url
            )
            walk.item(item, tree, expr)
            issues.extend(walk.issues)
        # nested extensions with absolute URLs are extensions in their own right
        extension_model = self.definitions.model("Extension")
        nested = item.get("extension")
        for index, inner in enumerate(nested if isinstance(nested, list) else []):
            if (
                extension_model is not None
                and isinstance(inner, dict)
                and ":" in str(inner.get("url", ""))
            ):
                inner_place = _Place(
                    extension_model,
                    "Extension",
                    f"{place.epath}.extension",
                    expr,
                    frozenset({"Extension"}),
                )
                self._extension(
                    inner, "extension", inner_place, f"{expr}.extension[{index}]", root, issues
                )


def _has_extensions(node: Any) -> bool:
    """Whether any object inside ``node`` has extensions (most resources have none)."""
    if isinstance(node, dict):
        if "extension" in node or "modifierExtension" in node:
            return True
        return any(isinstance(v, dict | list) and _has_extensions(v) for v in node.values())
    if isinstance(node, list):
        return any(isinstance(v, dict | list) and _has_extensions(v) for v in node)
    return False


@dataclass(frozen=True)
class _Place:
    """Where the extension walk is: the type model, paths, and the names of the element."""

    model: TypeModel
    path: str  # the element's path in ``model``
    epath: str  # the element's path from the resource (Patient.contact.name.family)
    expr: str  # FHIRPath of the node, with indexes
    names: frozenset[str] = frozenset()

    def allows(self, context: dict[str, Any]) -> bool:
        """Whether an extension with this context may sit on this element."""
        if context.get("type") != "element":
            return True  # fhirpath and extension contexts are not checked
        expression = str(context.get("expression", ""))
        if expression in ("Element", "Base") or expression in self.names:
            return True
        if expression in (self.path, self.epath):
            return True
        if self.model.kind == "resource" and self.path == self.model.type:
            return expression in (self.model.type, "Resource", "DomainResource")
        # Observation.value[x] written as Observation.valueQuantity, and the reverse
        wanted = expression.replace("[x]", "")
        return any(wanted == name.replace("[x]", "") for name in self.names)
