"""The reliability suite: real `whatmatters serve` processes under load, crashes, hostile input
and a database outage, each bounded in time (WHATMATTERS_RELIABILITY_SECONDS per phase). The
report is merged and printed by the hooks in tests/conftest.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.reliability import report

SECONDS = float(os.environ.get("WHATMATTERS_RELIABILITY_SECONDS", "12"))


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[report.Tally]:
    """This test's part of the report, saved when it ends."""
    mine = report.Tally(request.node.name)
    yield mine
    mine.save()


from tests.exchange.conftest import _drop_instance_databases  # noqa: E402 - shared clean-up

__all__ = ["_drop_instance_databases", "tally"]
