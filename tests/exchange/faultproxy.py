"""A fault-injecting HTTP reverse proxy for end-to-end tests of partner exchange.

Put it between a client and a real server: every request is forwarded as it came (method,
path, query, body, headers) unless a fault is due. Faults are queued one-shot with fail_next()
and consumed in arrival order, or drawn at random with fail_every():

- "drop": close the client connection without any response; the upstream never sees it.
- "reset": forward, let the upstream apply the request, then close the client connection
  without a response (with a TCP reset): the "applied but unacknowledged" case.
- ("status", code): answer code (4xx or 5xx) with a FHIR OperationOutcome, not forwarding.
- ("retry-after", code, seconds): the same with a Retry-After header (code is usually 429).
- ("delay", seconds): wait, then forward.

Network faults come first; require_bearer() stands for the upstream's own token check and is
applied right before forwarding. go_down() closes the listening socket and every open
connection, so clients get "connection refused"; come_back() listens on the same port again.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from tests.exchange.serving import Serving

FAULT_NAMES = ("drop", "reset", "status", "retry-after", "delay")
FORWARDED = "forwarded"
UNAUTHORIZED = "unauthorized"
BAD_GATEWAY = "bad-gateway"

# RFC 9110 section 7.6.1; Proxy-Connection is the legacy spelling some clients still send.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    408: "timeout",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    422: "processing",
    429: "throttled",
    500: "exception",
    502: "transient",
    503: "transient",
    504: "timeout",
}

# How long stop() waits for a handler still talking to a slow upstream.
JOIN_TIMEOUT = 5.0
# An idle keep-alive connection is closed after this, as real servers do.
IDLE_TIMEOUT = 30.0

Fault = tuple[Any, ...]


def normalise_fault(fault: str | tuple[Any, ...]) -> Fault:
    """Return fault as a validated tuple, raising ValueError for anything unknown."""
    spec: tuple[Any, ...] = (fault,) if isinstance(fault, str) else tuple(fault)
    if not spec or spec[0] not in FAULT_NAMES:
        raise ValueError(f"unknown fault {fault!r}; expected one of {FAULT_NAMES}")
    name, args = spec[0], spec[1:]
    if name in ("drop", "reset") and not args:
        return spec
    if name == "status" and len(args) == 1 and _is_error_status(args[0]):
        return spec
    if (
        name == "retry-after"
        and len(args) == 2
        and _is_error_status(args[0])
        and isinstance(args[1], int)
        and not isinstance(args[1], bool)
        and args[1] >= 0
    ):
        return spec
    if name == "delay" and len(args) == 1 and _is_seconds(args[0]):
        return spec
    raise ValueError(f"malformed fault {fault!r}")


def _is_error_status(code: object) -> bool:
    """Tell whether code is a 4xx or 5xx status."""
    return isinstance(code, int) and not isinstance(code, bool) and 400 <= code <= 599


def _is_seconds(value: object) -> bool:
    """Tell whether value is a non-negative number of seconds."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def operation_outcome(status: int, diagnostics: str) -> bytes:
    """Return a FHIR OperationOutcome for an error status, as JSON bytes."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": ISSUE_CODES.get(status, "exception" if status >= 500 else "processing"),
                "diagnostics": diagnostics,
            }
        ],
    }
    return json.dumps(outcome).encode("utf-8")


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that knows its connections and threads so stop() can end them."""

    daemon_threads = True
    # close_all() joins the threads itself, after waking them; the mixin's join would hang
    block_on_close = False
    allow_reuse_address = True

    def __init__(self, proxy: FaultProxy, port: int) -> None:
        self.proxy = proxy
        # set by stop() so handlers waiting out a delay give up at once
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._handler_threads: set[threading.Thread] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a tracked thread for one client connection."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"faultproxy-{self.server_address[1]}-conn",
            daemon=True,
        )
        # registered here, not in the thread, so stop() sees a connection accepted just before
        with self._lock:
            self._connections.add(request)
            self._handler_threads.add(thread)
        thread.start()

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Handle one connection, then forget it."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._lock:
                self._connections.discard(request)
                self._handler_threads.discard(threading.current_thread())

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Keep what went wrong for the test instead of printing a traceback."""
        self.proxy._record_error()

    def close_all(self) -> None:
        """Close the listening socket and every connection, then join the handler threads."""
        self.stopping.set()
        self.server_close()
        with self._lock:
            connections = list(self._connections)
            threads = list(self._handler_threads)
        for conn in connections:
            # shutdown wakes a handler blocked reading the next keep-alive request
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in threads:
            thread.join(JOIN_TIMEOUT)


class _Handler(BaseHTTPRequestHandler):
    """Apply the next fault to each request, or forward it upstream."""

    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT
    # headers and body go out in two writes; with Nagle on, each answer waits a delayed ACK
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: test output stays readable."""

    def _handle(self) -> None:
        """Serve one request of any method."""
        proxy = self.server.proxy
        body = self._read_body()
        if body is None:
            return
        fault = proxy._next_fault() or ()
        name = fault[0] if fault else None
        if name == "drop":
            proxy._record(self.command, self.path, "drop")
            self.close_connection = True
            return
        if name == "status":
            proxy._record(self.command, self.path, "status")
            self._send_outcome(fault[1], f"Injected by FaultProxy: HTTP {fault[1]}")
            return
        if name == "retry-after":
            proxy._record(self.command, self.path, "retry-after")
            self._send_outcome(
                fault[1],
                f"Injected by FaultProxy: HTTP {fault[1]}, retry after {fault[2]} s",
                [("Retry-After", str(fault[2]))],
            )
            return
        if name == "delay" and self.server.stopping.wait(fault[1]):
            # the proxy went down while this request waited: it never reaches the upstream
            proxy._record(self.command, self.path, "delay")
            self.close_connection = True
            return
        if not self._authorised():
            return
        try:
            status, reason, headers, payload = proxy._forward(
                self.command, self.path, self.headers, body
            )
        except (OSError, http.client.HTTPException) as exc:
            proxy._record(self.command, self.path, name or BAD_GATEWAY)
            self._send_outcome(502, f"FaultProxy could not reach the upstream: {exc}")
            return
        proxy._record(self.command, self.path, name or FORWARDED)
        if name == "reset":
            # a zero linger turns close into a TCP reset: the client never hears back
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        self._send(status, reason, headers, payload)

    # http.server dispatches on do_<METHOD>; every method takes the same path through the proxy
    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _handle  # noqa: N815

    def _read_body(self) -> bytes | None:
        """Read the request body, or answer 400 and return None when it is malformed."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            self.close_connection = True
            self._send_outcome(400, f"bad Content-Length {length!r}")
            return None
        return self.rfile.read(int(length))

    def _read_chunked(self) -> bytes | None:
        """Read a chunked request body, dropping any trailers."""
        chunks = []
        while True:
            size_line = self.rfile.readline(1024).split(b";")[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                self.close_connection = True
                self._send_outcome(400, "bad chunked request body")
                return None
            if size == 0:
                break
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def _authorised(self) -> bool:
        """Check the bearer token, answering 401 when it is required and wrong or absent."""
        required = self.server.proxy._bearer()
        if required is None:
            return True
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and (
            required(token.strip()) if callable(required) else token.strip() == required
        ):
            return True
        self.server.proxy._record(self.command, self.path, UNAUTHORIZED)
        # RFC 6750 section 3: no error code when no credentials came, invalid_token otherwise
        challenge = 'Bearer error="invalid_token"' if scheme else "Bearer"
        self._send_outcome(
            401, "a valid bearer token is required", [("WWW-Authenticate", challenge)]
        )
        return False

    def _send_outcome(
        self, status: int, diagnostics: str, extra: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Answer with an OperationOutcome."""
        headers = [("Content-Type", "application/fhir+json"), *extra]
        self._send(status, None, headers, operation_outcome(status, diagnostics))

    def _send(
        self,
        status: int,
        reason: str | None,
        headers: Iterable[tuple[str, str]],
        payload: bytes,
    ) -> None:
        """Write a full response, with a Content-Length that keeps keep-alive framing right."""
        self.send_response_only(status, reason)
        upstream_length = None
        for key, value in headers:
            if key.lower() == "content-length":
                upstream_length = value
            else:
                self.send_header(key, value)
        # a HEAD or 304 answer describes a body it does not carry: keep the upstream's length
        if status < 200 or status == 204:
            pass
        elif (self.command == "HEAD" or status == 304) and not payload:
            if upstream_length is not None:
                self.send_header("Content-Length", upstream_length)
        else:
            self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if payload and self.command != "HEAD":
            self.wfile.write(payload)


def _strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Drop hop-by-hop headers and those the Connection header names."""
    pairs = list(headers)
    named = {
        token.strip().lower()
        for key, value in pairs
        if key.lower() == "connection"
        for token in value.split(",")
    }
    dropped = HOP_BY_HOP | named
    return [(key, value) for key, value in pairs if key.lower() not in dropped]


class FaultProxy(Serving):
    """A reverse proxy on 127.0.0.1 that forwards to upstream and injects faults on request."""

    def __init__(self, upstream: str, port: int = 0, upstream_timeout: float = 30.0) -> None:
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be an http(s) URL, not {upstream!r}")
        self.upstream = upstream
        self._scheme = parts.scheme
        self._netloc = parts.netloc
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._base_path = parts.path.rstrip("/")
        self._upstream_timeout = upstream_timeout
        self._port = port
        self._lock = threading.Lock()
        self._queue: deque[Fault] = deque()
        self._every: tuple[list[Fault], float, random.Random] | None = None
        self._token: str | Callable[[str], bool] | None = None
        self._requests: list[tuple[str, str, str]] = []
        self._faults_injected = 0
        self._errors: list[BaseException] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Return the port, fixed after the first start."""
        return self._port

    @property
    def url(self) -> str:
        """Return the proxy's base URL."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def running(self) -> bool:
        """Tell whether the proxy is listening."""
        return self._server is not None

    def start(self) -> FaultProxy:
        """Listen (on the same port as before, if started before) and serve in a thread."""
        if self._server is not None:
            return self
        server = _Server(self, self._port)
        self._port = server.server_address[1]
        thread = threading.Thread(
            target=server.serve_forever,
            args=(0.05,),
            name=f"faultproxy-{self._port}",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        """Close the listening socket and all connections, and join every thread."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        thread.join()
        server.close_all()

    def go_down(self) -> None:
        """Stop accepting connections, so clients are refused, keeping faults and counters."""
        self.stop()

    def come_back(self) -> None:
        """Listen again on the same port."""
        self.start()

    # -- faults ---------------------------------------------------------------------------------

    def fail_next(self, *faults: str | tuple[Any, ...]) -> None:
        """Queue one-shot faults, applied to the next requests in order."""
        checked = [normalise_fault(fault) for fault in faults]
        with self._lock:
            self._queue.extend(checked)

    def fail_every(
        self,
        fault: str | tuple[Any, ...] | list[str | tuple[Any, ...]],
        probability: float,
        seed: int = 0,
    ) -> None:
        """Apply a fault (one of a list, picked at random) to each request with the given
        probability, reproducibly from seed."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"probability must be within [0, 1], not {probability!r}")
        choices = fault if isinstance(fault, list) else [fault]
        if not choices:
            raise ValueError("name at least one fault")
        checked = [normalise_fault(one) for one in choices]
        with self._lock:
            self._every = (checked, probability, random.Random(seed))

    def clear(self) -> None:
        """Forget queued and random faults."""
        with self._lock:
            self._queue.clear()
            self._every = None

    def require_bearer(self, token: str | Callable[[str], bool] | None) -> None:
        """Answer 401 to requests without this bearer token (or one the callable accepts, such
        as a token endpoint's list of issued tokens); None turns the check off."""
        with self._lock:
            self._token = token

    # -- counters -------------------------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str, str]]:
        """Return (method, path with query, fault name or "forwarded") for each request seen."""
        with self._lock:
            return list(self._requests)

    @property
    def faults_injected(self) -> int:
        """Return how many faults were applied."""
        with self._lock:
            return self._faults_injected

    @property
    def errors(self) -> list[BaseException]:
        """Return unexpected exceptions raised while handling requests."""
        with self._lock:
            return list(self._errors)

    # -- called by the handler ------------------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        """Take the fault due for the request that just arrived, if any."""
        with self._lock:
            fault: Fault | None = None
            if self._queue:
                fault = self._queue.popleft()
            elif self._every is not None:
                candidates, probability, rng = self._every
                if rng.random() < probability:
                    fault = rng.choice(candidates)
            if fault is not None:
                self._faults_injected += 1
            return fault

    def _bearer(self) -> str | Callable[[str], bool] | None:
        with self._lock:
            return self._token

    def _record(self, method: str, path: str, outcome: str) -> None:
        with self._lock:
            self._requests.append((method, path, outcome))

    def _record_error(self) -> None:
        exc = sys.exc_info()[1]
        # a client that hung up mid-response is a normal event in fault tests
        if exc is None or isinstance(exc, ConnectionError | TimeoutError):
            return
        with self._lock:
            self._errors.append(exc)

    def _forward(
        self, method: str, path: str, headers: Any, body: bytes
    ) -> tuple[int, str, list[tuple[str, str]], bytes]:
        """Send the request upstream and return its status, reason, headers and raw body."""
        conn_class = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        conn = conn_class(self._upstream_host, self._upstream_port, timeout=self._upstream_timeout)
        try:
            # skip_* so the upstream sees the client's headers, not http.client's defaults
            conn.putrequest(
                method, self._base_path + path, skip_host=True, skip_accept_encoding=True
            )
            conn.putheader("Host", self._netloc)
            for key, value in _strip_hop_by_hop(headers.items()):
                # the body was read whole (maybe chunked): its length is set below
                if key.lower() not in ("host", "content-length"):
                    conn.putheader(key, value)
            if body or method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            response = conn.getresponse()
            # read() undoes chunking only: a gzip body stays gzip, matching its headers
            payload = response.read()
            return (
                response.status,
                response.reason,
                _strip_hop_by_hop(response.getheaders()),
                payload,
            )
        finally:
            conn.close()
