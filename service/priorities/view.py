"""A patient's priorities as plain data: what the facade returns and the page shows.

Built from the ``$what-matters`` Bundle only, so the facade and the page add no logic of their
own and show the same items in the same order: the patient's words, the goals under the
statement they address, their status, every record with who recorded it, where and when, and
the change marks of ``?since=``.
"""

from __future__ import annotations

from typing import Any

from service.priorities.codes import CHANGE, LIST_ITEM_FLAGS, RECORDED
from service.priorities.items import addressed, language, plain_reference, words

__all__ = ["SETTING_TYPES", "describe", "priorities", "words"]

SETTING_TYPES = {
    "hospital": "Hospital",
    "primary-care": "GP",
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


def _parts(extension: dict[str, Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for part in extension.get("extension", []) or []:
        value = next((v for k, v in part.items() if k.startswith("value")), None)
        found.setdefault(str(part.get("url")), []).append(value)
    return found


def _record(extension: dict[str, Any]) -> dict[str, Any]:
    parts = _parts(extension)
    setting_type = (parts.get("setting-type") or [None])[0]
    code = setting_type.get("code") if isinstance(setting_type, dict) else None
    return {
        "reference": describe((parts.get("record") or [None])[0]),
        "recordedBy": describe((parts.get("recorder") or [None])[0]),
        "setting": describe((parts.get("setting") or [None])[0]),
        "settingType": SETTING_TYPES.get(code or "", code),
        "date": (parts.get("date") or [None])[0],
    }


def _change(entry: dict[str, Any]) -> dict[str, Any] | None:
    for extension in entry.get("extension", []) or []:
        if extension.get("url") == CHANGE:
            parts = _parts(extension)
            return {
                "mark": (parts.get("mark") or [None])[0],
                "since": (parts.get("since") or [None])[0],
                "what": parts.get("what", []),
            }
    return None


def priorities(bundle: dict[str, Any]) -> dict[str, Any]:
    """The items of a ``$what-matters`` Bundle, in order, as plain JSON-ready data."""
    entries = [e for e in bundle.get("entry", []) if isinstance(e.get("resource"), dict)]
    merged = entries[0]["resource"] if entries else {}
    by_ref: dict[str, dict[str, Any]] = {}
    for entry in entries[1:]:
        resource = entry["resource"]
        if "/_history/" in str(entry.get("fullUrl", "")):
            version = resource.get("meta", {}).get("versionId")
            by_ref[f"{resource['resourceType']}/{resource.get('id')}/_history/{version}"] = resource
        else:
            by_ref.setdefault(f"{resource['resourceType']}/{resource.get('id')}", resource)
    listed = [e for e in merged.get("entry", []) or [] if isinstance(e.get("item"), dict)]
    top = {str(e["item"].get("reference")) for e in listed}
    nested = [
        r
        for ref, r in by_ref.items()
        if r.get("resourceType") == "Goal" and ref not in top and "/_history/" not in ref
    ]
    items = []
    for rank, entry in enumerate(listed, start=1):
        ref = str(entry["item"].get("reference"))
        resource = by_ref.get(ref)
        if resource is None:
            continue
        records = [_record(e) for e in entry.get("extension", []) or [] if e.get("url") == RECORDED]
        mine = {plain_reference(r["reference"]) for r in records} | {plain_reference(ref)}
        goals = [g for g in nested if addressed(g) & mine]
        nested = [g for g in nested if g not in goals]  # a goal is shown once
        flags = [
            c.get("code")
            for c in (entry.get("flag") or {}).get("coding", [])
            if c.get("system") == LIST_ITEM_FLAGS
        ]
        change = _change(entry)
        first = records[0] if records else {}
        item: dict[str, Any] = {
            "rank": rank,
            "ranked": "not-yet-ranked" not in flags and (change or {}).get("mark") != "removed",
            "kind": "goal" if resource["resourceType"] == "Goal" else "statement",
            "reference": plain_reference(ref),
            "text": words(resource),
            "language": language(resource),
            "recordedBy": first.get("recordedBy"),
            "settings": list(dict.fromkeys(r["setting"] for r in records if r["setting"])),
            "settingType": first.get("settingType"),
            "date": first.get("date"),
            "records": records,
            "change": change,
        }
        if resource["resourceType"] == "Goal":
            item.update(_goal_fields(resource))
            item["statements"] = [
                words(by_ref[a]) for a in sorted(addressed(resource)) if a in by_ref
            ]
        else:
            item["status"] = resource.get("status")
            item["goals"] = [
                {"text": words(g), "language": language(g), **_goal_fields(g)} for g in goals
            ]
        items.append(item)
    return {"priorities": items, "updated": bundle.get("timestamp")}


def _goal_fields(goal: dict[str, Any]) -> dict[str, Any]:
    priority = goal.get("priority", {}).get("coding", [{}])[0].get("code")
    target = next((t.get("dueDate") for t in goal.get("target", []) if t.get("dueDate")), None)
    achievement = goal.get("achievementStatus", {}).get("coding", [{}])[0].get("code")
    return {
        "reference": f"Goal/{goal.get('id')}",
        "status": goal.get("lifecycleStatus"),
        "achievement": achievement,
        "priority": (priority or "").replace("-priority", "") or None,
        "targetDate": target,
    }
