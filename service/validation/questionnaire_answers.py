"""The answers of a QuestionnaireResponse item against the item's definition.

An answer must have the value type the item's ``type`` asks for
(https://hl7.org/fhir/R4/valueset-item-type.html); a coded answer comes from the item's
``answerOption`` or ``answerValueSet``; and the limits of the item and of the core extensions
(``maxLength``, ``minLength``, ``regex``, ``minValue``, ``maxValue``, ``maxDecimalPlaces``,
``maxSize``, ``mimeType``, ``questionnaire-unitOption``, ``questionnaire-unitValueSet``,
``questionnaire-referenceResource``) hold. ``questionnaire.py`` walks the items and calls
``AnswerValidator.validate`` for each answer.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from service.errors import Issue
from service.validation.comparison import as_decimal, compare_values
from service.validation.definitions import Definitions

_EXT = "http://hl7.org/fhir/StructureDefinition/"
MIN_VALUE = _EXT + "minValue"
MAX_VALUE = _EXT + "maxValue"
MIN_LENGTH = _EXT + "minLength"
REGEX = _EXT + "regex"
MAX_DECIMALS = _EXT + "maxDecimalPlaces"
MAX_SIZE = _EXT + "maxSize"
MIME_TYPE = _EXT + "mimeType"
UNIT_OPTION = _EXT + "questionnaire-unitOption"
UNIT_VALUE_SET = _EXT + "questionnaire-unitValueSet"
REFERENCE_RESOURCE = _EXT + "questionnaire-referenceResource"

# The answer value[x] each item type takes: https://hl7.org/fhir/R4/valueset-item-type.html
ANSWER_TYPES: dict[str, tuple[str, ...]] = {
    "boolean": ("Boolean",),
    "decimal": ("Decimal",),
    "integer": ("Integer",),
    "date": ("Date",),
    "dateTime": ("DateTime",),
    "time": ("Time",),
    "string": ("String",),
    "text": ("String",),
    "url": ("Uri",),
    "choice": ("Coding",),
    "open-choice": ("Coding", "String"),
    "attachment": ("Attachment",),
    "reference": ("Reference",),
    "quantity": ("Quantity",),
}
_TEXTUAL = frozenset({"string", "text", "url", "open-choice"})


@dataclass
class ResponseContext:
    """What one validation needs besides the item: the response, the Questionnaire, the issues."""

    response: dict[str, Any]
    questionnaire: dict[str, Any]
    finished: bool
    issues: list[Issue]
    by_link: dict[str, tuple[dict[str, Any], str]]

    def add(self, severity: str, code: str, text: str, where: str) -> None:
        self.issues.append(Issue(severity, code, text, (where,)))


class AnswerValidator:
    """Validate answers against their item; value sets are expanded with ``definitions``."""

    def __init__(self, definitions: Definitions) -> None:
        self._definitions = definitions

    def validate(
        self, ctx: ResponseContext, definition: dict[str, Any], answer: dict[str, Any], where: str
    ) -> None:
        type_ = str(definition.get("type"))
        link = definition.get("linkId")
        found = [(k[5:], v) for k, v in answer.items() if k.startswith("value")]
        if not found:
            return  # the base rules (qrs-1) report an answer without a value
        kind, value = found[0]
        allowed = ANSWER_TYPES.get(type_, ())
        options = as_list(definition.get("answerOption"))
        if type_ in ("choice", "open-choice"):
            option_types = {
                k[5:] for o in options if isinstance(o, dict) for k in o if k.startswith("value")
            }
            allowed = tuple(sorted(set(allowed) | option_types))
        if kind not in allowed:
            ctx.add(
                "error",
                "structure",
                f"The item {link!r} is of type {type_}, so its answer must be "
                + " or ".join(f"value{a}" for a in allowed)
                + f", not value{kind}",
                where,
            )
            return
        if type_ in ("choice", "open-choice"):
            self._choice(ctx, definition, kind, value, where)
        self._limits(ctx, definition, kind, value, where)

    def _choice(
        self, ctx: ResponseContext, definition: dict[str, Any], kind: str, value: Any, where: str
    ) -> None:
        link = definition.get("linkId")
        if definition.get("type") == "open-choice" and kind == "String":
            return  # the free-text answer open-choice allows
        options = [o for o in as_list(definition.get("answerOption")) if isinstance(o, dict)]
        if options:
            if not any(_same_option(o, kind, value) for o in options):
                ctx.add(
                    "error",
                    "code-invalid",
                    f"The answer {_show(value)} is not one of the item {link!r}'s answerOptions",
                    where,
                )
            return
        value_set = definition.get("answerValueSet")
        if not isinstance(value_set, str) or kind != "Coding" or not isinstance(value, dict):
            return
        if value_set.startswith("#"):
            codes = self._contained_codes(ctx.questionnaire, value_set[1:])
        else:
            codes = self._definitions.expand(value_set.split("|", 1)[0])
        if codes is None:
            ctx.add(
                "warning",
                "not-supported",
                f"The value set {value_set} cannot be expanded here, so the answer to "
                f"{link!r} was not checked against it",
                where,
            )
        elif (value.get("system"), value.get("code")) not in codes:
            ctx.add(
                "error",
                "code-invalid",
                f"The answer {_show(value)} is not in the value set {value_set} of the item "
                f"{link!r}",
                where,
            )

    def _contained_codes(
        self, questionnaire: dict[str, Any], id_: str
    ) -> frozenset[tuple[str, str]] | None:
        for item in as_list(questionnaire.get("contained")):
            if isinstance(item, dict) and item.get("id") == id_:
                if item.get("resourceType") != "ValueSet":
                    return None
                pairs: set[tuple[str, str]] = set()
                for part in as_list(item.get("compose", {}).get("include")):
                    if not isinstance(part, dict) or "concept" not in part:
                        return None
                    system = str(part.get("system"))
                    pairs |= {(system, str(c.get("code"))) for c in part["concept"]}
                for entry in as_list(item.get("expansion", {}).get("contains")):
                    pairs.add((str(entry.get("system")), str(entry.get("code"))))
                return frozenset(pairs)
        return None

    def _limits(
        self, ctx: ResponseContext, definition: dict[str, Any], kind: str, value: Any, where: str
    ) -> None:
        """maxLength, minLength, regex, minValue/maxValue, maxDecimalPlaces, units, targets."""
        link = definition.get("linkId")
        extensions = _extensions(definition)
        if isinstance(value, str) and definition.get("type") in _TEXTUAL:
            limit = definition.get("maxLength")
            if isinstance(limit, int) and len(value) > limit:
                ctx.add(
                    "error",
                    "too-long",
                    f"The answer to {link!r} is {len(value)} characters long; at most {limit} "
                    "are allowed",
                    where,
                )
            for shortest in extensions.get(MIN_LENGTH, []):
                if isinstance(shortest, int) and len(value) < shortest:
                    ctx.add(
                        "error",
                        "value",
                        f"The answer to {link!r} is {len(value)} characters long; at least "
                        f"{shortest} are needed",
                        where,
                    )
        if isinstance(value, str | int | float | Decimal) and not isinstance(value, bool):
            for pattern in extensions.get(REGEX, []):
                if isinstance(pattern, str) and not _matches(pattern, str(value)):
                    ctx.add(
                        "error",
                        "value",
                        f"The answer {_show(value)} to {link!r} does not match the pattern "
                        f"{pattern!r}",
                        where,
                    )
        for bound, low in ((MIN_VALUE, True), (MAX_VALUE, False)):
            for limit in extensions.get(bound, []):
                broken = _beyond(value, limit, low)
                if broken:
                    ctx.add(
                        "error",
                        "value",
                        f"The answer {_show(value)} to {link!r} is "
                        + ("below the minimum " if low else "above the maximum ")
                        + _show(limit),
                        where,
                    )
        if kind == "Decimal":
            for places in extensions.get(MAX_DECIMALS, []):
                if isinstance(places, int) and _decimals(value) > places:
                    ctx.add(
                        "error",
                        "value",
                        f"The answer {_show(value)} to {link!r} has more than {places} decimal "
                        "places",
                        where,
                    )
        if kind == "Attachment" and isinstance(value, dict):
            self._attachment(ctx, link, extensions, value, where)
        if kind == "Quantity" and isinstance(value, dict):
            units = [u for u in extensions.get(UNIT_OPTION, []) if isinstance(u, dict)]
            unit = (value.get("system"), value.get("code"))
            if units and unit not in {(u.get("system"), u.get("code")) for u in units}:
                ctx.add(
                    "error",
                    "code-invalid",
                    f"The unit {unit[1]!r} ({unit[0]}) is not one of the item {link!r}'s "
                    "unitOptions",
                    where,
                )
            for url in extensions.get(UNIT_VALUE_SET, []):
                codes = self._definitions.expand(str(url).split("|", 1)[0])
                if codes is not None and unit not in codes:
                    ctx.add(
                        "error",
                        "code-invalid",
                        f"The unit {unit[1]!r} is not in the value set {url} of the item {link!r}",
                        where,
                    )
        if kind == "Reference" and isinstance(value, dict):
            targets = [t for t in extensions.get(REFERENCE_RESOURCE, []) if isinstance(t, str)]
            reference = value.get("reference")
            named = value.get("type") or _reference_type(reference)
            if targets and named is not None and named not in targets and "Resource" not in targets:
                ctx.add(
                    "error",
                    "structure",
                    f"The answer to {link!r} refers to a {named}; the item allows "
                    + ", ".join(targets),
                    where,
                )

    def _attachment(
        self,
        ctx: ResponseContext,
        link: Any,
        extensions: dict[str, list[Any]],
        value: dict[str, Any],
        where: str,
    ) -> None:
        size = value.get("size")
        if not isinstance(size, int) and isinstance(value.get("data"), str):
            try:
                size = len(base64.b64decode(value["data"], validate=False))
            except (binascii.Error, ValueError):
                size = None
        for limit in extensions.get(MAX_SIZE, []):
            if isinstance(size, int) and as_decimal(limit) is not None and size > as_decimal(limit):  # type: ignore[operator]
                ctx.add(
                    "error",
                    "too-long",
                    f"The attachment answering {link!r} is {size} bytes; at most {limit} are "
                    "allowed",
                    where,
                )
        types = [t for t in extensions.get(MIME_TYPE, []) if isinstance(t, str)]
        content_type = value.get("contentType")
        if types and isinstance(content_type, str):
            plain = content_type.split(";", 1)[0].strip().lower()
            if plain not in {t.lower() for t in types}:
                ctx.add(
                    "error",
                    "value",
                    f"The attachment answering {link!r} is {content_type}; the item allows "
                    + ", ".join(types),
                    where,
                )


# -- helpers -----------------------------------------------------------------------------------


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _extensions(definition: dict[str, Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for extension in as_list(definition.get("extension")):
        if isinstance(extension, dict) and isinstance(extension.get("url"), str):
            values = [v for k, v in extension.items() if k.startswith("value")]
            if values:
                found.setdefault(extension["url"], []).append(values[0])
    return found


def _same_option(option: dict[str, Any], kind: str, value: Any) -> bool:
    for key, wanted in option.items():
        if key == "value" + kind:
            return equal_values(kind, value, wanted)
    return False


def equal_values(kind: str, value: Any, target: Any) -> bool:
    """Whether two values of the value[x] type ``kind`` are the same answer."""
    if kind == "Coding" and isinstance(value, dict) and isinstance(target, dict):
        same_code = value.get("code") == target.get("code")
        systems = (value.get("system"), target.get("system"))
        return same_code and (None in systems or systems[0] == systems[1])
    if kind == "Reference" and isinstance(value, dict) and isinstance(target, dict):
        return bool(value.get("reference") == target.get("reference"))
    if kind == "Quantity" and isinstance(value, dict) and isinstance(target, dict):
        return compare_values(value, target) == 0
    order = compare_values(value, target)
    return order == 0 if order is not None else bool(value == target)


def _beyond(value: Any, limit: Any, low: bool) -> bool:
    order = compare_values(value, limit)
    if order is None:
        return False
    return order < 0 if low else order > 0


def _decimals(value: Any) -> int:
    text = str(value)
    return len(text.split(".", 1)[1]) if "." in text and "e" not in text.lower() else 0


def _matches(pattern: str, text: str) -> bool:
    try:
        return re.fullmatch(pattern, text) is not None
    except re.error:
        return True  # a broken pattern is the Questionnaire's problem, not the answer's


def _reference_type(reference: Any) -> str | None:
    if not isinstance(reference, str) or reference.startswith("#"):
        return None
    parts = reference.split("/_history/", 1)[0].rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-2][:1].isupper() else None


def _show(value: Any) -> str:
    if isinstance(value, dict):
        if "code" in value:
            return f"{value.get('system', '')}#{value['code']}"
        if "value" in value:
            return f"{value['value']} {value.get('unit', value.get('code', ''))}".strip()
        return str(value.get("reference", value))
    return repr(value)
