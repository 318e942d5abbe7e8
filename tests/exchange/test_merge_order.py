"""Every instance holding the same priorities shows the same merged order.

Two instances exchange their care settings' Lists; each holds its own Lists as recorded (no
origin tag) and the other's as delivered (tagged with the originating instance, a local id and
a local ``lastUpdated``: the arrival). Lists recorded at the same moment are common (a hospital
and a GP in the same minute), so the merge must break ties by content both sides share.
"""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.fhir.model import ORIGIN_TAG_SYSTEM
from service.priorities.items import gather

INSTANCES = ("a0c6e7d2-instance-one", "f31b9a44-instance-two")
LIST_IDS = "http://whatmatters.example/fhir/list-id"
ITEM_IDS = "urn:ehr:ids"

# a few moments only, written in different (equal) ways, so that ties happen
MOMENTS = (
    "2026-12-07T09:00:00Z",
    "2026-12-07T09:00:00.000+00:00",
    "2026-12-07T10:00:00+01:00",
    "2026-12-07T09:00:00.001Z",
    "2026-12-07T08:59:59Z",
)


def statement(key: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "identifier": [{"system": ITEM_IDS, "value": key}],
        "valueString": f"said {key}",
    }


def priorities_list(setting: int, moment: str, items: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "identifier": [{"system": LIST_IDS, "value": f"patient|setting-{setting}"}],
        "date": moment,
        "entry": [{"item": {"reference": f"@{key}"}} for key in items],
    }


def held_at(
    instance: int,
    recorded: list[tuple[int, dict[str, Any]]],
    items: set[str],
    rng: random.Random,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What ``instance`` stores: its own Lists untagged, the other's tagged, everything with
    ids and lastUpdated of its own, in an arrival order of its own."""
    ids = {key: f"{instance}-{rng.randrange(10**6)}-{key}" for key in items}
    resources = []
    for key in items:
        resource = {**statement(key), "id": ids[key]}
        resource["meta"] = {"lastUpdated": f"2026-12-07T11:{rng.randrange(60):02d}:00Z"}
        resources.append(resource)
    lists = []
    for number, (origin, recorded_list) in enumerate(recorded):
        stored: dict[str, Any] = {
            **recorded_list,
            "id": f"{instance}-list-{number}-{rng.randrange(10**6)}",
            "entry": [
                {"item": {"reference": "Observation/" + ids[e["item"]["reference"][1:]]}}
                for e in recorded_list["entry"]
            ],
        }
        meta: dict[str, Any] = {"lastUpdated": f"2026-12-07T11:{rng.randrange(60):02d}:00Z"}
        if origin != instance:
            meta["tag"] = [{"system": ORIGIN_TAG_SYSTEM, "code": INSTANCES[origin]}]
        stored["meta"] = meta
        lists.append(stored)
    rng.shuffle(lists)
    rng.shuffle(resources)
    return lists, resources


def merged_view(lists: list[dict[str, Any]], resources: list[dict[str, Any]], me: int) -> list:
    return [
        item.resource["identifier"][0]["value"]
        for item in gather(lists, resources, [], INSTANCES[me])
    ]


keys = st.sampled_from(["walk", "choir", "home", "garden", "grandson", "chapel"])
recorded_lists = st.lists(
    st.tuples(
        st.integers(0, 1),  # the instance where it was recorded
        st.sampled_from(MOMENTS),
        st.lists(keys, min_size=1, max_size=4, unique=True),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(recorded_lists, st.integers(0, 2**32))
def test_two_instances_show_the_same_merged_order(
    recorded: list[tuple[int, str, list[str]]], seed: int
) -> None:
    rng = random.Random(seed)
    lists = [
        (origin, priorities_list(number, moment, items))
        for number, (origin, moment, items) in enumerate(recorded)
    ]
    items = {key for _, _, chosen in recorded for key in chosen}
    at_one = merged_view(*held_at(0, lists, items, rng), me=0)
    at_two = merged_view(*held_at(1, lists, items, rng), me=1)
    assert at_one == at_two
    assert sorted(at_one) == sorted(items)


def test_the_most_recently_recorded_list_ranks_first_whatever_arrived_last() -> None:
    rng = random.Random(3)
    lists = [
        (0, priorities_list(0, "2026-12-07T09:00:00Z", ["walk"])),
        (1, priorities_list(1, "2026-12-07T10:30:00+01:00", ["choir"])),  # 09:30 UTC
    ]
    for me in (0, 1):
        assert merged_view(*held_at(me, lists, {"walk", "choir"}, rng), me=me) == [
            "choir",
            "walk",
        ]
