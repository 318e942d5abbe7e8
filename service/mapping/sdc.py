"""SDC observation-based extraction: one answered Questionnaire item as an Observation
(https://build.fhir.org/ig/HL7/sdc/extraction.html#observation-based-extraction), for a rule
with ``extract: sdc``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from service.mapping.sources import Record


def sdc_observation(record: Record, fail: Callable[[str], NoReturn]) -> dict[str, Any]:
    """The Observation of the answered item ``record``: its code, the response's subject,
    encounter, author and time, and the answer as the value; ``fail`` raises the located
    error (an item without a code, an answer that is not an object)."""
    response = record.resource or {}
    codes = record.question.get("code") or []
    if not codes:
        fail(
            f"the Questionnaire item {record.values.get('linkId')!r} has no code to extract",
        )
    observation: dict[str, Any] = {
        "status": "final",
        "code": {
            "coding": [{k: c[k] for k in ("system", "code", "display") if k in c} for c in codes]
        },
    }
    for key, target in (("subject", "subject"), ("encounter", "encounter")):
        if key in response:
            observation[target] = response[key]
    if "authored" in response:
        observation["effectiveDateTime"] = response["authored"]
    if "author" in response:
        observation["performer"] = [response["author"]]
    if response.get("id"):
        observation["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{response['id']}"}]
    answer = (record.values.get("answer") or [{}])[0]
    if not isinstance(answer, dict):
        fail("the item's answer is not an object")
    for key, value in answer.items():
        if key.startswith("value"):
            kind = key[5:]
            if kind == "Coding":
                observation["valueCodeableConcept"] = {"coding": [value]}
            elif kind in ("String", "Boolean", "Integer", "DateTime", "Time", "Quantity"):
                observation[key] = value
            elif kind == "Date":
                observation["valueDateTime"] = value
            else:
                observation["valueString"] = str(value)
    return observation
