"""The handlers of the FHIR API: one small function per route of ``service.fhir.router.ROUTES``.

A handler takes the ``Context`` (the base URL clients see, the settings, the request's
``Actor``), the ``FhirRequest`` and the path's parameters, calls one interaction of the FHIR
core (in a session of the actor) or one what-matters operation, and returns the ``Result``;
none reads ``flask.request``. ``HANDLERS`` names them for the route table; the view in
``fhir_views.py`` calls them. A new operation adds its route in the router and its handler here
(or in a module of its own whose handlers are added to ``HANDLERS``).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import current_app, g, request
from werkzeug.http import parse_date

from service.api.exchange_views import subscription_status
from service.api.live_mappings import LiveMappings
from service.api.negotiation import mimetype, prefer, request_body
from service.config import Config
from service.errors import BadRequest, NotSupported, UnsupportedMediaType
from service.exchange.subscriptions import TOPIC_URL
from service.fhir.access import SEARCH_NARROWING, require_population_write
from service.fhir.actor import Actor
from service.fhir.bundles import process_bundle
from service.fhir.capability import (
    capability_statement,
    smart_security,
    terminology_capabilities,
)
from service.fhir.checking import check_id, check_type
from service.fhir.ingest import Mappings, ingest
from service.fhir.interactions import FhirService
from service.fhir.model import parse_etag, parse_if_none_match, parse_instant
from service.fhir.parameters import parameters_in
from service.fhir.results import Result
from service.fhir.router import FhirRequest
from service.fhir.search_parser import parse_query_string
from service.fhir.session import Session
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
    return parse_if_none_match(value) if value is not None else None


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
    for name, _ in req.query:
        # as a Parameters body is read: a name the operation does not define is refused, not
        # ignored (the general ones, _format and _pretty, aside)
        if name not in _WHAT_MATTERS_IN and name not in ("_format", "_pretty"):
            known = ", ".join(_WHAT_MATTERS_IN)
            raise BadRequest(f"$what-matters has no in-parameter {name!r} ({known})", (name,))
    if req.method != "POST" or not req.body:
        return given
    body, _ = request_body(req)
    for where, name, parameter in parameters_in(body, "$what-matters"):
        kind = _WHAT_MATTERS_IN.get(name)
        if kind is None:
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
        codecs.lookup(charset)
    except LookupError as exc:
        raise UnsupportedMediaType(f"charset {charset!r} is not known to this server") from exc
    utf8 = codecs.lookup(charset).name == "utf-8"
    stream = req.stream if req.stream is not None else io.BytesIO(req.body or b"")
    if fmt == "csv":
        encoding = "utf-8-sig" if utf8 else charset
        # undecodable bytes become lone surrogates, refused at their row and column
        return io.TextIOWrapper(stream, encoding=encoding, newline="", errors="surrogateescape")
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
        # parameters may be in the URL, the form body or both (http.html#search); a body that
        # is there must be a form
        if req.body and mimetype(req)[0] != "application/x-www-form-urlencoded":
            raise BadRequest("POST _search takes application/x-www-form-urlencoded parameters")
        params += parse_query_string((req.body or b"").decode(errors="replace"))
    return params


# -- the handlers, one per route of service.fhir.router.ROUTES -------------------------------


def _capabilities(ctx: Context, req: FhirRequest, p: Params) -> Result:
    fhir = _service()
    config = ctx.config
    mode = next(iter(req.args("mode")), None)
    if mode == "terminology":
        return Result(200, body=terminology_capabilities(ctx.base, STARTED, fhir.terminology))
    if mode not in (None, "full", "normative"):
        raise BadRequest(
            f"mode={mode} is not one of full, normative, terminology", expression=("mode",)
        )
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
        topics=(TOPIC_URL,),
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
    # the token's right first: which mappings this server holds is not a patient app's business
    require_population_write(ctx.actor.access, "$ingest")
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


def _search_compartment(ctx: Context, req: FhirRequest, p: Params) -> Result:
    """A search in a patient's compartment (http.html#vsearch, R4 CompartmentDefinition
    patient): the member type's search narrowed to the patient's records by the parameter the
    access guard narrows with (``patient``, the subject for most types)."""
    type_, patient = p["member"], p["id"]
    check_id(patient)
    check_type(type_)
    narrowing = SEARCH_NARROWING.get(type_)
    if narrowing is None or type_ == "Patient":
        raise NotSupported(
            f"{type_} is not searched in a patient's compartment here; the types that are: "
            + ", ".join(t for t in SEARCH_NARROWING if t != "Patient")
        )
    params = [*_search_params(req), (narrowing, f"Patient/{patient}")]
    with ctx.session() as session:
        return session.search_type(type_, params, ctx.base, strict=_strict(req))


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
    if_match, if_none_match = _if_match(req), _if_none_match(req)
    return ctx.perform(
        lambda session: session.update(
            p["type"], p["id"], body, if_match, if_none_match=if_none_match
        ),
        if_match,
    )


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


HANDLERS: dict[str, Handler] = {
    "capabilities": _capabilities,
    "transaction": _transaction,
    "history_system": _history_system,
    "ingest": _ingest,
    "search_type": _search_type,
    "search_compartment": _search_compartment,
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
}
