"""The core vital-signs profiles, applied by code: https://hl7.org/fhir/R4/observation-vitalsigns.html.

R4 says an Observation whose code is one of the vital signs SHALL conform to the matching core
profile (heartrate, bp, bodyweight, ...), whether or not it claims it. ``vital_sign_profile``
finds that profile from the LOINC code, as the HL7 reference validator does (its
ObservationValidator: the first ``code.coding`` with system ``http://loinc.org`` and one of the
codes of the table on that page; 59408-5, oxygen saturation by pulse oximetry, counts as oxygen
saturation too).

The profiles are vendored with their published snapshots (``definitions/r4-vitalsigns.json``).
The profile walk checks only what a profile changes from the base (the base validator owns the
rest), so ``marked_snapshot`` compares each snapshot element with the element of the base it
constrains and records what differs in ``CHANGED``, as snapshot generation does for our own
profiles.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from service.validation.snapshots import CHANGED

LOINC = "http://loinc.org"
_CORE = "http://hl7.org/fhir/StructureDefinition/"
# observation-vitalsigns.html, "Vital Signs" table: LOINC code -> profile
VITAL_SIGN_CODES = {
    "85353-1": _CORE + "vitalspanel",
    "9279-1": _CORE + "resprate",
    "8867-4": _CORE + "heartrate",
    "2708-6": _CORE + "oxygensat",
    "59408-5": _CORE + "oxygensat",
    "8310-5": _CORE + "bodytemp",
    "8302-2": _CORE + "bodyheight",
    "9843-4": _CORE + "headcircum",
    "29463-7": _CORE + "bodyweight",
    "39156-5": _CORE + "bmi",
    "85354-9": _CORE + "bp",
}
# What a profile may change on an element that the profile walk checks
_COMPARED = ("min", "max", "type", "binding", "slicing", "maxLength")
_VALUE_PREFIXES = ("fixed", "pattern", "minValue", "maxValue")
_SLICE = re.compile(r":[^.]+")


def vital_sign_profile(resource: dict[str, Any]) -> tuple[str, str] | None:
    """(profile URL, LOINC code) when ``resource`` is an Observation of a vital sign."""
    if resource.get("resourceType") != "Observation":
        return None
    code = resource.get("code")
    codings = code.get("coding") if isinstance(code, dict) else None
    if not isinstance(codings, list):
        return None
    for coding in codings:
        if not isinstance(coding, dict) or coding.get("system") != LOINC:
            continue
        value = coding.get("code")
        if isinstance(value, str) and value in VITAL_SIGN_CODES:
            return VITAL_SIGN_CODES[value], value
    return None


def _binding(element: dict[str, Any]) -> tuple[Any, Any]:
    binding = element.get("binding") or {}
    return binding.get("strength"), str(binding.get("valueSet", "")).split("|", 1)[0] or None


def _types(element: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [
        (t.get("code"), tuple(t.get("targetProfile", ())), tuple(t.get("profile", ())))
        for t in element.get("type", [])
    ]


def _differences(element: dict[str, Any], base: dict[str, Any] | None) -> set[str]:
    """The properties of ``element`` that say more than ``base`` (everything, without a base)."""
    base = base or {}
    changed: set[str] = set()
    for key in _COMPARED:
        if key == "type":
            same = _types(element) == _types(base)
        elif key == "binding":
            same = _binding(element) == _binding(base)
        else:
            same = element.get(key) == base.get(key)
        if not same and key in element:
            changed.add(key)
    for key, value in element.items():
        if key.startswith(_VALUE_PREFIXES) and base.get(key) != value:
            changed.add(key)
    known = {c.get("key") for c in base.get("constraint", [])}
    for constraint in element.get("constraint", []):
        if constraint.get("key") not in known:
            changed.update(("constraint", f"constraint:{constraint.get('key')}"))
    return changed


def marked_snapshot(
    sd: dict[str, Any], type_elements: Callable[[str], list[dict[str, Any]] | None]
) -> list[dict[str, Any]]:
    """The published snapshot of a core profile, each element marked with what it changes.

    ``type_elements`` gives the base snapshot of a type (the profile's resource type, and the
    data types whose elements the profile unfolds, such as ``Observation.code.coding``).
    """
    elements: list[dict[str, Any]] = copy.deepcopy(sd["snapshot"]["element"])
    base = {e["id"]: e for e in type_elements(sd["type"]) or []}
    own = {e["id"]: e for e in elements}
    for element in elements:
        found = _base_of(element["id"], base, own, type_elements)
        element[CHANGED] = sorted(_differences(element, found))
        # a choice element sliced by type names no slicing in R4 snapshots: it is by type
        sliced = any(i.startswith(element["id"] + ":") for i in own)
        if sliced and "slicing" not in element and element["path"].endswith("[x]"):
            element["slicing"] = {
                "discriminator": [{"type": "type", "path": "$this"}],
                "rules": "open",
            }
            element[CHANGED] = sorted({*element[CHANGED], "slicing"})
    return elements


def _base_of(
    element_id: str,
    base: dict[str, dict[str, Any]],
    own: dict[str, dict[str, Any]],
    type_elements: Callable[[str], list[dict[str, Any]] | None],
) -> dict[str, Any] | None:
    """The base element that ``element_id`` constrains: in the base snapshot (slice names
    dropped), or inside the data type of its nearest ancestor of one type (as the profile
    narrowed it: ``Observation.value[x]:valueQuantity`` is a Quantity)."""
    plain = _SLICE.sub("", element_id)
    if plain in base:
        return base[plain]
    parts = element_id.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        ancestor = ".".join(parts[:cut])
        holder = own.get(ancestor) or base.get(_SLICE.sub("", ancestor))
        if holder is None:
            continue
        codes = [t.get("code") for t in holder.get("type", [])]
        if len(codes) != 1 or not isinstance(codes[0], str):
            return None
        inner = {e["id"]: e for e in type_elements(codes[0]) or []}
        rest = _SLICE.sub("", ".".join(parts[cut:]))
        return _base_of(f"{codes[0]}.{rest}", inner, {}, type_elements)
    return None
