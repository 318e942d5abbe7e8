"""Topic-based Subscriptions for R4 after the Subscriptions R5 Backport IG, STU 1.1.

Pages: https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/components.html,
StructureDefinition-backport-subscription.html, notifications.html, payloads.html,
channels.html#rest-hook, StructureDefinition-backport-subscription-status-r4.html and
OperationDefinition-backport-subscription-status.html (all under the same STU1.1 base).
"""

from __future__ import annotations

import ast
import copy
import uuid
from pathlib import Path
from typing import Any

import pytest

from service.exchange import notifications
from service.exchange import subscriptions as subs
from service.exchange.notifications import (
    event_bundle,
    handshake_bundle,
    heartbeat_bundle,
    status_bundle,
)
from service.exchange.subscriptions import (
    FILTER_CRITERIA_URL,
    HEARTBEAT_PERIOD_URL,
    PAYLOAD_CONTENT_URL,
    STATUS_PROFILE,
    TIMEOUT_URL,
    TOPIC_URL,
    SubscriptionInvalid,
    SubscriptionSpec,
    matches,
    parse_filter,
    parse_subscription,
    patient_reference,
    topic_event,
    with_status,
)
from service.validation.definitions import Definitions
from service.validation.structure import StructureValidator

IG = "http://hl7.org/fhir/uv/subscriptions-backport"
SUB_URL = "https://wm.example/fhir/Subscription/s1"
FOCUS_URL = "https://wm.example/fhir/Goal/g1"
NOW = "2024-05-01T10:00:00Z"
EVENT_TIME = "2024-05-01T09:59:58.123Z"
LOINC = "http://loinc.org"
PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"

CONTENT_EXPR = f"Subscription.channel.payload.extension('{PAYLOAD_CONTENT_URL}')"
HEARTBEAT_EXPR = f"Subscription.channel.extension('{HEARTBEAT_PERIOD_URL}')"
TIMEOUT_EXPR = f"Subscription.channel.extension('{TIMEOUT_URL}')"
FILTER_EXPR = f"Subscription.criteria.extension('{FILTER_CRITERIA_URL}')"


def subscription(
    *,
    filters: tuple[str, ...] = ("Goal?patient=Patient/123",),
    content: str | None = "id-only",
    heartbeat: Any = 120,
    timeout: Any = 10,
    **changes: Any,
) -> dict[str, Any]:
    """Build a valid backport-subscription (like the IG's subscription-admission example)."""
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": "https://ehr.example/hooks/what-matters",
        "payload": "application/fhir+json",
        "header": ["Authorization: Bearer abc", "X-Partner: north"],
        "extension": [],
    }
    if heartbeat is not None:
        channel["extension"].append({"url": HEARTBEAT_PERIOD_URL, "valueUnsignedInt": heartbeat})
    if timeout is not None:
        channel["extension"].append({"url": TIMEOUT_URL, "valueUnsignedInt": timeout})
    if content is not None:
        channel["_payload"] = {"extension": [{"url": PAYLOAD_CONTENT_URL, "valueCode": content}]}
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "id": "s1",
        "meta": {"profile": [f"{IG}/StructureDefinition/backport-subscription"]},
        "status": "requested",
        "end": "2099-12-31T12:00:00Z",
        "reason": "Keep the care plan in step with what matters to the patient",
        "criteria": TOPIC_URL,
        "_criteria": {
            "extension": [{"url": FILTER_CRITERIA_URL, "valueString": f} for f in filters]
        },
        "channel": channel,
    }
    resource.update(changes)
    return resource


def invalid(resource: dict[str, Any]) -> SubscriptionInvalid:
    """Return the SubscriptionInvalid that parsing ``resource`` raises."""
    with pytest.raises(SubscriptionInvalid) as caught:
        parse_subscription(resource)
    return caught.value


@pytest.fixture(scope="module")
def validator() -> StructureValidator:
    return StructureValidator(Definitions.shared(), invariants=True)


def errors(validator: StructureValidator, resource: dict[str, Any]) -> list[str]:
    """Return the error-level base R4 issues (structure and invariants such as bdl-3/bdl-4)."""
    return [i.diagnostics for i in validator.validate(resource) if i.severity in ("error", "fatal")]


def params(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the status Parameters of a notification by parameter name."""
    parameters = bundle["entry"][0]["resource"]["parameter"]
    names = [p["name"] for p in parameters]
    assert len(names) == len(set(names)), names
    return {p["name"]: p for p in parameters}


def event_parts(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Return the notification-event parts by name."""
    return {part["name"]: part for part in params(bundle)["notification-event"]["part"]}


# --- constants ----------------------------------------------------------------------------------


def test_topic_and_ig_urls() -> None:
    assert TOPIC_URL == "http://whatmatters.example/fhir/SubscriptionTopic/what-matters-changed"
    assert f"{IG}/StructureDefinition/backport-filter-criteria" == FILTER_CRITERIA_URL
    assert f"{IG}/StructureDefinition/backport-heartbeat-period" == HEARTBEAT_PERIOD_URL
    assert f"{IG}/StructureDefinition/backport-timeout" == TIMEOUT_URL
    assert f"{IG}/StructureDefinition/backport-payload-content" == PAYLOAD_CONTENT_URL
    assert f"{IG}/StructureDefinition/backport-max-count" == subs.MAX_COUNT_URL
    assert f"{IG}/StructureDefinition/backport-subscription" == subs.SUBSCRIPTION_PROFILE
    assert f"{IG}/StructureDefinition/backport-subscription-status-r4" == STATUS_PROFILE
    assert f"{IG}/CodeSystem/backport-notification-type" == subs.NOTIFICATION_TYPE_SYSTEM


@pytest.mark.parametrize("module", [subs, notifications])
def test_module_is_pure(module: Any) -> None:
    source = Path(module.__file__).read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"flask", "werkzeug", "requests", "sqlalchemy", "psycopg", "socket"}


# --- parse_subscription: components.html and the backport-subscription profile ------------------


def test_test_subscription_is_valid_r4(validator: StructureValidator) -> None:
    assert errors(validator, subscription()) == []


def test_parse_reads_every_field() -> None:
    spec = parse_subscription(subscription())
    assert spec == SubscriptionSpec(
        id="s1",
        topic=TOPIC_URL,
        status="requested",
        endpoint="https://ehr.example/hooks/what-matters",
        headers=("Authorization: Bearer abc", "X-Partner: north"),
        payload_mime="application/fhir+json",
        content="id-only",
        heartbeat_seconds=120,
        timeout_seconds=10,
        filters=(("Goal", "patient", "Patient/123"),),
        end="2099-12-31T12:00:00Z",
    )


def test_parse_defaults() -> None:
    resource = subscription(filters=(), heartbeat=None, timeout=None)
    del resource["end"], resource["id"], resource["status"]
    del resource["channel"]["payload"], resource["channel"]["header"]
    spec = parse_subscription(resource)
    assert spec.id is None
    assert spec.status == "requested"
    assert spec.payload_mime == "application/fhir+json"  # _payload carries only the extension
    assert spec.headers == ()
    assert spec.heartbeat_seconds is None  # no extension: no heartbeats
    assert spec.timeout_seconds == 30
    assert spec.filters == ()
    assert spec.end is None


@pytest.mark.parametrize("content", ["empty", "id-only", "full-resource"])
def test_parse_every_content_code(content: str) -> None:
    assert parse_subscription(subscription(content=content)).content == content


@pytest.mark.parametrize(
    "mime", ["application/fhir+json", "application/json", "application/fhir+json; fhirVersion=4.0"]
)
def test_parse_json_payload_types(mime: str) -> None:
    resource = subscription()
    resource["channel"]["payload"] = mime
    assert parse_subscription(resource).payload_mime == mime


def test_parse_http_endpoint_is_accepted() -> None:
    resource = subscription()
    resource["channel"]["endpoint"] = "http://localhost:8081/hook"
    assert parse_subscription(resource).endpoint == "http://localhost:8081/hook"


def test_parse_does_not_change_the_resource() -> None:
    resource = subscription()
    before = copy.deepcopy(resource)
    parse_subscription(resource)
    assert resource == before


def test_wrong_topic_names_the_supported_topic() -> None:
    problem = invalid(subscription(criteria="http://hl7.org/SubscriptionTopic/admission"))
    assert problem.expression == "Subscription.criteria"
    assert TOPIC_URL in str(problem)
    assert problem.message == str(problem)


def test_missing_criteria() -> None:
    resource = subscription()
    del resource["criteria"]
    assert invalid(resource).expression == "Subscription.criteria"


def _set(path: str, value: Any) -> dict[str, Any]:
    """Build a subscription with ``channel.<path>`` set to ``value`` (None deletes it)."""
    resource = subscription()
    if value is None:
        resource["channel"].pop(path, None)
    else:
        resource["channel"][path] = value
    return resource


@pytest.mark.parametrize(
    ("resource", "expression"),
    [
        (_set("type", "websocket"), "Subscription.channel.type"),
        (_set("type", None), "Subscription.channel.type"),
        (_set("endpoint", None), "Subscription.channel.endpoint"),
        (_set("endpoint", ""), "Subscription.channel.endpoint"),
        (_set("endpoint", "/relative/hook"), "Subscription.channel.endpoint"),
        (_set("endpoint", "ftp://ehr.example/hook"), "Subscription.channel.endpoint"),
        (_set("endpoint", "mailto:team@ehr.example"), "Subscription.channel.endpoint"),
        (_set("endpoint", "https:///no-host"), "Subscription.channel.endpoint"),
        (_set("endpoint", "https://ehr.example/a b"), "Subscription.channel.endpoint"),
        (_set("payload", "application/fhir+xml"), "Subscription.channel.payload"),
        (_set("payload", "text/plain"), "Subscription.channel.payload"),
        (_set("header", ["no colon here"]), "Subscription.channel.header[0]"),
        (_set("header", ["A: 1", "B: 2\r\nX-Injected: 1"]), "Subscription.channel.header[1]"),
        (_set("header", ["A: 1\n"]), "Subscription.channel.header[0]"),
        (subscription(content=None), CONTENT_EXPR),
        (subscription(content="everything"), CONTENT_EXPR),
        (subscription(heartbeat=0), HEARTBEAT_EXPR),
        (subscription(heartbeat=-60), HEARTBEAT_EXPR),
        (subscription(heartbeat="60"), HEARTBEAT_EXPR),
        (subscription(heartbeat=1.5), HEARTBEAT_EXPR),
        (subscription(heartbeat=True), HEARTBEAT_EXPR),
        (subscription(timeout=0), TIMEOUT_EXPR),
        (subscription(filters=("Goal?subject=Patient/123",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("patient=Patient/1", "_id=g1")), f"{FILTER_EXPR}[1]"),
        (subscription(filters=("Goal?patient:missing=true",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("Encounter?patient=Patient/1",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("patient=",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("patient=Group/7",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("Goal?",)), f"{FILTER_EXPR}[0]"),
        (subscription(filters=("",)), f"{FILTER_EXPR}[0]"),
        (subscription(status="paused"), "Subscription.status"),
        (subscription(end=20251231), "Subscription.end"),
        (subscription(channel=None), "Subscription.channel"),
        (subscription(resourceType="Observation"), "Subscription"),
    ],
)
def test_parse_errors_name_the_element(resource: dict[str, Any], expression: str) -> None:
    assert invalid(resource).expression == expression


def test_unsupported_filter_parameter_message() -> None:
    problem = invalid(subscription(filters=("Goal?subject=Patient/123",)))
    assert "'subject'" in str(problem)
    assert "'patient'" in str(problem)


def test_missing_content_cites_the_profile() -> None:
    assert "backport-subscription profile" in str(invalid(subscription(content=None)))


def test_heartbeat_must_be_value_unsigned_int() -> None:
    resource = subscription(heartbeat=None)
    resource["channel"]["extension"].append({"url": HEARTBEAT_PERIOD_URL, "valueInteger": 60})
    assert invalid(resource).expression == HEARTBEAT_EXPR


def test_repeated_payload_content_is_an_error() -> None:
    resource = subscription()
    resource["channel"]["_payload"]["extension"].append(
        {"url": PAYLOAD_CONTENT_URL, "valueCode": "empty"}
    )
    assert invalid(resource).expression == CONTENT_EXPR


# --- filters: StructureDefinition-backport-filter-criteria.html ---------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Goal?patient=Patient/123", (("Goal", "patient", "Patient/123"),)),
        ("patient=Patient/123", ((None, "patient", "Patient/123"),)),
        ("?patient=Patient/123", ((None, "patient", "Patient/123"),)),
        ("patient=123", ((None, "patient", "Patient/123"),)),
        ("patient=https://wm.example/fhir/Patient/123", ((None, "patient", "Patient/123"),)),
        ("patient=Patient%2F123", ((None, "patient", "Patient/123"),)),
        ("List?patient=Patient/a,Patient/b", (("List", "patient", "Patient/a,Patient/b"),)),
        (
            "Observation?patient=Patient/1&patient=Patient/1",
            (("Observation", "patient", "Patient/1"), ("Observation", "patient", "Patient/1")),
        ),
        (
            "QuestionnaireResponse?patient=Patient/1",
            (("QuestionnaireResponse", "patient", "Patient/1"),),
        ),
    ],
)
def test_parse_filter(text: str, expected: tuple[Any, ...]) -> None:
    assert parse_filter(text) == expected


def test_filters_of_several_extensions_are_kept_in_order() -> None:
    spec = parse_subscription(
        subscription(filters=("Goal?patient=Patient/1", "Observation?patient=Patient/1"))
    )
    assert spec.filters == (
        ("Goal", "patient", "Patient/1"),
        ("Observation", "patient", "Patient/1"),
    )


def _spec(*filters: str) -> SubscriptionSpec:
    return parse_subscription(subscription(filters=filters))


def test_no_filter_matches_every_event() -> None:
    spec = _spec()
    assert matches(spec, "Goal", "Patient/1")
    assert matches(spec, "Observation", None)


def test_untyped_patient_filter() -> None:
    spec = _spec("patient=Patient/123")
    assert matches(spec, "Goal", "Patient/123")
    assert matches(spec, "List", "Patient/123")
    assert not matches(spec, "Goal", "Patient/999")
    assert not matches(spec, "Goal", None)


def test_typed_filter_restricts_the_type() -> None:
    spec = _spec("Goal?patient=Patient/123")
    assert matches(spec, "Goal", "Patient/123")
    assert not matches(spec, "Observation", "Patient/123")
    assert not matches(spec, "Goal", "Patient/9")


def test_filters_for_two_types() -> None:
    spec = _spec("Goal?patient=Patient/1", "Observation?patient=Patient/2")
    assert matches(spec, "Goal", "Patient/1")
    assert matches(spec, "Observation", "Patient/2")
    assert not matches(spec, "Goal", "Patient/2")
    assert not matches(spec, "List", "Patient/1")


def test_filters_are_anded() -> None:
    assert not matches(_spec("patient=Patient/1", "patient=Patient/2"), "Goal", "Patient/1")
    both = _spec("patient=Patient/1", "Goal?patient=Patient/1")
    assert matches(both, "Goal", "Patient/1")
    assert not matches(both, "List", "Patient/1")


def test_comma_is_or() -> None:
    spec = _spec("patient=Patient/1,Patient/2")
    assert matches(spec, "Goal", "Patient/1")
    assert matches(spec, "Goal", "Patient/2")
    assert not matches(spec, "Goal", "Patient/3")


# --- topic: what-matters-changed -----------------------------------------------------------------


def _observation(code: str | None = None, system: str = LOINC, **changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code or "8867-4"}]},
        "subject": {"reference": "Patient/123"},
    }
    resource.update(changes)
    return resource


WHAT_MATTERS = {"coding": [{"system": PCO, "code": "what-matters"}]}
SURVEY = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category"}]}


@pytest.mark.parametrize(
    ("resource_type", "resource"),
    [
        ("Observation", _observation("95541-9")),
        ("Observation", _observation("75773-2")),
        ("Observation", _observation(category=[SURVEY, WHAT_MATTERS])),
        (
            "Observation",
            {
                "code": {
                    "coding": [
                        {"system": "http://snomed.info/sct", "code": "1"},
                        {"system": LOINC, "code": "95541-9"},
                    ]
                }
            },
        ),
        ("Goal", {"resourceType": "Goal", "subject": {"reference": "Patient/1"}}),
        ("Goal", None),
        ("List", {"code": {"coding": [{"system": LOINC, "code": "81340-2"}]}}),
        (
            "QuestionnaireResponse",
            {"questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty"},
        ),
        (
            "QuestionnaireResponse",
            {"questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty|1.0.0"},
        ),
    ],
)
def test_topic_fires(resource_type: str, resource: dict[str, Any] | None) -> None:
    assert topic_event(resource_type, resource)


@pytest.mark.parametrize(
    ("resource_type", "resource"),
    [
        ("Observation", _observation()),
        ("Observation", _observation("95541-9", system="http://snomed.info/sct")),
        ("Observation", _observation(category=[SURVEY])),
        ("Observation", {"category": [{"coding": [{"system": PCO, "code": "other"}]}]}),
        ("Observation", None),  # a deleted Observation with no stored content
        ("List", {"code": {"coding": [{"system": LOINC, "code": "95541-9"}]}}),
        ("List", {}),
        ("List", None),
        ("QuestionnaireResponse", {"questionnaire": "http://other.example/Questionnaire/wmty"}),
        (
            "QuestionnaireResponse",
            {"questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty2"},
        ),
        ("QuestionnaireResponse", None),
        ("Patient", {"resourceType": "Patient"}),
        ("Condition", None),
    ],
)
def test_topic_does_not_fire(resource_type: str, resource: dict[str, Any] | None) -> None:
    assert not topic_event(resource_type, resource)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", "Patient/123"),
        ("Patient/123/_history/4", "Patient/123"),
        ("https://wm.example/fhir/Patient/123", "Patient/123"),
        ("http://other.example/r4/Patient/a-b.c/_history/1", "Patient/a-b.c"),
        ("Group/7", None),
        ("#p1", None),
        ("urn:uuid:4c2b9ff0-2f61-4c58-9c4d-79c6f0a2fd4e", None),
        ("Observation/Patient/1", None),
        ("https://wm.example/fhir/Patient/", None),
    ],
)
def test_patient_reference(reference: str, expected: str | None) -> None:
    for resource_type in ("Observation", "Goal", "List", "QuestionnaireResponse"):
        assert patient_reference(resource_type, {"subject": {"reference": reference}}) == expected


def test_patient_reference_without_a_patient() -> None:
    assert patient_reference("Goal", None) is None
    assert patient_reference("Goal", {}) is None
    assert patient_reference("Goal", {"subject": {"identifier": {"value": "9"}}}) is None
    assert patient_reference("Condition", {"subject": {"reference": "Patient/1"}}) is None


# --- notifications: notifications.html, payloads.html, backport-subscription-status-r4 ---------


def _check_notification(bundle: dict[str, Any], notification_type: str) -> None:
    """Check the history Bundle and its first entry (the Parameters matching ``$status``)."""
    assert bundle["resourceType"] == "Bundle"
    assert bundle["type"] == "history"
    assert uuid.UUID(bundle["id"]).version == 4
    assert bundle["meta"]["profile"] == [
        f"{IG}/StructureDefinition/backport-subscription-notification-r4"
    ]
    first = bundle["entry"][0]
    status = first["resource"]
    assert status["resourceType"] == "Parameters"
    assert status["meta"]["profile"] == [STATUS_PROFILE]
    assert uuid.UUID(status["id"]).version == 4
    assert first["fullUrl"] == f"urn:uuid:{status['id']}"
    assert first["request"] == {"method": "GET", "url": f"{SUB_URL}/$status"}
    assert first["response"] == {"status": "200"}
    p = params(bundle)
    assert p["subscription"] == {"name": "subscription", "valueReference": {"reference": SUB_URL}}
    assert p["type"] == {"name": "type", "valueCode": notification_type}


def test_handshake(validator: StructureValidator) -> None:
    bundle = handshake_bundle(SUB_URL, "requested", 0, NOW)
    _check_notification(bundle, "handshake")
    assert bundle["timestamp"] == NOW
    assert len(bundle["entry"]) == 1
    assert params(bundle) == {
        "subscription": {"name": "subscription", "valueReference": {"reference": SUB_URL}},
        "topic": {"name": "topic", "valueCanonical": TOPIC_URL},
        "status": {"name": "status", "valueCode": "requested"},
        "type": {"name": "type", "valueCode": "handshake"},
        "events-since-subscription-start": {
            "name": "events-since-subscription-start",
            "valueString": "0",
        },
    }
    assert errors(validator, bundle) == []


def test_handshake_for_an_empty_subscription_has_no_topic() -> None:
    # topic "SHOULD NOT be present when using empty payloads" (backport-subscription-status-r4)
    assert "topic" not in params(handshake_bundle(SUB_URL, "requested", 0, NOW, content="empty"))


def test_heartbeat(validator: StructureValidator) -> None:
    bundle = heartbeat_bundle(SUB_URL, "active", 7, NOW)
    _check_notification(bundle, "heartbeat")
    p = params(bundle)
    assert p["status"]["valueCode"] == "active"
    assert p["events-since-subscription-start"] == {
        "name": "events-since-subscription-start",
        "valueString": "7",
    }
    assert "notification-event" not in p
    assert "error" not in p
    assert bundle["timestamp"] == NOW
    assert errors(validator, bundle) == []


def test_heartbeat_with_error() -> None:
    p = params(heartbeat_bundle(SUB_URL, "error", 7, NOW, error="endpoint answered 503"))
    assert p["error"] == {
        "name": "error",
        "valueCodeableConcept": {"text": "endpoint answered 503"},
    }


GOAL: dict[str, Any] = {
    "resourceType": "Goal",
    "id": "g1",
    "meta": {"versionId": "3", "lastUpdated": "2024-05-01T09:59:58.123Z"},
    "lifecycleStatus": "active",
    "description": {"text": "Walk my dog every morning"},
    "subject": {"reference": "Patient/123"},
}


def _event(content: str, **keywords: Any) -> dict[str, Any]:
    return event_bundle(SUB_URL, "active", 12, 12, EVENT_TIME, FOCUS_URL, GOAL, content, **keywords)


def test_event_id_only(validator: StructureValidator) -> None:
    bundle = _event("id-only")
    _check_notification(bundle, "event-notification")
    p = params(bundle)
    assert p["topic"] == {"name": "topic", "valueCanonical": TOPIC_URL}
    assert p["status"]["valueCode"] == "active"
    assert p["events-since-subscription-start"]["valueString"] == "12"
    assert event_parts(bundle) == {
        "event-number": {"name": "event-number", "valueString": "12"},
        "timestamp": {"name": "timestamp", "valueInstant": EVENT_TIME},
        "focus": {"name": "focus", "valueReference": {"reference": FOCUS_URL}},
    }
    assert bundle["timestamp"] == EVENT_TIME
    focus = bundle["entry"][1]
    assert focus["fullUrl"] == FOCUS_URL
    assert "resource" not in focus
    assert focus["request"] == {"method": "GET", "url": "Goal/g1"}
    assert focus["response"]["status"] == "200"
    assert len(bundle["entry"]) == 2
    assert errors(validator, bundle) == []


def test_event_full_resource(validator: StructureValidator) -> None:
    bundle = _event("full-resource", interaction="update", now_iso=NOW)
    _check_notification(bundle, "event-notification")
    assert bundle["timestamp"] == NOW
    assert params(bundle)["topic"]["valueCanonical"] == TOPIC_URL
    assert event_parts(bundle)["focus"]["valueReference"] == {"reference": FOCUS_URL}
    focus = bundle["entry"][1]
    assert focus["fullUrl"] == FOCUS_URL
    assert focus["resource"] == GOAL
    assert focus["request"] == {"method": "PUT", "url": "Goal/g1"}
    assert focus["response"] == {
        "status": "200",
        "etag": 'W/"3"',
        "lastModified": "2024-05-01T09:59:58.123Z",
    }
    assert errors(validator, bundle) == []


def test_event_create_is_a_post_to_the_type() -> None:
    focus = _event("full-resource", interaction="create")["entry"][1]
    assert focus["request"] == {"method": "POST", "url": "Goal"}
    assert focus["response"]["status"] == "201"


def test_event_delete_has_no_resource(validator: StructureValidator) -> None:
    bundle = event_bundle(
        SUB_URL,
        "active",
        13,
        13,
        EVENT_TIME,
        FOCUS_URL,
        None,
        "full-resource",
        interaction="delete",
    )
    focus = bundle["entry"][1]
    assert "resource" not in focus
    assert focus["request"] == {"method": "DELETE", "url": "Goal/g1"}
    assert focus["response"] == {"status": "204"}
    assert event_parts(bundle)["focus"]["valueReference"] == {"reference": FOCUS_URL}
    assert errors(validator, bundle) == []


def test_event_empty(validator: StructureValidator) -> None:
    bundle = _event("empty")
    _check_notification(bundle, "event-notification")
    assert len(bundle["entry"]) == 1  # no entry other than the status (payloads.html#empty)
    assert "topic" not in params(bundle)
    assert event_parts(bundle) == {
        "event-number": {"name": "event-number", "valueString": "12"},
        "timestamp": {"name": "timestamp", "valueInstant": EVENT_TIME},
    }
    assert errors(validator, bundle) == []


@pytest.mark.parametrize("content", ["empty", "id-only", "full-resource"])
def test_every_history_entry_has_request_and_response(content: str) -> None:
    for entry in _event(content)["entry"]:
        assert entry["request"]["method"]
        assert entry["response"]["status"]


def test_status_bundle(validator: StructureValidator) -> None:
    bundle = status_bundle(SUB_URL, "error", 4, "endpoint did not answer", now_iso=NOW)
    assert bundle["type"] == "searchset"
    assert uuid.UUID(bundle["id"]).version == 4
    assert bundle["timestamp"] == NOW
    assert bundle["total"] == 1
    entry = bundle["entry"][0]
    assert entry["search"] == {"mode": "match"}
    assert "request" not in entry
    assert "response" not in entry
    assert entry["fullUrl"] == f"urn:uuid:{entry['resource']['id']}"
    assert entry["resource"]["meta"]["profile"] == [STATUS_PROFILE]
    assert params(bundle) == {
        "subscription": {"name": "subscription", "valueReference": {"reference": SUB_URL}},
        "topic": {"name": "topic", "valueCanonical": TOPIC_URL},
        "status": {"name": "status", "valueCode": "error"},
        "type": {"name": "type", "valueCode": "query-status"},
        "events-since-subscription-start": {
            "name": "events-since-subscription-start",
            "valueString": "4",
        },
        "error": {"name": "error", "valueCodeableConcept": {"text": "endpoint did not answer"}},
    }
    assert errors(validator, bundle) == []


def test_status_bundle_without_error_has_a_timestamp() -> None:
    bundle = status_bundle(SUB_URL, "active", 0, None)
    assert "error" not in params(bundle)
    assert bundle["timestamp"].endswith("Z")


def test_every_bundle_gets_new_ids() -> None:
    first, second = (
        handshake_bundle(SUB_URL, "requested", 0, NOW),
        handshake_bundle(SUB_URL, "requested", 0, NOW),
    )
    assert first["id"] != second["id"]
    assert first["entry"][0]["resource"]["id"] != second["entry"][0]["resource"]["id"]


def test_bundle_builders_reject_unknown_codes() -> None:
    with pytest.raises(ValueError, match="content"):
        _event("summary")
    with pytest.raises(ValueError, match="status"):
        heartbeat_bundle(SUB_URL, "paused", 0, NOW)
    with pytest.raises(ValueError, match="interaction"):
        _event("id-only", interaction="patch")


# --- with_status --------------------------------------------------------------------------------


def test_with_status_sets_status_and_error() -> None:
    resource = subscription()
    updated = with_status(resource, "error", "handshake failed: 404")
    assert updated["status"] == "error"
    assert updated["error"] == "handshake failed: 404"
    assert resource["status"] == "requested"
    assert "error" not in resource
    updated["channel"]["header"].append("X: y")
    assert resource["channel"]["header"] == ["Authorization: Bearer abc", "X-Partner: north"]


def test_with_status_clears_the_error() -> None:
    updated = with_status(subscription(status="error", error="old"), "active")
    assert updated["status"] == "active"
    assert "error" not in updated


def test_with_status_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        with_status(subscription(), "paused")
