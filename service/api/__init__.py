"""The HTTP adapters: blueprints and the one error handler that renders OperationOutcomes.

Views parse a request, call one interaction of the FHIR core (or a what-matters operation) and
render its result; FHIR rules live below, in ``service.fhir``.

May import: Flask and Werkzeug, ``service.exchange``, ``service.priorities``, ``service.fhir``,
``service.validation``, ``service.mapping``, ``service.errors`` and ``service.config``. Never
``service.cli``, and never ``service.storage``: views reach the data through the FHIR core, and
the store's errors (``StorageError``, ``StoreUnavailable``) are in ``service.errors``.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from service.api.exchange_views import build_exchange
from service.api.export_handlers import build_exports
from service.api.facade import build_facade
from service.api.fhir_views import build_blueprint, route_label
from service.api.negotiation import render_error
from service.api.page import build_page
from service.api.quality_page import build_quality_page
from service.errors import (
    FhirError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageError,
    StoreUnavailable,
    describe_exception,
)

log = logging.getLogger("whatmatters.api")


def _route() -> str:
    """The matched route (``/fhir/{type}/{id}``), never the path with its values."""
    label = route_label()
    if label is not None:
        return label
    return request.url_rule.rule if request.url_rule is not None else "(no route)"


def register(app: Flask, base_path: str) -> None:
    """Mount the FHIR API and make every error an OperationOutcome."""
    app.register_blueprint(build_exchange())
    app.register_blueprint(build_exports())
    app.register_blueprint(build_blueprint(base_path))
    app.register_blueprint(build_facade())
    app.register_blueprint(build_page())
    app.register_blueprint(build_quality_page())

    @app.errorhandler(FhirError)
    def _fhir_error(error: FhirError) -> Response:
        return render_error(request, error)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(_error: RequestEntityTooLarge) -> Response:
        limit = app.config.get("MAX_CONTENT_LENGTH")
        return render_error(
            request, PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes")
        )

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException) -> Response:
        code = error.code or 500
        if code == 404:
            fhir: FhirError = NotFound(f"There is nothing at {request.path}")
        elif code == 405:
            fhir = MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
            fhir.headers.update({"Allow": ", ".join(error.valid_methods or [])})  # type: ignore[attr-defined]
        else:
            fhir = FhirError(error.description or error.name)
            fhir.status = code
            fhir.code = "invalid" if code < 500 else "exception"
        return render_error(request, fhir)

    @app.errorhandler(StoreUnavailable)
    def _unavailable(_error: StoreUnavailable) -> Response:
        error = ServiceUnavailable("The database is not reachable; retry shortly")
        error.headers["Retry-After"] = "5"
        return render_error(request, error)

    @app.errorhandler(StorageError)
    def _storage(error: StorageError) -> Response:
        log.error("storage error on %s %s: %s", request.method, _route(), type(error).__name__)
        return render_error(request, FhirError("The database could not complete the request"))

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        # Logged with its traceback, but never shown to the client. Neither the path (it may
        # hold an NHS number) nor the exception's message (it may quote the patient's words)
        # reaches the log: the route and where the error happened do.
        log.error(
            "unexpected error on %s %s: %s",
            request.method,
            _route(),
            describe_exception(error),
        )
        return render_error(request, FhirError("An unexpected error occurred"))
