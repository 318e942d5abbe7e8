"""Hardening at the HTTP edge: who may connect, which Host names are answered, rate limits
per client and CORS for SMART apps in browsers.

In the ``none`` mode (no tokens) only loopback peers are answered, however the app was started
(``whatmatters serve`` or ``gunicorn wsgi:app``): the check reads each request's WSGI
``REMOTE_ADDR``. Without a public base URL, links are built from the Host header, so only the
configured host names are answered (Host header poisoning).

Rate limits are token buckets kept in each process (with several gunicorn workers the limit
holds per worker): one bucket per network address, checked before the token, and one per
authenticated client (the token's client_id, else its subject). A request over the limit gets
429 with Retry-After and an OperationOutcome (``throttled``).

CORS (https://fetch.spec.whatwg.org/#http-cors-protocol) is off unless origins are configured;
a SMART app served from one of them may call the API with its Bearer token.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, g, request

from service.config import Config, is_loopback
from service.errors import BadRequest, FhirError, Forbidden

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = (
    "Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, "
    "If-Modified-Since, Prefer, X-Request-ID"
)
CORS_EXPOSED = "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate, Retry-After"
MAX_BUCKETS = 100_000


class Throttled(FhirError):
    """Too many requests from one client (429)."""

    status = 429
    code = "throttled"


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets: ``per_minute`` requests a minute, bursts of ``burst``."""

    def __init__(
        self, per_minute: int, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(max(burst, 1))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0 when allowed, else the seconds until one is free."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._buckets.clear()  # a flood of keys: start afresh, never grow unbounded
                bucket = self._buckets[key] = _Bucket(self.burst, now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            if bucket.tokens >= 1:
                bucket.tokens -= 1
                return 0.0
            return (1 - bucket.tokens) / self.rate


def host_name(host: str) -> str:
    """The name part of a Host header, without the port: ``[::1]:8080`` -> ``[::1]``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0].rstrip(".")


def install_edge_checks(app: Flask, config: Config) -> None:
    """Refuse peers off this machine in the none mode, and Host names not configured."""
    check_host = not config.public_base_url and "*" not in config.allowed_hosts
    allowed = {host_name(h) for h in config.allowed_hosts}

    @app.before_request
    def _edge() -> None:
        peer = request.remote_addr
        # an empty peer is a Unix socket, which only this machine can reach
        if config.auth_mode == "none" and peer and not is_loopback(peer):
            raise Forbidden(
                "This server runs without authorization (WHATMATTERS_AUTH_MODE=none), so it "
                "answers only clients on this machine; the request came from another address. "
                "Run WHATMATTERS_AUTH_MODE=smart to serve a network"
            )
        if check_host and host_name(request.host) not in allowed:
            raise BadRequest(
                "The Host header names a host this server does not answer for; set "
                "WHATMATTERS_PUBLIC_BASE_URL or list the host in WHATMATTERS_ALLOWED_HOSTS",
                expression=("Host",),
            )


def _throttled(wait: float) -> Throttled:
    error = Throttled("Too many requests from this client; slow down and retry")
    error.headers["Retry-After"] = str(max(1, math.ceil(wait)))
    return error


def install_rate_limits(app: Flask, config: Config) -> None:
    """Limit requests per network address now, and per client once a token is known."""
    if config.requests_per_minute <= 0:
        return
    by_address = RateLimiter(config.requests_per_minute, config.rate_limit_burst)
    by_client = RateLimiter(config.requests_per_minute, config.rate_limit_burst)

    @app.before_request
    def _per_address() -> None:
        wait = by_address.take(f"addr:{request.remote_addr}")
        if wait:
            raise _throttled(wait)

    app.extensions["whatmatters.client_limiter"] = by_client


def check_client_limit(app: Flask, client: str) -> None:
    """Count one request of an authenticated client (called once its token is verified)."""
    limiter: RateLimiter | None = app.extensions.get("whatmatters.client_limiter")
    if limiter is None:
        return
    wait = limiter.take(f"client:{client}")
    if wait:
        raise _throttled(wait)


def install_cors(app: Flask, config: Config) -> None:
    """Answer CORS preflights and mark responses for the configured origins."""
    origins = config.cors_origins
    if not origins:
        return
    any_origin = "*" in origins

    def allowed(origin: str | None) -> bool:
        return origin is not None and (any_origin or origin in origins)

    @app.before_request
    def _preflight() -> Response | None:
        if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
            g.whatmatters_preflight = True
            return Response(status=204)
        return None

    @app.after_request
    def _cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        response.vary.add("Origin")
        if not allowed(origin):
            return response
        assert origin is not None
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        if g.get("whatmatters_preflight"):
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "600"
        return response
