"""Races between clients, against the service under gunicorn with several worker processes.

Conditional create (https://hl7.org/fhir/R4/http.html#ccreate) must create one resource however
many identical requests arrive at once; version-aware updates (http.html#concurrency) must let
exactly one of two racing writers win.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import requests

from service.config import Config
from tests.builders import FHIR_JSON, goal, patient

NHS = "https://fhir.nhs.uk/Id/nhs-number"
HEADERS = {"Content-Type": FHIR_JSON}


def _at_once(count: int, call):  # type: ignore[no-untyped-def]
    barrier = threading.Barrier(count)

    def run(index: int):  # type: ignore[no-untyped-def]
        barrier.wait()
        return call(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(run, range(count)))


def test_twenty_identical_conditional_creates_make_one_resource(
    live_server: str, config: Config
) -> None:
    for round_ in range(3):
        value = f"race-{round_}"
        body = patient(identifier=[{"system": NHS, "value": value}])
        # a connection per request: requests does not promise a Session is thread-safe
        statuses = _at_once(
            20,
            lambda _i, body=body, value=value: (
                requests.post(
                    f"{live_server}/Patient",
                    json=body,
                    headers={**HEADERS, "If-None-Exist": f"identifier={NHS}|{value}"},
                    timeout=60,
                ).status_code
            ),
        )
        assert sorted(statuses) == [200] * 19 + [201], statuses
        found = requests.get(
            f"{live_server}/Patient?identifier={NHS}|{value}&_total=accurate", timeout=30
        ).json()
        assert found["total"] == 1


def test_two_updates_racing_on_one_if_match_give_one_200_and_one_412(
    live_server: str, config: Config
) -> None:
    for round_ in range(10):
        id_ = f"g-race-{round_}"
        created = requests.put(
            f"{live_server}/Goal/{id_}", json=goal(id=id_), headers=HEADERS, timeout=30
        )
        assert created.status_code == 201
        statuses = _at_once(
            2,
            lambda i, id_=id_: (
                requests.put(
                    f"{live_server}/Goal/{id_}",
                    json=goal(id=id_, lifecycleStatus=["on-hold", "cancelled"][i]),
                    headers={**HEADERS, "If-Match": 'W/"1"'},
                    timeout=60,
                ).status_code
            ),
        )
        assert sorted(statuses) == [200, 412], statuses
        current = requests.get(f"{live_server}/Goal/{id_}", timeout=30)
        assert current.headers["ETag"] == 'W/"2"'


def test_updates_without_if_match_racing_all_succeed_as_new_versions(
    live_server: str, config: Config
) -> None:
    requests.put(f"{live_server}/Goal/busy", json=goal(id="busy"), headers=HEADERS, timeout=30)
    # each writer changes something (an update that changes nothing is no new version)
    statuses = _at_once(
        8,
        lambda i: (
            requests.put(
                f"{live_server}/Goal/busy",
                json=goal(id="busy", note=[{"text": f"writer {i}"}]),
                headers=HEADERS,
                timeout=60,
            ).status_code
        ),
    )
    assert statuses == [200] * 8
    history = requests.get(f"{live_server}/Goal/busy/_history?_count=50", timeout=30).json()
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"])
    assert versions == list(range(1, 10))
