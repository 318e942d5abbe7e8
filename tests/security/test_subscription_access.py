"""Subscriptions carry their creator's access (issue finding 3).

Rule (README, Authorization): a Subscription stores who wrote it (scopes, patient, client); it
is queued, and sent, only the changes that access may read; writing one needs read scopes on
the topic's types (or the types its filters name); its endpoint is ``https`` on a public host
or a host on ``WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW`` (loopback, link-local and private
addresses are refused unless listed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from service import create_app
from service.config import Config
from service.exchange.subscriptions import PAYLOAD_CONTENT_URL, TOPIC_URL, with_status
from service.fhir.access import SUBSCRIBER_ACCESS_URL
from service.fhir.actor import Actor
from tests.security.support import (
    B_WORDS,
    caller,
    sign,
    smart_config,
    text_of,
    token_for,
)

HOOK = "https://subscriber.example/hooks/what-matters"


def subscription(endpoint: str = HOOK, **extra: Any) -> dict[str, Any]:
    """A rest-hook Subscription to what-matters-changed, full resources, no filter."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "Tell me when priorities change",
        "criteria": TOPIC_URL,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": "full-resource"}]},
        },
        **extra,
    }


def statement(patient: str, words: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary",
                        "code": "what-matters",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "valueString": words,
    }


def activate(app: Flask, sub_id: str) -> None:
    """Do what the worker does after a successful handshake (no token acts)."""
    fhir = app.extensions["whatmatters.fhir"]
    stored = fhir.read_only(lambda tx: tx.resources.read("Subscription", sub_id))
    active = with_status(json.loads(stored.content), "active")
    fhir.perform(Actor.server(), lambda s: s.update("Subscription", sub_id, active))


def queued(app: Flask, sub_id: str | None = None) -> list[tuple[str, str, str]]:
    """The outbox rows of subscriptions: (destination, kind, what changed)."""
    with app.extensions["whatmatters.store"].transaction(write=False) as tx:
        rows = tx.outbox.rows()
    return [
        (r.destination, r.kind, f"{r.res_type}/{r.res_id}")
        for r in rows
        if r.destination.startswith("subscription:")
        and (sub_id is None or r.destination == f"subscription:{sub_id}")
    ]


def test_a_patient_subscription_is_sent_only_that_patients_changes(
    world: dict[str, Any], smart_app: Flask
) -> None:
    a = caller(world, token_for(world, "patient-A"))
    # a claim of wider access inside the resource is replaced by the token's own
    forged = {
        "url": SUBSCRIBER_ACCESS_URL,
        "extension": [{"url": "scope", "valueString": "system/*.*"}],
    }
    created = a.post("/fhir/Subscription", subscription(extension=[forged]))
    assert created.status_code == 201, text_of(created)
    sub_id = created.get_json()["id"]
    (stamp,) = [e for e in created.get_json()["extension"] if e["url"] == SUBSCRIBER_ACCESS_URL]
    assert {"url": "patient", "valueString": "pA"} in stamp["extension"]
    assert "system/" not in json.dumps(stamp)
    activate(smart_app, sub_id)
    admin = caller(world, token_for(world, "system"))
    for_b = admin.post("/fhir/Observation", statement("pB", B_WORDS))
    for_a = admin.post("/fhir/Observation", statement("pA", "Walk the dog to the lane end"))
    assert for_b.status_code == for_a.status_code == 201
    events = [row for row in queued(smart_app, sub_id) if row[1] == "notification"]
    assert events == [
        (f"subscription:{sub_id}", "notification", f"Observation/{for_a.get_json()['id']}")
    ]
    # the subscription is A's own: A reads and ends it, B's token cannot see it
    b = caller(world, token_for(world, "patient-B"))
    assert b.get(f"/fhir/Subscription/{sub_id}").status_code == 403
    assert a.get(f"/fhir/Subscription/{sub_id}").status_code == 200
    assert a.delete(f"/fhir/Subscription/{sub_id}").status_code == 204


def test_a_token_without_read_scopes_cannot_subscribe(
    world: dict[str, Any], smart_app: Flask
) -> None:
    key = world["keys"][0]
    for scope in ("user/Subscription.cruds", "system/Subscription.c", "patient/Subscription.cruds"):
        token = sign(key, scope=scope, patient="pA" if scope.startswith("patient") else None)
        refused = caller(world, token).post("/fhir/Subscription", subscription())
        assert refused.status_code == 403, (scope, text_of(refused))
        assert refused.get_json()["issue"][0]["code"] == "forbidden"
    admin = caller(world, token_for(world, "system"))
    assert admin.get("/fhir/Subscription").get_json().get("entry", []) == []
    assert queued(smart_app) == []


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:9/hook",
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://[::1]/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/hook",
        "https://192.168.0.7/hook",
        "https://2130706433/hook",
        "http://subscriber.example/hook",
    ],
)
def test_endpoints_inside_the_network_or_without_tls_are_refused_by_default(
    world: dict[str, Any], smart_app: Flask, endpoint: str
) -> None:
    admin = caller(world, token_for(world, "system"))
    refused = admin.post("/fhir/Subscription", subscription(endpoint))
    assert refused.status_code == 422, text_of(refused)
    assert refused.get_json()["issue"][0]["expression"] == ["Subscription.channel.endpoint"]
    assert admin.get("/fhir/Subscription").get_json().get("entry", []) == []
    assert queued(smart_app) == []


def test_hosts_on_the_allow_list_may_be_subscribers(
    config: Config,
    tmp_path: Path,
    keys: tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey],
    folders: dict[str, Any],
) -> None:
    app = create_app(
        smart_config(
            config, tmp_path, keys[0], subscription_endpoint_allow=("127.0.0.1", "10.0.0.0/8")
        ),
        **folders,
    )
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {sign(keys[0], scope='system/*.cruds')}"}
        for endpoint in ("http://127.0.0.1:9/hook", "https://10.1.2.3/hook"):
            created = client.post(
                "/fhir/Subscription", json=subscription(endpoint), headers=headers
            )
            assert created.status_code == 201, text_of(created)
        still = client.post(
            "/fhir/Subscription", json=subscription("https://[::1]/hook"), headers=headers
        )
        assert still.status_code == 422
    finally:
        app.extensions["whatmatters.store"].close()
