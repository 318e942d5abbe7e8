"""FaultProxy forwards faithfully and injects each fault exactly when asked."""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from tests.exchange.faultproxy import FaultProxy

GZIPPED = gzip.compress(b'{"resourceType": "Bundle"}', mtime=0)


class _EchoHandler(BaseHTTPRequestHandler):
    """Answer every request with what it received, as JSON; a few paths answer specially."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        """Log nothing: test output stays readable."""

    def _echo(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        seen = {
            "method": self.command,
            "path": self.path,
            "body": body.decode("utf-8"),
            "headers": [[key, value] for key, value in self.headers.items()],
        }
        with self.server.lock:
            self.server.seen.append(seen)
        if self.path == "/gzip":
            self._reply(200, GZIPPED, [("Content-Encoding", "gzip")])
        elif self.path == "/cookies":
            self._reply(200, b"{}", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        elif self.path == "/missing":
            self._reply(404, b'{"resourceType": "OperationOutcome"}', [])
        elif self.path == "/empty":
            self._reply(204, b"", [])
        else:
            self._reply(200, json.dumps(seen).encode("utf-8"), [("X-Upstream", "echo")])

    def _reply(self, status: int, payload: bytes, headers: list[tuple[str, str]]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Keep-Alive", "timeout=5")
        for key, value in headers:
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _echo  # noqa: N815


class _EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _EchoHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self) -> int:
        with self.lock:
            return len(self.seen)

    def last(self) -> dict[str, Any]:
        with self.lock:
            return self.seen[-1]


@pytest.fixture
def upstream() -> Iterator[_EchoServer]:
    """A stdlib echo server standing in for the FHIR service."""
    server = _EchoServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def proxy(upstream: _EchoServer) -> Iterator[FaultProxy]:
    """A running proxy in front of the echo server."""
    with FaultProxy(upstream.url) as running:
        yield running
    assert running.errors == []


@pytest.fixture
def session() -> Iterator[requests.Session]:
    """A keep-alive client session, closed after the test."""
    with requests.Session() as client:
        yield client


def free_port() -> int:
    """Return a port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def header_values(seen: dict[str, Any], name: str) -> list[str]:
    """Return the values of a header the upstream received."""
    return [value for key, value in seen["headers"] if key.lower() == name.lower()]


# -- forwarding ---------------------------------------------------------------------------------


def test_forwards_method_path_query_body_and_headers(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    response = session.post(
        f"{proxy.url}/fhir/Patient?name=M%C3%BCller&_count=2",
        data='{"resourceType": "Patient"}',
        headers={"Content-Type": "application/fhir+json", "X-Request-Id": "abc"},
        timeout=5,
    )
    assert response.status_code == 200
    seen = upstream.last()
    assert seen["method"] == "POST"
    assert seen["path"] == "/fhir/Patient?name=M%C3%BCller&_count=2"
    assert seen["body"] == '{"resourceType": "Patient"}'
    assert header_values(seen, "X-Request-Id") == ["abc"]
    assert header_values(seen, "Content-Type") == ["application/fhir+json"]
    assert header_values(seen, "Host") == [upstream.url.removeprefix("http://")]
    assert proxy.requests == [("POST", "/fhir/Patient?name=M%C3%BCller&_count=2", "forwarded")]
    assert proxy.faults_injected == 0


def test_drops_hop_by_hop_headers_both_ways(proxy: FaultProxy, upstream: _EchoServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request(
            "GET",
            "/x",
            headers={
                "Connection": "keep-alive, X-Private",
                "X-Private": "only for the proxy",
                "Proxy-Authorization": "Basic Zm9vOmJhcg==",
                "Keep-Alive": "timeout=5",
                "X-Kept": "yes",
            },
        )
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    seen = upstream.last()
    for name in ("Connection", "X-Private", "Proxy-Authorization", "Keep-Alive"):
        assert header_values(seen, name) == [], name
    assert header_values(seen, "X-Kept") == ["yes"]
    # the upstream's Keep-Alive header is its own business, not the client's
    assert response.getheader("Keep-Alive") is None
    assert response.getheader("X-Upstream") == "echo"
    assert response.getheader("Content-Length") == str(len(body))


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_forwards_every_method(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session, method: str
) -> None:
    response = session.request(method, f"{proxy.url}/fhir/Goal/1", data="x", timeout=5)
    assert response.status_code == 200
    assert response.json()["method"] == method
    assert upstream.last()["body"] == "x"


def test_head_keeps_the_upstream_content_length(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    head = session.head(f"{proxy.url}/fhir/metadata", timeout=5)
    assert head.status_code == 200
    assert head.content == b""
    # the length of the body a GET would have had, as the upstream announced it
    would_be = json.dumps(upstream.last()).encode("utf-8")
    assert head.headers["Content-Length"] == str(len(would_be))
    # the connection is still usable: HEAD sent no body that could desynchronise it
    assert session.get(f"{proxy.url}/after", timeout=5).json()["path"] == "/after"


def test_passes_upstream_status_and_body(proxy: FaultProxy, session: requests.Session) -> None:
    response = session.get(f"{proxy.url}/missing", timeout=5)
    assert response.status_code == 404
    assert response.json() == {"resourceType": "OperationOutcome"}
    assert proxy.requests[-1] == ("GET", "/missing", "forwarded")


def test_passes_no_content_without_body(proxy: FaultProxy, session: requests.Session) -> None:
    response = session.delete(f"{proxy.url}/empty", timeout=5)
    assert response.status_code == 204
    assert "Content-Length" not in response.headers
    assert session.get(f"{proxy.url}/after", timeout=5).status_code == 200


def test_passes_encoded_body_untouched(proxy: FaultProxy, session: requests.Session) -> None:
    response = session.get(f"{proxy.url}/gzip", stream=True, timeout=5)
    raw = response.raw.read(decode_content=False)
    response.close()
    assert response.headers["Content-Encoding"] == "gzip"
    assert raw == GZIPPED
    assert response.headers["Content-Length"] == str(len(GZIPPED))


def test_keeps_repeated_response_headers(proxy: FaultProxy, session: requests.Session) -> None:
    response = session.get(f"{proxy.url}/cookies", stream=True, timeout=5)
    assert response.raw.headers.getlist("Set-Cookie") == ["a=1", "b=2"]
    response.close()


def test_forwards_a_chunked_body_with_a_length(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    chunks = (part.encode() for part in ["{", '"a": ', "1", "}"])
    response = session.post(f"{proxy.url}/chunked", data=chunks, timeout=5)
    assert response.status_code == 200
    seen = upstream.last()
    assert seen["body"] == '{"a": 1}'
    assert header_values(seen, "Content-Length") == ["8"]
    assert header_values(seen, "Transfer-Encoding") == []


def test_unreachable_upstream_is_a_502_outcome(session: requests.Session) -> None:
    with FaultProxy(f"http://127.0.0.1:{free_port()}") as proxy:
        response = session.get(f"{proxy.url}/fhir/metadata", timeout=5)
        assert response.status_code == 502
        assert response.headers["Content-Type"] == "application/fhir+json"
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "transient"
        assert proxy.requests == [("GET", "/fhir/metadata", "bad-gateway")]
        assert proxy.faults_injected == 0


def test_upstream_base_path_is_prefixed(upstream: _EchoServer, session: requests.Session) -> None:
    with FaultProxy(f"{upstream.url}/fhir/") as proxy:
        session.get(f"{proxy.url}/Patient/1", timeout=5)
    assert upstream.last()["path"] == "/fhir/Patient/1"


def test_rejects_a_non_http_upstream() -> None:
    with pytest.raises(ValueError, match="http"):
        FaultProxy("ftp://127.0.0.1:21")


# -- faults -------------------------------------------------------------------------------------


def test_drop_closes_without_response_and_never_reaches_upstream(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.fail_next("drop")
    with pytest.raises(requests.ConnectionError):
        session.post(f"{proxy.url}/fhir/Goal", data="{}", timeout=5)
    assert upstream.hits() == 0
    assert session.get(f"{proxy.url}/again", timeout=5).status_code == 200
    assert proxy.requests == [("POST", "/fhir/Goal", "drop"), ("GET", "/again", "forwarded")]
    assert proxy.faults_injected == 1


def test_reset_applies_upstream_but_never_answers(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.fail_next("reset")
    with pytest.raises(requests.ConnectionError):
        session.post(f"{proxy.url}/fhir/Goal", data='{"id": "g1"}', timeout=5)
    # the upstream did the work: a retry would apply it twice unless the client is idempotent
    assert upstream.hits() == 1
    assert upstream.last()["body"] == '{"id": "g1"}'
    assert proxy.requests == [("POST", "/fhir/Goal", "reset")]
    assert session.get(f"{proxy.url}/again", timeout=5).status_code == 200


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "invalid"),
        (404, "not-found"),
        (409, "conflict"),
        (500, "exception"),
        (503, "transient"),
    ],
)
def test_status_fault_answers_an_operation_outcome(
    proxy: FaultProxy,
    upstream: _EchoServer,
    session: requests.Session,
    status: int,
    code: str,
) -> None:
    proxy.fail_next(("status", status))
    response = session.put(f"{proxy.url}/fhir/Goal/1", data="{}", timeout=5)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/fhir+json"
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"
    assert outcome["issue"][0]["code"] == code
    assert upstream.hits() == 0
    assert proxy.requests == [("PUT", "/fhir/Goal/1", "status")]


def test_retry_after_fault_sends_the_header(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.fail_next(("retry-after", 429, 7))
    response = session.get(f"{proxy.url}/fhir/Goal", timeout=5)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["issue"][0]["code"] == "throttled"
    assert upstream.hits() == 0
    assert proxy.requests == [("GET", "/fhir/Goal", "retry-after")]


def test_delay_fault_waits_then_forwards(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.fail_next(("delay", 0.4))
    started = time.monotonic()
    response = session.get(f"{proxy.url}/slow", timeout=5)
    assert time.monotonic() - started >= 0.4
    assert response.status_code == 200
    assert upstream.hits() == 1
    assert proxy.requests == [("GET", "/slow", "delay")]


def test_delay_longer_than_client_timeout_times_out(
    proxy: FaultProxy, session: requests.Session
) -> None:
    proxy.fail_next(("delay", 1.0))
    with pytest.raises(requests.ReadTimeout):
        session.get(f"{proxy.url}/slow", timeout=0.2)


def test_queued_faults_apply_in_order_then_forwarding_resumes(
    proxy: FaultProxy, session: requests.Session
) -> None:
    proxy.fail_next(("status", 503), "drop")
    proxy.fail_next(("status", 500))
    outcomes: list[int | str] = []
    for _ in range(4):
        try:
            outcomes.append(session.get(f"{proxy.url}/x", timeout=5).status_code)
        except requests.ConnectionError:
            outcomes.append("dropped")
    assert outcomes == [503, "dropped", 500, 200]
    assert [outcome for _, _, outcome in proxy.requests] == [
        "status",
        "drop",
        "status",
        "forwarded",
    ]
    assert proxy.faults_injected == 3


def test_answered_faults_keep_the_connection_alive(proxy: FaultProxy) -> None:
    proxy.fail_next(("status", 503), ("retry-after", 429, 1))
    proxy.require_bearer("t")
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        statuses = []
        sockets = []
        for headers in ({"Authorization": "Bearer t"},) * 2 + ({}, {"Authorization": "Bearer t"}):
            conn.request("POST", "/x", body=b"{}", headers=headers)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
            sockets.append(conn.sock)
    finally:
        conn.close()
    assert statuses == [503, 429, 401, 200]
    # one socket throughout: every answer was framed so the connection could be reused
    assert sockets[0] is not None
    assert all(sock is sockets[0] for sock in sockets)


def test_fail_every_is_random_but_reproducible(upstream: _EchoServer) -> None:
    def run() -> list[int]:
        with FaultProxy(upstream.url) as proxy, requests.Session() as client:
            proxy.fail_every(("status", 503), 0.3, seed=42)
            statuses = [client.get(f"{proxy.url}/r", timeout=5).status_code for _ in range(60)]
            assert proxy.faults_injected == statuses.count(503)
            return statuses

    first = run()
    assert 5 <= first.count(503) <= 35
    assert set(first) == {200, 503}
    assert run() == first


@pytest.mark.parametrize(("probability", "expected"), [(0.0, 0), (1.0, 10)])
def test_fail_every_extremes(
    proxy: FaultProxy, session: requests.Session, probability: float, expected: int
) -> None:
    proxy.fail_every(("status", 500), probability, seed=1)
    statuses = [session.get(f"{proxy.url}/r", timeout=5).status_code for _ in range(10)]
    assert statuses.count(500) == expected
    assert proxy.faults_injected == expected


def test_queued_faults_come_before_random_ones(
    proxy: FaultProxy, session: requests.Session
) -> None:
    proxy.fail_every(("status", 500), 1.0, seed=1)
    proxy.fail_next(("status", 418))
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 418
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 500


def test_clear_forgets_queued_and_random_faults(
    proxy: FaultProxy, session: requests.Session
) -> None:
    proxy.fail_next("drop", "drop")
    proxy.fail_every("drop", 1.0, seed=3)
    proxy.clear()
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 200
    assert proxy.faults_injected == 0


@pytest.mark.parametrize(
    "fault",
    [
        "explode",
        ("status", 200),
        ("status", 600),
        ("status", "503"),
        ("retry-after", 429),
        ("retry-after", 429, -1),
        ("delay", -1),
        ("drop", 1),
        (),
    ],
)
def test_malformed_faults_are_refused(proxy: FaultProxy, fault: Any) -> None:
    with pytest.raises(ValueError, match="fault"):
        proxy.fail_next(fault)


def test_fail_every_refuses_a_bad_probability(proxy: FaultProxy) -> None:
    with pytest.raises(ValueError, match="probability"):
        proxy.fail_every("drop", 1.5, seed=0)


def test_a_refused_fault_queues_nothing(proxy: FaultProxy, session: requests.Session) -> None:
    with pytest.raises(ValueError, match="fault"):
        proxy.fail_next("drop", "explode")
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 200


# -- bearer check -------------------------------------------------------------------------------


def test_bearer_required_without_token_is_401(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.require_bearer("s3cret")
    response = session.get(f"{proxy.url}/fhir/Goal", timeout=5)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.headers["Content-Type"] == "application/fhir+json"
    assert response.json()["issue"][0]["code"] == "login"
    assert upstream.hits() == 0
    assert proxy.requests == [("GET", "/fhir/Goal", "unauthorized")]
    assert proxy.faults_injected == 0


@pytest.mark.parametrize("authorization", ["Bearer wrong", "Basic czNjcmV0", "Bearer"])
def test_bearer_wrong_credentials_are_401_invalid_token(
    proxy: FaultProxy, session: requests.Session, authorization: str
) -> None:
    proxy.require_bearer("s3cret")
    response = session.get(
        f"{proxy.url}/fhir/Goal", headers={"Authorization": authorization}, timeout=5
    )
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


def test_bearer_right_token_is_forwarded_with_it(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    proxy.require_bearer("s3cret")
    response = session.get(
        f"{proxy.url}/fhir/Goal", headers={"Authorization": "bearer s3cret"}, timeout=5
    )
    assert response.status_code == 200
    assert header_values(upstream.last(), "Authorization") == ["bearer s3cret"]


def test_bearer_check_can_be_turned_off(proxy: FaultProxy, session: requests.Session) -> None:
    proxy.require_bearer("s3cret")
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 401
    proxy.require_bearer(None)
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 200


# -- going down and coming back -----------------------------------------------------------------


def test_go_down_refuses_then_come_back_serves_on_the_same_port(
    proxy: FaultProxy, upstream: _EchoServer, session: requests.Session
) -> None:
    port = proxy.port
    # a pooled keep-alive connection must not survive the outage either
    assert session.get(f"{proxy.url}/before", timeout=5).status_code == 200
    proxy.go_down()
    assert not proxy.running
    with pytest.raises(requests.ConnectionError):
        session.get(f"{proxy.url}/during", timeout=5)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass
    proxy.come_back()
    assert proxy.port == port
    assert session.get(f"{proxy.url}/after", timeout=5).status_code == 200
    assert [path for _, path, _ in proxy.requests] == ["/before", "/after"]
    assert [seen["path"] for seen in upstream.seen] == ["/before", "/after"]


def test_faults_survive_an_outage(proxy: FaultProxy, session: requests.Session) -> None:
    proxy.fail_next(("status", 503))
    proxy.go_down()
    proxy.come_back()
    assert session.get(f"{proxy.url}/r", timeout=5).status_code == 503


def test_stop_and_start_keep_the_port(upstream: _EchoServer, session: requests.Session) -> None:
    proxy = FaultProxy(upstream.url)
    proxy.start()
    port = proxy.port
    assert port != 0
    proxy.stop()
    proxy.stop()  # a second stop is harmless
    proxy.start()
    try:
        assert proxy.port == port
        assert session.get(f"{proxy.url}/r", timeout=5).status_code == 200
    finally:
        proxy.stop()


def test_a_fixed_port_is_used(upstream: _EchoServer, session: requests.Session) -> None:
    port = free_port()
    with FaultProxy(upstream.url, port=port) as proxy:
        assert proxy.url == f"http://127.0.0.1:{port}"
        assert session.get(f"{proxy.url}/r", timeout=5).status_code == 200


def test_context_manager_stops_the_proxy(upstream: _EchoServer) -> None:
    with FaultProxy(upstream.url) as proxy:
        url = proxy.url
        assert requests.get(f"{url}/r", timeout=5).status_code == 200
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/r", timeout=5)


def _proxy_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("faultproxy-")]


def test_stop_closes_idle_connections_and_joins_threads(
    upstream: _EchoServer, session: requests.Session
) -> None:
    before = _proxy_threads()
    proxy = FaultProxy(upstream.url).start()
    for _ in range(3):
        session.get(f"{proxy.url}/r", timeout=5)
    assert len(_proxy_threads()) > len(before)  # the serving thread and an idle connection
    started = time.monotonic()
    proxy.stop()
    # the idle keep-alive connection was closed, not waited out for IDLE_TIMEOUT
    assert time.monotonic() - started < 2
    assert _proxy_threads() == before


def test_stop_interrupts_a_delay(upstream: _EchoServer) -> None:
    proxy = FaultProxy(upstream.url).start()
    proxy.fail_next(("delay", 30))
    failures: list[BaseException] = []

    def call() -> None:
        try:
            requests.get(f"{proxy.url}/slow", timeout=10)
        except requests.ConnectionError as exc:
            failures.append(exc)

    client = threading.Thread(target=call)
    client.start()
    deadline = time.monotonic() + 5
    # wait until the handler has taken the fault and is waiting it out
    while proxy.faults_injected == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    proxy.stop()
    client.join(5)
    assert time.monotonic() - started < 3
    assert not client.is_alive()
    assert len(failures) == 1
    assert upstream.hits() == 0


def test_concurrent_requests_are_all_counted(proxy: FaultProxy, upstream: _EchoServer) -> None:
    proxy.fail_next(*[("status", 503)] * 5)

    def call(n: int) -> int:
        return requests.get(f"{proxy.url}/n/{n}", timeout=5).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(call, range(40)))
    assert statuses.count(503) == 5
    assert statuses.count(200) == 35
    assert len(proxy.requests) == 40
    assert upstream.hits() == 35
    assert proxy.faults_injected == 5


def test_requests_is_a_snapshot(proxy: FaultProxy, session: requests.Session) -> None:
    snapshot = proxy.requests
    session.get(f"{proxy.url}/r", timeout=5)
    assert snapshot == []
    assert len(proxy.requests) == 1
