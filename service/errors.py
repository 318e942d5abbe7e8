"""Typed errors of the service; the API renders each one as a FHIR OperationOutcome."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: https://hl7.org/fhir/R4/operationoutcome.html."""

    severity: str  # fatal | error | warning | information
    code: str  # IssueType, e.g. structure, required, value, invariant, not-found
    diagnostics: str
    expression: tuple[str, ...] = ()

    def to_fhir(self) -> dict[str, object]:
        """Render this issue as an OperationOutcome.issue element."""
        item: dict[str, object] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            item["expression"] = list(self.expression)
        return item


@dataclass
class FhirError(Exception):
    """An error with an HTTP status and the OperationOutcome issues that explain it."""

    diagnostics: str
    expression: tuple[str, ...] = ()
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    status = 500
    code = "exception"

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)

    def outcome_issues(self) -> list[Issue]:
        """The issues to report: the detailed list, or one issue built from the message."""
        if self.issues:
            return self.issues
        return [Issue("error", self.code, self.diagnostics, self.expression)]


class BadRequest(FhirError):
    """The request cannot be parsed or breaks the base FHIR rules (400)."""

    status = 400
    code = "invalid"


class InvalidResource(BadRequest):
    """The resource breaks the base R4 structure or a required binding (400)."""

    code = "structure"


class NotSupported(FhirError):
    """A resource type or interaction this server does not offer (404 or 405)."""

    status = 404
    code = "not-supported"


class MethodNotAllowed(NotSupported):
    """The interaction exists but not with this HTTP method (405)."""

    status = 405


class NotFound(FhirError):
    """No resource with this type and id (404)."""

    status = 404
    code = "not-found"


class Gone(FhirError):
    """The resource was deleted (410)."""

    status = 410
    code = "deleted"


class Conflict(FhirError):
    """The request conflicts with the stored state (409)."""

    status = 409
    code = "conflict"


class PreconditionFailed(FhirError):
    """If-Match did not match, or conditional criteria matched several resources (412)."""

    status = 412
    code = "conflict"


class Unprocessable(FhirError):
    """Well-formed, but breaks a profile or business rule (422)."""

    status = 422
    code = "processing"


class NotAcceptable(FhirError):
    """The Accept header or _format asks for a format the server cannot produce (406)."""

    status = 406
    code = "not-supported"


class UnsupportedMediaType(FhirError):
    """The body is not in a format the server reads (415)."""

    status = 415
    code = "not-supported"


class PayloadTooLarge(FhirError):
    """The body is larger than the configured limit (413)."""

    status = 413
    code = "too-costly"


class ServiceUnavailable(FhirError):
    """The database cannot be reached right now (503)."""

    status = 503
    code = "transient"


class Unauthorized(FhirError):
    """No access token, or one that cannot be trusted (401, RFC 6750 section 3)."""

    status = 401
    code = "login"


class Forbidden(FhirError):
    """The access token is good but does not allow this (403)."""

    status = 403
    code = "forbidden"


class StorageError(Exception):
    """The database failed in a way the caller cannot fix by changing the request (the store
    raises it; the API answers 500 without the details)."""


class StoreUnavailable(StorageError):
    """The database cannot be reached right now; the request may be retried (the API answers
    503 with Retry-After)."""


def describe_exception(error: BaseException) -> str:
    """An exception for the logs: its type and where it was raised, without its message
    (messages may quote personal data)."""
    frames = traceback.extract_tb(error.__traceback__)
    where = " <- ".join(
        f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}" for f in frames[::-1][:8]
    )
    return f"{type(error).__name__} at {where or 'an unknown place'}"
