"""Date ranges (search.html#date): an instant to the millisecond in UTC, the form the service
writes for every meta.lastUpdated and AuditEvent.recorded, is read by a short path; it must
give the range the general pattern gives, and refuse what the general pattern refuses."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from service.validation.dates import date_range

_TWO = st.integers(min_value=0, max_value=99).map(lambda n: f"{n:02d}")
_INSTANTS = st.builds(
    lambda year, month, day, hour, minute, second, millis: (
        f"{year:04d}-{month}-{day}T{hour}:{minute}:{second}.{millis:03d}Z"
    ),
    st.integers(min_value=0, max_value=9999),
    _TWO,
    _TWO,
    _TWO,
    _TWO,
    _TWO,
    st.integers(min_value=0, max_value=999),
)


@settings(max_examples=500, deadline=None)
@given(_INSTANTS)
def test_the_short_path_agrees_with_the_general_pattern(value: str) -> None:
    # a leading space is stripped by the general path only: it reads the same text there
    assert date_range(value) == date_range(" " + value)


def test_an_instant_covers_its_millisecond() -> None:
    low, high = date_range("2026-12-07T10:00:00.123Z") or (0, 0)
    assert low == 1_796_637_600_123_000
    assert high == low + 999


def test_days_and_times_that_do_not_exist_are_refused() -> None:
    for value in (
        "2026-02-29T10:00:00.000Z",
        "2026-04-31T10:00:00.000Z",
        "2026-12-07T24:00:00.000Z",
        "2026-12-07T10:60:00.000Z",
        "0000-01-01T00:00:00.000Z",
    ):
        assert date_range(value) is None, value
    assert date_range("2024-02-29T10:00:00.000Z") is not None
