"""The FHIR REST API under the base URL (default ``/fhir``): thin adapters over FhirService."""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, current_app, g, request

from service.api.live_mappings import LiveMappings
from service.api.negotiation import prefer, render, request_body, response_type
from service.config import Config
from service.errors import BadRequest, UnsupportedMediaType
from service.fhir.actor import Actor
from service.fhir.bundles import process_bundle
from service.fhir.capability import capability_statement, smart_security
from service.fhir.ingest import Mappings, ingest
from service.fhir.interactions import FhirService
from service.fhir.model import parse_etag, parse_instant
from service.fhir.results import Result
from service.fhir.search import parse_query_string
from service.fhir.session import Session
from service.priorities.operations import WhatMatters

INGEST_TYPES = {
    "csv": ("text/csv",),
    "hl7v2": ("x-application/hl7-v2+er7", "application/hl7-v2", "text/plain"),
    "json": ("application/json", "application/x-ndjson", "application/fhir+json"),
    "questionnaire-response": ("application/fhir+json", "application/json"),
}
STARTED = datetime.now(UTC).isoformat(timespec="seconds")


def _service() -> FhirService:
    service: FhirService = current_app.extensions["whatmatters.fhir"]
    return service


def request_actor() -> Actor:
    """Who the running request acts for (set by the authentication hook; without one, the
    embedded ``none`` mode, a client with no restriction)."""
    actor: Actor | None = g.get("whatmatters_actor")
    if actor is None:
        actor = g.whatmatters_actor = Actor.client(None)
    return actor


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


def _if_match() -> int | None:
    value = request.headers.get("If-Match")
    return parse_etag(value) if value is not None else None


def _if_none_match() -> list[int] | None:
    """The versions named by If-None-Match (W/"3", "3" or *), or None without the header."""
    value = request.headers.get("If-None-Match")
    if value is None:
        return None
    versions: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if part == "*":
            return []
        try:
            versions.append(parse_etag(part))
        except BadRequest:
            continue  # an ETag that is not one of ours never matches
    return versions if versions else [-1]


def _criteria() -> str:
    try:
        return request.query_string.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise BadRequest("The query string is not valid UTF-8") from exc


def _params() -> list[tuple[str, str]]:
    return parse_query_string(_criteria())


def _flag(name: str, given: list[str] | None = None) -> bool:
    """A true|false operation parameter (of the query string unless ``given``), at most once."""
    given = request.args.getlist(name) if given is None else given
    if len(given) > 1:
        raise BadRequest(f"{name} may be given once", expression=(name,))
    if not given or given[0] == "false":
        return False
    if given[0] == "true":
        return True
    raise BadRequest(f"{name} must be true or false, not {given[0]!r}", expression=(name,))


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


# $what-matters parameters as a POSTed Parameters resource carries them (the OperationDefinition)
_WHAT_MATTERS_IN = {"history": "valueBoolean", "since": "valueInstant"}


def _what_matters_parameters() -> dict[str, list[str]]:
    """The in-parameters of ``$what-matters``, by name, as query-string text. Operations may
    always be invoked by POST with a Parameters body (R4 operations.html#invoking; FHIR client
    libraries do so by default); the query string counts too, so each is still given once."""
    given = {name: request.args.getlist(name) for name in _WHAT_MATTERS_IN}
    if request.method != "POST" or not (request.content_length or request.get_data(cache=True)):
        return given
    body, _ = request_body(request)
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


def _ingest_body(fmt: str) -> Any:
    """The input of ``$ingest``: CSV streamed row by row, the other formats read whole. A
    ``charset`` in the Content-Type (a spreadsheet's windows-1252 export, an ISO-8859-1 feed) is
    decoded here, so the mapping reads text; without one the input must be UTF-8."""
    charset = request.mimetype_params.get("charset", "utf-8").strip().lower()
    try:
        codecs.lookup(charset)
    except LookupError as exc:
        raise UnsupportedMediaType(f"charset {charset!r} is not known to this server") from exc
    utf8 = codecs.lookup(charset).name == "utf-8"
    if fmt == "csv":
        encoding = "utf-8-sig" if utf8 else charset
        return io.TextIOWrapper(request.stream, encoding=encoding, newline="")
    data = request.get_data()
    if utf8:
        return data
    try:
        return data.decode(charset).encode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"input byte {exc.start}: not {charset}") from exc


def _reply(result: Result, write: bool = False) -> Response:
    return render(request, result, base_url, write=write)


def _perform(work: Callable[[Session], Result], if_match: int | None) -> Result:
    """A write of the request's actor; one with If-Match is not retried (412 on a race)."""
    return _service().perform(request_actor(), work, retry=if_match is None)


def _strict() -> bool:
    return (prefer(request, "handling") or "lenient") == "strict"


def _search_params() -> list[tuple[str, str]]:
    params = _params()
    if request.method == "POST":
        if request.mimetype != "application/x-www-form-urlencoded":
            raise BadRequest("POST _search takes application/x-www-form-urlencoded parameters")
        params += parse_query_string(request.get_data(as_text=True))
    return params


def build_blueprint(base_path: str) -> Blueprint:
    """Create the FHIR blueprint mounted at ``base_path``."""
    bp = Blueprint("fhir", __name__, url_prefix=base_path)

    @bp.before_request
    def _negotiate() -> None:
        _criteria()  # 400 for a query string that is not UTF-8, before anything reads it
        response_type(request)  # 406 early, before any work is done

    @bp.get("/metadata")
    def metadata() -> Response:
        fhir = _service()
        config = current_app.config["WHATMATTERS"]
        security = (
            smart_security(config.auth_token_url, config.auth_authorize_url)
            if config.auth_mode == "smart"
            else None
        )
        statement = capability_statement(
            base_url(),
            STARTED,
            fhir.search_params,
            fhir.validator.supported_profiles,
            security,
            fhir.instance_id,
        )
        return _reply(Result(200, body=statement))

    @bp.post("", strict_slashes=False)
    def bundle() -> Response:
        body, _ = request_body(request)
        g.whatmatters_bundle_type = body.get("type") if isinstance(body, dict) else None
        actor, base, returned = request_actor(), base_url(), prefer(request, "return")
        return _reply(process_bundle(_service(), actor, body, base, returned))

    @bp.post("/Patient/<id_>/$record-what-matters")
    def record_what_matters(id_: str) -> Response:
        body, _ = request_body(request)
        return _reply(what_matters().record(request_actor(), id_, body, base_url()))

    @bp.post("/Patient/$record-what-matters")
    def record_what_matters_by_identifier() -> Response:
        body, _ = request_body(request)
        return _reply(what_matters().record(request_actor(), None, body, base_url()))

    @bp.route("/Patient/<id_>/$what-matters", methods=["GET", "POST"])
    def get_what_matters(id_: str) -> Response:
        given = _what_matters_parameters()
        history = _flag("history", given["history"])
        since = since_parameter(given["since"])
        actor = request_actor()
        return _reply(what_matters().what_matters(actor, id_, history, base_url(), since))

    @bp.post("/$ingest")
    def ingest_input() -> Response:
        mappings = _mappings()
        name = request.args.get("mapping")
        mapping = mappings.files.get(name or "")
        if mapping is None:
            known = ", ".join(sorted(mappings.files)) or "none"
            lead = f"No mapping {name!r}" if name else "Name a mapping with ?mapping=NAME"
            raise BadRequest(f"{lead}; known mappings: {known}", expression=("mapping",))
        fmt = mapping.content["source"]["format"]
        if request.mimetype not in INGEST_TYPES[fmt]:
            raise UnsupportedMediaType(
                f"The mapping {name} reads {fmt}; send it as {' or '.join(INGEST_TYPES[fmt])}"
            )
        dry_run = _flag("dryRun")
        result, _ = ingest(
            _service(),
            request_actor(),
            mapping,
            _ingest_body(fmt),
            mappings.questionnaires,
            dry_run=dry_run,
            conceptmaps=mappings.conceptmaps,
        )
        return _reply(result)

    @bp.get("/_history")
    def history_system() -> Response:
        with _service().session(request_actor()) as s:
            return _reply(s.history(None, None, _params(), base_url()))

    @bp.route("/<type_>", methods=["GET"])
    @bp.route("/<type_>/_search", methods=["GET", "POST"])
    def search_type(type_: str) -> Response:
        params = _search_params()
        with _service().session(request_actor()) as s:
            return _reply(s.search_type(type_, params, base_url(), strict=_strict()))

    @bp.post("/<type_>")
    def create(type_: str) -> Response:
        body, _ = request_body(request)
        if_none_exist = request.headers.get("If-None-Exist")

        def work(s: Session) -> Result:
            return s.create(type_, body, if_none_exist)

        return _reply(_service().perform(request_actor(), work), write=True)

    @bp.put("/<type_>")
    def conditional_update(type_: str) -> Response:
        body, _ = request_body(request)
        criteria, if_match = _criteria(), _if_match()

        def work(s: Session) -> Result:
            return s.conditional_update(type_, criteria, body, if_match)

        return _reply(_perform(work, if_match), write=True)

    @bp.patch("/<type_>")
    def conditional_patch(type_: str) -> Response:
        body, _ = request_body(request, allow_patch=True)
        criteria, if_match = _criteria(), _if_match()

        def work(s: Session) -> Result:
            return s.conditional_patch(type_, criteria, body, if_match)

        return _reply(_perform(work, if_match), write=True)

    @bp.delete("/<type_>")
    def conditional_delete(type_: str) -> Response:
        criteria = _criteria()

        def work(s: Session) -> Result:
            return s.conditional_delete(type_, criteria)

        return _reply(_service().perform(request_actor(), work), write=True)

    @bp.post("/<type_>/$validate")
    def validate_type(type_: str) -> Response:
        body, _ = request_body(request)
        profiles = request.args.getlist("profile")
        with _service().session(request_actor()) as s:
            return _reply(s.validate_operation(type_, body, url_profiles=profiles))

    @bp.post("/<type_>/<id_>/$validate")
    def validate_instance(type_: str, id_: str) -> Response:
        # No body asks to check the stored resource; a chunked body has no Content-Length
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        empty = not request.content_length and not chunked
        body = {"resourceType": "Parameters"} if empty else request_body(request)[0]
        profiles = request.args.getlist("profile")
        with _service().session(request_actor()) as s:
            return _reply(s.validate_operation(type_, body, id_, profiles))

    @bp.get("/<type_>/_history")
    def history_type(type_: str) -> Response:
        with _service().session(request_actor()) as s:
            return _reply(s.history(type_, None, _params(), base_url()))

    @bp.get("/<type_>/<id_>")
    def read(type_: str, id_: str) -> Response:
        since = request.if_modified_since
        if_none_match = _if_none_match()
        modified = int(since.timestamp()) if since is not None else None
        with _service().session(request_actor()) as s:
            return _reply(s.shape(s.read(type_, id_, if_none_match, modified), _params()))

    @bp.put("/<type_>/<id_>")
    def update(type_: str, id_: str) -> Response:
        body, _ = request_body(request)
        if_match = _if_match()

        def work(s: Session) -> Result:
            return s.update(type_, id_, body, if_match)

        return _reply(_perform(work, if_match), write=True)

    @bp.patch("/<type_>/<id_>")
    def patch(type_: str, id_: str) -> Response:
        body, _ = request_body(request, allow_patch=True)
        if_match = _if_match()
        return _reply(_perform(lambda s: s.patch(type_, id_, body, if_match), if_match), write=True)

    @bp.delete("/<type_>/<id_>")
    def delete(type_: str, id_: str) -> Response:
        if_match = _if_match()
        return _reply(_perform(lambda s: s.delete(type_, id_, if_match), if_match), write=True)

    @bp.get("/<type_>/<id_>/_history")
    def history_instance(type_: str, id_: str) -> Response:
        with _service().session(request_actor()) as s:
            return _reply(s.history(type_, id_, _params(), base_url()))

    @bp.get("/<type_>/<id_>/_history/<version>")
    def vread(type_: str, id_: str, version: str) -> Response:
        with _service().session(request_actor()) as s:
            return _reply(s.shape(s.vread(type_, id_, version), _params()))

    return bp
