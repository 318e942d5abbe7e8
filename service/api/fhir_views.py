"""The FHIR REST API under the base URL (default ``/fhir``): one Flask view over the route table.

The view turns the Flask request into a ``FhirRequest``, asks ``service.fhir.router`` which
route it is (404 and 405 come from there), calls that route's handler and renders the
``Result``. A handler is a small function of (``Context``, ``FhirRequest``, the path's
parameters) that calls one interaction of the FHIR core or one what-matters operation; none
reads ``flask.request``. Audit and metrics read the request's interaction from the route it
matched (``request_interaction``).
"""

from __future__ import annotations

import codecs
import io
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, g, request
from flask.blueprints import BlueprintSetupState
from werkzeug.http import parse_date
from werkzeug.routing import BaseConverter
from werkzeug.wrappers import Response as HttpResponse

from service.api.exchange_views import subscription_status
from service.api.live_mappings import LiveMappings
from service.api.negotiation import mimetype, prefer, render, request_body, response_type
from service.config import Config
from service.errors import BadRequest, FhirError, NotFound, UnsupportedMediaType
from service.fhir import router
from service.fhir.actor import Actor
from service.fhir.bundles import process_bundle
from service.fhir.capability import capability_statement, smart_security
from service.fhir.ingest import Mappings, ingest
from service.fhir.interactions import FhirService
from service.fhir.model import parse_etag, parse_instant
from service.fhir.results import Result
from service.fhir.router import FhirRequest, Headers, Match
from service.fhir.search_parser import parse_query_string
from service.fhir.session import Session
from service.fhir.terminology_ops import terminology_operation
from service.priorities.operations import WhatMatters

INGEST_TYPES = {
    "csv": ("text/csv",),
    "hl7v2": ("x-application/hl7-v2+er7", "application/hl7-v2", "text/plain"),
    "json": ("application/json", "application/x-ndjson", "application/fhir+json"),
    "questionnaire-response": ("application/fhir+json", "application/json"),
}
STARTED = datetime.now(UTC).isoformat(timespec="seconds")
# the interactions whose answer honours Prefer: return (minimal, OperationOutcome)
WRITES = frozenset({"create", "update", "patch", "delete"})
# the handlers that read their input as a stream rather than as one body
STREAMED = frozenset({"ingest"})
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _service() -> FhirService:
    service: FhirService = current_app.extensions["whatmatters.fhir"]
    return service


def _mappings() -> Mappings:
    """The mappings now in the mappings folder (see service.api.live_mappings)."""
    live = current_app.extensions.get("whatmatters.live_mappings")
    if live is None:
        config: Config = current_app.config["WHATMATTERS"]
        live = LiveMappings(
            config.mappings_dir,
            current_app.extensions["whatmatters.mappings"],
            current_app.extensions["whatmatters.load_mappings"],
        )
        current_app.extensions["whatmatters.live_mappings"] = live
    mappings: Mappings = live.get()
    current_app.extensions["whatmatters.mappings"] = mappings
    return mappings


def request_actor() -> Actor:
    """Who the running request acts for (set by the authentication hook; without one, the
    embedded ``none`` mode, a client with no restriction)."""
    actor: Actor | None = g.get("whatmatters_actor")
    if actor is None:
        actor = g.whatmatters_actor = Actor.client(None)
    return actor


def what_matters() -> WhatMatters:
    """The what-matters operations of this application."""
    operations: WhatMatters = current_app.extensions["whatmatters.priorities"]
    return operations


def base_url() -> str:
    """The FHIR base URL as clients see it, for Location headers and fullUrls."""
    config: Config = current_app.config["WHATMATTERS"]
    if config.public_base_url:
        return config.public_base_url.rstrip("/")
    return request.host_url.rstrip("/") + config.base_path


def since_parameter(given: list[str] | None = None) -> int | None:
    """The ``since`` instant of ``$what-matters`` (and the facade and page), given at most once
    (in the query string unless ``given``)."""
    given = request.args.getlist("since") if given is None else given
    if len(given) > 1:
        raise BadRequest("since may be given once", expression=("since",))
    if not given:
        return None
    try:
        return parse_instant(given[0], "since")
    except BadRequest as error:
        raise BadRequest(error.diagnostics, expression=("since",)) from error


# -- what handlers read from a FhirRequest --------------------------------------------------


@dataclass
class Context:
    """What a handler knows besides its request: the base URL clients see and the settings.
    The transaction handler notes the posted Bundle's type (``bundle_type``) as soon as it has
    read it, so audit and metrics can tell a batch from a transaction even when it fails."""

    base: str
    config: Config
    actor: Actor
    bundle_type: str | None = None

    def session(self) -> AbstractContextManager[Session]:
        """A read session of the request's actor."""
        return _service().session(self.actor)

    def perform(self, work: Callable[[Session], Result], if_match: int | None = None) -> Result:
        """A write of the request's actor, retried when it loses a race, unless it has an
        If-Match (then a race is a 412)."""
        return _service().perform(self.actor, work, retry=if_match is None)


Params = Mapping[str, str]
Handler = Callable[[Context, FhirRequest, Params], Result]


def _if_match(req: FhirRequest) -> int | None:
    value = req.headers.get("If-Match")
    return parse_etag(value) if value is not None else None


def _if_none_match(req: FhirRequest) -> list[int] | None:
    """The versions named by If-None-Match (W/"3", "3" or *), or None without the header."""
    value = req.headers.get("If-None-Match")
    if value is None:
        return None
    versions: list[int] = []
    for part in (p.strip() for p in value.split(",")):
        if part == "*":
            return []
        with suppress(BadRequest):  # an ETag that is not one of ours never matches
            versions.append(parse_etag(part))
    return versions if versions else [-1]


def _if_modified_since(req: FhirRequest) -> int | None:
    since = parse_date(req.headers.get("If-Modified-Since"))
    return int(since.timestamp()) if since is not None else None


def _flag(name: str, given: list[str]) -> bool:
    """A true|false operation parameter, given at most once."""
    if len(given) > 1:
        raise BadRequest(f"{name} may be given once", expression=(name,))
    if not given or given[0] == "false":
        return False
    if given[0] == "true":
        return True
    raise BadRequest(f"{name} must be true or false, not {given[0]!r}", expression=(name,))


# $what-matters parameters as a POSTed Parameters resource carries them (the OperationDefinition)
_WHAT_MATTERS_IN = {"history": "valueBoolean", "since": "valueInstant"}


def _what_matters_parameters(req: FhirRequest) -> dict[str, list[str]]:
    """The in-parameters of ``$what-matters``, by name, as query-string text. Operations may
    always be invoked by POST with a Parameters body (R4 operations.html#invoking; FHIR client
    libraries do so by default); the query string counts too, so each is still given once."""
    given = {name: req.args(name) for name in _WHAT_MATTERS_IN}
    if req.method != "POST" or not req.body:
        return given
    body, _ = request_body(req)
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest("POST $what-matters takes a Parameters resource", ("resourceType",))
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise BadRequest("Parameters.parameter must be an array", ("Parameters.parameter",))
    for index, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{index}]"
        name = parameter.get("name") if isinstance(parameter, dict) else None
        kind = _WHAT_MATTERS_IN.get(name) if isinstance(name, str) else None
        if name is None or kind is None:
            known = ", ".join(_WHAT_MATTERS_IN)
            raise BadRequest(f"$what-matters has no in-parameter {name!r} ({known})", (where,))
        value = parameter.get(kind)
        if kind == "valueBoolean" and isinstance(value, bool):
            given[name].append("true" if value else "false")
        elif kind == "valueInstant" and isinstance(value, str):
            given[name].append(value)
        else:
            raise BadRequest(f"{name} is given as {kind}", (f"{where}.{kind}",))
    return given


def _ingest_body(req: FhirRequest, fmt: str) -> Any:
    """The input of ``$ingest``: CSV streamed row by row, the other formats read whole. A
    ``charset`` in the Content-Type (a spreadsheet's windows-1252 export, an ISO-8859-1 feed) is
    decoded here, so the mapping reads text; without one the input must be UTF-8."""
    _, options = mimetype(req)
    charset = options.get("charset", "utf-8").strip().lower()
    try:
        utf8 = codecs.lookup(charset).name == "utf-8"
    except LookupError as exc:
        raise UnsupportedMediaType(f"charset {charset!r} is not known to this server") from exc
    stream = req.stream if req.stream is not None else io.BytesIO(req.body or b"")
    if fmt == "csv":
        encoding = "utf-8-sig" if utf8 else charset
        return io.TextIOWrapper(stream, encoding=encoding, newline="")
    data = stream.read()
    if utf8:
        return data
    try:
        return data.decode(charset).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"input byte {exc.start}: not {charset}") from exc


def _strict(req: FhirRequest) -> bool:
    return (prefer(req, "handling") or "lenient") == "strict"


def _search_params(req: FhirRequest) -> list[tuple[str, str]]:
    params = list(req.query)
    if req.method == "POST":
        if mimetype(req)[0] != "application/x-www-form-urlencoded":
            raise BadRequest("POST _search takes application/x-www-form-urlencoded parameters")
        params += parse_query_string((req.body or b"").decode(errors="replace"))
    return params


# -- the handlers, one per route of service.fhir.router.ROUTES -------------------------------


def _capabilities(ctx: Context, req: FhirRequest, p: Params) -> Result:
    fhir = _service()
    config = ctx.config
    security = (
        smart_security(config.auth_token_url, config.auth_authorize_url)
        if config.auth_mode == "smart"
        else None
    )
    statement = capability_statement(
        ctx.base,
        STARTED,
        fhir.search_params,
        fhir.validator.supported_profiles,
        security,
        fhir.instance_id,
    )
    return Result(200, body=statement)


def _transaction(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req)
    ctx.bundle_type = body.get("type") if isinstance(body, dict) else None
    return process_bundle(_service(), ctx.actor, body, ctx.base, prefer(req, "return"))


def _record_what_matters(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req)
    return what_matters().record(ctx.actor, p.get("id"), body, ctx.base)


def _what_matters(ctx: Context, req: FhirRequest, p: Params) -> Result:
    given = _what_matters_parameters(req)
    history = _flag("history", given["history"])
    since = since_parameter(given["since"])
    return what_matters().what_matters(ctx.actor, p["id"], history, ctx.base, since)


def _ingest(ctx: Context, req: FhirRequest, p: Params) -> Result:
    mappings = _mappings()
    name = next(iter(req.args("mapping")), None)
    mapping = mappings.files.get(name or "")
    if mapping is None:
        known = ", ".join(sorted(mappings.files)) or "none"
        lead = f"No mapping {name!r}" if name else "Name a mapping with ?mapping=NAME"
        raise BadRequest(f"{lead}; known mappings: {known}", expression=("mapping",))
    fmt = mapping.content["source"]["format"]
    if mimetype(req)[0] not in INGEST_TYPES[fmt]:
        raise UnsupportedMediaType(
            f"The mapping {name} reads {fmt}; send it as {' or '.join(INGEST_TYPES[fmt])}"
        )
    dry_run = _flag("dryRun", req.args("dryRun"))
    result, _ = ingest(
        _service(),
        ctx.actor,
        mapping,
        _ingest_body(req, fmt),
        mappings.questionnaires,
        dry_run=dry_run,
        conceptmaps=mappings.conceptmaps,
    )
    return result


def _history_system(ctx: Context, req: FhirRequest, p: Params) -> Result:
    with ctx.session() as session:
        return session.history(None, None, list(req.query), ctx.base)


def _search_type(ctx: Context, req: FhirRequest, p: Params) -> Result:
    params = _search_params(req)
    with ctx.session() as session:
        return session.search_type(p["type"], params, ctx.base, strict=_strict(req))


def _create(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req)
    if_none_exist = req.headers.get("If-None-Exist")
    return ctx.perform(lambda session: session.create(p["type"], body, if_none_exist))


def _conditional_update(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req)
    if_match = _if_match(req)

    def work(session: Session) -> Result:
        return session.conditional_update(p["type"], req.query_string, body, if_match)

    return ctx.perform(work, if_match)


def _conditional_patch(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req, allow_patch=True)
    if_match = _if_match(req)

    def work(session: Session) -> Result:
        return session.conditional_patch(p["type"], req.query_string, body, if_match)

    return ctx.perform(work, if_match)


def _conditional_delete(ctx: Context, req: FhirRequest, p: Params) -> Result:
    return ctx.perform(lambda session: session.conditional_delete(p["type"], req.query_string))


def _validate(ctx: Context, req: FhirRequest, p: Params) -> Result:
    profiles = req.args("profile")
    if "id" not in p:
        body, _ = request_body(req)
        with ctx.session() as session:
            return session.validate_operation(p["type"], body, url_profiles=profiles)
    # No body asks to check the stored resource; a chunked body has no Content-Length
    chunked = "chunked" in req.headers.get("Transfer-Encoding", "").lower()
    empty = not req.body and not chunked
    body = {"resourceType": "Parameters"} if empty else request_body(req)[0]
    with ctx.session() as session:
        return session.validate_operation(p["type"], body, p["id"], profiles)


def _history_type(ctx: Context, req: FhirRequest, p: Params) -> Result:
    with ctx.session() as session:
        return session.history(p["type"], None, list(req.query), ctx.base)


def _read(ctx: Context, req: FhirRequest, p: Params) -> Result:
    if_none_match, since = _if_none_match(req), _if_modified_since(req)
    with ctx.session() as session:
        return session.shape(
            session.read(p["type"], p["id"], if_none_match, since), list(req.query)
        )


def _update(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req)
    if_match = _if_match(req)
    return ctx.perform(lambda session: session.update(p["type"], p["id"], body, if_match), if_match)


def _patch(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body, _ = request_body(req, allow_patch=True)
    if_match = _if_match(req)
    return ctx.perform(lambda session: session.patch(p["type"], p["id"], body, if_match), if_match)


def _delete(ctx: Context, req: FhirRequest, p: Params) -> Result:
    if_match = _if_match(req)
    return ctx.perform(lambda session: session.delete(p["type"], p["id"], if_match), if_match)


def _history_instance(ctx: Context, req: FhirRequest, p: Params) -> Result:
    with ctx.session() as session:
        return session.history(p["type"], p["id"], list(req.query), ctx.base)


def _vread(ctx: Context, req: FhirRequest, p: Params) -> Result:
    with ctx.session() as session:
        return session.shape(session.vread(p["type"], p["id"], p["vid"]), list(req.query))


def _subscription_status(ctx: Context, req: FhirRequest, p: Params) -> Result:
    return subscription_status(_service(), ctx.actor, ctx.base, p["id"])


def _terminology(ctx: Context, req: FhirRequest, p: Params) -> Result:
    body = request_body(req)[0] if req.body else None
    return terminology_operation(_service().terminology, req.path, req.query, body, p.get("id"))


HANDLERS: dict[str, Handler] = {
    "capabilities": _capabilities,
    "transaction": _transaction,
    "history_system": _history_system,
    "ingest": _ingest,
    "search_type": _search_type,
    "create": _create,
    "conditional_update": _conditional_update,
    "conditional_patch": _conditional_patch,
    "conditional_delete": _conditional_delete,
    "history_type": _history_type,
    "validate": _validate,
    "read": _read,
    "update": _update,
    "patch": _patch,
    "delete": _delete,
    "history_instance": _history_instance,
    "vread": _vread,
    "record_what_matters": _record_what_matters,
    "what_matters": _what_matters,
    "subscription_status": _subscription_status,
    "terminology": _terminology,
}


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
    sent = request.method in ("POST", "PUT", "PATCH")
    stream = request.stream if sent and streamed else None
    body = request.get_data(cache=True) if sent and not streamed else None
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
