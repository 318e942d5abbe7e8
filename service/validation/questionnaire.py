"""Check a QuestionnaireResponse against its Questionnaire.

The rules are those of https://hl7.org/fhir/R4/questionnaireresponse.html ("The
QuestionnaireResponse must conform to the Questionnaire it references") and the Questionnaire
item definitions: each ``linkId`` must be an item of the Questionnaire at that place, answers
must have the value type the item's ``type`` asks for, required items must be answered once the
response is completed, only repeating items take several answers, coded answers come from
``answerOption`` or ``answerValueSet``, and the limits of the core extensions (``minValue``,
``maxValue``, ``minLength``, ``regex``, ``maxDecimalPlaces``, ``maxSize``, ``mimeType``,
``questionnaire-unitOption``, ``questionnaire-referenceResource``) hold. ``enableWhen`` decides
whether an item may be answered at all. Every issue names the item by its FHIRPath.

The Questionnaire is found by the caller (contained, the profiles folder or the server's store):
validation does no I/O.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from service.errors import Issue
from service.validation.dates import date_range
from service.validation.definitions import Definitions

# A function that finds a conformance resource by type and canonical URL (``url|version``)
Resolver = Callable[[str, str], "dict[str, Any] | None"]

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
# statuses in which the response claims to be finished, so required items must be there
_FINISHED = frozenset({"completed", "amended"})


@dataclass
class _Context:
    """What one check needs besides the item: the response, the Questionnaire, the issues."""

    response: dict[str, Any]
    questionnaire: dict[str, Any]
    finished: bool
    issues: list[Issue]
    by_link: dict[str, tuple[dict[str, Any], str]]

    def add(self, severity: str, code: str, text: str, where: str) -> None:
        self.issues.append(Issue(severity, code, text, (where,)))


class QuestionnaireChecker:
    """Checks QuestionnaireResponses; value sets are expanded with ``definitions``."""

    def __init__(self, definitions: Definitions) -> None:
        self._definitions = definitions

    def find(
        self, response: dict[str, Any], resolve: Resolver | None
    ) -> tuple[dict[str, Any] | None, list[Issue]]:
        """The Questionnaire ``response`` answers, or the issue saying it could not be found."""
        canonical = response.get("questionnaire")
        where = "QuestionnaireResponse.questionnaire"
        if not isinstance(canonical, str):
            return None, []
        if canonical.startswith("#"):
            for index, item in enumerate(response.get("contained") or []):
                if isinstance(item, dict) and item.get("id") == canonical[1:]:
                    if item.get("resourceType") == "Questionnaire":
                        return item, []
                    return None, [
                        Issue(
                            "error",
                            "invalid",
                            f"{canonical} names a contained {item.get('resourceType')}, "
                            "not a Questionnaire",
                            (f"QuestionnaireResponse.contained[{index}]",),
                        )
                    ]
            return None, [
                Issue(
                    "error", "not-found", f"No contained resource has id {canonical[1:]}", (where,)
                )
            ]
        found = resolve("Questionnaire", canonical) if resolve is not None else None
        if found is None:
            return None, [
                Issue(
                    "warning",
                    "not-found",
                    f"The Questionnaire {canonical} is not known here, so the answers were not "
                    "checked against it",
                    (where,),
                )
            ]
        if found.get("resourceType") != "Questionnaire":
            return None, [
                Issue(
                    "error",
                    "invalid",
                    f"{canonical} is a {found.get('resourceType')}, not a Questionnaire",
                    (where,),
                )
            ]
        return found, []

    def check(self, response: dict[str, Any], questionnaire: dict[str, Any]) -> list[Issue]:
        """Every way ``response`` departs from ``questionnaire``."""
        by_link: dict[str, tuple[dict[str, Any], str]] = {}
        for item, path in _walk(questionnaire.get("item"), "Questionnaire"):
            link = item.get("linkId")
            if isinstance(link, str):
                by_link.setdefault(link, (item, path))
        ctx = _Context(
            response,
            questionnaire,
            response.get("status") in _FINISHED,
            [],
            by_link,
        )
        self._items(
            ctx,
            _list(questionnaire.get("item")),
            _list(response.get("item")),
            "QuestionnaireResponse",
        )
        return ctx.issues

    # -- items ---------------------------------------------------------------------------------

    def _items(
        self,
        ctx: _Context,
        definitions: list[dict[str, Any]],
        answers: list[Any],
        where: str,
    ) -> None:
        """Items of one level: known, in order, not repeated unless allowed, required present."""
        order = {d.get("linkId"): i for i, d in enumerate(definitions)}
        last = -1
        seen: dict[str, int] = {}
        for index, item in enumerate(answers):
            path = f"{where}.item[{index}]"
            if not isinstance(item, dict):
                continue
            link = item.get("linkId")
            if not isinstance(link, str):
                continue  # the base rules report the missing linkId
            position = order.get(link)
            if position is None:
                elsewhere = ctx.by_link.get(link)
                if elsewhere is not None:
                    ctx.add(
                        "error",
                        "structure",
                        f"The item {link!r} is not allowed here: the Questionnaire has it at "
                        f"{elsewhere[1]}",
                        path,
                    )
                else:
                    ctx.add(
                        "error",
                        "structure",
                        f"The Questionnaire has no item with linkId {link!r}",
                        path,
                    )
                continue
            if position < last:
                ctx.add(
                    "error",
                    "structure",
                    f"The item {link!r} is out of order: items follow the Questionnaire's order",
                    path,
                )
            last = max(last, position)
            definition = definitions[position]
            seen[link] = seen.get(link, 0) + 1
            if seen[link] == 2 and not definition.get("repeats"):
                ctx.add(
                    "error",
                    "structure",
                    f"The item {link!r} does not repeat, so it may appear only once here",
                    path,
                )
            self._item(ctx, definition, item, path)
        for definition in definitions:
            link = definition.get("linkId")
            if (
                ctx.finished
                and definition.get("required") is True
                and definition.get("type") != "display"
                and link not in seen
                and self._enabled(ctx, definition)
            ):
                ctx.add(
                    "error",
                    "required",
                    f"The required item {link!r} has no answer, and the response is "
                    f"{ctx.response.get('status')}",
                    where,
                )

    def _item(
        self, ctx: _Context, definition: dict[str, Any], item: dict[str, Any], where: str
    ) -> None:
        type_ = definition.get("type")
        link = definition.get("linkId")
        answers = _list(item.get("answer"))
        children = _list(definition.get("item"))
        if not self._enabled(ctx, definition) and (answers or item.get("item")):
            ctx.add(
                "error",
                "business-rule",
                f"The item {link!r} is not enabled (its enableWhen conditions are not met), "
                "so it may not be answered",
                where,
            )
        text = item.get("text")
        wanted = definition.get("text")
        if isinstance(text, str) and isinstance(wanted, str) and text != wanted:
            ctx.add(
                "warning",
                "value",
                f"The item's text {text!r} is not the Questionnaire's {definition['text']!r}",
                where + ".text",
            )
        if type_ in ("group", "display"):
            if answers:
                ctx.add(
                    "error",
                    "structure",
                    f"The item {link!r} is a {type_} item, which takes no answer",
                    where + ".answer[0]",
                )
            if type_ == "display" and item.get("item"):
                ctx.add(
                    "error",
                    "structure",
                    f"The item {link!r} is a display item, which has no items",
                    where + ".item[0]",
                )
            if type_ == "group":
                self._items(ctx, children, _list(item.get("item")), where)
            return
        if item.get("item"):
            ctx.add(
                "error",
                "structure",
                f"The item {link!r} is a question: the items under it belong inside its answers "
                "(answer.item), not beside them",
                where + ".item[0]",
            )
        if len(answers) > 1 and not definition.get("repeats"):
            ctx.add(
                "error",
                "structure",
                f"The item {link!r} does not repeat, so it takes only one answer",
                where + f".answer[{1}]",
            )
        for index, answer in enumerate(answers):
            if isinstance(answer, dict):
                path = f"{where}.answer[{index}]"
                self._answer(ctx, definition, answer, path)
                nested = _list(answer.get("item"))
                if nested and not children:
                    ctx.add(
                        "error",
                        "structure",
                        f"The item {link!r} has no items in the Questionnaire, so its answers "
                        "carry none",
                        path + ".item[0]",
                    )
                elif children:
                    self._items(ctx, children, nested, path)

    # -- answers -------------------------------------------------------------------------------

    def _answer(
        self, ctx: _Context, definition: dict[str, Any], answer: dict[str, Any], where: str
    ) -> None:
        type_ = str(definition.get("type"))
        link = definition.get("linkId")
        found = [(k[5:], v) for k, v in answer.items() if k.startswith("value")]
        if not found:
            return  # the base rules (qrs-1) report an answer without a value
        kind, value = found[0]
        allowed = ANSWER_TYPES.get(type_, ())
        options = _list(definition.get("answerOption"))
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
        self, ctx: _Context, definition: dict[str, Any], kind: str, value: Any, where: str
    ) -> None:
        link = definition.get("linkId")
        if definition.get("type") == "open-choice" and kind == "String":
            return  # the free-text answer open-choice allows
        options = [o for o in _list(definition.get("answerOption")) if isinstance(o, dict)]
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
        for item in _list(questionnaire.get("contained")):
            if isinstance(item, dict) and item.get("id") == id_:
                if item.get("resourceType") != "ValueSet":
                    return None
                pairs: set[tuple[str, str]] = set()
                for part in _list(item.get("compose", {}).get("include")):
                    if not isinstance(part, dict) or "concept" not in part:
                        return None
                    system = str(part.get("system"))
                    pairs |= {(system, str(c.get("code"))) for c in part["concept"]}
                for entry in _list(item.get("expansion", {}).get("contains")):
                    pairs.add((str(entry.get("system")), str(entry.get("code"))))
                return frozenset(pairs)
        return None

    def _limits(
        self, ctx: _Context, definition: dict[str, Any], kind: str, value: Any, where: str
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
        ctx: _Context,
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
            if isinstance(size, int) and _number(limit) is not None and size > _number(limit):  # type: ignore[operator]
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

    # -- enableWhen ----------------------------------------------------------------------------

    def _enabled(self, ctx: _Context, definition: dict[str, Any]) -> bool:
        """Whether the item's enableWhen conditions hold (https://hl7.org/fhir/R4/questionnaire-definitions.html#Questionnaire.item.enableWhen)."""
        conditions = [c for c in _list(definition.get("enableWhen")) if isinstance(c, dict)]
        if not conditions:
            return True
        results = [self._condition(ctx, c) for c in conditions]
        if definition.get("enableBehavior") == "any":
            return any(results)
        return all(results)

    def _condition(self, ctx: _Context, condition: dict[str, Any]) -> bool:
        question = condition.get("question")
        operator = condition.get("operator")
        expected = [(k[6:], v) for k, v in condition.items() if k.startswith("answer")]
        values = [
            (k[5:], v)
            for item in _find_items(ctx.response.get("item"), question)
            for answer in _list(item.get("answer"))
            if isinstance(answer, dict)
            for k, v in answer.items()
            if k.startswith("value")
        ]
        if operator == "exists":
            wanted = expected[0][1] if expected else True
            return bool(values) == (wanted is True)
        if not expected:
            return False
        kind, target = expected[0]
        if operator == "!=":
            return not any(_equal(kind, v, target) for k, v in values if k == kind) and bool(values)
        if operator == "=":
            return any(_equal(kind, v, target) for k, v in values if k == kind)
        for k, v in values:
            if k != kind:
                continue
            order = compare_values(v, target)
            if order is None:
                continue
            if (
                (operator == ">" and order > 0)
                or (operator == "<" and order < 0)
                or (operator == ">=" and order >= 0)
                or (operator == "<=" and order <= 0)
            ):
                return True
        return False


# -- helpers -----------------------------------------------------------------------------------


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _walk(items: Any, where: str) -> Iterator[tuple[dict[str, Any], str]]:
    for index, item in enumerate(_list(items)):
        if isinstance(item, dict):
            path = f"{where}.item[{index}]"
            yield item, path
            yield from _walk(item.get("item"), path)


def _find_items(items: Any, link: Any) -> Iterator[dict[str, Any]]:
    """Every response item with ``link``, at any depth (inside answers too)."""
    for item in _list(items):
        if not isinstance(item, dict):
            continue
        if item.get("linkId") == link:
            yield item
        yield from _find_items(item.get("item"), link)
        for answer in _list(item.get("answer")):
            if isinstance(answer, dict):
                yield from _find_items(answer.get("item"), link)


def _extensions(definition: dict[str, Any]) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for extension in _list(definition.get("extension")):
        if isinstance(extension, dict) and isinstance(extension.get("url"), str):
            values = [v for k, v in extension.items() if k.startswith("value")]
            if values:
                found.setdefault(extension["url"], []).append(values[0])
    return found


def _same_option(option: dict[str, Any], kind: str, value: Any) -> bool:
    for key, wanted in option.items():
        if key == "value" + kind:
            return _equal(kind, value, wanted)
    return False


def _equal(kind: str, value: Any, target: Any) -> bool:
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


def _number(value: Any) -> Decimal | None:
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
    a, b = _number(value), _number(target)
    if a is None or b is None or isinstance(value, str) or isinstance(target, str):
        return None
    return (a > b) - (a < b)


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
