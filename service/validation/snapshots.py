"""Snapshot generation from differentials: https://hl7.org/fhir/R4/profiling.html#snapshot.

A profile's differential is laid over the snapshot of its base definition: elements are matched
by id, slices are new copies of the sliced element (with its children), and an element inside a
data type that the base snapshot does not list (``Observation.code.coding``) first unfolds its
parent with the children of the parent's type. Each generated element records which of its
properties a differential changed (``CHANGED``), so the profile validator checks only what the
profile adds and leaves the base rules to the base validator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

CHANGED = "_changed"  # properties a differential set on this element (internal, never served)
_IDENTITY = ("id", "path")


class SnapshotError(ValueError):
    """A differential cannot be laid over its base; the message names the element."""


def generate_snapshot(
    sd: dict[str, Any],
    base_elements: list[dict[str, Any]],
    type_elements: Callable[[str], list[dict[str, Any]] | None],
) -> list[dict[str, Any]]:
    """Return the snapshot elements of ``sd`` built on ``base_elements``.

    ``type_elements`` gives the snapshot elements of a data type (``CodeableConcept``), used
    to unfold an element whose children the differential constrains.
    """
    elements = copy.deepcopy(base_elements)  # a parent profile's changes stay in force
    base_root = elements[0]["path"] if elements else sd.get("type", "")
    for index, diff in enumerate(sd.get("differential", {}).get("element", [])):
        element_id = _diff_id(diff, index)
        if element_id.split(".", 1)[0].split(":", 1)[0] != base_root:
            raise SnapshotError(
                f"differential element {element_id!r} does not start with the type {base_root!r}"
            )
        position = _find(elements, element_id)
        if position is None:
            position = _place(elements, element_id, type_elements)
        _merge(elements[position], diff, element_id)
    return elements


def _diff_id(diff: dict[str, Any], index: int) -> str:
    if not isinstance(diff, dict) or not isinstance(diff.get("path"), str):
        raise SnapshotError(f"differential.element[{index}] has no path")
    element_id = diff.get("id")
    if isinstance(element_id, str):
        if _strip_slices(element_id) != diff["path"]:
            raise SnapshotError(
                f"differential element {element_id!r}: its path {diff['path']!r} does not match"
            )
        return element_id
    if "sliceName" in diff:
        return f"{diff['path']}:{diff['sliceName']}"
    return str(diff["path"])


def _strip_slices(element_id: str) -> str:
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


def _find(elements: list[dict[str, Any]], element_id: str) -> int | None:
    for position, element in enumerate(elements):
        if element.get("id") == element_id:
            return position
    return None


def _subtree_end(elements: list[dict[str, Any]], position: int) -> int:
    """The index just past the element at ``position``, its children and its slices."""
    own = elements[position]["id"]
    end = position + 1
    while end < len(elements):
        other: str = elements[end]["id"]
        if other.startswith(own + ".") or other.startswith(own + ":"):
            end += 1
        else:
            break
    return end


def _place(
    elements: list[dict[str, Any]],
    element_id: str,
    type_elements: Callable[[str], list[dict[str, Any]] | None],
) -> int:
    parent_id, _, last = element_id.rpartition(".")
    if ":" in last:
        # a new slice: copy the sliced element and its children (not its other slices)
        sliced_id = f"{parent_id}.{last.split(':', 1)[0]}" if parent_id else last.split(":")[0]
        slice_name = last.split(":", 1)[1]
        sliced = _find(elements, sliced_id)
        if sliced is None:
            sliced = _place(elements, sliced_id, type_elements)
        template = [elements[sliced]]
        for element in elements[sliced + 1 : _subtree_end(elements, sliced)]:
            if element["id"].startswith(sliced_id + "."):
                template.append(element)
        copies = []
        for element in copy.deepcopy(template):
            element["id"] = element_id + element["id"][len(sliced_id) :]
            copies.append(element)
        # what the profile said of the sliced element as a whole is not said of each slice
        copies[0].pop(CHANGED, None)
        copies[0]["sliceName"] = slice_name
        copies[0].pop("slicing", None)
        end = _subtree_end(elements, sliced)
        elements[end:end] = copies
        return end
    if not parent_id:
        raise SnapshotError(f"differential element {element_id!r} matches no base element")
    parent = _find(elements, parent_id)
    if parent is None:
        parent = _place(elements, parent_id, type_elements)
    _unfold(elements, parent, element_id, type_elements)
    position = _find(elements, element_id)
    if position is None:
        raise SnapshotError(
            f"differential element {element_id!r}: {elements[parent]['path']} has no child "
            f"{last!r} in FHIR R4"
        )
    return position


def _unfold(
    elements: list[dict[str, Any]],
    parent: int,
    element_id: str,
    type_elements: Callable[[str], list[dict[str, Any]] | None],
) -> None:
    """Insert the children of the parent's data type after it, if they are not there yet."""
    owner = elements[parent]
    if parent + 1 < len(elements) and elements[parent + 1]["id"].startswith(owner["id"] + "."):
        return  # already unfolded (a backbone element or an earlier differential)
    types = [t.get("code") for t in owner.get("type", [])]
    if len(types) != 1 or not isinstance(types[0], str):
        raise SnapshotError(
            f"differential element {element_id!r}: {owner['id']} has {len(types)} types; "
            "constrain it to one type before constraining its children"
        )
    found = type_elements(types[0])
    if not found:
        raise SnapshotError(
            f"differential element {element_id!r}: no definition of the type {types[0]!r}"
        )
    root = found[0]["path"]
    children = []
    for element in copy.deepcopy(found[1:]):
        element["id"] = owner["id"] + element.get("id", element["path"])[len(root) :]
        element["path"] = owner["path"] + element["path"][len(root) :]
        element.pop(CHANGED, None)
        children.append(element)
    elements[parent + 1 : parent + 1] = children


def _merge(target: dict[str, Any], diff: dict[str, Any], element_id: str) -> None:
    changed: set[str] = set(target.get(CHANGED, ()))
    for key, value in diff.items():
        if key in _IDENTITY:
            continue
        if key == "constraint":
            keys = {c.get("key") for c in target.get("constraint", [])}
            added = [c for c in value if c.get("key") not in keys]
            target["constraint"] = target.get("constraint", []) + copy.deepcopy(added)
            changed.update(f"constraint:{c.get('key')}" for c in added)
        else:
            target[key] = copy.deepcopy(value)
        changed.add(key)
    base = target.get("base", {})
    low = target.get("min", 0)
    high = target.get("max", "*")
    if _max(high) < low:
        raise SnapshotError(f"{element_id}: max {high} is less than min {low}")
    if "sliceName" not in target and base:
        if low < base.get("min", 0):
            raise SnapshotError(
                f"{element_id}: min {low} is below the base minimum {base.get('min')}"
            )
        if _max(high) > _max(str(base.get("max", "*"))):
            raise SnapshotError(
                f"{element_id}: max {high} is above the base maximum {base.get('max')}"
            )
    target[CHANGED] = sorted(changed)


def _max(value: Any) -> float:
    return float("inf") if value == "*" else float(int(value))
