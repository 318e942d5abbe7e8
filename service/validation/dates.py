"""FHIR date, dateTime and instant values as microsecond ranges (search.html#date).

A value stands for the whole period its precision implies: ``2026`` is the year 2026,
``2026-11-20`` the day, ``2026-11-20T10:15`` that minute. Values without a time zone are taken
as UTC. Ranges are closed: [first microsecond, last microsecond].
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone, tzinfo

_PATTERN = re.compile(
    r"^(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)
# an instant to the millisecond in UTC, as the service writes them (meta.lastUpdated, the
# recorded time of its AuditEvents and Provenances): read without the general pattern
_INSTANT_MS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def date_range(value: str) -> tuple[int, int] | None:
    """The closed microsecond range of a FHIR date/dateTime/instant, or None if malformed."""
    if _INSTANT_MS.fullmatch(value):
        try:
            low = _micros(datetime.fromisoformat(value[:23]).replace(tzinfo=UTC))
        except ValueError:
            return None  # no such day or time (2026-02-30, 25:00)
        return low, low + 999
    match = _PATTERN.match(value.strip())
    if match is None:
        return None
    parts = match.groupdict()
    try:
        year = int(parts["year"])
        month = int(parts["month"] or 1)
        day = int(parts["day"] or 1)
        hour = int(parts["hour"] or 0)
        minute = int(parts["minute"] or 0)
        second = int(parts["second"] or 0)
        fraction = parts["fraction"] or ""
        micro = int((fraction + "000000")[:6]) if fraction else 0
        tz = UTC
        if parts["tz"] and parts["tz"] != "Z":
            sign = 1 if parts["tz"][0] == "+" else -1
            hours, minutes = parts["tz"][1:].split(":")
            tz = timezone(sign * timedelta(hours=int(hours), minutes=int(minutes)))
        start = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
        _micros(start)
    except (ValueError, OverflowError):
        return None
    try:
        end = _end(parts, start, year, month, fraction, tz)
    except OverflowError:
        end = None  # the period runs to the end of the calendar (9999-12-31 ...)
    low = _micros(start)
    high = _micros(end) - 1 if end is not None else _micros(_LAST)
    return low, high


def _end(
    parts: dict[str, str | None],
    start: datetime,
    year: int,
    month: int,
    fraction: str,
    tz: tzinfo,
) -> datetime | None:
    """The first moment after the period a value of this precision covers."""
    if parts["month"] is None:
        end = datetime(year + 1, 1, 1, tzinfo=tz) if year < 9999 else None
    elif parts["day"] is None:
        days = calendar.monthrange(year, month)[1]
        end = start + timedelta(days=days)
    elif parts["hour"] is None:
        end = start + timedelta(days=1)
    elif parts["second"] is None:
        end = start + timedelta(minutes=1)
    elif not fraction:
        end = start + timedelta(seconds=1)
    else:
        end = start + timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction), 6))))
    return end


def now_micros() -> int:
    """The current time in microseconds since the epoch."""
    return _micros(datetime.now(UTC))
