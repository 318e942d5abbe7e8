"""An operation's input as a POSTed Parameters resource (R4 operations.html#invoking): one
reading of the body for every operation, so each refuses a malformed body the same way."""

from __future__ import annotations

from typing import Any

from service.errors import BadRequest


def parameters_in(body: Any, operation: str) -> list[tuple[str, str, dict[str, Any]]]:
    """Each part of a Parameters body as (its location, its name, the part). 400 naming the
    location when the body is not a Parameters resource, ``parameter`` is not an array, or a
    part has no name."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest(f"POST {operation} takes a Parameters resource", ("resourceType",))
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise BadRequest("Parameters.parameter must be an array", ("Parameters.parameter",))
    parts = []
    for index, part in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise BadRequest(f"Each parameter of {operation} needs a name", (where,))
        parts.append((where, part["name"], part))
    return parts


def single_value(part: dict[str, Any]) -> tuple[str, Any] | None:
    """The part's one value: its ``value[x]`` or ``resource`` element and what it holds; None
    when it has none or several."""
    found = [k for k in part if (k.startswith("value") and k != "value") or k == "resource"]
    return (found[0], part[found[0]]) if len(found) == 1 else None
