"""The FHIR core on its own: a Direct over a MemoryStore, driven by plain calls (no HTTP,
no Flask app, no database). The errors it raises are the typed ``FhirError``s the API layer
renders once as OperationOutcomes, so each test names the status the specification asks for."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service import wire_fhir_service
from service.config import Config
from service.fhir.results import Result
from service.storage.memory import MemoryStore
from tests.builders import BASE
from tests.direct import Direct


@pytest.fixture
def fhir(folders: dict[str, Any]) -> Direct:
    """An empty FHIR core, wired as the application wires it, on a fresh MemoryStore."""
    return Direct(
        wire_fhir_service(Config(public_base_url=BASE), MemoryStore(), folders["registry"])
    )


def body(result: Result) -> dict[str, Any]:
    """The resource or Bundle a result carries, whichever way it was produced."""
    if result.body is not None:
        return result.body
    if result.text is not None:
        parsed: dict[str, Any] = json.loads(result.text)
        return parsed
    assert result.stored is not None, result
    assert result.stored.content is not None, result
    stored: dict[str, Any] = json.loads(result.stored.content)
    return stored
