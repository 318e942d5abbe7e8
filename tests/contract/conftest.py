"""The stores every contract test runs on: memory, and SQL (SQLite or PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.storage import Store
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from tests.conftest import wipe


@pytest.fixture(params=["memory", "sql"])
def store(request: pytest.FixtureRequest, sql_store: SqlStore) -> Iterator[Store]:
    """Each store implementation, empty."""
    if request.param == "memory":
        yield MemoryStore()
    else:
        wipe(sql_store)
        yield sql_store
