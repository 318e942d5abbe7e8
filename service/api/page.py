"""The clinician's page: ``GET /patients/{id}/what-matters[?since=instant]``, server-rendered.

Built from the ``$what-matters`` Bundle through the same plain view as the facade, for a busy
nurse: the patient's words first and largest, one who / where / when line, human dates, the
NHS number spaced 3-3-4, each text in its own language and direction. No JavaScript; a print
stylesheet turns it into a one-page "What matters to me" card of up to eight items.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

from flask import Blueprint, Response, current_app, render_template, request

from service.api.handlers import base_url, request_actor, since_parameter, what_matters
from service.errors import FhirError
from service.fhir.interactions import FhirService
from service.fhir.model import parse_json
from service.priorities.ips import direction
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


def patient_name(patient: dict[str, Any]) -> str | None:
    """The patient's display name, the one way the service works it out (this page and the
    documents sent to partners): the first HumanName with a ``text``, else with given names or a
    family name, shown as text or as given names then family; None when no name says anything."""
    for name in patient.get("name") or []:
        if not isinstance(name, dict):
            continue
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("given") or []), name.get("family") or ""]
        shown = " ".join(str(p) for p in parts if p)
        if shown:
            return shown
    return None


NHS_NUMBER = "https://fhir.nhs.uk/Id/nhs-number"
CARD_ITEMS = 8  # what one printed A4 card holds
# scripts written right to left (BCP 47 primary language subtags)


def human_date(value: Any) -> str:
    """A FHIR date or dateTime as a person reads it: ``3 Dec 2026``, ``Dec 2026``, ``2026``."""
    text = str(value or "")
    try:
        if re.fullmatch(r"\d{4}", text):
            return text
        if re.fullmatch(r"\d{4}-\d{2}", text):
            return datetime.strptime(text, "%Y-%m").strftime("%b %Y")
        day = date.fromisoformat(text[:10])
    except ValueError:
        return text
    return f"{day.day} {day.strftime('%b %Y')}"


def identifiers(patient: dict[str, Any]) -> list[tuple[str, str]]:
    """The patient's identifiers as (label, value): the NHS number first, spaced 3-3-4."""
    shown: list[tuple[str, str]] = []
    for identifier in patient.get("identifier", []) or []:
        value = str(identifier.get("value") or "") if isinstance(identifier, dict) else ""
        if not value:
            continue
        if identifier.get("system") == NHS_NUMBER:
            digits = re.sub(r"\s", "", value)
            if re.fullmatch(r"\d{10}", digits):
                value = f"{digits[:3]} {digits[3:6]} {digits[6:]}"
            shown.insert(0, ("NHS number", value))
        else:
            label = (identifier.get("type") or {}).get("text") or "Identifier"
            shown.append((str(label), value))
    return shown


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
        actor = request_actor()
        with fhir.session(actor) as session:
            stored = session.read("Patient", id_).stored
        assert stored is not None
        patient = parse_json(stored.content or "{}")
        since = since_parameter()
        result = what_matters().what_matters(actor, id_, False, base_url(), since)
        view = priorities(result.body or {})
        items = view["priorities"]
        current = [i for i in items if (i["change"] or {}).get("mark") != "removed"]
        html = render_template(
            "what_matters.html",
            name=patient_name(patient) or f"Patient {patient.get('id', '')}".strip(),
            birth_date=patient.get("birthDate"),
            identifiers=identifiers(patient),
            ranked=[i for i in current if i["ranked"]],
            waiting=[i for i in current if not i["ranked"]],
            removed=[i for i in items if i not in current],
            card_items=CARD_ITEMS,
            more=max(len(current) - CARD_ITEMS, 0),
            updated=view["updated"],
            since=request.args.get("since") if since is not None else None,
            human_date=human_date,
            direction=direction,
        )
        return Response(html, mimetype="text/html", headers=PAGE_HEADERS)

    return bp
