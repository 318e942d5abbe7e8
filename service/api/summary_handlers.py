"""The handlers of ``$summary`` (IPS 2.0.0): ``Patient/{id}/$summary`` and
``Patient/$summary?identifier=system|value``. Their routes are in ``service.fhir.router``;
``SUMMARY_HANDLERS`` joins the handler table in ``fhir_views.py``. The document is built and
checked by ``service.priorities.ips``.
"""

from __future__ import annotations

from flask import current_app

from service.api.handlers import Context, Handler, Params
from service.errors import BadRequest
from service.fhir.results import Result
from service.fhir.router import FhirRequest
from service.priorities.ips import Summaries


def summaries() -> Summaries:
    """The IPS summaries of this application."""
    found: Summaries = current_app.extensions["whatmatters.summaries"]
    return found


def _summary(ctx: Context, req: FhirRequest, p: Params) -> Result:
    return summaries().summary(ctx.actor, p["id"], ctx.base)


def _summary_by_identifier(ctx: Context, req: FhirRequest, p: Params) -> Result:
    given = req.args("identifier")
    if len(given) != 1 or "|" not in given[0] or not given[0].split("|", 1)[1]:
        raise BadRequest(
            "Name the patient once, as identifier=system|value", expression=("identifier",)
        )
    system, value = given[0].split("|", 1)
    identifier = {"system": system, "value": value} if system else {"value": value}
    patient_id = summaries().operations.patient_by_identifier(ctx.actor, identifier)
    return summaries().summary(ctx.actor, patient_id, ctx.base)


SUMMARY_HANDLERS: dict[str, Handler] = {
    "summary": _summary,
    "summary_by_identifier": _summary_by_identifier,
}
