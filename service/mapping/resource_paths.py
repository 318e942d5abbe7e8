"""Paths into a resource as mappings write them (``code.coding[0].code``): read a value, or
set one, creating the objects and arrays on the way."""

from __future__ import annotations

import re
from typing import Any

_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def value_at(value: Any, path: str) -> Any:
    """The value at a ``code.coding[0].code``-style path, or None."""
    current = value
    for name, index in _PATH_PART.findall(path):
        if name:
            current = current.get(name) if isinstance(current, dict) else None
        else:
            position = int(index)
            current = (
                current[position] if isinstance(current, list) and position < len(current) else None
            )
        if current is None:
            return None
    return current


def set_at(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set ``code.coding[0].code``-style paths, creating objects and arrays as needed."""
    parts: list[str | int] = [
        name if name else int(index) for name, index in _PATH_PART.findall(path)
    ]
    current: Any = resource
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        following = None if last else parts[position + 1]
        if isinstance(part, str):
            if not isinstance(current, dict):
                raise ValueError(f"{part!r} is inside something that is not an object")
            if last:
                current[part] = value
            else:
                current = current.setdefault(part, [] if isinstance(following, int) else {})
        else:
            if not isinstance(current, list):
                raise ValueError(f"[{part}] is on something that is not an array")
            while len(current) <= part:
                current.append({})
            if last:
                current[part] = value
            else:
                current = current[part]
