"""The rest-hook channel's HTTP: what a notification POST carries, and that a subscriber's
endpoint is never followed elsewhere (no redirects) nor given more than its time."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from service.exchange.channels import Refused
from service.exchange.channels.rest_hook import NOTIFY_TIMEOUT_CAP, RestHook
from service.exchange.partner_client import Answer, HttpHookClient, Unreachable
from service.exchange.subscriptions import endpoint_refusal, parse_subscription
from service.fhir.interactions import FhirService
from tests.exchange.test_subscriptions import subscription


class Hooks:
    """A HookClient that records each POST and answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.posts: list[tuple[str, bytes, dict[str, str], float]] = []

    def post(self, url: str, data: bytes, headers: dict[str, str], timeout: float) -> Answer:
        self.posts.append((url, data, headers, timeout))
        return Answer(self.status, {}, None, "refused" if self.status >= 400 else "")


@pytest.mark.parametrize(("timeout", "sent"), [(10, 10.0), (3600, NOTIFY_TIMEOUT_CAP)])
def test_a_notification_carries_the_subscribers_headers_and_its_time(
    fhir: FhirService, timeout: int, sent: float
) -> None:
    hooks = Hooks()
    hook = RestHook(fhir, "https://wm.example/fhir", hooks, lambda: 0)
    spec = parse_subscription(subscription(timeout=timeout))
    hook.post(spec, {"resourceType": "Bundle", "id": "b1"})
    [(url, data, headers, seconds)] = hooks.posts
    assert url == "https://ehr.example/hooks/what-matters"
    assert json.loads(data) == {"resourceType": "Bundle", "id": "b1"}
    assert headers == {
        "Content-Type": "application/fhir+json",
        "Authorization": "Bearer abc",
        "X-Partner": "north",
    }
    assert seconds == sent
    assert hook.last_contact["s1"] > 0


def test_a_refusal_by_the_subscriber_keeps_its_text_as_the_reason(fhir: FhirService) -> None:
    hook = RestHook(fhir, "https://wm.example/fhir", Hooks(status=410), lambda: 0)
    reason = re.escape("notification to https://ehr.example/hooks/what-matters: HTTP 410: refused")
    with pytest.raises(Refused, match=reason):
        hook.post(parse_subscription(subscription()), {"resourceType": "Bundle"})


@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "10.0.0.7", "::1"])
def test_a_public_name_that_resolves_into_our_network_is_not_called(
    fhir: FhirService, address: str
) -> None:
    """An attacker's Subscription named https://localtest.me/x (a public DNS name that
    resolves to 127.0.0.1), or a name rebound after it was checked: the endpoint check read
    only the URL's text, so the server connected inside its own network."""
    hooks = Hooks()
    hook = RestHook(
        fhir, "https://wm.example/fhir", hooks, lambda: 0, resolve=lambda host: [address]
    )
    with pytest.raises(Refused, match="loopback, link-local or private"):
        hook.post(parse_subscription(subscription()), {"resourceType": "Bundle"})
    assert hooks.posts == []
    listed = RestHook(
        fhir, "https://wm.example/fhir", hooks, lambda: 0, ["ehr.example"], lambda host: [address]
    )
    listed.post(parse_subscription(subscription()), {"resourceType": "Bundle"})
    assert len(hooks.posts) == 1


@pytest.mark.parametrize("host", ["127.1", "0177.0.0.1", "0x7f.1", "2130706433", "10.1"])
def test_shorthand_addresses_of_our_network_are_refused_at_create(host: str) -> None:
    # inet_aton's forms: the resolver reads 127.1 and 0177.0.0.1 as 127.0.0.1
    assert endpoint_refusal(f"https://{host}:8443/hook", ()) is not None


@pytest.mark.parametrize("host", ["%31%32%37.0.0.1", "127.0.0.1%2e", "%6c%6f%63%61%6c%68%6f%73%74"])
def test_a_percent_encoded_host_is_refused_at_create_and_before_sending(
    fhir: FhirService, host: str
) -> None:
    """An attacker's endpoint https://%31%32%37.0.0.1:8443/h: read as a public name, it
    resolved to nothing here, and the HTTP client decoded it to 127.0.0.1 and connected."""
    assert endpoint_refusal(f"https://{host}:8443/h", ()) is not None
    hooks = Hooks()
    hook = RestHook(fhir, "https://wm.example/fhir", hooks, lambda: 0, resolve=lambda _: [])
    spec = parse_subscription(subscription())
    spec = type(spec)(**{**spec.__dict__, "endpoint": f"https://{host}:8443/h"})
    with pytest.raises(Refused, match="percent-encoded"):
        hook.post(spec, {"resourceType": "Bundle"})
    assert hooks.posts == []


@pytest.mark.parametrize("host", ["-1.0.0.1", "1_0.0.0.1", "1.2.3.-4", "1.2.3.4.5"])
def test_what_no_resolver_reads_as_an_address_is_a_name(host: str) -> None:
    # a sign or an underscore is no part of an address (the check answered 500 on -1.0.0.1);
    # as a name it is resolved before each notification
    assert endpoint_refusal(f"https://{host}/hook", ()) is None


class _Redirecting(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(302)
        self.send_header("Location", "http://169.254.169.254/latest/meta-data")
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"moved")

    def log_message(self, *_args: Any) -> None:
        pass


@pytest.fixture
def redirecting() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def test_the_hook_client_does_not_follow_a_redirect(redirecting: str) -> None:
    answer = HttpHookClient().post(redirecting, b"{}", {"Content-Type": "application/json"}, 5)
    assert answer.status == 302
    assert answer.body is None  # a subscriber's answer is never parsed
    assert answer.text == "moved"


def test_no_answer_is_unreachable_without_the_error_text() -> None:
    with pytest.raises(Unreachable) as caught:
        HttpHookClient().post("http://127.0.0.1:9/hook", b"{}", {}, 2)
    assert str(caught.value) == "POST http://127.0.0.1:9/hook: ConnectionError"
