"""The one reference walker (service/fhir/references.py) and the outbox destination value."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from service.exchange.destinations import Destination, Kind
from service.fhir.references import replace_references, rewrite_references, rewrite_strings

GOAL: dict[str, Any] = {
    "resourceType": "Goal",
    "subject": {"reference": "Patient/1", "display": "Ada"},
    "addresses": [{"reference": "Observation/2"}, {"display": "no reference"}],
    "note": [{"text": "Patient/1"}],
    "extension": [{"url": "x", "valueReference": {"reference": "urn:uuid:a"}}],
    "text": {"div": '<div><a href="urn:uuid:a">a</a></div>'},
}


def test_rewrite_references_changes_every_reference_string_and_nothing_else() -> None:
    before = copy.deepcopy(GOAL)
    out = rewrite_references(GOAL, lambda ref: f"X/{ref}")
    assert before == GOAL  # the value given is never changed
    assert out["subject"] == {"reference": "X/Patient/1", "display": "Ada"}
    assert out["addresses"] == [{"reference": "X/Observation/2"}, {"display": "no reference"}]
    assert out["extension"][0]["valueReference"] == {"reference": "X/urn:uuid:a"}
    assert out["note"] == [{"text": "Patient/1"}]  # a string that is not a reference
    assert out["text"] == GOAL["text"]


def test_replace_references_swaps_whole_elements_or_keeps_and_walks_them() -> None:
    def replace(element: dict[str, Any]) -> dict[str, Any] | None:
        if element["reference"].startswith("Patient/"):
            return {"identifier": {"value": "M1"}}
        return None

    out = replace_references(GOAL, replace)
    assert out["subject"] == {"identifier": {"value": "M1"}}
    assert out["addresses"][0] == {"reference": "Observation/2"}


def test_rewrite_strings_sees_every_string_with_its_element_name() -> None:
    seen: list[tuple[str | None, str]] = []

    def rewrite(key: str | None, text: str) -> str:
        seen.append((key, text))
        return text.upper() if key == "div" else text

    out = rewrite_strings(["a", {"div": "<div/>", "b": ["c"]}], rewrite)
    assert out == ["a", {"div": "<DIV/>", "b": ["c"]}]
    assert seen == [(None, "a"), ("div", "<div/>"), (None, "c")]


def test_a_destination_is_parsed_and_formatted_at_the_store_boundary() -> None:
    assert Destination.parse("partner:gp") == Destination(Kind.PARTNER, "gp")
    assert Destination.parse("subscription:s:1") == Destination.subscription("s:1")
    assert Destination.partner("gp").format() == "partner:gp" == str(Destination.partner("gp"))
    for text in ("gp", "channel:x", ""):
        with pytest.raises(ValueError, match="not an outbox destination"):
            Destination.parse(text)
