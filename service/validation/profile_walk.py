"""One validation of one instance against one profile's element tree.

A ``ProfileWalk`` goes down the value and the tree together, checking what the profile adds
to the base rules: cardinality, types and reference targets, ``fixed[x]`` and ``pattern[x]``,
bindings, ``minValue``/``maxValue``/``maxLength``, invariants, and slicing (which item belongs
to which slice, by the discriminators of https://hl7.org/fhir/R4/profiling.html#slicing).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from service.errors import Issue
from service.validation.comparison import compare_values
from service.validation.definitions import BASE_SD, Definitions
from service.validation.fhirpath import InvariantEngine
from service.validation.profile_tree import (
    ElementNode,
    describe,
    fixed_or_pattern,
    matches_fixed,
    matches_pattern,
)
from service.validation.structure import reference_type
from service.validation.terminology import code_format_problem


class Profiles(Protocol):
    """What a walk asks of the profiles it validates against (``ProfileValidator``)."""

    @property
    def definitions(self) -> Definitions: ...

    @property
    def engine(self) -> InvariantEngine: ...

    def conforms(self, value: Any, url: str, root: dict[str, Any]) -> bool:
        """Whether ``value`` meets the definition ``url``."""
        ...

    def profile_type(self, url: str) -> str | None:
        """The resource type a profile constrains."""
        ...


class ProfileWalk:
    """One validation of one instance against one element tree."""

    def __init__(self, owner: Profiles, root: dict[str, Any], profile: str) -> None:
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
                    f"{describe(expected)}, found {describe(value)}",
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
                f"{node.path} is {describe(value)}, "
                + ("below the minimum " if low else "above the maximum ")
                + describe(limit),
                expr,
            )

    def children(self, value: dict[str, Any], node: ElementNode, expr: str) -> None:
        for child in node.relevant_children:
            found = list(self.values(value, child, expr))
            # a primitive given only by its extensions (``_birthDate`` with a data-absent-reason)
            # is there, without a value (json.html#primitive): it counts towards min
            bare = value.get(f"_{child.name}") if value.get(child.name) is None else None
            extra = len(bare) if isinstance(bare, list) else int(isinstance(bare, dict))
            self.element(found, child, f"{expr}.{child.name.replace('[x]', '')}", extra)

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
        self,
        found: list[tuple[Any, str, str | None]],
        node: ElementNode,
        expr: str,
        without_value: int = 0,
    ) -> None:
        count = len(found)
        if node.has("min") and count + without_value < node.min:
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
    fixed = fixed_or_pattern(candidate.element)
    if fixed is not None:
        return f" ({describe(fixed[1])})"
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
        found = fixed_or_pattern(target.element)
        if found is not None:
            return found
    if path == "url":
        profiles = [p for t in candidate.element.get("type", []) for p in t.get("profile", [])]
        if profiles:
            return "fixed", profiles[0]
    return None
