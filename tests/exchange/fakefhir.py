"""A small FHIR server in memory, answering the worker's calls as a partner would: it offers
the types its CapabilityStatement lists (create, update, search by ``identifier``, ``_source``
and ``patient``, conditional create and update) and refuses the rest with 404, as a server
that does not know a type does. ``capability=None`` answers ``/metadata`` with an empty Bundle, as
a server with no CapabilityStatement was seen doing. ``FakeFhirServer`` serves one over HTTP."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from service.exchange.partner_client import Answer
from service.exchange.partners import Partner
from tests.exchange.serving import Serving


def _keys(resource: dict[str, Any]) -> set[str]:
    """The ``param=value`` searches that find the resource."""
    given = resource.get("identifier")  # one Identifier on a Bundle, a list elsewhere
    found = {
        f"identifier={i.get('system')}|{i.get('value')}"
        for i in ([given] if isinstance(given, dict) else given or [])
        if isinstance(i, dict)
    }
    source = (resource.get("meta") or {}).get("source")
    if source:
        found.add(f"_source={source}")
    subject = (resource.get("subject") or {}).get("reference")
    if subject:
        found.add(f"patient={subject}")
    return found


def _criteria(query: str) -> str:
    """``param=value`` of a one-parameter query string (backslash escapes dropped)."""
    ((name, value),) = parse_qsl(query)
    return f"{name}={value.replace(chr(92), '')}"


class FakeFhir:
    """A partner FHIR server (the worker's PartnerClient) holding resources in a dict."""

    def __init__(self, partner: Partner, types: tuple[str, ...] | None) -> None:
        self.partner = partner
        self.types = types
        self.calls: list[tuple[str, str]] = []
        self.stored: dict[tuple[str, str], dict[str, Any]] = {}

    def capability(self) -> dict[str, Any]:
        if self.types is None:
            return {"resourceType": "Bundle", "type": "searchset", "total": 0}
        resource = {
            "interaction": [{"code": c} for c in ("read", "create", "update", "search-type")],
            "conditionalCreate": True,
            "conditionalUpdate": True,
        }
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{"mode": "server", "resource": [{"type": t, **resource} for t in self.types]}],
        }

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [r for (t, _), r in self.stored.items() if t == type_]

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        headers = headers or {}
        self.calls.append((method, path + ("?" + str(params) if params else "")))
        if path == "metadata":
            return Answer(200, {}, self.capability())
        type_, _, rest = path.partition("?")
        type_, _, id_ = type_.partition("/")
        if self.types is None or type_ not in self.types:
            return Answer(404, {}, {"resourceType": "OperationOutcome", "issue": []})
        if method == "GET":
            ((name, value),) = (params or {}).items()
            wanted = f"{name}={value.replace(chr(92), '')}"
            entries = [
                {"resource": r, "search": {"mode": "match"}}
                for r in self.of_type(type_)
                if wanted in _keys(r)
            ]
            return Answer(
                200, {}, {"resourceType": "Bundle", "type": "searchset", "entry": entries}
            )
        criteria = headers.get("If-None-Exist") or (_criteria(rest) if rest else None)
        if criteria is not None and not id_:
            wanted = _criteria(criteria)
            match = [r for r in self.of_type(type_) if wanted in _keys(r)]
            if match:
                if method == "POST":
                    return Answer(200, {}, match[0])
                id_ = match[0]["id"]
        created = not id_
        id_ = id_ or f"{type_.lower()}-{len(self.stored) + 1}"
        self.stored[(type_, id_)] = {**body, "id": id_}
        return Answer(
            201 if created else 200,
            {"location": f"{type_}/{id_}/_history/1"},
            self.stored[(type_, id_)],
        )


class FakeFhirServer(Serving):
    """A FakeFhir served over HTTP on loopback (``url`` is its base), for real instances to
    use as a partner: one request at a time, as the in-memory dict wants."""

    def __init__(self, types: tuple[str, ...] | None) -> None:
        self.port = 0
        self.fake = FakeFhir(Partner(name="fake", base_url=""), types)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self) -> FakeFhirServer:
        fake, lock = self.fake, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Log nothing."""

            def _handle(self) -> None:
                split = urlsplit(self.path)
                path = split.path.removeprefix("/fhir").lstrip("/")
                params = None
                if self.command == "GET":
                    params = dict(parse_qsl(split.query)) or None
                elif split.query:
                    path += "?" + split.query  # a conditional write's criteria
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with lock:
                    answer = fake.request(
                        self.command, path, body, dict(self.headers.items()), params
                    )
                payload = json.dumps(answer.body, ensure_ascii=False).encode("utf-8")
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
