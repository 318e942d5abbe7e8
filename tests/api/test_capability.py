"""GET [base]/metadata: https://hl7.org/fhir/R4/http.html#capabilities."""

from __future__ import annotations

from flask.testing import FlaskClient


def test_metadata_is_an_r4_capability_statement(client: FlaskClient) -> None:
    response = client.get("/fhir/metadata")
    assert response.status_code == 200
    body = response.get_json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"] == "4.0.1"
    assert body["kind"] == "instance"
    assert "application/fhir+json" in body["format"]
    assert body["patchFormat"] == ["application/json-patch+json"]


def test_metadata_lists_exactly_the_supported_types(client: FlaskClient) -> None:
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    assert rest["mode"] == "server"
    stored = [
        "AuditEvent",
        "Goal",
        "List",
        "Observation",
        "Patient",
        "Provenance",
        "Questionnaire",
        "QuestionnaireResponse",
        "Subscription",
    ]
    writable = [r["type"] for r in rest["resource"] if "documentation" not in r]
    assert sorted(writable) == stored
    for type_ in stored:
        assert client.get(f"/fhir/{type_}").status_code == 200
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system"}


def test_metadata_lists_interactions_and_conditional_support(client: FlaskClient) -> None:
    goal = next(
        r
        for r in client.get("/fhir/metadata").get_json()["rest"][0]["resource"]
        if r["type"] == "Goal"
    )
    assert {i["code"] for i in goal["interaction"]} == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    assert goal["conditionalCreate"] is True
    assert goal["conditionalUpdate"] is True
    assert goal["conditionalDelete"] == "single"
    assert goal["updateCreate"] is True
    assert goal["versioning"] == "versioned-update"


SAMPLE = {
    "token": "x",
    "string": "x",
    "date": "2020-01-01",
    "number": "1",
    "quantity": "1",
    "reference": "Patient/x",
    "uri": "http://example.org/x",
}


def _sample(param: dict) -> str:
    if param["type"] != "composite":
        return SAMPLE[param["type"]]
    if "quantity" in param["name"]:
        return "x$1"
    return "x$2020" if "date" in param["name"] else "x$y"


def test_every_advertised_search_parameter_is_accepted(client: FlaskClient) -> None:
    for resource in client.get("/fhir/metadata").get_json()["rest"][0]["resource"]:
        for param in resource["searchParam"]:
            response = client.get(
                f"/fhir/{resource['type']}?{param['name']}={_sample(param)}",
                headers={"Prefer": "handling=strict"},
            )
            assert response.status_code == 200, (resource["type"], param["name"], response.data)


def test_includes_are_advertised(client: FlaskClient) -> None:
    goal = next(
        r
        for r in client.get("/fhir/metadata").get_json()["rest"][0]["resource"]
        if r["type"] == "Goal"
    )
    assert "Goal:subject" in goal["searchInclude"]
    assert "Provenance:target" in goal["searchRevInclude"]


def test_subscription_status_operation_is_declared(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    backport = "http://hl7.org/fhir/uv/subscriptions-backport"
    assert (
        f"{backport}/CapabilityStatement/backport-subscription-server-r4"
        in (statement["instantiates"])
    )
    subscription = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    assert {
        "name": "status",
        "definition": f"{backport}/OperationDefinition/backport-subscription-status",
    } in subscription["operation"]
    # how a client learns what to subscribe to (the Backport IG's R4 server example): the
    # profile a Subscription must meet, and the topic's canonical; it was only in a 422's text
    assert (
        f"{backport}/StructureDefinition/backport-subscription" in subscription["supportedProfile"]
    )
    assert {
        "url": f"{backport}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical",
        "valueCanonical": "http://whatmatters.example/fhir/SubscriptionTopic/what-matters-changed",
    } in subscription["extension"]
