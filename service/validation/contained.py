"""Contained resources and local references, the R4 rules dom-3 and ref-1
(https://hl7.org/fhir/R4/references.html#contained), in Python: fhirpathpy cannot evaluate
dom-3, and ref-1 as written is quadratic in the size of the resource.

- dom-3: each contained resource is referred to from elsewhere in its container (a
  ``#id``), or itself refers to the container (``#``); one without an id can be neither.
- ref-1: a local reference ``#id`` names a contained resource of the container.

The container is the resource being checked; a resource nested as a Bundle entry or a
Parameters value is a container of its own and is checked on its own.
"""

from __future__ import annotations

from typing import Any

from service.errors import Issue


def local_reference_issues(resource: dict[str, Any], expr: str) -> list[Issue]:
    """The dom-3 and ref-1 errors of ``resource`` (found at ``expr``)."""
    given = resource.get("contained")
    contained = [c for c in given if isinstance(c, dict)] if isinstance(given, list) else []
    ids = {c["id"] for c in contained if isinstance(c.get("id"), str)}
    mentioned: set[str] = set()
    dangling: list[tuple[str, str]] = []
    _walk(resource, expr, True, ids | {""}, mentioned, dangling)  # "#" alone: the container
    issues = [
        Issue(
            "error",
            "invariant",
            f"ref-1: The local reference {reference} names no contained resource "
            f"(contained ids: {', '.join(sorted(ids)) or 'none'})",
            (where,),
        )
        for where, reference in dangling
    ]
    for index, item in enumerate(contained):
        where = f"{expr}.contained[{index}]"
        rid = item.get("id")
        if not isinstance(rid, str):
            issues.append(
                Issue(
                    "error",
                    "invariant",
                    "dom-3: A contained resource needs an id, so that its container can refer "
                    "to it",
                    (where,),
                )
            )
        elif f"#{rid}" not in mentioned and not _refers_to_container(item):
            issues.append(
                Issue(
                    "error",
                    "invariant",
                    f"dom-3: The contained {item.get('resourceType')}/{rid} is not referred to "
                    f"from elsewhere in the resource (#{rid}), nor does it refer to it (#)",
                    (where,),
                )
            )
    return issues


def _walk(
    value: Any,
    path: str,
    root: bool,
    ids: set[str],
    mentioned: set[str],
    dangling: list[tuple[str, str]],
) -> None:
    if isinstance(value, dict):
        if (
            not root
            and "resourceType" in value
            and not path.rsplit(".", 1)[-1].startswith("contained[")
        ):
            return  # a Bundle entry's or a parameter's resource: a container of its own
        reference = value.get("reference")
        # "#id" must name a contained resource (``ids`` holds "" too: "#" is the container)
        if isinstance(reference, str) and reference[:1] == "#" and reference[1:] not in ids:
            dangling.append((path, reference))
        for key, child in value.items():
            if key != "resourceType":
                _walk(child, f"{path}.{key}", False, ids, mentioned, dangling)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            _walk(child, f"{path}[{index}]", False, ids, mentioned, dangling)
    elif isinstance(value, str) and value.startswith("#"):
        mentioned.add(value)


def _refers_to_container(value: Any) -> bool:
    if isinstance(value, dict):
        return any(_refers_to_container(v) for k, v in value.items() if k != "resourceType")
    if isinstance(value, list):
        return any(_refers_to_container(v) for v in value)
    return isinstance(value, str) and value == "#"
