"""A FhirService loaded with the search data set, on MemoryStore and on the SQL database."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.fhir.interactions import FhirService
from service.fhir.searchparams import SearchParameters
from service.storage import Store
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from service.validation.definitions import Definitions
from service.validation.profiles import load_profile_resources, search_parameters
from service.validation.structure import StructureValidator
from tests.conftest import wipe
from tests.search.dataset import resources

PROFILES = Path(__file__).resolve().parents[2] / "profiles"


def build_service(store: Store) -> FhirService:
    """A FhirService wired as create_app wires it, on ``store``."""
    definitions = Definitions.shared()
    params = SearchParameters.shared(
        definitions.search_parameters + search_parameters(load_profile_resources(PROFILES))
    )
    return FhirService(store, StructureValidator(definitions), params, definitions)


def loaded_service(backend: str, sql_store: SqlStore) -> FhirService:
    """The data set on a fresh MemoryStore or the emptied SQL store, written through the
    service (so it is validated and indexed)."""
    store: Store
    if backend == "memory":
        store = MemoryStore()
    else:
        wipe(sql_store)
        store = sql_store
    service = build_service(store)
    for resource in resources():
        service.update(resource["resourceType"], resource["id"], resource)
    return service


@pytest.fixture(scope="module", params=["memory", "sql"])
def loaded(request: pytest.FixtureRequest, sql_store: SqlStore) -> FhirService:
    """The data set, loaded once per module and backend (the tests only read it)."""
    return loaded_service(request.param, sql_store)
