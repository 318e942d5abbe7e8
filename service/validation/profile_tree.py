"""The element tree of a profile's snapshot, and what fixed[x] and pattern[x] mean.

``build_tree`` indexes snapshot elements by id into children and slices, working out once what
every validation asks of each element (its fixed or pattern value, the invariants and limits the
profile adds, whether it constrains reference targets); ``matches_fixed`` and
``matches_pattern`` are the two comparisons of https://hl7.org/fhir/R4/elementdefinition.html.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from service.validation.snapshots import CHANGED

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
        node.fixed = fixed_or_pattern(element) if changed else None
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


def fixed_or_pattern(element: dict[str, Any]) -> tuple[str, Any] | None:
    """The element's ``fixed[x]`` or ``pattern[x]``, as ("fixed" or "pattern", value)."""
    for key, value in element.items():
        if key.startswith("fixed") and key != "fixed":
            return "fixed", value
        if key.startswith("pattern") and key != "pattern":
            return "pattern", value
    return None


def describe(value: Any) -> str:
    """A value as a message shows it: codes as system|code, anything else as its repr."""
    if isinstance(value, dict) and isinstance(value.get("coding"), list):
        return ", ".join(describe(c) for c in value["coding"])
    if isinstance(value, dict) and "code" in value:
        return f"{value.get('system', '')}|{value['code']}".lstrip("|")
    return repr(value)
