"""Validate a resource against a profile: https://hl7.org/fhir/R4/profiling.html.

The base validator (``structure.py``) has already checked the base R4 rules; this module
checks what each profile adds: cardinality, types and reference targets, ``fixed[x]`` and
``pattern[x]``, bindings, invariants and slicing. ``check_extensions`` resolves every
extension of a resource, checks its context and validates it against its definition.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from service.errors import Issue
from service.validation.definitions import BASE_SD, Definitions, TypeModel
from service.validation.fhirpath import InvariantEngine
from service.validation.profiles import ProfileRegistry
from service.validation.questionnaire import compare_values
from service.validation.snapshots import CHANGED
from service.validation.structure import lookup_element, reference_type
from service.validation.terminology import code_format_problem

# Invariants every element and extension carries in the base; the base validator owns them.
_BASE_KEYS = frozenset({"ele-1", "ext-1"})


@dataclass
class ElementNode:
    """One element of a snapshot, with its children and slices."""

    element: dict[str, Any]
    changed: frozenset[str]
    children: dict[str, ElementNode] = field(default_factory=dict)
    slices: list[ElementNode] = field(default_factory=list)
    relevant: bool = False
    # Worked out once when the tree is built, since every validation asks
    fixed: tuple[str, Any] | None = None
    invariants: tuple[dict[str, Any], ...] = ()
    checks_reference: bool = False
    # minValue[x], maxValue[x] and maxLength the profile sets
    limits: tuple[tuple[str, Any], ...] = ()
    relevant_children: tuple[ElementNode, ...] = ()

    # From the element, read once: id (with slice names), path, last segment, cardinality
    id: str = field(init=False)
    path: str = field(init=False)
    name: str = field(init=False)
    min: int = field(init=False)
    max: float = field(init=False)
    type_codes: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.id = str(self.element.get("id", self.element["path"]))
        self.path = str(self.element["path"])
        self.name = self.path.rsplit(".", 1)[-1]
        self.min = int(self.element.get("min", 0))
        high = self.element.get("max", "*")
        self.max = float("inf") if high == "*" else float(int(high))
        self.type_codes = [str(t.get("code")) for t in self.element.get("type", [])]

    def has(self, key: str) -> bool:
        """Whether the profile set ``key`` on this element."""
        return key in self.changed


def build_tree(elements: list[dict[str, Any]], everything: bool = False) -> ElementNode:
    """Index snapshot elements as a tree; ``everything`` checks every rule, not only changes."""
    nodes: dict[str, ElementNode] = {}
    root: ElementNode | None = None
    for element in elements:
        changed = (
            frozenset(element)
            | {f"constraint:{c.get('key')}" for c in element.get("constraint", [])}
            if everything
            else frozenset(element.get(CHANGED, ()))
        )
        node = ElementNode(element, changed)
        node.fixed = _fixed_or_pattern(element) if changed else None
        node.invariants = tuple(
            c
            for c in element.get("constraint", [])
            if c.get("key") not in _BASE_KEYS and f"constraint:{c.get('key')}" in changed
        )
        node.checks_reference = "type" in changed and "Reference" in node.type_codes
        node.limits = tuple(
            (k, v)
            for k, v in element.items()
            if k in changed and (k.startswith(("minValue", "maxValue")) or k == "maxLength")
        )
        element_id = str(element.get("id", element["path"]))
        nodes[element_id] = node
        parent_id, _, last = element_id.rpartition(".")
        if not parent_id:
            root = node
            continue
        if ":" in last:
            owner = nodes.get(f"{parent_id}.{last.split(':', 1)[0]}")
            if owner is not None:
                owner.slices.append(node)
            continue
        parent = nodes.get(parent_id)
        if parent is not None:
            parent.children[last] = node
    if root is None:
        raise ValueError("a snapshot needs a root element")
    _mark(root)
    return root


def _mark(node: ElementNode) -> bool:
    relevant = bool(node.changed - {"short", "definition", "comment", "mustSupport", "alias"})
    for child in node.children.values():
        relevant = _mark(child) or relevant
    for item in node.slices:
        _mark(item)
        relevant = True
    node.relevant = relevant
    node.relevant_children = tuple(c for c in node.children.values() if c.relevant)
    return relevant


def matches_pattern(value: Any, pattern: Any) -> bool:
    """pattern[x] semantics: every property of the pattern is in the value, recursively."""
    if isinstance(pattern, dict):
        if not isinstance(value, dict):
            return False
        return all(key in value and matches_pattern(value[key], p) for key, p in pattern.items())
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(matches_pattern(v, p) for v in items) for p in pattern)
    return _same(value, pattern)


def matches_fixed(value: Any, fixed: Any) -> bool:
    """fixed[x] semantics: the value is exactly the fixed value."""
    if isinstance(fixed, dict):
        return (
            isinstance(value, dict)
            and value.keys() == fixed.keys()
            and all(matches_fixed(value[k], fixed[k]) for k in fixed)
        )
    if isinstance(fixed, list):
        return (
            isinstance(value, list)
            and len(value) == len(fixed)
            and all(matches_fixed(v, f) for v, f in zip(value, fixed, strict=True))
        )
    return _same(value, fixed)


def _same(value: Any, expected: Any) -> bool:
    if isinstance(expected, bool) or isinstance(value, bool):
        return value is expected
    if isinstance(expected, int | float | Decimal) and isinstance(value, int | float | Decimal):
        return Decimal(str(value)) == Decimal(str(expected))
    return bool(value == expected)


def _fixed_or_pattern(element: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith("fixed") and key != "fixed":
            return "fixed", value
        if key.startswith("pattern") and key != "pattern":
            return "pattern", value
    return None


def _describe(value: Any) -> str:
    if isinstance(value, dict) and isinstance(value.get("coding"), list):
        return ", ".join(_describe(c) for c in value["coding"])
    if isinstance(value, dict) and "code" in value:
        return f"{value.get('system', '')}|{value['code']}".lstrip("|")
    return repr(value)


class ProfileValidator:
    """Check resources against the profiles of a registry (and extensions against theirs)."""

    def __init__(self, registry: ProfileRegistry, unknown_extensions: str = "warning") -> None:
        self.registry = registry
        # the severity of an extension whose definition is not known (a modifier: always error)
        self.unknown_extensions = unknown_extensions
        self.definitions: Definitions = registry.definitions
        self._trees: dict[tuple[str, bool], ElementNode | None] = {}
        self.engine = InvariantEngine()

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
        run = _Run(self, resource, str(sd.get("name") or url))
        run.item(resource, tree, str(kind))
        return run.issues

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
        run = _Run(self, root, url)
        run.item(value, tree, tree.path)
        return not any(i.severity in ("error", "fatal") for i in run.issues)

    def check_extensions(self, resource: dict[str, Any]) -> list[Issue]:
        """Resolve every extension: unknown ones are warned, misplaced or invalid ones errors."""
        issues: list[Issue] = []
        kind = resource.get("resourceType")
        model = self.definitions.model(kind) if isinstance(kind, str) else None
        if model is not None and _has_extensions(resource):
            self._walk(resource, _Place(model, str(kind), str(kind), str(kind)), resource, issues)
        return issues

    # -- extensions -----------------------------------------------------------------------------

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
                    "error" if modifier else self.unknown_extensions,
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
        tree = self.tree(url, everything=not local)
        if tree is not None:
            run = _Run(self, root, str(sd.get("title") or sd.get("name")) if local else url)
            run.item(item, tree, expr)
            issues.extend(run.issues)
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


class _Run:
    """One validation of one instance against one element tree."""

    def __init__(self, owner: ProfileValidator, root: dict[str, Any], profile: str) -> None:
        self.owner = owner
        self.root = root
        # fhirpath.html#vars: %resource, and %rootResource (the container of a contained one),
        # follow the walk into a Bundle's entries and a resource's contained resources
        self.resource = root
        self.container = root
        self.profile = profile
        self.issues: list[Issue] = []

    def add(self, severity: str, code: str, message: str, expr: str) -> None:
        self.issues.append(Issue(severity, code, f"{message} (profile {self.profile})", (expr,)))

    # An item is one value (object or primitive) at one element
    def item(self, value: Any, node: ElementNode, expr: str, type_code: str | None = None) -> None:
        if value is self.resource or not (
            isinstance(value, dict) and isinstance(value.get("resourceType"), str)
        ):
            self._item(value, node, expr, type_code)
            return
        outer = self.resource, self.container
        self.resource = value
        if not expr.rsplit(".", 1)[-1].startswith("contained["):
            self.container = value
        try:
            self._item(value, node, expr, type_code)
        finally:
            self.resource, self.container = outer

    def _item(self, value: Any, node: ElementNode, expr: str, type_code: str | None) -> None:
        fixed = node.fixed
        if fixed is not None:
            kind, expected = fixed
            ok = (
                matches_fixed(value, expected)
                if kind == "fixed"
                else matches_pattern(value, expected)
            )
            if not ok:
                self.add(
                    "error",
                    "value",
                    f"{node.path} must {'be' if kind == 'fixed' else 'match'} "
                    f"{_describe(expected)}, found {_describe(value)}",
                    expr,
                )
        if node.has("binding"):
            self.binding(value, node, expr, type_code)
        if node.checks_reference and type_code in ("Reference", None):
            self.reference(value, node, expr)
        for limit_key, limit in node.limits:
            self.limit(value, node, limit_key, limit, expr)
        for constraint in node.invariants:
            key = constraint.get("key")
            holds = self.owner.engine.holds(
                value, node.path, constraint["expression"], self.resource, self.container
            )
            if holds is None:
                self.add(
                    "information", "informational", f"Invariant {key} could not be evaluated", expr
                )
            elif not holds:
                severity = "error" if constraint.get("severity", "error") == "error" else "warning"
                self.add(severity, "invariant", f"{key}: {constraint.get('human', '')}", expr)
        if isinstance(value, dict) and node.relevant_children:
            self.children(value, node, expr)

    def limit(self, value: Any, node: ElementNode, key: str, limit: Any, expr: str) -> None:
        """ElementDefinition.minValue[x], maxValue[x] and maxLength."""
        if key == "maxLength":
            if isinstance(value, str) and isinstance(limit, int) and len(value) > limit:
                self.add(
                    "error",
                    "too-long",
                    f"{node.path} is {len(value)} characters long; at most {limit} are allowed",
                    expr,
                )
            return
        order = compare_values(value, limit)
        low = key.startswith("min")
        if order is not None and (order < 0 if low else order > 0):
            self.add(
                "error",
                "value",
                f"{node.path} is {_describe(value)}, "
                + ("below the minimum " if low else "above the maximum ")
                + _describe(limit),
                expr,
            )

    def children(self, value: dict[str, Any], node: ElementNode, expr: str) -> None:
        for child in node.relevant_children:
            found = list(self.values(value, child, expr))
            self.element(found, child, f"{expr}.{child.name.replace('[x]', '')}")

    def values(
        self, value: dict[str, Any], child: ElementNode, expr: str
    ) -> Iterator[tuple[Any, str, str | None]]:
        name = child.name
        if name.endswith("[x]"):
            prefix = name[:-3]
            for key, item in value.items():
                if key.startswith(prefix) and key[len(prefix) : len(prefix) + 1].isupper():
                    suffix = key[len(prefix) :]
                    # complex types keep their capital (Quantity); primitives do not (string)
                    complex_type = self.owner.definitions.model(suffix) is not None
                    code = suffix if complex_type else suffix[0].lower() + suffix[1:]
                    yield item, f"{expr}.{key}", code
            return
        item = value.get(name)
        if item is None:
            return
        types = child.type_codes
        single = types[0] if len(types) == 1 else None
        if isinstance(item, list):
            for index, entry in enumerate(item):
                if entry is not None:
                    yield entry, f"{expr}.{name}[{index}]", single
        else:
            yield item, f"{expr}.{name}", single

    def element(
        self, found: list[tuple[Any, str, str | None]], node: ElementNode, expr: str
    ) -> None:
        count = len(found)
        if node.has("min") and count < node.min:
            self.add(
                "error",
                "required",
                f"{node.path} needs at least {node.min} value(s) but has {count}",
                expr,
            )
        if node.has("max") and count > node.max:
            self.add(
                "error",
                "structure",
                f"{node.path} allows at most {node.element.get('max')} value(s) but has {count}",
                found[int(node.max)][1] if node.max < count else expr,
            )
        if node.has("type"):
            allowed = node.type_codes
            for value, where, named in found:
                # a resource (contained, a Bundle entry) has its own type, whatever was expected
                own = value.get("resourceType") if isinstance(value, dict) else None
                code = own if isinstance(own, str) else named
                if own is not None and {"Resource", "DomainResource"} & set(allowed):
                    continue
                if code is not None and allowed and code not in allowed:
                    self.add(
                        "error",
                        "structure",
                        f"{node.path} may only be {', '.join(allowed)}, not {code}",
                        where,
                    )
        for item, where, code in found:
            self.item(item, node, where, code)
        if node.slices:
            self.slicing(found, node, expr)

    def slicing(
        self, found: list[tuple[Any, str, str | None]], node: ElementNode, expr: str
    ) -> None:
        slicing = node.element.get("slicing", {})
        discriminators = slicing.get("discriminator", [])
        rules = slicing.get("rules", "open")
        assigned: list[int | None] = []
        for item, _, code in found:
            match = None
            for number, candidate in enumerate(node.slices):
                if self.in_slice(item, code, candidate, discriminators):
                    match = number
                    break
            assigned.append(match)
        for number, candidate in enumerate(node.slices):
            members = [f for f, a in zip(found, assigned, strict=True) if a == number]
            name = candidate.element.get("sliceName")
            if len(members) < candidate.min:
                self.add(
                    "error",
                    "required",
                    f"{node.path} needs at least {candidate.min} item(s) in slice '{name}'"
                    f"{_slice_hint(candidate)} but has {len(members)}",
                    expr,
                )
            if len(members) > candidate.max:
                self.add(
                    "error",
                    "structure",
                    f"{node.path} allows at most {candidate.element.get('max')} item(s) in "
                    f"slice '{name}' but has {len(members)}",
                    members[int(candidate.max)][1],
                )
            for item, where, code in members:
                self.item(item, candidate, where, code)
        names = ", ".join(str(s.element.get("sliceName")) for s in node.slices)
        seen_unmatched = False
        last = -1
        for (_, where, _), slot in zip(found, assigned, strict=True):
            if slot is None:
                seen_unmatched = True
                if rules == "closed":
                    self.add(
                        "error",
                        "structure",
                        f"{where} matches none of the slices of {node.path} ({names}), and the "
                        "slicing is closed",
                        where,
                    )
                continue
            if rules == "openAtEnd" and seen_unmatched:
                self.add(
                    "error",
                    "structure",
                    f"{node.path} is sliced openAtEnd: items outside the slices must come last",
                    where,
                )
            if slicing.get("ordered") and slot < last:
                self.add(
                    "error",
                    "structure",
                    f"{node.path} is sliced in order ({names}); {where} is out of order",
                    where,
                )
            last = max(last, slot)

    def in_slice(
        self,
        item: Any,
        code: str | None,
        candidate: ElementNode,
        discriminators: list[dict[str, Any]],
    ) -> bool:
        if not discriminators:
            return False
        constrained = 0
        for discriminator in discriminators:
            kind = discriminator.get("type")
            path = str(discriminator.get("path", "$this"))
            if kind in ("value", "pattern"):
                expected = _discriminator_value(candidate, path)
                if expected is None:
                    # profiling.html#discriminator: a slice that fixes no value at one of
                    # several paths accepts any value there
                    continue
                constrained += 1
                mode, wanted = expected
                actual = _at(item, path)
                test = matches_fixed if mode == "fixed" and kind == "value" else matches_pattern
                if not any(test(v, wanted) for v in actual):
                    return False
            elif kind == "exists":
                target = _node_at(candidate, path)
                present = bool(_at(item, path))
                if target is None:
                    return False
                if target.min > 0 and not present:
                    return False
                if target.max == 0 and present:
                    return False
            elif kind == "type":
                constrained += 1
                target = _node_at(candidate, path)
                # at a path (Bundle.entry by ``resource``) the type is the value's own, a
                # resource's being its resourceType
                values = [item] if path in ("$this", "") else _at(item, path)
                types = {
                    v.get("resourceType") if isinstance(v, dict) and "resourceType" in v else code
                    for v in values
                }
                if target is None or not types or not types <= set(target.type_codes):
                    return False
            elif kind == "profile":
                target = _node_at(candidate, path)
                profiles = [
                    p
                    for t in (target.element.get("type", []) if target else [])
                    for p in t.get("profile", [])
                ]
                values = _at(item, path)
                if not profiles or not values:
                    return False
                if not any(self.owner.conforms(v, p, self.root) for v in values for p in profiles):
                    return False
            else:
                return False
            if kind != "type" and kind not in ("value", "pattern"):
                constrained += 1
        return constrained > 0

    def binding(self, value: Any, node: ElementNode, expr: str, type_code: str | None) -> None:
        binding = node.element.get("binding", {})
        strength = binding.get("strength")
        url = str(binding.get("valueSet", "")).split("|", 1)[0]
        if strength not in ("required", "extensible") or not url:
            return
        if isinstance(value, str):
            pairs: list[tuple[str | None, str]] = [(None, value)]
        elif isinstance(value, dict):
            codings = value.get("coding", []) if "coding" in value or "text" in value else [value]
            if not isinstance(codings, list):
                return  # the base validator reports the shape
            pairs = [
                (c.get("system") if isinstance(c.get("system"), str) else None, c["code"])
                for c in codings
                if isinstance(c, dict) and isinstance(c.get("code"), str)
            ]
        else:
            return
        allowed = self.owner.definitions.expand(url)
        if allowed is None:
            for system, code in pairs:
                problem = code_format_problem(system, code)
                if problem is not None:
                    self.add("error", "code-invalid", problem, expr)
            if pairs:
                self.add(
                    "information",
                    "informational",
                    f"The value set {url} cannot be expanded here; only the format of the code "
                    "was checked",
                    expr,
                )
            return
        if not pairs:
            if strength == "required" and isinstance(value, dict) and "text" in value:
                # terminologies.html#required: text alone does not meet a required binding
                self.add(
                    "error",
                    "code-invalid",
                    f"No code is given, and {node.path} requires one from {url}",
                    expr,
                )
            return
        hit = any(
            (system, code) in allowed if system is not None else any(code == c for _, c in allowed)
            for system, code in pairs
        )
        if hit:
            return
        shown = ", ".join(f"{s}|{c}" if s else c for s, c in pairs)
        if strength == "required":
            self.add(
                "error",
                "code-invalid",
                f"{shown} is not in the value set {url}, which {node.path} requires",
                expr,
            )
        else:
            self.add(
                "warning",
                "code-invalid",
                f"{shown} is not in the value set {url}, which {node.path} should use when a "
                "code in it fits (extensible binding)",
                expr,
            )

    def reference(self, value: Any, node: ElementNode, expr: str) -> None:
        targets = [
            p
            for t in node.element.get("type", [])
            if t.get("code") == "Reference"
            for p in t.get("targetProfile", [])
        ]
        if not targets:
            return
        kind = reference_type(value, self.root)
        if kind is None:
            return
        allowed: list[str] = []
        for target in targets:
            if target.startswith(BASE_SD) and "/" not in target[len(BASE_SD) :]:
                allowed.append(target[len(BASE_SD) :])
            else:
                declared = self.owner.profile_type(target)
                if declared:
                    allowed.append(declared)
        if allowed and kind not in allowed and "Resource" not in allowed:
            self.add(
                "error",
                "structure",
                f"{node.path} must refer to {' or '.join(sorted(set(allowed)))}, not {kind}",
                f"{expr}.reference" if isinstance(value, dict) and "reference" in value else expr,
            )


def _slice_hint(candidate: ElementNode) -> str:
    fixed = _fixed_or_pattern(candidate.element)
    if fixed is not None:
        return f" ({_describe(fixed[1])})"
    profiles = [p for t in candidate.element.get("type", []) for p in t.get("profile", [])]
    return f" ({', '.join(profiles)})" if profiles else ""


def _at(item: Any, path: str) -> list[Any]:
    """The values at a simple discriminator path (``$this``, ``url``, ``coding.code``)."""
    current = [item]
    if path in ("$this", ""):
        return current
    for part in path.split("."):
        if part == "$this":
            continue
        following: list[Any] = []
        for value in current:
            if isinstance(value, dict) and part in value:
                found = value[part]
                following.extend(found if isinstance(found, list) else [found])
        current = following
    return current


def _node_at(node: ElementNode, path: str) -> ElementNode | None:
    current: ElementNode | None = node
    if path in ("$this", ""):
        return node
    for part in path.split("."):
        if part == "$this" or current is None:
            continue
        current = current.children.get(part)
    return current


def _discriminator_value(candidate: ElementNode, path: str) -> tuple[str, Any] | None:
    target = _node_at(candidate, path)
    if target is not None:
        found = _fixed_or_pattern(target.element)
        if found is not None:
            return found
    if path == "url":
        profiles = [p for t in candidate.element.get("type", []) for p in t.get("profile", [])]
        if profiles:
            return "fixed", profiles[0]
    return None


__all__ = ["ElementNode", "ProfileValidator", "build_tree", "matches_fixed", "matches_pattern"]
