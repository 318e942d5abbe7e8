"""SMART on FHIR authorization at the HTTP edge: Bearer JWTs in, the request's Access out.

The token is checked here (RFC 6750 Bearer, RFC 7519 claims: signature by a key of the
issuer's JWKS, ``exp``, ``nbf``, ``iss``, ``aud``); what it allows is enforced below the API, in
the FHIR core (service/fhir/access.py), for every interaction alike. Errors: 401 with
``WWW-Authenticate`` when the token is missing or cannot be trusted, 403 when it does not
allow the request (https://hl7.org/fhir/smart-app-launch/app-launch.html).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit
from urllib.request import url2pathname

import jwt
from flask import Flask, Response, g, jsonify, request

from service.api.fhir_views import request_interaction
from service.api.hardening import check_client_limit
from service.api.negotiation import render_error
from service.config import Config
from service.errors import FhirError, Forbidden, ServiceUnavailable, StorageError, Unauthorized
from service.fhir.access import Access, parse_scopes
from service.fhir.actor import Actor
from service.fhir.audit import RequestSeen, audit_event
from service.fhir.audit_trail import AuditTrail
from service.fhir.model import instant

ALGORITHMS = ("RS256", "RS384", "ES256", "ES384")
log = logging.getLogger("whatmatters.audit")
REALM = "what-matters"
REVERIFY_SECONDS = 60.0  # how long a verified token is trusted without checking it again
VERIFIED_TOKENS = 10_000  # how many verified tokens a process remembers
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
# the SMART configuration's capabilities this server supports
CAPABILITIES = (
    "permission-v1",
    "permission-v2",
    "permission-patient",
    "permission-user",
    "client-confidential-asymmetric",
    "context-standalone-patient",
)


class FileKeys:
    """The issuer's keys from a JWKS file (an offline deployment, or tests), read once."""

    def __init__(self, path: Path) -> None:
        self.keys = jwt.PyJWKSet.from_json(path.read_text(encoding="utf-8"))

    def get_signing_key_from_jwt(self, token: str) -> jwt.PyJWK:
        """The key named by the token's ``kid`` (or the only key)."""
        kid = jwt.get_unverified_header(token).get("kid")
        for key in self.keys.keys:
            if kid is None or key.key_id == kid:
                return key
        raise jwt.PyJWKClientError(f"no key with kid {kid!r}")


class TokenVerifier:
    """Checks access tokens against one issuer's published keys (cached by PyJWKClient)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        jwks_url: str,
        leeway: int = 30,
        max_lifetime: int = 3600,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self.max_lifetime = max_lifetime
        self.keys: jwt.PyJWKClient | FileKeys
        # tokens verified lately: token -> (Access, exp, nbf, verified at); see verify
        self._verified: dict[str, tuple[Access, float, float, float]] = {}
        if jwks_url.startswith("file:"):
            self.keys = FileKeys(Path(url2pathname(urlsplit(jwks_url).path)))
        else:
            self.keys = jwt.PyJWKClient(jwks_url, cache_keys=True, lifespan=300, timeout=10)

    def verify(self, token: str) -> Access:
        """The Access a token grants; raise Unauthorized when it cannot be trusted.

        A token verified in the last ``REVERIFY_SECONDS`` is not verified again (its signature
        check is most of a request's cost); its ``exp`` and ``nbf`` are checked on every use.
        A key the issuer withdraws stops its tokens within that time."""
        now = time.time()
        known = self._verified.get(token)
        if known is not None:
            access, exp, nbf, verified = known
            if now - verified < REVERIFY_SECONDS and nbf - self.leeway <= now <= exp + self.leeway:
                return access
            self._verified.pop(token, None)
        access, exp, nbf = self._verify(token)
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (access, exp, nbf, now)
        return access

    def _verify(self, token: str) -> tuple[Access, float, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise _invalid("the access token is not a JWT") from exc
        if header.get("alg") not in ALGORITHMS:
            raise _invalid(f"tokens signed with {header.get('alg')!r} are not accepted")
        try:
            key = self.keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            error = ServiceUnavailable("The token issuer's keys could not be fetched; retry")
            error.headers["Retry-After"] = "5"
            raise error from exc
        except jwt.PyJWTError as exc:
            raise _invalid("the access token was not signed by a key of the issuer") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise _invalid("the access token has expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise _invalid("the access token is not valid yet (nbf)") from exc
        except jwt.InvalidAudienceError as exc:
            raise _invalid(f"the access token is not for this server ({self.audience})") from exc
        except jwt.InvalidIssuerError as exc:
            raise _invalid("the access token comes from another issuer") from exc
        except jwt.PyJWTError as exc:
            raise _invalid(f"the access token cannot be trusted: {exc}") from exc
        self._check_lifetime(claims)
        return access_of(claims), float(claims["exp"]), float(claims.get("nbf", 0))

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """``exp``, ``iat`` and ``nbf`` are NumericDates (RFC 7519 section 2), not strings, and a
        token lives at most max_lifetime seconds: a stolen token must not work for years."""
        exp, iat = claims.get("exp"), claims.get("iat", time.time())
        for name, value in (("exp", exp), ("iat", iat), ("nbf", claims.get("nbf", 0))):
            if not _numeric(value):
                raise _invalid(f"the access token's {name} is not a number (RFC 7519 NumericDate)")
        start = min(iat, time.time() + self.leeway)
        if exp - start > self.max_lifetime + self.leeway:
            raise _invalid(
                f"the access token lives longer than this server accepts ({self.max_lifetime} "
                "seconds from iat)"
            )


def _numeric(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def access_of(claims: dict[str, Any]) -> Access:
    """The Access of verified claims: ``scope`` (or ``scp``), ``patient``, ``sub``, client."""
    scope = claims.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    if scope is None and isinstance(claims.get("scp"), list):
        scope = " ".join(str(s) for s in claims["scp"])
    scope = scope if isinstance(scope, str) else ""
    patient = claims.get("patient")
    if patient is not None and (not isinstance(patient, str) or not _ID.match(patient)):
        raise _invalid("the access token's patient is not a resource id")
    client = claims.get("client_id") or claims.get("azp")
    fhir_user = claims.get("fhirUser")
    return Access(
        grants=parse_scopes(scope),
        patient=patient,
        subject=str(claims["sub"]) if claims.get("sub") is not None else None,
        client_id=str(client) if client is not None else None,
        scopes=scope,
        issuer=str(claims["iss"]) if claims.get("iss") is not None else None,
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
    )


def _invalid(description: str) -> Unauthorized:
    error = Unauthorized(f"Unauthorized: {description}")
    quoted = description.replace("\\", "").replace('"', "'")
    error.headers["WWW-Authenticate"] = (
        f'Bearer realm="{REALM}", error="invalid_token", error_description="{quoted}"'
    )
    return error


def missing_token() -> Unauthorized:
    """401 for a request without a Bearer token (RFC 6750 section 3: no error code)."""
    error = Unauthorized("Unauthorized: this server needs a Bearer access token (SMART on FHIR)")
    error.headers["WWW-Authenticate"] = f'Bearer realm="{REALM}"'
    return error


def install(app: Flask, config: Config, base_path: str, verifier: TokenVerifier | None) -> None:
    """Check the Bearer token of every request but the public ones (smart mode)."""
    if config.auth_mode != "smart":
        return
    assert verifier is not None
    public: tuple[str, ...] = (
        f"{base_path}/metadata",
        f"{base_path}/.well-known/",
        "/.well-known/",
        "/healthz",
        "/readyz",
    )
    if config.metrics_public:
        public += ("/metrics",)

    # SMART clients look under the FHIR base ([base]/.well-known/smart-configuration); the root
    # path stays for clients configured with the server's origin only
    @app.get(f"{base_path}/.well-known/smart-configuration", endpoint="smart_configuration_base")
    @app.get("/.well-known/smart-configuration")
    def _smart_configuration() -> Any:
        response = jsonify(smart_configuration(config))
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    trail: AuditTrail = app.extensions["whatmatters.audit"]
    # what may show AuditEvents: the trail's own type, system history and search, Bundles
    reads_trail = (f"{base_path}/AuditEvent", f"{base_path}/_history")

    @app.before_request
    def _authenticate() -> None:
        if request.method == "OPTIONS" or request.path.startswith(public):
            return
        if request.path.startswith(reads_trail) or request.path.rstrip("/") == base_path:
            trail.flush()  # what was answered before is on record before the trail is read
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise missing_token()
        access = verifier.verify(token.strip())
        check_client_limit(app, access.client_id or access.subject or str(request.remote_addr))
        if request.path.startswith("/admin/") and not is_administrator(access):
            raise Forbidden("The outbox admin endpoints need a system/*.cruds (or *.*) scope")
        if request.path == "/metrics" and not any(g.context == "system" for g in access.grants):
            raise Forbidden("/metrics needs a system/ scope (or WHATMATTERS_METRICS_PUBLIC=true)")
        # who the request acts for: every session the views open takes it
        g.whatmatters_actor = Actor.client(access)

    @app.after_request
    def _audit(response: Response) -> Response:
        # a monitoring system's scrapes are not a patient's data: they are not audited
        if request.method == "OPTIONS" or request.path.startswith((*public, "/metrics")):
            return response
        return record_audit(app, response)


def record_audit(app: Flask, response: Response) -> Response:
    """Record the request's AuditEvent in the audit trail (stored at once, or within its window:
    service/fhir/audit_trail.py). A read whose access cannot be recorded is not answered (503);
    a write already made keeps its answer and the failure is logged."""
    actor: Actor | None = g.get("whatmatters_actor")
    access = actor.access if actor is not None else None
    touched = list(actor.touched) if actor is not None else []
    fhir = app.extensions["whatmatters.fhir"]
    seen = RequestSeen(
        interaction=request_interaction(),
        method=request.method,
        path=request.path,
        query=request.query_string.decode("latin-1"),
        status=response.status_code,
        address=request.remote_addr,
    )
    event = audit_event(seen, access, touched, instant(fhir.clock()), "What Matters FHIR service")
    try:
        # the audit trail is the system's own record, written whatever the token may write
        app.extensions["whatmatters.audit"].record(event)
    except (StorageError, FhirError) as exc:
        log.error(
            "the AuditEvent of a %s request could not be stored: %s",
            request.method,
            type(exc).__name__,
        )
        if request.method in ("GET", "HEAD"):
            failed = ServiceUnavailable("The access could not be recorded; retry shortly")
            failed.headers["Retry-After"] = "5"
            return render_error(request, failed)
    return response


def is_administrator(access: Access) -> bool:
    """An administrator: a system/ grant on every type with every permission."""
    return any(
        grant.context == "system" and grant.type == "*" and len(grant.permissions) == 5
        for grant in access.grants
    )


def smart_configuration(config: Config) -> dict[str, Any]:
    """/.well-known/smart-configuration (SMART App Launch 2.x, conformance.html)."""
    document: dict[str, Any] = {
        "issuer": config.auth_issuer,
        "jwks_uri": config.jwks_url,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
            "patient/*.rs",
            "patient/*.cruds",
            "user/*.rs",
            "user/*.cruds",
            "system/*.rs",
            "system/*.cruds",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": list(CAPABILITIES),
    }
    if config.auth_authorize_url:
        document["authorization_endpoint"] = config.auth_authorize_url
    if config.auth_token_url:
        document["token_endpoint"] = config.auth_token_url
    return document


def verifier_for(config: Config) -> TokenVerifier | None:
    """The token verifier the configuration asks for (None in the none mode)."""
    if config.auth_mode != "smart":
        return None
    assert config.auth_issuer is not None
    jwks_url = config.jwks_url
    assert jwks_url is not None
    return TokenVerifier(
        config.auth_issuer,
        config.audience,
        jwks_url,
        config.auth_leeway_seconds,
        config.auth_max_token_seconds,
    )
