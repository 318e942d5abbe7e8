"""A real SMART Backend Services token endpoint for tests, and a tiny host for a JWKS.

The endpoint behaves like a partner's authorization server: it fetches the client's JWKS from
a URL, verifies the client assertion by kid (RS384 or ES384) and checks every claim Backend
Services requires, rejecting replayed jti values. End-to-end tests point it at the service's
own /.well-known/jwks.json; unit tests use JwksHost.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

import jwt

from tests.exchange.serving import Serving

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}
MAX_LIFETIME = 300
# Clock skew a real server tolerates between the client and itself.
LEEWAY = 5


class _Rejected(Exception):
    """The token request is refused with an OAuth error."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 with an ephemeral port, run in a daemon thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> None:
        """Serve requests in a background thread."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever, args=(0.05,), daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()


class _Threaded(Serving):
    """A test server around one _Server."""

    _server: _Server

    def start(self) -> None:
        """Start serving."""
        self._server.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.stop()


class _QuietHandler(BaseHTTPRequestHandler):
    """A request handler that does not log to stderr and answers JSON."""

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: test output stays readable."""

    def send_json(self, status: int, body: dict[str, Any]) -> None:
        """Send a JSON response that no cache may keep."""
        payload = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class JwksHost(_Threaded):
    """Serves a mutable JWK Set at <url>, like a client's published jwks_uri."""

    def __init__(self, jwks: dict[str, Any] | None = None) -> None:
        self.jwks: dict[str, Any] = jwks if jwks is not None else {"keys": []}
        self.fetches = 0
        host = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                """Serve the JWKS at /jwks.json."""
                if self.path != "/jwks.json":
                    self.send_json(404, {"error": "not found"})
                    return
                host.fetches += 1
                self.send_json(200, host.jwks)

        self._server = _Server(Handler)
        self.url = f"{self._server.base_url}/jwks.json"


class TokenEndpoint(_Threaded):
    """A token endpoint that accepts one client, authenticated by assertions against a JWKS."""

    def __init__(self, jwks_url: str, client_id: str, *, expires_in: int | None = 300) -> None:
        self.jwks_url = jwks_url
        self.client_id = client_id
        # None leaves expires_in out of the response, which RFC 6749 allows.
        self.expires_in = expires_in
        self.issued: list[str] = []
        self.rejections: list[str] = []
        self._seen_jti: set[str] = set()
        self._lock = threading.Lock()
        # No JWKS caching: a key removed from the client's set must stop working at once.
        self._jwks_client = jwt.PyJWKClient(
            jwks_url, cache_jwk_set=False, cooldown_duration=0, timeout=5
        )
        endpoint = self

        class Handler(_QuietHandler):
            def do_POST(self) -> None:
                """Answer a token request at /token."""
                if self.path != "/token":
                    self.send_json(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                status, answer = endpoint.answer(self.headers.get("Content-Type", ""), body)
                self.send_json(status, answer)

        self._server = _Server(Handler)
        self.url = f"{self._server.base_url}/token"

    def accepts(self, authorization: str | None) -> bool:
        """Tell whether an Authorization header carries a token this endpoint issued."""
        if authorization is None or not authorization.lower().startswith("bearer "):
            return False
        with self._lock:
            return authorization[len("bearer ") :] in self.issued

    def answer(self, content_type: str, body: str) -> tuple[int, dict[str, Any]]:
        """Return the status and JSON body answering a token request."""
        try:
            scope = self._authenticate(content_type, body)
        except _Rejected as rejected:
            with self._lock:
                self.rejections.append(rejected.description)
            return rejected.status, {
                "error": rejected.error,
                "error_description": rejected.description,
            }
        token = secrets.token_urlsafe(24)
        with self._lock:
            self.issued.append(token)
        answer: dict[str, Any] = {"access_token": token, "token_type": "bearer", "scope": scope}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return 200, answer

    def _authenticate(self, content_type: str, body: str) -> str:
        """Check the token request and its client assertion; return the granted scope."""
        if content_type.split(";")[0].strip().lower() != "application/x-www-form-urlencoded":
            raise _Rejected(400, "invalid_request", f"content type {content_type!r} is not a form")
        params = parse_qs(body, keep_blank_values=True)
        repeated = sorted(name for name, values in params.items() if len(values) > 1)
        if repeated:
            raise _Rejected(400, "invalid_request", f"repeated parameters {repeated}")
        form = {name: values[0] for name, values in params.items()}
        if form.get("grant_type") != "client_credentials":
            raise _Rejected(
                400,
                "unsupported_grant_type",
                f"grant_type {form.get('grant_type')!r} is not client_credentials",
            )
        scope = form.get("scope")
        if not scope:
            raise _Rejected(400, "invalid_scope", "scope is missing")
        if form.get("client_assertion_type") != JWT_BEARER:
            raise _Rejected(
                401,
                "invalid_client",
                f"client_assertion_type {form.get('client_assertion_type')!r} is not {JWT_BEARER}",
            )
        assertion = form.get("client_assertion")
        if not assertion:
            raise _Rejected(401, "invalid_client", "client_assertion is missing")
        self._verify(assertion)
        return scope

    def _verify(self, assertion: str) -> None:
        """Verify the assertion's signature through the JWKS and its Backend Services claims."""
        try:
            header = jwt.get_unverified_header(assertion)
        except jwt.InvalidTokenError as exc:
            raise _Rejected(401, "invalid_client", f"malformed client_assertion: {exc}") from exc
        alg = header.get("alg")
        if alg not in KEY_TYPES:
            raise _Rejected(401, "invalid_client", f"alg {alg!r} is not RS384 or ES384")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise _Rejected(401, "invalid_client", "client_assertion header has no kid")
        try:
            jwk = self._jwks_client.get_signing_key(kid)
        except jwt.PyJWKClientError as exc:
            raise _Rejected(
                401, "invalid_client", f"no key {kid!r} in {self.jwks_url}: {exc}"
            ) from exc
        if jwk.key_type != KEY_TYPES[alg]:
            raise _Rejected(401, "invalid_client", f"key {kid!r} is {jwk.key_type}, not for {alg}")
        try:
            claims = jwt.decode(
                assertion,
                jwk.key,
                algorithms=[alg],
                audience=self.url,
                leeway=LEEWAY,
                options={
                    "require": ["iss", "sub", "aud", "exp", "iat", "jti"],
                    "strict_aud": True,
                },
            )
        except jwt.InvalidTokenError as exc:
            raise _Rejected(
                401, "invalid_client", f"client_assertion rejected: {type(exc).__name__}: {exc}"
            ) from exc
        if claims["iss"] != self.client_id or claims["sub"] != self.client_id:
            raise _Rejected(
                401,
                "invalid_client",
                f"iss {claims['iss']!r} and sub {claims['sub']!r} must both be {self.client_id!r}",
            )
        exp, iat = claims["exp"], claims["iat"]
        if exp > iat + MAX_LIFETIME or exp > time.time() + MAX_LIFETIME + LEEWAY:
            raise _Rejected(
                401, "invalid_client", f"exp {exp} is more than {MAX_LIFETIME} s in the future"
            )
        jti = claims["jti"]
        with self._lock:
            if jti in self._seen_jti:
                raise _Rejected(401, "invalid_client", f"jti {jti!r} was already used (replay)")
            self._seen_jti.add(jti)
