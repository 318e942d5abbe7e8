"""The Python client (``service/client.py``) and an independent check of what the service emits:
every resource of ``$what-matters``, search and read parses with the ``fhir.resources`` R4B
models. The README's client example runs as written against a live server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.observation import Observation
from flask.testing import FlaskClient

from service.client import WhatMattersClient, WhatMattersError
from service.config import Config
from tests.priorities.conversations import NHS
from tests.priorities.test_every_source import EXPECTED, GOALS, _said, _scenario

README = Path(__file__).resolve().parents[2] / "README.md"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def _parse(resource: dict[str, Any]) -> Any:
    return get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_every_resource_the_service_returns_parses_as_r4b(client: FlaskClient) -> None:
    _scenario(client)
    answers: list[dict[str, Any]] = [client.get("/fhir/Patient/p1/$what-matters").get_json()]
    answers.append(client.get("/fhir/Patient/p1/$what-matters?history=true").get_json())
    for type_ in ("Patient", "Observation", "Goal", "List", "Provenance"):
        answers.append(client.get(f"/fhir/{type_}?_count=100").get_json())
    answers.append(
        client.get("/fhir/Observation?patient=p1&_revinclude=Provenance:target").get_json()
    )
    parsed = 0
    for bundle in answers:
        _parse(bundle)
        for entry in bundle.get("entry", []):
            resource = entry["resource"]
            _parse(resource)
            if "id" in resource:  # the merged List is a view: it has no id, nothing to read
                read = client.get(f"/fhir/{resource['resourceType']}/{resource['id']}")
                assert read.status_code == 200
                _parse(read.get_json())
            parsed += 1
    assert parsed > 40


def _readme_example() -> str:
    text = README.read_text()
    found = re.search(r"<!-- client example -->\s*```python\n(.*?)```", text, re.S)
    assert found is not None, "the README shows the client example"
    return found.group(1)


def test_readme_client_example_runs_against_a_live_server(
    live_server: str, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    del config  # asked for to start from an empty database: the example's NHS number is unique
    example = _readme_example()
    assert len(example.strip().splitlines()) <= 5
    patient = {
        "resourceType": "Patient",
        "id": "readme",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
    }
    assert requests.put(
        f"{live_server}/Patient/readme", json=patient, headers=FHIR_JSON, timeout=30
    ).ok
    talk = {
        "statements": [{"key": "s1", "text": "Singing in the chapel choir"}],
        "goals": [{"description": "Back at choir practice by Easter", "addresses": ["s1"]}],
        "recordedBy": {"display": "Dr Rhys Morgan"},
        "setting": {"display": "Bodnant Surgery"},
    }
    facade = live_server.rsplit("/fhir", 1)[0] + "/api/patients/"
    nhs = "https://fhir.nhs.uk/Id/nhs-number%7C9000000009"
    assert requests.post(f"{facade}{nhs}/priorities", json=talk, timeout=30).status_code == 201
    exec(example.replace("http://localhost:8080/fhir", live_server), {})  # noqa: S102
    assert (
        capsys.readouterr().out
        == "1 Singing in the chapel choir Dr Rhys Morgan ['Bodnant Surgery']\n"
    )


def test_client_returns_r4b_models_and_plain_items(live_server: str, client: FlaskClient) -> None:
    _scenario(client)  # written through the app, read by the client from the live server
    found = WhatMattersClient(live_server).priorities(identifier=f"{NHS}|9000000009")
    assert isinstance(found.bundle, Bundle)
    assert isinstance(found.merged, FhirList)
    assert found.merged.title == "What matters to me"
    assert len(found.lists) == 2  # the ward's and the GP's
    assert sorted(g.description.text for g in found.goals) == sorted(GOALS)
    assert all(isinstance(o, Observation) for o in found.observations)
    assert len(found.observations) == len(EXPECTED)  # the shared sentence once
    assert found.provenances
    assert sorted(_said(i.text) for i in found.items) == sorted(EXPECTED)
    assert [i.ranked for i in found.items] == [True] * 3 + [False] * 5
    shared = found.items[0]
    assert (shared.settings, shared.goals) == (
        ["Bodnant Surgery", "Ward 7, Ysbyty Gwynedd"],
        ["Be well enough to travel to Cardiff"],
    )
    same = WhatMattersClient(live_server).priorities(patient_id="p1")
    assert [i.text for i in same.items] == [i.text for i in found.items]


def test_client_errors_say_what_went_wrong(live_server: str, config: Config) -> None:
    del config  # an empty database
    client = WhatMattersClient(live_server)
    with pytest.raises(WhatMattersError, match=r"0 patients have the identifier urn:x\|nobody"):
        client.priorities(identifier="urn:x|nobody")
    with pytest.raises(WhatMattersError) as unknown:
        client.priorities(patient_id="nobody")
    assert unknown.value.status == 404
    assert "Patient/nobody" in str(unknown.value)
    with pytest.raises(ValueError, match="not both"):
        client.priorities(patient_id="p1", identifier="urn:x|p1")
