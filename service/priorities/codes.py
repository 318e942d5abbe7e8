"""The codes, profiles and identifier systems of what-matters resources (the confirmed codes
table in the README, "How it fits together")."""

from __future__ import annotations

from typing import Any

from service.validation.profiles import CANONICAL_BASE

LOINC = "http://loinc.org"
STATEMENT_CODE = "95541-9"  # Care experience preference (US Core 7+)
PRIORITIES_CODE = "81340-2"  # Goals AndOr preferences in order of priority - Reported
# Goals, preferences, and priorities for medical treatment [Reported] (US Core 7+)
TREATMENT_PREFERENCE_CODE = "75773-2"
PCO_CONCEPTS = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"
CATEGORIES = "http://terminology.hl7.org/CodeSystem/observation-category"
GOAL_PRIORITY = "http://terminology.hl7.org/CodeSystem/goal-priority"
LIST_ORDER = "http://terminology.hl7.org/CodeSystem/list-order"
PROVENANCE_ROLES = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
GOAL_ACCEPTANCE = "http://hl7.org/fhir/StructureDefinition/goal-acceptance"

PROFILE = CANONICAL_BASE + "/StructureDefinition/"
STATEMENT_PROFILE = PROFILE + "wmty-statement"
GOAL_PROFILE = PROFILE + "wmty-personal-goal"
LIST_PROFILE = PROFILE + "wmty-priorities-list"
CARE_SETTING = PROFILE + "wmty-care-setting"
CARE_SETTING_TYPE = PROFILE + "wmty-care-setting-type"
CARE_SETTING_TYPES = CANONICAL_BASE + "/CodeSystem/wmty-care-setting-type"
TREATMENT_PREFERENCE_PROFILE = PROFILE + "wmty-treatment-preference"
STATEMENT_PROFILES = (STATEMENT_PROFILE, TREATMENT_PREFERENCE_PROFILE)
STATEMENT_CODES = (STATEMENT_CODE, TREATMENT_PREFERENCE_CODE)
# On each entry of the merged List: every record of the item (who, where, when), and how the
# item changed since the instant asked about (``$what-matters?since=``).
RECORDED = PROFILE + "wmty-recorded"
CHANGE = PROFILE + "wmty-change"
LIST_ITEM_FLAGS = CANONICAL_BASE + "/CodeSystem/wmty-list-item-flag"

# Identifier systems for what the service records, so the same item is known as itself in
# every setting and a repeated request creates nothing new.
STATEMENT_IDS = CANONICAL_BASE + "/identifier/statement"
GOAL_IDS = CANONICAL_BASE + "/identifier/goal"
LIST_IDS = CANONICAL_BASE + "/identifier/priorities-list"


def coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    """A Coding, with its display when there is one."""
    result: dict[str, Any] = {"system": system, "code": code}
    if display:
        result["display"] = display
    return result


SURVEY = {"coding": [coding(CATEGORIES, "survey", "Survey")]}
WHAT_MATTERS = {"coding": [coding(PCO_CONCEPTS, "what-matters", "What Matters")]}


def extension_value(resource: dict[str, Any], url: str, value: str) -> Any:
    """The ``value`` (e.g. ``valueReference``) of the first extension with ``url``, or None."""
    for extension in resource.get("extension", []) or []:
        if isinstance(extension, dict) and extension.get("url") == url:
            return extension.get(value)
    return None
