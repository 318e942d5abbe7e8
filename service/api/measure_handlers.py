"""The handler of ``Measure/{id}/$evaluate-measure`` (R4 Measure-evaluate-measure): its
parameters read from the query string or a POSTed Parameters resource, the What Matters
measure evaluated (service.priorities.measure) and returned as a MeasureReport
(measure_report.py). ``HANDLERS`` is merged into the FHIR view's handler table.
"""

from __future__ import annotations

from collections.abc import Mapping

from flask import current_app

from service.api.handlers import Context, Handler, Params
from service.api.negotiation import request_body
from service.config import Config
from service.errors import BadRequest, NotFound
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import instant, now_us
from service.fhir.parameters import parameters_in
from service.fhir.results import Result
from service.fhir.router import FhirRequest
from service.priorities.measure import Figures, WhatMattersMeasure, parse_period
from service.priorities.measure_report import REPORT_TYPES, measure_report

MEASURE_ID = "what-matters"
DEFAULT_REVIEW_DAYS = 365
# the in-parameters and the value[x] a Parameters resource gives each
_IN = {
    "periodStart": ("valueDate", "valueDateTime"),
    "periodEnd": ("valueDate", "valueDateTime"),
    "reportType": ("valueCode", "valueString"),
    "subject": ("valueString", "valueReference"),
    "review-days": ("valueInteger", "valuePositiveInt"),
}


def measure(config: Config | None = None) -> WhatMattersMeasure:
    """The measure of this application (its minimum age from the settings)."""
    fhir: FhirService = current_app.extensions["whatmatters.fhir"]
    config = config or current_app.config["WHATMATTERS"]
    return WhatMattersMeasure(fhir, config.measure_min_age)


def _parameters(req: FhirRequest) -> dict[str, str]:
    """Each in-parameter given, from the query string and a POSTed Parameters body, once."""
    given: dict[str, list[str]] = {name: req.args(name) for name in _IN}
    if req.method == "POST" and req.body:
        body, _ = request_body(req)
        for where, name, parameter in parameters_in(body, "$evaluate-measure"):
            kinds = _IN.get(name)
            if kinds is None:
                raise BadRequest(f"$evaluate-measure has no in-parameter {name!r}", (where,))
            value = next((parameter[k] for k in kinds if k in parameter), None)
            if isinstance(value, dict):
                value = value.get("reference")
            if value is None or isinstance(value, bool):
                raise BadRequest(f"{name} is given as {' or '.join(kinds)}", (where,))
            given[name].append(str(value))
    once: dict[str, str] = {}
    for name, values in given.items():
        if len(values) > 1:
            raise BadRequest(f"{name} may be given once", expression=(name,))
        if values:
            once[name] = values[0]
    return once


def evaluate(
    actor: Actor, params: Mapping[str, str], members: bool = False
) -> tuple[Figures, str, str | None]:
    """The figures of the measure for the given parameters, the report type and subject."""
    period = parse_period(params.get("periodStart"), params.get("periodEnd"))
    subject = params.get("subject")
    report_type = params.get("reportType") or ("individual" if subject else "summary")
    if report_type not in REPORT_TYPES:
        raise BadRequest(
            f"reportType is one of {', '.join(REPORT_TYPES)}", expression=("reportType",)
        )
    days = params.get("review-days", str(DEFAULT_REVIEW_DAYS))
    if not days.isdigit():
        raise BadRequest("review-days is a whole number of days", expression=("review-days",))
    subjects = None
    if subject is not None:
        type_, _, id_ = subject.rpartition("/")
        if type_ not in ("", "Patient") or not id_:
            raise BadRequest("subject is a Patient (Patient/id)", expression=("subject",))
        subjects = [id_]
        subject = f"Patient/{id_}"
    figures = measure().evaluate(
        actor,
        period,
        int(days),
        members=members or report_type == "subject-list",
        subjects=subjects,
    )
    return figures, report_type, subject


def _evaluate_measure(ctx: Context, req: FhirRequest, p: Params) -> Result:
    if p["id"] != MEASURE_ID:
        raise NotFound(f"Measure/{p['id']} is not known to this server")
    figures, report_type, subject = evaluate(ctx.actor, _parameters(req))
    report = measure_report(figures, report_type, instant(now_us()), subject)
    return Result(200, body=report)


HANDLERS: dict[str, Handler] = {
    "evaluate_measure": _evaluate_measure,
}
