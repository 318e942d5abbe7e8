"""The plain-JSON facade for apps that do not speak FHIR (documented in ``openapi.json``).

A thin layer over the two what-matters operations: it turns its JSON into the operation's
Parameters and the operation's Bundle into plain JSON, and holds no logic of its own. Errors
are OperationOutcomes like everywhere else, with the facade's JSON paths in ``expression``.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, request

from service.api.handlers import base_url, request_actor, since_parameter, what_matters
from service.api.negotiation import request_body
from service.errors import BadRequest, FhirError
from service.priorities.view import priorities

OPENAPI = Path(__file__).with_name("openapi.json")
_FIELDS = {
    "statement": {
        "key": "valueString",
        "text": "valueString",
        "code": "valueCodeableConcept",
        "identifier": "valueIdentifier",
        "effective": "valueDateTime",
    },
    "goal": {
        "key": "valueString",
        "description": "valueString",
        "priority": "valueCode",
        "targetDate": "valueDate",
        "start": "valueDate",
        "expressedBy": "valueReference",
        "acceptance": "valueCode",
        "identifier": "valueIdentifier",
        "status": "valueCode",
        "statusReason": "valueString",
    },
}
_PART_NAMES = {
    "targetDate": "target-date",
    "expressedBy": "expressed-by",
    "statusReason": "status-reason",
}


def _split(patient: str) -> tuple[str, str]:
    system, sep, value = patient.rpartition("|")
    if not sep or not value:
        raise BadRequest(
            "Name the patient as {system}|{value}, e.g. "
            "https://fhir.nhs.uk/Id/nhs-number|9000000009",
            expression=("patient",),
        )
    return system, value


def to_parameters(body: Any, system: str, value: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The operation's Parameters for a facade body, and the facade path of each parameter."""
    if not isinstance(body, dict):
        raise BadRequest("The body must be a JSON object", expression=("$",))
    parameters: list[dict[str, Any]] = [
        {"name": "patient-identifier", "valueIdentifier": {"system": system, "value": value}}
    ]
    paths: dict[str, str] = {"Parameters": "$"}
    unknown = set(body) - {"statements", "goals", "ranking", "recordedBy", "setting", "settingType"}
    if unknown:
        raise BadRequest(
            f"Unknown field(s) {', '.join(sorted(unknown))}",
            expression=tuple(f"$.{name}" for name in sorted(unknown)),
        )
    for plural, kind in (("statements", "statement"), ("goals", "goal")):
        items = body.get(plural, [])
        if not isinstance(items, list):
            raise BadRequest(f"{plural} must be a list", expression=(f"$.{plural}",))
        for index, item in enumerate(items):
            where = f"Parameters.parameter[{len(parameters)}]"
            paths[where] = f"$.{plural}[{index}]"
            if not isinstance(item, dict):
                raise BadRequest(
                    f"{plural}[{index}] must be an object", expression=(f"$.{plural}[{index}]",)
                )
            parts: list[dict[str, Any]] = []
            for name, field_value in item.items():
                if name == "addresses":
                    values = field_value if isinstance(field_value, list) else [field_value]
                    for key in values:
                        paths[f"{where}.part[{len(parts)}]"] = f"$.{plural}[{index}].addresses"
                        parts.append({"name": "addresses", "valueString": key})
                    continue
                fhir_type = _FIELDS[kind].get(name)
                paths[f"{where}.part[{len(parts)}]"] = f"$.{plural}[{index}].{name}"
                if fhir_type is None:
                    parts.append({"name": name, "valueString": str(field_value)})
                    continue
                parts.append({"name": _PART_NAMES.get(name, name), fhir_type: field_value})
            parameters.append({"name": kind, "part": parts})
    if "ranking" in body:
        where = f"Parameters.parameter[{len(parameters)}]"
        paths[where] = "$.ranking"
        ranking = body["ranking"] if isinstance(body["ranking"], list) else [body["ranking"]]
        for index in range(len(ranking)):
            paths[f"{where}.part[{index}]"] = f"$.ranking[{index}]"
        parameters.append(
            {"name": "ranking", "part": [{"name": "item", "valueString": k} for k in ranking]}
        )
    for name, parameter, fhir_type in (
        ("recordedBy", "recorder", "valueReference"),
        ("setting", "setting", "valueReference"),
        ("settingType", "setting-type", "valueCode"),
    ):
        if name in body:
            paths[f"Parameters.parameter[{len(parameters)}]"] = f"$.{name}"
            parameters.append({"name": parameter, fhir_type: body[name]})
    return {"resourceType": "Parameters", "parameter": parameters}, paths


def _facade_paths(error: FhirError, paths: dict[str, str]) -> FhirError:
    """The same error, its expressions rewritten to the facade's JSON paths."""

    def rewrite(expression: str) -> str:
        best = max((p for p in paths if expression.startswith(p)), key=len, default=None)
        return paths[best] if best is not None else expression

    issues = [
        replace(i, expression=tuple(dict.fromkeys(rewrite(e) for e in i.expression)))
        for i in error.outcome_issues()
    ]
    error.issues = issues
    return error


def build_facade() -> Blueprint:
    """The ``/api`` blueprint."""
    bp = Blueprint("facade", __name__, url_prefix="/api")

    @bp.get("/openapi.json")
    def openapi() -> Response:
        return Response(OPENAPI.read_bytes(), mimetype="application/json")

    @bp.get("/patients/<path:patient>/priorities")
    def get_priorities(patient: str) -> Response:
        system, value = _split(patient)
        return _priorities(system, value, 200, since_parameter())

    @bp.post("/patients/<path:patient>/priorities")
    def post_priorities(patient: str) -> Response:
        system, value = _split(patient)
        body, _ = request_body(request)
        parameters, paths = to_parameters(body, system, value)
        try:
            what_matters().record(request_actor(), None, parameters, base_url())
        except FhirError as error:
            raise _facade_paths(error, paths) from error
        return _priorities(system, value, 201)

    return bp


def _priorities(system: str, value: str, status: int, since: int | None = None) -> Response:
    """The patient's ranked priorities as the facade's JSON ($what-matters, made plain); with
    ``since``, each item's change mark (new, changed, removed) since then."""
    actor = request_actor()
    patient_id = what_matters().patient_by_identifier(actor, {"system": system, "value": value})
    result = what_matters().what_matters(actor, patient_id, False, base_url(), since)
    body = {"patient": {"system": system, "value": value}, **priorities(result.body or {})}
    return _json(body, status)


def _json(body: Any, status: int) -> Response:
    text = json.dumps(body, ensure_ascii=False)
    return Response(text, status=status, mimetype="application/json")
