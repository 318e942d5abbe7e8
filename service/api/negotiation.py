"""Content negotiation and rendering: https://hl7.org/fhir/R4/http.html#mime-type."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask, Request, Response
from werkzeug.http import parse_options_header

from service.errors import FhirError, Issue, NotAcceptable, UnsupportedMediaType
from service.fhir.model import dump_json, etag, http_date, parse_json
from service.fhir.results import Result, operation_outcome
from service.fhir.router import FhirRequest

FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({FHIR_JSON, "application/json", "application/json+fhir", "text/json"})
JSON_PATCH = "application/json-patch+json"
FHIR_VERSION = "4.0"  # the fhirVersion media-type parameter this server answers in (R4)
_READS = (FHIR_VERSION, "4.0.1")  # the fhirVersion values a request may name (versioning.html)
_FORMAT_ALIASES = {"json": FHIR_JSON, "application/json": "application/json"}


def response_type(request: Request) -> str:
    """Pick the response media type from _format or Accept; 406 if JSON is not acceptable."""
    requested = request.args.get("_format")
    if requested is not None:
        # A literal '+' in a query string reads as a space (application/fhir json).
        fmt = requested.strip().lower().replace(" ", "+")
        if fmt in _FORMAT_ALIASES:
            return _FORMAT_ALIASES[fmt]
        if fmt.split(";")[0].strip() in JSON_TYPES:
            return FHIR_JSON
        raise NotAcceptable(f"_format={requested} cannot be produced; this server speaks JSON")
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return FHIR_JSON
    best: tuple[float, str] | None = None
    for part in accept.split(","):
        pieces = [p.strip() for p in part.split(";")]
        media = pieces[0].lower()
        quality = 1.0
        version = FHIR_VERSION
        for param in pieces[1:]:
            name, _, value = param.partition("=")
            name = name.strip().lower()
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name == "fhirversion":  # https://hl7.org/fhir/R4/versioning.html#mt-version
                version = value.strip().strip('"')
        if quality <= 0 or version not in _READS:
            continue
        if media in (FHIR_JSON, "application/json+fhir", "*/*", "application/*"):
            chosen = FHIR_JSON
        elif media in ("application/json", "text/json"):
            chosen = "application/json"
        else:
            continue
        if best is None or quality > best[0]:
            best = (quality, chosen)
    if best is None:
        raise NotAcceptable(
            f"Accept: {accept} cannot be met; this server answers in application/fhir+json"
            f" (fhirVersion={FHIR_VERSION})"
        )
    return best[1]


def mimetype(request: FhirRequest) -> tuple[str, dict[str, str]]:
    """The media type of a request's body, lower case, and its parameters (``charset``), read
    from Content-Type as Werkzeug reads it for a Flask request."""
    value, options = parse_options_header(request.headers.get("Content-Type", ""))
    return value.lower(), options


def request_body(request: Request | FhirRequest, allow_patch: bool = False) -> tuple[Any, bool]:
    """Parse the JSON body; return (value, is_json_patch). 415 for other media types."""
    if isinstance(request, FhirRequest):
        content_type, options = mimetype(request)
        data = request.body or b""
    else:
        content_type = (request.mimetype or "").lower()
        options = dict(request.mimetype_params)
        data = request.get_data(cache=True)
    # a body in another FHIR version, or in a character set other than UTF-8 (FHIR's only one,
    # http.html#mime-type), cannot be read as R4 JSON: 415, before anything is parsed
    declared = {k.lower(): v.strip().strip('"') for k, v in options.items()}
    version = declared.get("fhirversion")
    if version is not None and version not in _READS:
        raise UnsupportedMediaType(
            f"The body is declared as FHIR {version}; this server reads FHIR R4 "
            f"(fhirVersion={FHIR_VERSION})"
        )
    charset = declared.get("charset")
    if charset is not None and charset.lower().replace("_", "-") not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset={charset} is not UTF-8, the character set of FHIR")
    is_patch = content_type == JSON_PATCH
    if is_patch and not allow_patch:
        raise UnsupportedMediaType("application/json-patch+json is only accepted by PATCH")
    if content_type and not is_patch and content_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {content_type} is not supported; send application/fhir+json"
            + (" or application/json-patch+json" if allow_patch else "")
        )
    if allow_patch and not is_patch:
        raise UnsupportedMediaType(
            "PATCH accepts JSON Patch (application/json-patch+json); FHIRPath Patch is not "
            "supported"
        )
    return parse_json(data), is_patch


def prefer(request: Request | FhirRequest, key: str) -> str | None:
    """The value of one Prefer token, e.g. prefer(request, 'return') -> 'minimal'."""
    for part in request.headers.get("Prefer", "").split(","):
        for token in part.split(";"):
            name, _, value = token.strip().partition("=")
            if name.strip().lower() == key:
                return value.strip().strip('"')
    return None


def _dumps(value: Any, pretty: bool) -> str:
    return dump_json(value, indent=2 if pretty else None)


def _pretty(request: Request) -> bool:
    return request.args.get("_pretty", "").lower() == "true"


def render(
    request: Request,
    result: Result,
    base: Callable[[], str],
    *,
    write: bool = False,
) -> Response:
    """Turn an interaction Result into an HTTP response with the spec's headers."""
    media = response_type(request)
    headers: dict[str, str] = dict(result.headers)
    stored = result.stored
    if stored is not None:
        headers["ETag"] = etag(stored.version)
        headers["Last-Modified"] = http_date(stored.last_updated_us)
        if result.location:
            headers["Location"] = f"{base()}/{stored.type}/{stored.id}/_history/{stored.version}"
    pretty = _pretty(request)
    returned = (prefer(request, "return") or "representation") if write else "representation"
    if result.status in (204, 304) or returned == "minimal":
        body = None
    elif returned == "OperationOutcome":
        target = f"{stored.type}/{stored.id}" if stored is not None else "the resource"
        verb = "Created" if result.status == 201 else "Updated"
        issues = [Issue("information", "informational", f"{verb} {target}"), *result.issues]
        body = _dumps(operation_outcome(issues), pretty)
    else:
        body = _representation(result, pretty)
    response = Response(body if body is not None else b"", status=result.status, headers=headers)
    if body is not None:
        response.content_type = f"{media}; charset=utf-8"
    return response


def install_bodiless_answers(app: Flask) -> None:
    """Every answer without a body (201 with return=minimal, 202, 204, 304, OPTIONS) names no
    media type: Flask labels each Response text/html, which a FHIR client choosing its parser
    by Content-Type would try to read. Registered first, so it sees the final answer."""

    @app.after_request
    def _no_media_type_without_a_body(response: Response) -> Response:
        if response.is_sequence and not response.get_data():
            response.headers.remove("Content-Type")
        return response


def _representation(result: Result, pretty: bool) -> str | None:
    """The body of a result: pre-serialised text, the stored version, or a built resource."""
    if result.text is not None:
        return _stored_text(result.text, pretty)
    if result.stored is not None and result.stored.content is not None:
        return _stored_text(result.stored.content, pretty)
    if result.body is not None:
        return _dumps(result.body, pretty)
    return None


def _stored_text(content: str, pretty: bool) -> str:
    return _dumps(parse_json(content), True) if pretty else content


def render_error(request: Request | None, error: FhirError) -> Response:
    """Render any FhirError as an OperationOutcome with its status and headers."""
    media = FHIR_JSON
    if request is not None:
        try:
            media = response_type(request)
            pretty = _pretty(request)
        except (NotAcceptable, UnicodeDecodeError):
            media = FHIR_JSON  # an error must still be readable
            pretty = False
    else:
        pretty = False
    body = _dumps(operation_outcome(error.outcome_issues()), pretty)
    response = Response(body, status=error.status, headers=dict(error.headers))
    response.content_type = f"{media}; charset=utf-8"
    return response
