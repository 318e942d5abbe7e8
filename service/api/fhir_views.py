"""The FHIR REST API under the base URL (default ``/fhir``): one Flask view over the route table.

The view turns the Flask request into a ``FhirRequest``, asks ``service.fhir.router`` which
route it is (404 and 405 come from there), calls that route's handler (handlers.py) and renders the
``Result``. A handler is a small function of (``Context``, ``FhirRequest``, the path's
parameters) that calls one interaction of the FHIR core or one what-matters operation; none
reads ``flask.request``. Audit and metrics read the request's interaction from the route it
matched (``request_interaction``).
"""

from __future__ import annotations

import re
from urllib.parse import quote

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import BaseConverter
from werkzeug.wrappers import Response as HttpResponse

from service.api.export_handlers import EXPORT_HANDLERS
from service.api.handlers import (
    HANDLERS as FHIR_HANDLERS,
)
from service.api.handlers import (
    STREAMED,
    WRITES,
    Context,
    base_url,
    request_actor,
)
from service.api.measure_handlers import HANDLERS as MEASURE_HANDLERS
from service.api.negotiation import render, response_type
from service.api.summary_handlers import SUMMARY_HANDLERS
from service.api.terminology_handlers import TERMINOLOGY_HANDLERS
from service.config import Config
from service.errors import BadRequest, FhirError, NotFound
from service.fhir import router
from service.fhir.router import FhirRequest, Headers, Match
from service.fhir.search_parser import parse_query_string

# every route's handler, by the name its route gives: the FHIR interactions (handlers.py), and
# the operations that keep their own module ($summary, terminology, $evaluate-measure, $export)
HANDLERS = {
    **FHIR_HANDLERS,
    **SUMMARY_HANDLERS,
    **TERMINOLOGY_HANDLERS,
    **MEASURE_HANDLERS,
    **EXPORT_HANDLERS,
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

# -- the one view ---------------------------------------------------------------------------


class _AfterBase(BaseConverter):
    """Whatever follows the FHIR base path: nothing, or a path from its first slash (doubled
    and trailing slashes kept, for the router to judge)."""

    regex = "(?:/.*)?"
    part_isolating = False


def _relative(rest: str) -> str:
    """The path relative to the base: ``/fhir`` and ``/fhir/`` are both the base itself."""
    return "" if rest in ("", "/") else rest[1:]


def _criteria() -> str:
    try:
        return request.query_string.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest("The query string is not valid UTF-8") from exc


def _negotiate() -> None:
    _criteria()  # 400 for a query string that is not UTF-8, before anything reads it
    response_type(request)  # 406 early, before any work is done


def fhir_request(path: str, streamed: bool = False) -> FhirRequest:
    """The running Flask request as a FhirRequest (``path`` relative to the base). Bodies
    are read for POST, PUT and PATCH; ``streamed`` hands the body over as a stream."""
    query_string = _criteria()
    body: bytes | None = None
    stream = None
    if request.method in ("POST", "PUT", "PATCH"):
        if streamed:
            stream = request.stream
        else:
            body = request.get_data(cache=True)
    return FhirRequest(
        method=request.method,
        path=path,
        query=tuple(parse_query_string(query_string)),
        headers=Headers(request.headers.items()),
        body=body,
        query_string=query_string,
        stream=stream,
    )


def _merged(rest: str) -> HttpResponse:
    """What the router says of the path with its doubled slashes merged: a 308 to it when it
    routes (as the HTTP layer always answered), else its 404 or 405 naming the path as sent."""
    merged = re.sub("/{2,}", "/", rest)
    path = _relative(merged)
    if request.method == "OPTIONS":
        if not router.allowed_methods(path):
            raise NotFound(f"There is nothing at {request.path}")
    else:
        router.match(request.method, path, shown=request.path)
    config: Config = current_app.config["WHATMATTERS"]
    target = quote(config.base_path + merged, safe="!$&'()*+,/:;=@")
    adapter = current_app.create_url_adapter(request)
    assert adapter is not None
    return current_app.redirect(adapter.make_redirect_url(target), 308)


def _options(path: str) -> Response:
    """OPTIONS: the methods routed at the path (in ``Allow``), or 404."""
    allowed = router.allowed_methods(path)
    if not allowed:
        raise NotFound(f"There is nothing at {request.path}")
    _negotiate()
    response = current_app.response_class()
    response.allow.update(allowed)
    return response


def dispatch(rest: str) -> HttpResponse:
    """Route the running request, call its handler and render the answer."""
    if "//" in rest:
        return _merged(rest)
    path = _relative(rest)
    if request.method == "OPTIONS":
        return _options(path)
    found = router.match(request.method, path, shown=request.path)
    g.whatmatters_match = found
    _negotiate()
    handler = found.route.handler
    req = fhir_request(path, streamed=handler in STREAMED)
    ctx = Context(base_url(), current_app.config["WHATMATTERS"], request_actor())
    try:
        result = HANDLERS[handler](ctx, req, found.params)
    finally:
        g.whatmatters_bundle_type = ctx.bundle_type
    return render(request, result, base_url, write=found.route.interaction in WRITES)


def _request_match() -> Match | None:
    """The route of the running request: the one its view matched, or, when the view did not
    run (a refused token, a CORS preflight), the one it would have."""
    found: Match | None = g.get("whatmatters_match")
    if found is not None or request.endpoint != "fhir.api":
        return found
    rest = (request.view_args or {}).get("rest", "")
    if "//" in rest:
        return None
    try:
        return router.match(request.method, _relative(rest))
    except FhirError:
        return None


def request_interaction() -> str:
    """The running request's FHIR interaction (restful-interaction code), from its route,
    worked out once (audit and metrics both ask); ``operation`` when no route fits."""
    known: str | None = g.get("whatmatters_interaction")
    if known is None:
        bundle_type = g.get("whatmatters_bundle_type")
        known = g.whatmatters_interaction = router.interaction_of(_request_match(), bundle_type)
    return known


def route_label() -> str | None:
    """The route the running request matched (``/fhir/{type}/{id}``), never the path with its
    values (it may hold an NHS number); None outside the FHIR API."""
    found = _request_match()
    if found is None:
        return None
    config: Config = current_app.config["WHATMATTERS"]
    return "/".join(part for part in (config.base_path, found.route.pattern) if part)


def _add_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters["fhir"] = _AfterBase


def build_blueprint(base_path: str) -> Blueprint:
    """Create the FHIR blueprint: one view for everything under ``base_path``."""
    missing = {route.handler for route in router.ROUTES} - set(HANDLERS)
    assert not missing, f"routes without a handler: {sorted(missing)}"
    bp = Blueprint("fhir", __name__)
    bp.record_once(_add_converter)

    @bp.route(
        f"{base_path}<fhir:rest>",
        endpoint="api",
        methods=list(METHODS),
        merge_slashes=False,
        strict_slashes=False,
        provide_automatic_options=False,
    )
    def api(rest: str) -> HttpResponse:
        return dispatch(rest)

    return bp
