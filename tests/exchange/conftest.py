"""Clean-up of the real instances the exchange tests start."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.exchange.instances import Instance


@pytest.fixture(autouse=True, scope="session")
def _drop_instance_databases() -> Iterator[None]:
    yield
    for instance in Instance.made:
        instance.stop()
        instance.drop_database()
