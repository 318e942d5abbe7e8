"""The merged Priorities List of ``$what-matters``, and what changed since an earlier instant.

Pure functions over the items gathered by items.py (no I/O): ``compare`` marks each item new,
changed or removed; ``merged_list`` renders the ranking as one List with those marks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from service.priorities.codes import (
    CARE_SETTING,
    CHANGE,
    LIST_ITEM_FLAGS,
    LIST_ORDER,
    LIST_PROFILE,
    LOINC,
    PRIORITIES_CODE,
    RECORDED,
    coding,
)
from service.priorities.items import Item, Record, item_order, normalised, reference_of, words

NOT_YET_RANKED = {
    "coding": [coding(LIST_ITEM_FLAGS, "not-yet-ranked", "Not yet ranked")],
    "text": "Not yet ranked",
}


@dataclass
class Change:
    """How an item differs from what was there at an earlier instant."""

    mark: str  # new | changed | removed
    what: list[str] = field(default_factory=list)  # for changed: words, status, rank


def _status(item: Item) -> tuple[Any, ...]:
    resource = item.resource
    own = resource.get("lifecycleStatus") if item.kind == "goal" else resource.get("status")
    goals = sorted(
        (normalised(words(g.resource)), str(g.resource.get("lifecycleStatus"))) for g in item.goals
    )
    return (own, tuple(goals))


def compare(before: list[Item], after: list[Item]) -> tuple[dict[int, Change], list[Item]]:
    """Marks for the items of ``after`` (by ``id(item)``) against ``before``, and the items of
    ``before`` that are gone. Items match when they share a record or their words."""
    by_ref: dict[str, Item] = {}
    by_words: dict[tuple[str, str], Item] = {}
    for item in after:
        for ref in item.references:
            by_ref.setdefault(ref, item)
        by_words.setdefault((item.kind, normalised(words(item.resource))), item)
    pairs: dict[int, Item] = {}  # id(after item) -> before item
    removed = []
    for old in before:
        new = next((by_ref[r] for r in sorted(old.references) if r in by_ref), None)
        new = new or by_words.get((old.kind, normalised(words(old.resource))))
        if new is None or id(new) in pairs:
            removed.append(old)
        else:
            pairs[id(new)] = old
    both = [
        (i, pairs[id(i)])
        for i in after
        if id(i) in pairs and i.position is not None and pairs[id(i)].position is not None
    ]
    rank_after = {id(new): n for n, (new, _) in enumerate(both)}
    olds = sorted((old for _, old in both), key=item_order)
    rank_before = {id(old): n for n, old in enumerate(olds)}
    marks: dict[int, Change] = {}
    for item in after:
        earlier = pairs.get(id(item))
        if earlier is None:
            marks[id(item)] = Change("new")
            continue
        old = earlier
        what = []
        if words(old.resource) != words(item.resource):
            what.append("words")
        if _status(old) != _status(item):
            what.append("status")
        moved = (old.position is None) != (item.position is None)
        if id(item) in rank_after:
            moved = rank_before[id(old)] != rank_after[id(item)]
        if moved:
            what.append("rank")
        if what:
            marks[id(item)] = Change("changed", what)
    return marks, removed


def _recorded(record: Record) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "record", "valueReference": {"reference": record.reference}}
    ]
    if record.recorder:
        parts.append({"url": "recorder", "valueReference": record.recorder})
    if record.setting:
        parts.append({"url": "setting", "valueReference": record.setting})
    if record.setting_type:
        parts.append({"url": "setting-type", "valueCoding": record.setting_type})
    if record.date:
        parts.append({"url": "date", "valueDateTime": record.date})
    return {"url": RECORDED, "extension": parts}


def _change(change: Change, since: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "mark", "valueCode": change.mark},
        {"url": "since", "valueInstant": since},
    ]
    parts += [{"url": "what", "valueCode": what} for what in change.what]
    return {"url": CHANGE, "extension": parts}


def merged_list(
    patient_id: str,
    items: list[Item],
    lists: list[dict[str, Any]],
    marks: dict[int, Change],
    removed: list[Item],
    since: str | None,
    now: str,
) -> dict[str, Any]:
    """The merged Priorities List (a view, not stored): an entry per item, in order, with the
    care settings that know it, every record of it, and its change mark."""
    entries = []
    settings: list[dict[str, Any]] = []
    for item in items:
        extensions: list[dict[str, Any]] = []
        for record in item.records:
            if record.setting and record.setting not in settings:
                settings.append(record.setting)
            setting = {"url": CARE_SETTING, "valueReference": record.setting}
            if record.setting and setting not in extensions:
                extensions.append(setting)
        extensions += [_recorded(record) for record in item.records]
        if since is not None and id(item) in marks:
            extensions.append(_change(marks[id(item)], since))
        entry: dict[str, Any] = {"extension": extensions} if extensions else {}
        if item.position is None:
            entry["flag"] = NOT_YET_RANKED
        entry["item"] = {"reference": reference_of(item.resource)}
        entries.append(entry)
    for gone in removed:
        version = (gone.resource.get("meta") or {}).get("versionId")
        entries.append(
            {
                "extension": [_change(Change("removed"), since or now)],
                "item": {"reference": f"{reference_of(gone.resource)}/_history/{version}"},
            }
        )
    merged: dict[str, Any] = {
        "resourceType": "List",
        "meta": {
            "profile": [LIST_PROFILE],
            "tag": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "merged view, not stored",
                }
            ],
        },
        "text": {
            "status": "generated",
            "div": '<div xmlns="http://www.w3.org/1999/xhtml">What matters to this patient: '
            f"{len(items)} item(s) from {len(settings)} care setting(s) and "
            f"{len(lists)} priorities list(s), ranked items first</div>",
        },
        "status": "current",
        "mode": "working",
        "title": "What matters to me",
        "code": {"coding": [coding(LOINC, PRIORITIES_CODE)]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": now,
        "source": {"display": "What Matters: merged from every care setting"},
        "orderedBy": {"coding": [coding(LIST_ORDER, "priority")]},
    }
    if entries:
        merged["entry"] = entries
    return merged
