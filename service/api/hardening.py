"""Hardening at the HTTP edge: who may connect, which Host names are answered, rate limits,
trusted proxies and CORS for SMART apps in browsers.

In the ``none`` mode (no tokens) only loopback peers are answered, however the app was started
(``whatmatters serve`` or ``gunicorn wsgi:app``): the check reads each request's WSGI
``REMOTE_ADDR``. Without a public base URL, links are built from the Host header, so only the
configured host names are answered (Host header poisoning).

Rate limits use the ``limits`` library: a moving window of ``per_minute`` requests a minute and
at most ``burst`` in any one second, one counter per network address (checked before the token)
and one per authenticated client (the token's client_id, else its subject). The counters live
in process memory by default (each gunicorn worker counts its own) or, with
``WHATMATTERS_REDIS_URL``, in Redis, shared by every worker and replica. When Redis does not
answer, limits fail open: the request is served, a warning is logged once a minute and
``whatmatters_rate_limit_store_errors_total`` counts it, because refusing every request while a
cache is down would turn a Redis outage into a service outage. A request over the limit gets 429
with Retry-After and an OperationOutcome (``throttled``).

Behind a proxy, ``WHATMATTERS_TRUSTED_PROXY_HOPS`` (default 0) tells how many proxies in front
of the service may be believed: Werkzeug's ProxyFix then takes the client address, scheme and
host from that many ``X-Forwarded-For/-Proto/-Host`` values. With 0 those headers change nothing,
so a client cannot forge its address for the rate limits and AuditEvents.

CORS (https://fetch.spec.whatwg.org/#http-cors-protocol) is off unless origins are configured;
a SMART app served from one of them may call the API with its Bearer token.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from flask import Flask, Response, g, request
from limits import RateLimitItem, RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from werkzeug.middleware.proxy_fix import ProxyFix

from service.config import Config, host_name, is_loopback
from service.errors import BadRequest, FhirError, Forbidden

CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_HEADERS = (
    "Authorization, Content-Type, Accept, If-Match, If-None-Match, If-None-Exist, "
    "If-Modified-Since, Prefer, X-Request-ID"
)
CORS_EXPOSED = "Location, Content-Location, ETag, Last-Modified, WWW-Authenticate, Retry-After"
# A Redis that does not answer must not hold requests up: fail open after this long.
REDIS_TIMEOUT_SECONDS = 0.25

log = logging.getLogger(__name__)


class Throttled(FhirError):
    """Too many requests from one client (429)."""

    status = 429
    code = "throttled"


def limits_storage(redis_url: str | None) -> Storage:
    """Where the counters live: Redis when configured (shared), else this process's memory."""
    if not redis_url:
        return MemoryStorage()
    storage = storage_from_string(
        redis_url,
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )
    if not isinstance(storage, Storage):  # an async storage URL (async+redis://) cannot serve here
        raise ValueError(f"WHATMATTERS_REDIS_URL names an async storage: {redis_url.split(':')[0]}")
    return storage


class RateLimiter:
    """``per_minute`` requests in any minute and ``burst`` in any second, per key."""

    def __init__(
        self,
        per_minute: int,
        burst: int,
        storage: Storage | None = None,
        on_store_error: Callable[[], None] = lambda: None,
        namespace: str = "whatmatters",
    ) -> None:
        self.items: tuple[RateLimitItem, ...] = (
            RateLimitItemPerSecond(max(burst, 1), namespace=namespace),
            RateLimitItemPerMinute(max(per_minute, 1), namespace=namespace),
        )
        self.limiter = MovingWindowRateLimiter(storage or MemoryStorage())
        self.on_store_error = on_store_error
        self._last_warning = 0.0

    def take(self, key: str) -> float:
        """Count one request for ``key``: 0 when allowed, else the seconds until one is free."""
        try:
            for item in self.items:
                if not self.limiter.hit(item, key):
                    reset = self.limiter.get_window_stats(item, key).reset_time
                    return max(reset - time.time(), 0.001)
        except Exception as exc:  # noqa: BLE001 - a shared store that fails must not refuse
            self._store_failed(exc)
        return 0.0

    def _store_failed(self, exc: Exception) -> None:
        self.on_store_error()
        now = time.monotonic()
        if now - self._last_warning > 60:
            self._last_warning = now
            log.warning("rate limits are not enforced: their store failed (%s)", type(exc).__name__)


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


def install_trusted_proxies(app: Flask, config: Config) -> None:
    """Believe X-Forwarded-* from exactly ``trusted_proxy_hops`` proxies, and from nobody else."""
    hops = config.trusted_proxy_hops
    if hops > 0:
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops
        )


def install_rate_limits(app: Flask, config: Config) -> None:
    """Limit requests per network address now, and per client once a token is known."""
    if config.requests_per_minute <= 0:
        return
    storage = limits_storage(config.redis_url)
    metrics = app.extensions.get("whatmatters.metrics")

    def store_error() -> None:
        if metrics is not None:
            metrics.rate_limit_store_errors.inc()

    def limiter(kind: str) -> RateLimiter:
        return RateLimiter(
            config.requests_per_minute,
            config.rate_limit_burst,
            storage,
            store_error,
            namespace=f"whatmatters-{kind}",
        )

    by_address = limiter("address")
    by_client = limiter("client")

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
