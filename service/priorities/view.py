"""A patient's priorities as plain data: what the facade returns and the page shows.

Built from the ``$what-matters`` Bundle only, so the facade and the page add no logic of their
own: rank, the patient's words, the goals, their status, who recorded each, where and when.
"""

from __future__ import annotations

from typing import Any

from service.priorities.codes import CARE_SETTING, CARE_SETTING_TYPE, extension_value

_SETTING_TYPES = {
    "hospital": "Hospital",
    "primary-care": "GP / primary care",
    "care-home": "Care home",
    "community": "Community",
    "outpatient": "Outpatient clinic",
    "other": "Other setting",
}


def describe(reference: Any) -> str | None:
    """A Reference as a person reads it: its display, else the reference itself."""
    if not isinstance(reference, dict):
        return None
    return str(reference.get("display") or reference.get("reference") or "") or None


def words(resource: dict[str, Any]) -> str:
    """The patient's words: a statement's value, a goal's description."""
    if resource.get("resourceType") == "Goal":
        return str(resource.get("description", {}).get("text", ""))
    if "valueString" in resource:
        return str(resource["valueString"])
    return str(resource.get("valueCodeableConcept", {}).get("text", ""))


def priorities(bundle: dict[str, Any]) -> dict[str, Any]:
    """The ranked priorities of a ``$what-matters`` Bundle as plain JSON-ready data."""
    # earlier versions (history=true) have _history fullUrls; the current ones do not
    resources = [
        e["resource"]
        for e in bundle.get("entry", [])
        if "resource" in e and "/_history/" not in str(e.get("fullUrl", ""))
    ]
    merged = resources[0] if resources else {}
    by_ref = {f"{r['resourceType']}/{r['id']}": r for r in resources[1:] if "id" in r}
    provenance: dict[str, dict[str, Any]] = {}
    for resource in resources:
        if resource.get("resourceType") != "Provenance":
            continue
        for target in resource.get("target", []):
            ref = str(target.get("reference", ""))
            if ref not in provenance or resource.get("recorded", "") > provenance[ref].get(
                "recorded", ""
            ):
                provenance[ref] = resource
    goals_for: dict[str, list[dict[str, Any]]] = {}
    for resource in by_ref.values():
        if resource.get("resourceType") == "Goal":
            for address in resource.get("addresses", []):
                goals_for.setdefault(str(address.get("reference")), []).append(resource)
    items = []
    for rank, entry in enumerate(merged.get("entry", []), start=1):
        ref = str(entry.get("item", {}).get("reference", ""))
        resource = by_ref.get(ref)
        if resource is None:
            continue
        settings = [
            describe(e.get("valueReference"))
            for e in entry.get("extension", [])
            if e.get("url") == CARE_SETTING
        ] or [describe(extension_value(resource, CARE_SETTING, "valueReference"))]
        setting_type = (extension_value(resource, CARE_SETTING_TYPE, "valueCoding") or {}).get(
            "code"
        )
        source = provenance.get(ref)
        author = None
        if source is not None:
            for agent in source.get("agent", []):
                codes = [c.get("code") for c in agent.get("type", {}).get("coding", [])]
                if "author" in codes:
                    author = describe(agent.get("who"))
        item: dict[str, Any] = {
            "rank": rank,
            "kind": "goal" if resource["resourceType"] == "Goal" else "statement",
            "reference": ref,
            "text": words(resource),
            "recordedBy": author or _recorder(resource),
            "settings": [s for s in settings if s],
            "settingType": _SETTING_TYPES.get(setting_type or ""),
            "date": _date(resource, source),
        }
        if resource["resourceType"] == "Goal":
            item.update(_goal_fields(resource))
            item["statements"] = [
                words(by_ref[str(a.get("reference"))])
                for a in resource.get("addresses", [])
                if str(a.get("reference")) in by_ref
            ]
        else:
            item["status"] = resource.get("status")
            item["goals"] = [
                {"text": words(goal), **_goal_fields(goal)} for goal in goals_for.get(ref, [])
            ]
        items.append(item)
    return {"priorities": items, "updated": bundle.get("timestamp")}


def _goal_fields(goal: dict[str, Any]) -> dict[str, Any]:
    priority = goal.get("priority", {}).get("coding", [{}])[0].get("code")
    target = next((t.get("dueDate") for t in goal.get("target", []) if t.get("dueDate")), None)
    achievement = goal.get("achievementStatus", {}).get("coding", [{}])[0].get("code")
    return {
        "status": goal.get("lifecycleStatus"),
        "achievement": achievement,
        "priority": (priority or "").replace("-priority", "") or None,
        "targetDate": target,
    }


def _recorder(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Goal":
        return describe(resource.get("expressedBy"))
    performers = resource.get("performer", [])
    return describe(performers[0]) if performers else None


def _date(resource: dict[str, Any], provenance: dict[str, Any] | None) -> str | None:
    value = resource.get("effectiveDateTime") or resource.get("startDate")
    if value is None and provenance is not None:
        value = provenance.get("recorded")
    return str(value) if value else None
