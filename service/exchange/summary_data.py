"""The machine-readable block at the end of the "What matters to me" text: the patient's
statements, goals and ranked Lists as data, so that an import can read them back verbatim from
a partner that holds nothing but the document.

The text/plain attachment is the summary for people (``summary.py``), untouched, followed by::

    -----BEGIN WHAT MATTERS DATA 1-----
    {"resourceType":"Bundle","type":"collection",...}
    -----END WHAT MATTERS DATA 1 sha256=<hex of the JSON line's UTF-8 bytes>-----

- ``1`` is the format version; a reader refuses a version it does not know.
- The JSON is one line (JSON escapes every line break inside a string, so the patient's words,
  newlines included, never break the block), UTF-8 without ``\\u`` escapes: the words are the
  same bytes as in the human text above.
- It is a FHIR R4 ``collection`` Bundle: the Patient (its id and the identifiers of the
  systems the partner shares, nothing else: an import checks it is the patient asked for),
  then each statement (Observation), goal (Goal, with its status and what it addresses) and
  priorities List (its order is the ranking) as this service holds them, with identifiers,
  profiles, recorded times and authors. ``meta`` keeps the profile,
  ``source`` and the origin-instance tag only; references between these resources stay
  relative (``Observation/12``); a reference to anything else keeps its display only.
- The checksum lets a reader tell a block another system re-encoded or edited (a Unicode
  normalisation, a trimmed line) from the one written here: those words would no longer be
  verbatim, so the block is refused rather than imported.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

VERSION = 1
BEGIN = f"-----BEGIN WHAT MATTERS DATA {VERSION}-----"
_END = "-----END WHAT MATTERS DATA {version} sha256={digest}-----"
_BEGIN_LINE = re.compile(r"^-----BEGIN WHAT MATTERS DATA (\d+)-----$")
_END_LINE = re.compile(r"^-----END WHAT MATTERS DATA (\d+) sha256=([0-9a-f]{64})-----$")
_MARK = "-----BEGIN WHAT MATTERS DATA "
DATA_TYPES = ("Observation", "Goal", "List")


class NoData(ValueError):
    """The text carries no block this version can read (its reason says why)."""


def data_block(bundle: dict[str, Any]) -> str:
    """The block for ``bundle``, to append to the summary text (it starts on a new line)."""
    line = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(line.encode("utf-8")).hexdigest()
    return f"\n{BEGIN}\n{line}\n{_END.format(version=VERSION, digest=digest)}\n"


def collection(
    patient: dict[str, Any], resources: list[dict[str, Any]], base: str, timestamp: str
) -> dict[str, Any]:
    """The Bundle a block carries: the patient's id and identifiers, then the resources."""
    minimal = {
        "resourceType": "Patient",
        "id": patient["id"],
        "identifier": list(patient.get("identifier") or []),
    }
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": timestamp,
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r}
            for r in [minimal, *resources]
        ],
    }


def read_block(text: str) -> dict[str, Any]:
    """The Bundle of the last block in ``text``; NoData saying why when there is none to read."""
    found = text.rfind("\n" + _MARK)
    if found >= 0:
        start = found + 1
    elif text.startswith(_MARK):
        start = 0
    else:
        raise NoData("its text has no What Matters data block (written by another system?)")
    lines = text[start:].split("\n")
    begin = _BEGIN_LINE.match(lines[0].rstrip("\r"))
    if begin is None or int(begin.group(1)) != VERSION:
        raise NoData(f"its data block is of a version this service cannot read: {lines[0]!r}")
    end = _END_LINE.match(lines[2].rstrip("\r")) if len(lines) > 2 else None
    if end is None:
        raise NoData("its data block is cut short (no END line after the data)")
    line = lines[1].rstrip("\r")
    if hashlib.sha256(line.encode("utf-8")).hexdigest() != end.group(2):
        raise NoData(
            "its data block was changed after it was written (checksum mismatch): the words "
            "could not be restored verbatim"
        )
    try:
        bundle = json.loads(line)
    except ValueError as exc:
        raise NoData(f"its data block is not JSON: {exc}") from exc
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise NoData("its data block holds no Bundle")
    return bundle


def resources_of(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The resources of a block's Bundle, in order."""
    entries = bundle.get("entry")
    return (
        [
            e["resource"]
            for e in entries
            if isinstance(e, dict) and isinstance(e.get("resource"), dict)
        ]
        if isinstance(entries, list)
        else []
    )
