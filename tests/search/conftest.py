"""A FhirService loaded with the search data set, on MemoryStore and on the SQL database."""

from __future__ import annotations

import functools

import pytest

from service import wire_fhir_service
from service.config import Config
from service.fhir.interactions import FhirService
from service.storage import Store
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from tests.conftest import wipe
from tests.direct import Direct
from tests.search.dataset import resources


@functools.cache
def _profiles() -> ProfileRegistry:
    """The profiles folder, read once (as the ``folders`` fixture does for the apps)."""
    return ProfileRegistry.load(Definitions.shared(), Config().profiles_dir)


def build_service(store: Store) -> FhirService:
    """A FhirService wired as create_app wires it, on ``store``."""
    return wire_fhir_service(Config(), store, _profiles())


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
        Direct(service).update(resource["resourceType"], resource["id"], resource)
    return service


@pytest.fixture(scope="module", params=["memory", "sql"])
def loaded(request: pytest.FixtureRequest, sql_store: SqlStore) -> FhirService:
    """The data set, loaded once per module and backend (the tests only read it)."""
    return loaded_service(request.param, sql_store)
