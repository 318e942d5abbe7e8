"""Validate a QuestionnaireResponse against its Questionnaire.

The rules are those of https://hl7.org/fhir/R4/questionnaireresponse.html ("The
QuestionnaireResponse must conform to the Questionnaire it references") and the Questionnaire
item definitions: each ``linkId`` must be an item of the Questionnaire at that place, answers
must have the value type the item's ``type`` asks for, required items must be answered once the
response is completed, only repeating items take several answers, coded answers come from
``answerOption`` or ``answerValueSet``, and the limits of the core extensions (``minValue``,
``maxValue``, ``minLength``, ``regex``, ``maxDecimalPlaces``, ``maxSize``, ``mimeType``,
``questionnaire-unitOption``, ``questionnaire-referenceResource``) hold. ``enableWhen`` decides
whether an item may be answered at all. Every issue names the item by its FHIRPath.

This module finds the Questionnaire a response answers and walks the items (place, order,
repetition, required items, ``enableWhen``); each answer is validated against its item by
``questionnaire_answers.py``.

The Questionnaire is found by the caller (contained, the profiles folder or the server's store):
validation does no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from service.errors import Issue
from service.validation.comparison import compare_values
from service.validation.definitions import Definitions
from service.validation.questionnaire_answers import (
    AnswerValidator,
    ResponseContext,
    as_list,
    equal_values,
)

# A function that finds a conformance resource by type and canonical URL (``url|version``)
Resolver = Callable[[str, str], "dict[str, Any] | None"]

# statuses in which the response claims to be finished, so required items must be there
_FINISHED = frozenset({"completed", "amended"})


class QuestionnaireValidator:
    """Validate QuestionnaireResponses; value sets are expanded with ``definitions``."""

    def __init__(self, definitions: Definitions) -> None:
        self._answers = AnswerValidator(definitions)

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

    def validate(self, response: dict[str, Any], questionnaire: dict[str, Any]) -> list[Issue]:
        """Every way ``response`` departs from ``questionnaire``."""
        by_link: dict[str, tuple[dict[str, Any], str]] = {}
        for item, path in _walk(questionnaire.get("item"), "Questionnaire"):
            link = item.get("linkId")
            if isinstance(link, str):
                by_link.setdefault(link, (item, path))
        ctx = ResponseContext(
            response,
            questionnaire,
            response.get("status") in _FINISHED,
            [],
            by_link,
        )
        self._items(
            ctx,
            as_list(questionnaire.get("item")),
            as_list(response.get("item")),
            "QuestionnaireResponse",
        )
        return ctx.issues

    # -- items ---------------------------------------------------------------------------------

    def _items(
        self,
        ctx: ResponseContext,
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
        self, ctx: ResponseContext, definition: dict[str, Any], item: dict[str, Any], where: str
    ) -> None:
        type_ = definition.get("type")
        link = definition.get("linkId")
        answers = as_list(item.get("answer"))
        children = as_list(definition.get("item"))
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
                self._items(ctx, children, as_list(item.get("item")), where)
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
                self._answers.validate(ctx, definition, answer, path)
                nested = as_list(answer.get("item"))
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

    # -- enableWhen ----------------------------------------------------------------------------

    def _enabled(self, ctx: ResponseContext, definition: dict[str, Any]) -> bool:
        """Whether the item's enableWhen conditions hold (https://hl7.org/fhir/R4/questionnaire-definitions.html#Questionnaire.item.enableWhen)."""
        conditions = [c for c in as_list(definition.get("enableWhen")) if isinstance(c, dict)]
        if not conditions:
            return True
        results = [self._condition(ctx, c) for c in conditions]
        if definition.get("enableBehavior") == "any":
            return any(results)
        return all(results)

    def _condition(self, ctx: ResponseContext, condition: dict[str, Any]) -> bool:
        question = condition.get("question")
        operator = condition.get("operator")
        expected = [(k[6:], v) for k, v in condition.items() if k.startswith("answer")]
        values = [
            (k[5:], v)
            for item in _find_items(ctx.response.get("item"), question)
            for answer in as_list(item.get("answer"))
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
        if operator in ("=", "!="):
            same = any(equal_values(kind, v, target) for k, v in values if k == kind)
            return same if operator == "=" else not same and bool(values)
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


def _walk(items: Any, where: str) -> Iterator[tuple[dict[str, Any], str]]:
    for index, item in enumerate(as_list(items)):
        if isinstance(item, dict):
            path = f"{where}.item[{index}]"
            yield item, path
            yield from _walk(item.get("item"), path)


def _find_items(items: Any, link: Any) -> Iterator[dict[str, Any]]:
    """Every response item with ``link``, at any depth (inside answers too)."""
    for item in as_list(items):
        if not isinstance(item, dict):
            continue
        if item.get("linkId") == link:
            yield item
        yield from _find_items(item.get("item"), link)
        for answer in as_list(item.get("answer")):
            if isinstance(answer, dict):
                yield from _find_items(answer.get("item"), link)
