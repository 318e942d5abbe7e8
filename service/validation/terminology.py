"""Format checks for code systems this server cannot expand (LOINC, SNOMED CT).

Without a terminology server the service cannot say whether a LOINC or SNOMED CT code exists,
but it can say when one cannot exist: LOINC codes end in a mod-10 check digit
(https://loinc.org/kb/users-guide/calculating-mod-10-check-digits/), SNOMED CT identifiers in a
Verhoeff check digit (SNOMED CT Technical Implementation Guide, section 6.4).
"""

from __future__ import annotations

import re

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
_LOINC_FORMAT = re.compile(r"(\d{1,7})-(\d)")
_SCTID_FORMAT = re.compile(r"[1-9]\d{5,17}")
# LOINC part codes (LP...) and answer codes (LA...) carry their own check digits too.
_LOINC_OTHER = re.compile(r"L[APGL]\d{1,7}-\d")

_VERHOEFF_D = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
]
_VERHOEFF_P = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
]


def loinc_check_digit(number: str) -> int:
    """The LOINC mod-10 check digit of the part of a code before the hyphen."""
    digits = [int(d) for d in number]
    total = 0
    for position, digit in enumerate(reversed(digits)):
        if position % 2 == 0:
            doubled = digit * 2
            total += doubled // 10 + doubled % 10
        else:
            total += digit
    return (10 - total % 10) % 10


def verhoeff_valid(number: str) -> bool:
    """Whether a number's last digit is its Verhoeff check digit."""
    check = 0
    for position, digit in enumerate(reversed(number)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[position % 8][int(digit)]]
    return check == 0


def code_format_problem(system: str | None, code: str) -> str | None:
    """Why ``code`` cannot be a code of ``system``, or None if its format is possible."""
    if system == LOINC:
        if _LOINC_OTHER.fullmatch(code):
            return None
        match = _LOINC_FORMAT.fullmatch(code)
        if match is None:
            return f"{code!r} is not a LOINC code (digits, a hyphen and a check digit)"
        if loinc_check_digit(match.group(1)) != int(match.group(2)):
            return f"{code!r} is not a LOINC code: its check digit is wrong"
        return None
    if system == SNOMED:
        if "=" in code or ":" in code or " " in code.strip():
            return None  # a post-coordinated expression; not checked here
        if _SCTID_FORMAT.fullmatch(code) is None:
            return f"{code!r} is not a SNOMED CT identifier (6 to 18 digits)"
        if not verhoeff_valid(code):
            return f"{code!r} is not a SNOMED CT identifier: its check digit is wrong"
    return None
