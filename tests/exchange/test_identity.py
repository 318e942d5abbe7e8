"""Loop-proof by identity: two real instances, each the other's partner, named through URL
aliases (the partners files say ``localhost``, each instance calls itself ``127.0.0.1``).

Whatever URLs name the two sides, a resource is never sent back to the instance that
originated it, and a write that changes nothing makes no version and queues nothing: after
recordings and re-rankings at both sides the Lists stop at the versions their own recordings
made and both outboxes empty.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.exchange.instances import Instance, partner_entry
from tests.priorities.conversations import conversation, ranking, statement

MRN = "urn:oid:2.16.840.1.113883.19.5"
DRAIN_DEADLINE = 10.0  # seconds the acceptance allows for both outboxes to empty


def alias(instance: Instance) -> str:
    """The instance's base URL under its other loopback name."""
    return instance.base.replace("127.0.0.1", "localhost")


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[Instance, Instance]]:
    """A hospital and a GP, each listing the other by its ``localhost`` alias."""
    hospital = Instance("hospital", tmp_path)
    gp = Instance("gp", tmp_path)
    hospital.set_partners([partner_entry("gp", alias(gp), [MRN])])
    gp.set_partners([partner_entry("hospital", alias(hospital), [MRN])])
    hospital.start()
    gp.start()
    yield hospital, gp
    hospital.stop()
    gp.stop()


def record(instance: Instance, patient: str, order: tuple[str, ...], setting: str) -> None:
    """One conversation at ``setting``: the same three statements, ranked in ``order``."""
    said = {
        "walk": "Walking Bramble, my dog, every morning",
        "choir": "Singing in the chapel choir",
        "home": "Staying in my own home",
    }
    body = conversation(
        *(statement(key, said[key], f"{setting}-{key}") for key in said),
        ranking(*order),
        setting=setting,
        setting_type="hospital" if setting == "ward-7" else "primary-care",
    )
    response = requests.post(
        f"{instance.base}/Patient/{patient}/$record-what-matters", json=body, timeout=30
    )
    assert response.status_code == 200, response.text


def wait(check: Any, deadline: float, what: Any) -> None:
    """Poll ``check`` until it holds; fail (never hang) after ``deadline`` seconds, saying
    ``what`` (a text, or a function giving the state seen)."""
    until = time.monotonic() + deadline
    while not check():
        if time.monotonic() > until:
            raise AssertionError(f"{what() if callable(what) else what} after {deadline} s")
        time.sleep(0.1)


def list_versions(instance: Instance) -> dict[str, int]:
    """Each priorities List's current version, by the List's identifier."""
    return {
        item["identifier"][0]["value"]: int(item["meta"]["versionId"])
        for item in instance.search("List")
    }


def outbox_rows(instance: Instance) -> int:
    """Every outbox row the instance ever queued (any state)."""
    return sum(line["rows"] for line in instance.outbox()["summary"])


def test_aliased_partners_exchange_without_echoes(pair: tuple[Instance, Instance]) -> None:
    hospital, gp = pair
    assert hospital.instance_id() != gp.instance_id()
    created = requests.post(
        f"{hospital.base}/Patient",
        json={"resourceType": "Patient", "identifier": [{"system": MRN, "value": "MRN00001"}]},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    at_hospital = created.json()["id"]
    record(hospital, at_hospital, ("walk", "choir", "home"), "ward-7")
    wait(lambda: gp.search("Patient", identifier=f"{MRN}|MRN00001"), 30, "no patient at the GP")
    at_gp = gp.search("Patient", identifier=f"{MRN}|MRN00001")[0]["id"]
    record(gp, at_gp, ("home", "walk", "choir"), "bodnant")
    # three re-rankings, alternating sides
    record(hospital, at_hospital, ("choir", "walk", "home"), "ward-7")
    record(gp, at_gp, ("walk", "home", "choir"), "bodnant")
    record(hospital, at_hospital, ("home", "choir", "walk"), "ward-7")

    recordings = {"ward-7": 3, "bodnant": 2}

    def settled() -> bool:
        return (
            hospital.undelivered() == 0
            and gp.undelivered() == 0
            and len(list_versions(hospital)) == len(list_versions(gp)) == 2
        )

    wait(
        settled,
        DRAIN_DEADLINE,
        lambda: (
            f"outboxes {hospital.outbox()} / {gp.outbox()}, Lists {list_versions(hospital)} / "
            f"{list_versions(gp)}"
        ),
    )
    queued = (outbox_rows(hospital), outbox_rows(gp))
    time.sleep(1.0)  # an echo would have queued more rows by now
    assert (outbox_rows(hospital), outbox_rows(gp)) == queued
    # a List has at most one version per recording of its setting, on either side (a copy
    # may skip versions superseded before they were sent)
    for instance in (hospital, gp):
        for identifier, version in list_versions(instance).items():
            setting = next(name for name in recordings if name in identifier)
            assert 1 <= version <= recordings[setting], (instance.name, identifier, version)
    # nothing was parked: no dead rows on either side
    for instance in (hospital, gp):
        states = {line["state"] for line in instance.outbox()["summary"]}
        assert "dead" not in states, instance.outbox()


def test_a_write_that_changes_nothing_makes_no_version(pair: tuple[Instance, Instance]) -> None:
    hospital, _gp = pair
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "identifier": [{"system": MRN, "value": "MRN00002"}],
        "name": [{"family": "Okafor"}],
    }
    first = requests.put(f"{hospital.base}/Patient/p1", json=patient, timeout=30)
    assert first.status_code == 201, first.text
    queued = outbox_rows(hospital)
    again = requests.put(f"{hospital.base}/Patient/p1", json=patient, timeout=30)
    assert again.status_code == 200, again.text
    assert again.json()["meta"]["versionId"] == "1"
    assert again.headers["ETag"] == 'W/"1"'
    assert outbox_rows(hospital) == queued
    history = requests.get(f"{hospital.base}/Patient/p1/_history", timeout=30).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["1"]


def merged_words(instance: Instance, patient: str) -> list[str]:
    """The patient's words in the merged order ``$what-matters`` shows."""
    response = requests.get(f"{instance.base}/Patient/{patient}/$what-matters", timeout=30)
    assert response.status_code == 200, response.text
    resources = [e["resource"] for e in response.json()["entry"]]
    by_ref = {f"{r['resourceType']}/{r.get('id')}": r for r in resources[1:]}
    return [
        by_ref[e["item"]["reference"]].get("valueString", "")
        for e in resources[0].get("entry", [])
        if e["item"]["reference"] in by_ref
    ]


def test_simultaneous_recordings_show_the_same_merged_order_on_both_sides(
    pair: tuple[Instance, Instance],
) -> None:
    hospital, gp = pair
    patients = 20
    at_hospital = {}
    for number in range(patients):
        created = requests.post(
            f"{hospital.base}/Patient",
            json={
                "resourceType": "Patient",
                "identifier": [{"system": MRN, "value": f"MRN{number:05d}"}],
            },
            timeout=30,
        )
        assert created.status_code == 201, created.text
        at_hospital[number] = created.json()["id"]
    wait(
        lambda: len(gp.search("Patient")) == patients,
        60,
        lambda: f"{len(gp.search('Patient'))} of {patients} patients at the GP",
    )
    at_gp = {int(p["identifier"][0]["value"][3:]): p["id"] for p in gp.search("Patient")}
    moment = "2026-12-07T09:00:00Z"  # the same recorded time at both sides
    for number in range(patients):
        for instance, patient, setting in (
            (hospital, at_hospital[number], "ward-7"),
            (gp, at_gp[number], "bodnant"),
        ):
            body = conversation(
                statement("a", f"{setting} first ({number})", f"{setting}-a-{number}"),
                statement("b", f"{setting} second ({number})", f"{setting}-b-{number}"),
                ranking("a", "b"),
                setting=setting,
                recorded=moment,
            )
            response = requests.post(
                f"{instance.base}/Patient/{patient}/$record-what-matters", json=body, timeout=30
            )
            assert response.status_code == 200, response.text

    def both_hold_everything() -> bool:
        return (
            hospital.undelivered() == 0
            and gp.undelivered() == 0
            and all(
                len(merged_words(side, ids[number])) == 4
                for side, ids in ((hospital, at_hospital), (gp, at_gp))
                for number in range(patients)
            )
        )

    wait(both_hold_everything, 120, "the recordings did not reach both sides")
    for number in range(patients):
        assert merged_words(hospital, at_hospital[number]) == merged_words(gp, at_gp[number])
