"""_summary and _elements: https://hl7.org/fhir/R4/search.html#summary and #elements."""

from __future__ import annotations

from typing import Any

from service.validation.definitions import Definitions

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
}
_ALWAYS = ("resourceType", "id", "meta")


def _top_level(definitions: Definitions, type_: str) -> tuple[set[str], set[str]]:
    """(summary element names, mandatory element names) of a resource type."""
    model = definitions.model(type_)
    summary: set[str] = set()
    mandatory: set[str] = set()
    if model is None:
        return summary, mandatory
    for element in model.raw["snapshot"]["element"]:
        path: str = element["path"]
        if path.count(".") != 1:
            continue
        name = path.split(".", 1)[1].replace("[x]", "")
        if element.get("isSummary"):
            summary.add(name)
        if int(element.get("min", 0)) > 0:
            mandatory.add(name)
    return summary, mandatory


def _matches(key: str, names: set[str]) -> bool:
    bare = key.lstrip("_")
    return bare in names or any(
        bare.startswith(n) and bare[len(n) : len(n) + 1].isupper() for n in names
    )


def _mark(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag", []))
    if SUBSETTED not in tags:
        tags.append(SUBSETTED)
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def subset(
    definitions: Definitions,
    resource: dict[str, Any],
    summary: str | None,
    elements: tuple[str, ...] | None,
) -> dict[str, Any]:
    """Return the resource reduced as _summary or _elements ask (marked SUBSETTED)."""
    if summary is None and elements is None:
        return resource
    summary_names, mandatory = _top_level(definitions, resource["resourceType"])
    if summary == "data":
        return _mark({k: v for k, v in resource.items() if k != "text"})
    if summary == "text":
        keep = {"text"} | mandatory
    elif summary == "true":
        keep = summary_names | mandatory
    else:
        keep = set(elements or ()) | mandatory
    out = {k: v for k, v in resource.items() if k in _ALWAYS or _matches(k, keep)}
    return _mark(out)
