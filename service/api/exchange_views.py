"""Exchange endpoints: our JWKS and the outbox admin endpoint; Subscription ``$status``, which
the FHIR API routes (service.fhir.router) to ``subscription_status`` here."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, request

from service.errors import BadRequest, NotFound
from service.exchange.admin import (
    MAX_ROW_ID,
    OUTBOX_STATES,
    NoSelection,
    OutboxAdmin,
    Selection,
    parse_row_id,
    row_json,
)
from service.exchange.notifications import status_bundle
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import instant
from service.fhir.results import Result


def _service() -> FhirService:
    service: FhirService = current_app.extensions["whatmatters.fhir"]
    return service


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=False, indent=2),
        status=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )


def _admin() -> OutboxAdmin:
    return OutboxAdmin(_service())


def _selection() -> Selection:
    """The rows an admin request names: ``id`` (repeatable) and/or ``partner``."""
    args = request.args if request.method == "GET" else (request.form or request.args)
    ids: list[int] | None = None
    if args.getlist("id"):
        ids = []
        for value in args.getlist("id"):
            row_id = parse_row_id(value)
            if row_id is None:
                raise BadRequest(
                    f"id must be a whole number from 1 to {MAX_ROW_ID} (got {value[:40]!r})",
                    expression=("id",),
                )
            ids.append(row_id)
    return Selection.of(ids, args.get("partner"), args.get("destination"))


def _whole(value: str, name: str, low: int, high: int) -> int:
    """A whole number parameter within [low, high], or a 400 naming it."""
    text = value.strip()
    if not text.isdigit() or len(text) > 19 or not low <= int(text) <= high:
        raise BadRequest(
            f"{name} must be a whole number from {low} to {high} (got {value[:40]!r})",
            expression=(name,),
        )
    return int(text)


def subscription_status(fhir: FhirService, actor: Actor, base: str, id_: str) -> Result:
    """``Subscription/{id}/$status``: the Subscription's status Bundle, as ``actor`` may read it."""
    # https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/OperationDefinition-backport-subscription-status.html
    with fhir.session(actor) as session:
        stored = session.read("Subscription", id_).stored
    if stored is None or stored.content is None:
        raise NotFound(f"Subscription/{id_} is not known")
    resource = json.loads(stored.content)
    events = OutboxAdmin(fhir).subscription_events(id_)
    bundle = status_bundle(
        f"{base}/Subscription/{id_}",
        str(resource.get("status")),
        events,
        resource.get("error"),
    )
    return Result(200, body=bundle)


def build_exchange() -> Blueprint:
    """Mount the JWKS and the outbox admin endpoint."""
    bp = Blueprint("exchange", __name__)

    @bp.get("/.well-known/jwks.json")
    def well_known_jwks() -> Response:
        # the public halves of the keys we sign SMART Backend Services assertions with, read
        # once at start-up
        response = _json(current_app.extensions["whatmatters.jwks"])
        response.headers["Cache-Control"] = "public, max-age=300"
        response.mimetype = "application/jwk-set+json"
        return response

    @bp.get("/admin/outbox")
    def outbox_status() -> Response:
        selection = _selection()
        states = request.args.getlist("state") or None
        unknown = sorted(set(states or ()) - set(OUTBOX_STATES))
        if unknown:
            raise BadRequest(
                f"state must be one of {', '.join(OUTBOX_STATES)} (got {unknown[0][:40]!r})",
                expression=("state",),
            )
        limit = _whole(request.args.get("_count", "100"), "_count", 1, 1000)
        after = _whole(request.args.get("after", "0"), "after", 0, MAX_ROW_ID)
        admin = _admin()
        lines = admin.summary()
        rows = admin.rows(selection, states, limit=limit + 1, after=after)
        # one row more than asked for says there is a next page, which starts after the last
        links = []
        if len(rows) > limit:
            rows = rows[:limit]
            query = [(k, v) for k, v in request.args.items(multi=True) if k != "after"]
            query.append(("after", str(rows[-1].id)))
            links.append({"relation": "next", "url": f"{request.base_url}?{urlencode(query)}"})
        return _json(
            {
                "link": links,
                "summary": [
                    {
                        "destination": line.destination,
                        "state": line.state,
                        "rows": line.rows,
                        "oldest": instant(line.oldest_us),
                    }
                    for line in lines
                ],
                "rows": [row_json(row) for row in rows],
            }
        )

    @bp.post("/admin/outbox/retry")
    def outbox_retry() -> Response:
        changed = _admin().retry(_selection())
        return _json({"retried": [row.id for row in changed]})

    @bp.post("/admin/outbox/discard")
    def outbox_discard() -> Response:
        selection = _selection()
        try:
            changed = _admin().discard(selection, everything=request.args.get("all") == "true")
        except NoSelection as exc:
            raise BadRequest("Name the rows to discard: id=N, partner=NAME, or all=true") from exc
        return _json({"discarded": [row.id for row in changed]})

    return bp
