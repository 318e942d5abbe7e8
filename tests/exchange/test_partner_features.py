"""Exchange features with real instances: SMART Backend Services to a partner, rest-hook
subscriptions (Subscriptions R5 Backport IG for R4), import from a partner, and partners that
take documents only."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from service.exchange.subscriptions import (
    FILTER_CRITERIA_URL,
    HEARTBEAT_PERIOD_URL,
    PAYLOAD_CONTENT_URL,
    TOPIC_URL,
)
from tests.exchange.faultproxy import FaultProxy
from tests.exchange.instances import Instance, partner_entry
from tests.exchange.test_end_to_end import (
    MRN,
    add_patient,
    counts,
    expected_words,
    gp_patient,
    ranked_words,
    record,
    wait_for,
    words,
)
from tests.exchange.token_endpoint import TokenEndpoint


class Recorder:
    """A small HTTP endpoint that keeps every request (a rest-hook subscriber, or a partner
    EHR that accepts only documents when ``documents_only``)."""

    def __init__(self, documents_only: bool = False) -> None:
        self.received: list[tuple[str, str, dict[str, str], Any]] = []
        self.documents: dict[str, dict[str, Any]] = {}
        self.patients: list[dict[str, Any]] = [
            {"resourceType": "Patient", "id": "ehr-77", "identifier": []}
        ]
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Keep test output quiet."""

            def _reply(self, status: int, body: Any = None) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                return json.loads(raw) if raw else None

            def do_GET(self) -> None:
                owner.received.append(("GET", self.path, dict(self.headers), None))
                url = urlsplit(self.path)
                if url.path.endswith("/metadata"):
                    self._reply(200, owner.capability())
                elif url.path.endswith("/Patient"):
                    entries = [{"resource": p, "search": {"mode": "match"}} for p in owner.patients]
                    self._reply(
                        200, {"resourceType": "Bundle", "type": "searchset", "entry": entries}
                    )
                elif url.path.endswith("/DocumentReference"):
                    wanted = parse_qs(url.query).get("identifier", [""])[0]
                    found = [d for k, d in owner.documents.items() if k == wanted]
                    entries = [{"resource": d, "search": {"mode": "match"}} for d in found]
                    self._reply(
                        200, {"resourceType": "Bundle", "type": "searchset", "entry": entries}
                    )
                else:
                    self._reply(404, {"resourceType": "OperationOutcome", "issue": []})

            def do_POST(self) -> None:
                body = self._body()
                owner.received.append(("POST", self.path, dict(self.headers), body))
                self._reply(200 if not documents_only else 201, body)

            def do_PUT(self) -> None:
                body = self._body()
                owner.received.append(("PUT", self.path, dict(self.headers), body))
                url = urlsplit(self.path)
                key = parse_qs(url.query).get("identifier", [""])[0]
                created = key not in owner.documents
                owner.documents[key] = {**body, "id": f"doc-{len(owner.documents) + 1}"}
                self._reply(201 if created else 200, owner.documents[key])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def capability(self) -> dict[str, Any]:
        """A CapabilityStatement of an EHR that takes DocumentReference writes only."""
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {"type": "Patient", "interaction": [{"code": "search-type"}]},
                        {"type": "Goal", "interaction": [{"code": "read"}]},
                        {"type": "Observation", "interaction": [{"code": "read"}]},
                        {
                            "type": "DocumentReference",
                            "interaction": [{"code": "create"}, {"code": "update"}],
                            "conditionalUpdate": True,
                        },
                    ],
                }
            ],
        }

    def bundles(self) -> list[dict[str, Any]]:
        """The notification Bundles posted so far."""
        return [body for method, _, _, body in self.received if method == "POST"]

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Recorder]:
    endpoint = Recorder()
    yield endpoint
    endpoint.close()


def parameters(bundle: dict[str, Any]) -> dict[str, Any]:
    """The SubscriptionStatus parameters of a notification, by name."""
    status = bundle["entry"][0]["resource"]
    assert status["resourceType"] == "Parameters"
    return {p["name"]: p for p in status["parameter"]}


LOOPBACK_SUBSCRIBERS = {"WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW": "127.0.0.1"}


def subscription(endpoint: str, patient: str, heartbeat: int = 1) -> dict[str, Any]:
    """A rest-hook Subscription to what-matters-changed for one patient, full resources."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "The GP wants to know when this patient's priorities change",
        "criteria": TOPIC_URL,
        "_criteria": {
            "extension": [{"url": FILTER_CRITERIA_URL, "valueString": f"patient=Patient/{patient}"}]
        },
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]},
            "header": ["Authorization: Bearer subscriber-secret"],
            "extension": [{"url": HEARTBEAT_PERIOD_URL, "valueUnsignedInt": heartbeat}],
        },
    }


@pytest.mark.slow  # real service instances
def test_rest_hook_subscriber_gets_handshake_heartbeat_and_numbered_events(
    tmp_path: Path, recorder: Recorder
) -> None:
    # the recorder listens on loopback, which a subscriber may name only when allowed
    hospital = Instance("hospital", tmp_path, env=LOOPBACK_SUBSCRIBERS).start()
    try:
        patient = add_patient(hospital, 1)
        other = add_patient(hospital, 2)
        created = requests.post(
            f"{hospital.base}/Subscription", json=subscription(recorder.url, patient), timeout=30
        )
        assert created.status_code == 201, created.text
        sub_id = created.json()["id"]
        wait_for(lambda: len(recorder.bundles()) >= 1)
        handshake = recorder.bundles()[0]
        assert handshake["type"] == "history"
        assert parameters(handshake)["type"]["valueCode"] == "handshake"
        assert recorder.received[0][2]["Authorization"] == "Bearer subscriber-secret"
        wait_for(
            lambda: (
                requests.get(f"{hospital.base}/Subscription/{sub_id}", timeout=10).json()["status"]
                == "active"
            )
        )
        goal = {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Keep singing in the choir"},
            "subject": {"reference": f"Patient/{patient}"},
        }
        made = requests.post(f"{hospital.base}/Goal", json=goal, timeout=30).json()
        changed = {**made, "lifecycleStatus": "on-hold"}
        requests.put(f"{hospital.base}/Goal/{made['id']}", json=changed, timeout=30)
        # another patient's change, and a change outside the topic: no notification
        requests.post(
            f"{hospital.base}/Goal",
            json={**goal, "subject": {"reference": f"Patient/{other}"}},
            timeout=30,
        )
        requests.put(
            f"{hospital.base}/Patient/{patient}",
            json={
                "resourceType": "Patient",
                "id": patient,
                "identifier": [{"system": MRN, "value": "MRN00001"}],
                "gender": "female",
            },
            timeout=30,
        )
        assert requests.delete(f"{hospital.base}/Goal/{made['id']}", timeout=30).status_code == 204

        def events() -> list[dict[str, Any]]:
            return [
                b
                for b in recorder.bundles()
                if parameters(b)["type"]["valueCode"] == "event-notification"
            ]

        wait_for(lambda: len(events()) >= 3)
        wait_for(
            lambda: any(
                parameters(b)["type"]["valueCode"] == "heartbeat" for b in recorder.bundles()[4:]
            )
        )
        notified = events()
        numbers = [
            int(
                next(
                    part["valueString"]
                    for part in parameters(b)["notification-event"]["part"]
                    if part["name"] == "event-number"
                )
            )
            for b in notified
        ]
        assert numbers == [1, 2, 3]
        assert [b["entry"][1]["request"]["method"] for b in notified] == ["POST", "PUT", "DELETE"]
        assert notified[1]["entry"][1]["resource"]["lifecycleStatus"] == "on-hold"
        heartbeat = next(
            b for b in recorder.bundles() if parameters(b)["type"]["valueCode"] == "heartbeat"
        )
        assert parameters(heartbeat)["events-since-subscription-start"]["valueString"] == "3"
        status = requests.get(f"{hospital.base}/Subscription/{sub_id}/$status", timeout=10)
        assert status.status_code == 200
        status_parameters = parameters(status.json())
        assert status.json()["type"] == "searchset"
        assert status_parameters["status"]["valueCode"] == "active"
        assert status_parameters["events-since-subscription-start"]["valueString"] == "3"
    finally:
        hospital.stop()


@pytest.mark.slow  # real service instances
def test_subscription_the_server_cannot_serve_is_refused_with_its_location(
    tmp_path: Path,
) -> None:
    hospital = Instance("hospital", tmp_path).start()
    try:
        wrong = subscription("http://127.0.0.1:9/hook", "p1")
        wrong["channel"]["type"] = "websocket"
        refused = requests.post(f"{hospital.base}/Subscription", json=wrong, timeout=30)
        assert refused.status_code == 422
        issue = refused.json()["issue"][0]
        assert issue["expression"] == ["Subscription.channel.type"]
        other_topic = {**subscription("http://127.0.0.1:9/hook", "p1"), "criteria": "Goal?"}
        refused = requests.post(f"{hospital.base}/Subscription", json=other_topic, timeout=30)
        assert refused.status_code == 422
        assert TOPIC_URL in refused.json()["issue"][0]["diagnostics"]
    finally:
        hospital.stop()


@pytest.mark.slow  # real service instances
def test_smart_backend_services_token_endpoint_verifies_our_assertion_with_our_jwks(
    tmp_path: Path,
) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    key_file = tmp_path / "hospital-es384.pem"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    gp = Instance("gp", tmp_path)
    gp.start()
    hospital = Instance("hospital", tmp_path)
    with (
        TokenEndpoint(f"{hospital.root}/.well-known/jwks.json", "hospital-wm") as tokens,
        FaultProxy(gp.root) as proxy,
    ):
        proxy.require_bearer(lambda token: tokens.accepts(f"Bearer {token}"))
        auth = {
            "type": "smart-backend-services",
            "client_id": "hospital-wm",
            "token_url": tokens.url,
            "private_key_file": str(key_file),
            "algorithm": "ES384",
            "scope": "system/Goal.cu system/Observation.cu",
        }
        hospital.set_partners([partner_entry("gp", f"{proxy.url}/fhir", [MRN], auth=auth)])
        hospital.start()
        try:
            jwks = requests.get(f"{hospital.root}/.well-known/jwks.json", timeout=10).json()
            assert [k["kty"] for k in jwks["keys"]] == ["EC"]
            assert "d" not in jwks["keys"][0]
            patient = add_patient(hospital, 1)
            record(hospital, patient, 1)
            hospital.wait_until_delivered()
            assert tokens.rejections == []
            assert len(tokens.issued) == 1  # cached for every later request
            unauthorised = [r for r in proxy.requests if r[2] == "unauthorized"]
            assert unauthorised == []
            expected = expected_words(hospital, patient, 1)
            assert ranked_words(gp, gp_patient(gp, 1) or "") == expected
            # a token the partner no longer accepts: one refresh, then delivery goes on
            tokens.issued.clear()
            record(hospital, patient, 2)
            hospital.wait_until_delivered()
            assert len(tokens.issued) == 1
            assert [r for r in proxy.requests if r[2] == "unauthorized"] != []
            dead = [x for x in hospital.outbox()["summary"] if x["state"] == "dead"]
            assert dead == []
        finally:
            hospital.stop()
            gp.stop()


@pytest.mark.slow  # real service instances
def test_import_pulls_a_patients_priorities_once_however_often_it_runs(tmp_path: Path) -> None:
    gp = Instance("gp", tmp_path).start()
    hospital = Instance("hospital", tmp_path, partners=[partner_entry("gp", gp.base, [MRN])])
    hospital.start()
    try:
        patient_at_gp = add_patient(gp, 3)
        record(gp, patient_at_gp, 3)
        expected = expected_words(gp, patient_at_gp, 3)
        first = hospital.cli("import", "--from", "gp", "--patient", f"{MRN}|MRN00003")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "read 3 Observation, 1 Goal, 1 List; 5 created, 0 updated" in first.stdout
        again = hospital.cli("import", "--from", "gp", "--patient", f"{MRN}|MRN00003")
        assert again.returncode == 0, again.stdout + again.stderr
        # nothing changed at the partner: nothing is written again (no new versions)
        assert "0 created, 0 updated, 5 unchanged" in again.stdout
        for type_ in ("Observation", "Goal", "List"):
            assert {r["meta"]["versionId"] for r in hospital.search(type_)} == {"1"}
        here = hospital.search("Patient", identifier=f"{MRN}|MRN00003")
        assert len(here) == 1
        assert ranked_words(hospital, here[0]["id"]) is None  # no Provenance came with it
        lists = hospital.search("List", subject=f"Patient/{here[0]['id']}")
        assert len(lists) == 1
        by_ref = {
            f"{r['resourceType']}/{r['id']}": r
            for r in hospital.search("Observation") + hospital.search("Goal")
        }
        # $what-matters shows the goal under its statement, not as an entry of its own
        texts = [
            by_ref[e["item"]["reference"]]["valueString"]
            for e in lists[0]["entry"]
            if e["item"]["reference"].startswith("Observation/")
        ]
        assert texts == expected
        # what came from the GP is not sent back to it
        hospital.wait_until_delivered()
        assert counts(gp)["Observation"] == 3
        unknown = hospital.cli("import", "--from", "nobody", "--patient", f"{MRN}|MRN00003")
        assert unknown.returncode == 2
        assert "no partner 'nobody'" in unknown.stderr
        missing = hospital.cli("import", "--from", "gp", "--patient", f"{MRN}|NOPE")
        assert missing.returncode == 1
        assert "0 patients with identifier" in missing.stderr
    finally:
        hospital.stop()
        gp.stop()


@pytest.mark.slow  # real service instances
def test_partner_taking_documents_only_gets_a_what_matters_summary(tmp_path: Path) -> None:
    ehr = Recorder(documents_only=True)
    ehr.patients[0]["identifier"] = [{"system": MRN, "value": "MRN00004"}]
    entry = partner_entry("docs-ehr", f"{ehr.url}/fhir", [MRN])
    entry["send"]["types"] = ["Observation", "Goal", "List", "Provenance"]
    hospital = Instance("hospital", tmp_path, partners=[entry]).start()
    try:
        patient = add_patient(hospital, 4)
        record(hospital, patient, 4)
        hospital.wait_until_delivered()
        assert [x for x in hospital.outbox()["summary"] if x["state"] == "dead"] == []
        assert len(ehr.documents) == 1  # one summary per patient, replaced as it changes
        document = next(iter(ehr.documents.values()))
        assert document["subject"] == {"reference": "Patient/ehr-77"}
        attachments = {a["attachment"]["contentType"]: a["attachment"] for a in document["content"]}
        text = base64.b64decode(attachments["text/plain; charset=utf-8"]["data"]).decode()
        for said in words(4):
            assert said in text
        assert base64.b64decode(attachments["application/pdf"]["data"]).startswith(b"%PDF-")
        writes = [r for r in ehr.received if r[0] in ("POST", "PUT")]
        assert all("/DocumentReference" in r[1] for r in writes)
    finally:
        hospital.stop()
        ehr.close()


@pytest.mark.slow  # real service instances
def test_jwks_lists_no_keys_without_smart_partners(tmp_path: Path) -> None:
    hospital = Instance("hospital", tmp_path).start()
    try:
        answer = requests.get(f"{hospital.root}/.well-known/jwks.json", timeout=10)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].startswith("application/jwk-set+json")
        assert answer.json() == {"keys": []}
    finally:
        hospital.stop()


def test_assertions_are_signed_for_the_token_url_only(tmp_path: Path) -> None:
    """The assertion a token endpoint receives names it as audience (backend-services.html)."""
    from service.exchange.smart import SigningKey, client_assertion

    key_file = tmp_path / "k.pem"
    key_file.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key = SigningKey.from_pem_file(key_file, "ES384")
    token = client_assertion("c1", "https://auth.example/token", key, now=time.time())
    public = jwt.PyJWK(key.public_jwk())
    claims = jwt.decode(
        token, public.key, algorithms=["ES384"], audience="https://auth.example/token"
    )
    assert claims["iss"] == claims["sub"] == "c1"
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, public.key, algorithms=["ES384"], audience="https://other.example/token")
