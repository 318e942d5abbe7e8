"""The handler of the terminology operations: ``ValueSet/$expand``, ``ValueSet/$validate-code``
(type and instance level) and ``CodeSystem/$lookup``. Their routes are in
``service.fhir.router``; ``TERMINOLOGY_HANDLERS`` joins the handler table in ``fhir_views.py``.
The operations themselves are ``service.fhir.terminology_ops``, over the value sets and code
systems the FHIR core holds (``FhirService.terminology``).
"""

from __future__ import annotations

from flask import current_app

from service.api.handlers import Context, Handler, Params
from service.api.negotiation import request_body
from service.fhir.interactions import FhirService
from service.fhir.results import Result
from service.fhir.router import FhirRequest
from service.fhir.terminology_ops import terminology_operation


def _terminology(ctx: Context, req: FhirRequest, p: Params) -> Result:
    fhir: FhirService = current_app.extensions["whatmatters.fhir"]
    body = request_body(req)[0] if req.body else None
    return terminology_operation(fhir.terminology, req.path, req.query, body, p.get("id"))


TERMINOLOGY_HANDLERS: dict[str, Handler] = {"terminology": _terminology}
