"""Comparing FHIR values: the order of two numbers, two dates or times (at their precision),
or two quantities of one unit; what profiles' minValue/maxValue and Questionnaire limits and
enableWhen conditions compare."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from service.validation.dates import date_range


def as_decimal(value: Any) -> Decimal | None:
    """A number (or a string of one) as a Decimal; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal | str):
        return None
    try:
        return Decimal(str(value))
    except InvalidOperation:
        return None


def compare_values(value: Any, target: Any) -> int | None:
    """-1, 0 or 1 (numbers, dates and times, quantities of one unit), or None when the two
    cannot be ordered (different kinds or units)."""
    if isinstance(value, dict) and isinstance(target, dict):
        same_unit = (value.get("system"), value.get("code")) == (
            target.get("system"),
            target.get("code"),
        ) or value.get("unit") == target.get("unit")
        if not same_unit:
            return None
        return compare_values(value.get("value"), target.get("value"))
    if isinstance(value, str) and isinstance(target, str):
        first, second = date_range(value), date_range(target)
        if first is not None and second is not None:
            if first[1] < second[0]:
                return -1
            if first[0] > second[1]:
                return 1
            return 0 if first == second else None
        return (value > target) - (value < target)
    a, b = as_decimal(value), as_decimal(target)
    if a is None or b is None or isinstance(value, str) or isinstance(target, str):
        return None
    return (a > b) - (a < b)
