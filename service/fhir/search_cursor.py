"""The page token of a search ordered by id: a cursor that the next request brings back, so
paging keeps nothing on the server (https://hl7.org/fhir/R4/http.html#paging).

A cursor says where a page starts (after the last id of the page before it, or before the
first id of the page after it), the write sequence when the search began (``as_of``: what was
first written later is left out), the page's position (for the links) and when it was issued
(a day later it has expired). It is opaque to clients: URL-safe base64 of those values, then a
digest binding them to the search (type, criteria and order) and to whoever ran it (issuer,
subject, client, patient, scopes). A cursor brought with another search or another access
token does not match its digest and is refused (404) like an expired one.

The digest is not a secret-keyed signature, and needs not be one: each page runs the search
again, confined to the access of whoever asks, so a cursor made up by a client shows it only
what the same search without a cursor would.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from service.fhir.access import Access

PREFIX = "c."
LIFETIME_US = 86_400_000_000  # a day, as long as a kept search
# the parameters that shape what a search matches and in which order; the others (_count,
# _total, _summary, _elements, _include ...) may change from page to page
_PRESENTATION = frozenset(
    {"_count", "_total", "_summary", "_elements", "_format", "_pretty", "_contained"}
)


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after (``backward`` False) or before (True) the id ``key``."""

    as_of: int
    key: str
    backward: bool
    offset: int
    issued_us: int


def is_cursor(token: str) -> bool:
    """Whether a page token is a cursor (a kept search's token is a UUID)."""
    return token.startswith(PREFIX)


def binding(access: Access | None, type_: str, used: Sequence[tuple[str, str]]) -> str:
    """What a cursor is bound to: the search's type, criteria and order, and its owner."""
    shaping = sorted(
        (name, value)
        for name, value in used
        if name not in _PRESENTATION and not name.startswith(("_include", "_revinclude"))
    )
    owner = (
        ()
        if access is None
        else (access.issuer, access.subject, access.client_id, access.patient, access.scopes)
    )
    return repr((type_, shaping, owner))


def write_cursor(cursor: Cursor, bound_to: str) -> str:
    """The page token of ``cursor`` for the search ``bound_to`` names."""
    values = [cursor.as_of, cursor.key, int(cursor.backward), cursor.offset, cursor.issued_us]
    body = base64.urlsafe_b64encode(json.dumps(values, separators=(",", ":")).encode())
    text = body.decode("ascii").rstrip("=")
    return f"{PREFIX}{text}.{_digest(text, bound_to)}"


def read_cursor(token: str, bound_to: str, now_us: int) -> Cursor | None:
    """The cursor a page token holds, or None when it is malformed, belongs to another search
    or owner, or has expired."""
    if not is_cursor(token):
        return None
    text, _, digest = token[len(PREFIX) :].rpartition(".")
    if not text or digest != _digest(text, bound_to):
        return None
    try:
        padded = text + "=" * (-len(text) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        as_of, key, backward, offset, issued = values
    except (ValueError, TypeError):
        return None
    if not (
        isinstance(as_of, int)
        and isinstance(key, str)
        and isinstance(offset, int)
        and isinstance(issued, int)
        and offset >= 0
    ):
        return None
    if now_us - issued > LIFETIME_US:
        return None
    return Cursor(as_of, key, bool(backward), offset, issued)


def _digest(text: str, bound_to: str) -> str:
    return hashlib.sha256(f"{text}\n{bound_to}".encode()).hexdigest()[:32]


__all__ = ["Cursor", "binding", "is_cursor", "read_cursor", "write_cursor"]
