"""The clinician's page: ``GET /patients/{id}/what-matters``, server-rendered HTML.

Built from the ``$what-matters`` Bundle through the same plain view as the facade. No
JavaScript; a print stylesheet turns it into a one-page "What matters to me" card.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, render_template

from service.api.fhir_views import base_url, what_matters
from service.errors import FhirError
from service.fhir.interactions import FhirService
from service.fhir.model import parse_json
from service.priorities.view import priorities

# Security headers for the HTML page: nothing loads from elsewhere, no framing, no sniffing.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def patient_name(patient: dict[str, Any]) -> str:
    """The patient's name as it should be shown: text, else given names and family."""
    for name in patient.get("name", []) or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*name.get("given", []), name.get("family", "")]
        shown = " ".join(str(p) for p in parts if p)
        if shown:
            return shown
    return f"Patient {patient.get('id', '')}".strip()


def build_page() -> Blueprint:
    """The blueprint of the clinician's page."""
    bp = Blueprint("page", __name__, template_folder="templates")

    @bp.errorhandler(FhirError)
    def _error(error: FhirError) -> Response:
        # A person reads this page: errors are a page too (the API's stay OperationOutcomes)
        html = render_template("error.html", status=error.status, message=error.diagnostics)
        headers = {**PAGE_HEADERS, **error.headers}  # WWW-Authenticate, Retry-After
        return Response(html, status=error.status, mimetype="text/html", headers=headers)

    @bp.get("/patients/<id_>/what-matters")
    def page(id_: str) -> Response:
        fhir: FhirService = current_app.extensions["whatmatters.fhir"]
        stored = fhir.read("Patient", id_).stored
        assert stored is not None
        patient = parse_json(stored.content or "{}")
        result = what_matters().what_matters(id_, False, base_url())
        view = priorities(result.body or {})
        identifiers = [f"{i.get('value')}" for i in patient.get("identifier", []) if i.get("value")]
        html = render_template(
            "what_matters.html",
            name=patient_name(patient),
            birth_date=patient.get("birthDate"),
            identifiers=identifiers,
            items=view["priorities"],
            updated=view["updated"],
        )
        return Response(html, mimetype="text/html", headers=PAGE_HEADERS)

    return bp
