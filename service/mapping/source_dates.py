"""Read a date or date-time from source text, as a mapping's value of type date or dateTime.

The mapping's strptime formats are tried in order, then ISO 8601 and HL7 v2 DTM. A time
without an offset is placed in the mapping's ``source.timezone`` (there is no silent UTC), and
a local time the clocks skip or repeat needs ``clock_change: earlier`` or ``later``. Every
impossible date is an error at its location, never an exception.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

_HL7_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?)?([+-]\d{4})?"
)
_ISO_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?"
)
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
_CLOCK_DIRECTIVES = re.compile(r"%[HIMSfpXc]")


class DateReader:
    """Read one date or date-time: the mapping's strptime formats in order, then ISO 8601 and
    HL7 v2 DTM; every impossible date is an error at its location, never an exception."""

    def __init__(
        self,
        formats: list[str],
        zone: ZoneInfo | None,
        policy: str,
        fail: Callable[[str], NoReturn],
    ) -> None:
        self.formats = formats  # strptime formats, tried in order
        self.zone = zone  # the source's time zone, for times without an offset
        self.policy = policy  # clock_change: error, earlier or later
        self.fail = fail  # raises the located MappingError for a message

    def read(self, text: str, kind: str) -> str:
        """``text`` as a FHIR ``date`` or ``dateTime`` (``kind``)."""
        stripped = text.strip()
        for fmt in self.formats:
            try:
                parsed = datetime.strptime(stripped, fmt)
            except ValueError:
                continue
            if kind == "date":
                return parsed.date().isoformat()
            if parsed.tzinfo is not None:
                return parsed.isoformat()
            if not _CLOCK_DIRECTIVES.search(fmt):
                return parsed.date().isoformat()
            return self.localise(parsed, text)
        iso = _ISO_DATETIME.fullmatch(stripped)
        if iso is not None:
            day, clock, offset = iso.groups()
            moment = self.real(f"{day}T{clock}", text)
            if kind == "date":
                return moment.date().isoformat()
            if offset is None:
                return self.localise(moment, text)
            clock = clock if len(clock) > 5 else clock + ":00"
            return f"{day}T{clock}{self.offset(offset, text)}"
        if _DATE.fullmatch(stripped):
            parts = [int(p) for p in stripped.split("-")]
            self.real_date(parts, text)
            return stripped
        match = _HL7_DTM.fullmatch(stripped)
        if match is None:
            expected = f" (expected one of: {', '.join(self.formats)})" if self.formats else ""
            self.fail(
                f"value {text!r} is not a {'date' if kind == 'date' else 'date-time'}{expected}"
            )
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        parts = [int(p) for p in (year, month, day) if p]
        self.real_date(parts, text)
        if kind == "date" or hour is None:
            return "-".join(p for p in (year, month, day) if p)
        if month is None or day is None:
            self.fail(f"value {text!r} has a time but no full date")
        clock = f"{hour}:{minute or '00'}:{second or '00'}" + (f".{fraction}" if fraction else "")
        local = f"{year}-{month}-{day}T{clock}"
        moment = self.real(local, text)
        if offset is None:
            return self.localise(moment, text)
        return f"{local}{self.offset(offset, text)}"

    def real_date(self, parts: list[int], text: str) -> None:
        try:
            date(parts[0], *[*parts[1:], 1, 1][:2])
        except ValueError as exc:
            self.fail(f"value {text!r} is not a real date ({exc})")

    def real(self, local: str, text: str) -> datetime:
        try:
            return datetime.fromisoformat(local)
        except ValueError as exc:
            self.fail(f"value {text!r} is not a real date and time ({exc})")

    def offset(self, offset: str, text: str) -> str:
        if offset == "Z":
            return offset
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59 or (hours == 14 and minutes):
            self.fail(f"value {text!r} has no real time zone offset ({offset})")
        return f"{offset[0]}{digits[:2]}:{digits[2:]}"

    def localise(self, naive: datetime, text: str) -> str:
        zone = self.zone
        if zone is None:
            self.fail(
                f"value {text!r} has a time but no time zone offset, and the mapping sets no "
                "source.timezone (there is no silent UTC)"
            )
        first = naive.replace(tzinfo=zone, fold=0)
        second = naive.replace(tzinfo=zone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return first.isoformat()
        gap = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
        if self.policy not in ("earlier", "later"):
            what = "does not exist" if gap else "happens twice"
            self.fail(
                f"value {text!r} {what} in {zone.key} (the clocks change then); say which "
                "instant is meant with clock_change: earlier or later"
            )
        earlier, later = sorted((first, second), key=lambda moment: moment.astimezone(UTC))
        return (earlier if self.policy == "earlier" else later).isoformat()


def date_formats(value: Any) -> list[str]:
    """A mapping's ``format`` or ``date_formats``: one strptime format or a list of them."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]
