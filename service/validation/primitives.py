"""Primitive values of R4 (https://hl7.org/fhir/R4/datatypes.html#primitive): the JSON type
and format each primitive type takes, and how a value is quoted in a message."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from service.errors import Issue
from service.validation.bundle_rules import uri_problem
from service.validation.dates import date_range
from service.validation.definitions import TypeModel
from service.validation.narrative import xhtml_problem

_INT_RANGES = {
    "integer": (-(2**31), 2**31 - 1),
    "unsignedInt": (0, 2**31 - 1),
    "positiveInt": (1, 2**31 - 1),
}
_STRING_PRIMITIVES = frozenset(
    {
        "string",
        "code",
        "id",
        "markdown",
        "uri",
        "url",
        "canonical",
        "oid",
        "uuid",
        "base64Binary",
        "instant",
        "date",
        "dateTime",
        "time",
        "xhtml",
    }
)
_CONTROL = re.compile(r"[\x01-\x08\x0b\x0c\x0e-\x1f]")
_URI_TYPES = frozenset({"uri", "url", "canonical"})
_DATE_TYPES = frozenset({"date", "dateTime", "instant"})


def primitive_issues(value: Any, type_code: str, model: TypeModel, expr: str) -> list[Issue]:
    """The problem with a primitive ``value`` of ``type_code`` at ``expr``, if any: an error
    when it has the wrong JSON type or format, a warning for a control character."""
    problem: str | None = None
    if type_code == "boolean":
        if not isinstance(value, bool):
            problem = "must be true or false"
    elif type_code in _INT_RANGES:
        low, high = _INT_RANGES[type_code]
        if isinstance(value, bool) or not isinstance(value, int):
            problem = "must be a JSON whole number"
        elif not low <= value <= high:
            problem = f"must be between {low} and {high}"
    elif type_code == "decimal":
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            problem = "must be a JSON number"
        elif isinstance(value, float) and not math.isfinite(value):
            problem = "must be a finite number"
    elif type_code in _STRING_PRIMITIVES:
        if not isinstance(value, str):
            problem = "must be a JSON string"
        elif "\x00" in value:
            # Not storable (PostgreSQL text refuses it), and never meaningful in FHIR
            problem = "contains the character U+0000"
        elif (value.strip() == "" and type_code != "string") or value == "":
            problem = "must not be empty"
        elif type_code == "xhtml":
            if not value.lstrip().startswith("<div"):
                problem = "must be an XHTML <div> element"
            else:
                problem = xhtml_problem(value)
        elif model.regex is not None and model.regex.fullmatch(value) is None:
            problem = "is not a valid " + type_code
        elif type_code in _DATE_TYPES and date_range(value[:10]) is None:
            # the R4 regexes take any day 01-31 of any month; the day (its first ten
            # characters) must exist, as search reads it
            problem = "is not a day of the calendar"
        elif type_code in _URI_TYPES and value[:4].lower() == "urn:":
            # a uri may end in a fragment (RFC 3986 3.5), as meta.source "<uri>#<request>"
            problem = uri_problem(value.split("#", 1)[0] if type_code == "uri" else value)
    if problem is not None:
        return [
            Issue(
                "error",
                "value",
                f"The value {short(value)} {problem} ({type_code})",
                (expr,),
            )
        ]
    if isinstance(value, str) and _CONTROL.search(value):
        # datatypes.html#string: strings SHOULD NOT contain characters below U+0020 other
        # than tab, CR and LF
        return [
            Issue(
                "warning",
                "value",
                f"The value {short(value)} contains a control character ({type_code})",
                (expr,),
            )
        ]
    return []


def short(value: Any) -> str:
    """``value`` as a message quotes it: its repr, cut to 60 characters."""
    text = getattr(value, "text", None) if isinstance(value, Decimal) else None
    text = text or repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
