"""HTTP to other servers: FHIR REST calls to a partner, and notifications to rest-hook endpoints.

``HttpPartnerClient`` calls one partner's FHIR API with its authentication;
``HttpHookClient`` POSTs Subscription notifications to subscribers' endpoints. Every delivery
channel talks HTTP through these, and nothing else in the service calls other servers.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urljoin

import requests

from service.exchange.partners import Partner
from service.exchange.smart import (
    BackendServicesAuth,
    NoAuth,
    PartnerAuth,
    SigningKey,
    SmartError,
    StaticBearer,
    requests_post,
)

FHIR_JSON = "application/fhir+json"


class Unreachable(Exception):
    """No HTTP answer: refused, reset, timed out, or no token could be had (retry later)."""


@dataclass(frozen=True)
class Answer:
    """A partner's HTTP answer."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # parsed JSON, or None
    text: str = ""

    def retry_after(self, now: float | None = None) -> float | None:
        """Seconds the partner asked us to wait (Retry-After: seconds or HTTP date), if any."""
        raw = self.headers.get("retry-after")
        if raw is None:
            return None
        raw = raw.strip()
        if raw.isdigit():
            return float(raw)
        try:
            moment = parsedate_to_datetime(raw).timestamp()
        except (TypeError, ValueError):
            return None
        return max(0.0, moment - (time.time() if now is None else now))


class PartnerClient(Protocol):
    """FHIR REST calls to one partner."""

    partner: Partner

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """Call the partner; raise Unreachable when there is no HTTP answer."""


def partner_auth(partner: Partner, session: requests.Session) -> PartnerAuth:
    """The authentication a partner's configuration asks for."""
    auth = partner.auth
    if auth.type == "bearer" and auth.token:
        return StaticBearer(auth.token)
    if auth.type == "smart-backend-services":
        # the partners schema requires all four for this type
        assert auth.private_key_file is not None
        assert auth.algorithm is not None
        assert auth.client_id is not None
        assert auth.token_url is not None
        key = SigningKey.from_pem_file(auth.private_key_file, auth.algorithm)
        return BackendServicesAuth(
            auth.client_id,
            auth.token_url,
            key,
            auth.scope,
            requests_post(session, partner.timeout_seconds),
        )
    return NoAuth()


class HttpPartnerClient:
    """A partner's FHIR REST API over requests, one session (connection pool) per client."""

    def __init__(self, partner: Partner, session: requests.Session | None = None) -> None:
        self.partner = partner
        self.session = session or requests.Session()
        self.auth = partner_auth(partner, self.session)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """Call the partner; a 401 refreshes the token once (SMART Backend Services)."""
        answer = self._send(method, path, body, headers, params)
        if answer.status == 401:
            self.auth.invalidate()
            answer = self._send(method, path, body, headers, params)
        return answer

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        headers: dict[str, str] | None,
        params: dict[str, str] | None,
    ) -> Answer:
        url = path if path.startswith(("http://", "https://")) else self._url(path)
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        try:
            authorization = self.auth.authorization()
        except SmartError as exc:
            raise Unreachable(f"no access token from {self.partner.auth.token_url}: {exc}") from exc
        if authorization:
            sent["Authorization"] = authorization
        data = None
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        try:
            response = self.session.request(
                method,
                url,
                data=data,
                headers=sent,
                params=params,
                timeout=self.partner.timeout_seconds,
                allow_redirects=False,
            )
        except requests.RequestException as exc:
            raise Unreachable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        try:
            parsed = response.json() if response.content else None
        except ValueError:
            parsed = None
        return Answer(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            parsed,
            response.text[:4000],
        )

    def _url(self, path: str) -> str:
        return urljoin(self.partner.base_url + "/", path.lstrip("/"))


class HookClient(Protocol):
    """POSTs to a subscriber's rest-hook endpoint."""

    def post(self, url: str, data: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """Send; raise Unreachable when there is no HTTP answer."""


class HttpHookClient:
    """Rest-hook notifications over requests: no credentials of ours, no redirect followed
    (a subscriber's endpoint cannot send this server elsewhere), a session per thread."""

    def __init__(self) -> None:
        self._threads = threading.local()  # a requests.Session per thread (they are not shared)

    def post(self, url: str, data: bytes, headers: dict[str, str], timeout: float) -> Answer:
        """POST ``data``; the answer's body is kept as text only (never parsed)."""
        try:
            response = self._session().post(
                url, data=data, headers=headers, timeout=timeout, allow_redirects=False
            )
        except requests.RequestException as exc:
            raise Unreachable(f"POST {url}: {type(exc).__name__}") from exc
        return Answer(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            None,
            response.text[:2000],
        )

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._threads, "session", None)
        if session is None:
            session = self._threads.session = requests.Session()
        return session
