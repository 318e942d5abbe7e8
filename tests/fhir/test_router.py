"""The route table on its own (service/fhir/router.py): every route with its interaction, the
paths real clients send, 404 and 405 as the REST API gives them, Bundle entries routed by the
same table, and the CapabilityStatement listing exactly what routes (R4 http.html,
capabilitystatement.html, operations.html)."""

from __future__ import annotations

from typing import Any

import pytest

from service.errors import MethodNotAllowed, NotFound
from service.fhir import router
from service.fhir.bundles import process_bundle
from service.fhir.capability import capability_statement
from service.fhir.conformance_resources import CONFORMANCE_TYPES
from service.fhir.interactions import FhirService
from service.fhir.router import ROUTES, FhirRequest, Headers, match
from tests.builders import BASE, patient
from tests.fhir.conftest import body

# every route: methods, pattern, interaction, level, handler, operation
EVERY_ROUTE = [
    (("GET",), "metadata", "capabilities", "system", "capabilities", None),
    (("POST",), "", "transaction", "system", "transaction", None),
    (("GET",), "_history", "history-system", "system", "history_system", None),
    (("POST",), "$ingest", "operation", "system", "ingest", "ingest"),
    (("GET", "POST"), "$export", "operation", "system", "export", "export"),
    (("GET",), "{type}", "search-type", "type", "search_type", None),
    (("GET", "POST"), "{type}/_search", "search-type", "type", "search_type", None),
    (("POST",), "{type}", "create", "type", "create", None),
    (("PUT",), "{type}", "update", "type", "conditional_update", None),
    (("PATCH",), "{type}", "patch", "type", "conditional_patch", None),
    (("DELETE",), "{type}", "delete", "type", "conditional_delete", None),
    (("GET",), "{type}/_history", "history-type", "type", "history_type", None),
    (("POST",), "{type}/$validate", "operation", "type", "validate", "validate"),
    (("GET",), "{type}/{id}", "read", "instance", "read", None),
    (("PUT",), "{type}/{id}", "update", "instance", "update", None),
    (("PATCH",), "{type}/{id}", "patch", "instance", "patch", None),
    (("DELETE",), "{type}/{id}", "delete", "instance", "delete", None),
    (("GET",), "{type}/{id}/_history", "history-instance", "instance", "history_instance", None),
    (("GET",), "{type}/{id}/_history/{vid}", "vread", "instance", "vread", None),
    (("POST",), "{type}/{id}/$validate", "operation", "instance", "validate", "validate"),
    (
        ("POST",),
        "Patient/$record-what-matters",
        "operation",
        "type",
        "record_what_matters",
        "record-what-matters",
    ),
    (
        ("POST",),
        "Patient/{id}/$record-what-matters",
        "operation",
        "instance",
        "record_what_matters",
        "record-what-matters",
    ),
    (
        ("GET", "POST"),
        "Patient/{id}/$what-matters",
        "operation",
        "instance",
        "what_matters",
        "what-matters",
    ),
    (("GET", "POST"), "ValueSet/$expand", "operation", "type", "terminology", "expand"),
    (("GET", "POST"), "ValueSet/{id}/$expand", "operation", "instance", "terminology", "expand"),
    (
        ("GET", "POST"),
        "ValueSet/$validate-code",
        "operation",
        "type",
        "terminology",
        "validate-code",
    ),
    (
        ("GET", "POST"),
        "ValueSet/{id}/$validate-code",
        "operation",
        "instance",
        "terminology",
        "validate-code",
    ),
    (("GET", "POST"), "CodeSystem/$lookup", "operation", "type", "terminology", "lookup"),
    (
        ("GET",),
        "Patient/$summary",
        "operation",
        "type",
        "summary_by_identifier",
        "summary",
    ),
    (("GET",), "Patient/{id}/$summary", "operation", "instance", "summary", "summary"),
    (("GET",), "Patient/{id}/{member}", "search-type", "instance", "search_compartment", None),
    (("GET", "POST"), "Patient/$export", "operation", "type", "export", "export"),
    (("GET",), "Group/{id}/$export", "operation", "instance", "export", "export"),
    (
        ("GET", "POST"),
        "Measure/{id}/$evaluate-measure",
        "operation",
        "instance",
        "evaluate_measure",
        "evaluate-measure",
    ),
    (
        ("GET", "POST"),
        "Subscription/{id}/$status",
        "operation",
        "instance",
        "subscription_status",
        "status",
    ),
]


def test_every_route_with_its_interaction() -> None:
    listed = [
        (r.methods, r.pattern, r.interaction, r.level, r.handler, r.operation) for r in ROUTES
    ]
    assert listed == EVERY_ROUTE


def test_no_two_routes_answer_the_same_method_on_the_same_shape() -> None:
    """A path and a method pick one route: two routes of the same shape (literal segments in
    the same places) never share a method."""
    seen: dict[tuple[tuple[str, ...], str], str] = {}
    for route in ROUTES:
        shape = tuple(p if not p.startswith("{") else "{}" for p in route.segments)
        for method in route.methods:
            assert (shape, method) not in seen, (route.pattern, seen[(shape, method)])
            seen[(shape, method)] = route.pattern


# what clients send (paths relative to the base, as in http.html), and what each one is
CLIENT_REQUESTS = [
    ("GET", "metadata", "capabilities", {}),
    ("POST", "", "transaction", {}),
    ("GET", "_history", "history-system", {}),
    ("POST", "$ingest", "operation", {}),
    ("GET", "Goal", "search-type", {"type": "Goal"}),
    ("HEAD", "Goal", "search-type", {"type": "Goal"}),
    ("GET", "Goal/_search", "search-type", {"type": "Goal"}),
    ("POST", "Goal/_search", "search-type", {"type": "Goal"}),
    ("POST", "Goal", "create", {"type": "Goal"}),
    ("PUT", "Patient", "update", {"type": "Patient"}),  # ?identifier=... conditional update
    ("PATCH", "Patient", "patch", {"type": "Patient"}),
    ("DELETE", "Patient", "delete", {"type": "Patient"}),
    ("GET", "Goal/_history", "history-type", {"type": "Goal"}),
    ("POST", "Goal/$validate", "operation", {"type": "Goal"}),
    ("GET", "Patient/9000000009", "read", {"type": "Patient", "id": "9000000009"}),
    ("HEAD", "Patient/p1", "read", {"type": "Patient", "id": "p1"}),
    ("PUT", "Patient/p1", "update", {"type": "Patient", "id": "p1"}),
    ("PATCH", "Goal/g-1", "patch", {"type": "Goal", "id": "g-1"}),
    ("DELETE", "Goal/g.1", "delete", {"type": "Goal", "id": "g.1"}),
    ("GET", "Goal/g1/_history", "history-instance", {"type": "Goal", "id": "g1"}),
    ("GET", "Goal/g1/_history/2", "vread", {"type": "Goal", "id": "g1", "vid": "2"}),
    ("POST", "Goal/g1/$validate", "operation", {"type": "Goal", "id": "g1"}),
    ("POST", "Patient/$record-what-matters", "operation", {}),
    ("POST", "Patient/p1/$record-what-matters", "operation", {"id": "p1"}),
    ("GET", "Patient/p1/$what-matters", "operation", {"id": "p1"}),
    ("POST", "Patient/p1/$what-matters", "operation", {"id": "p1"}),
    ("GET", "Subscription/s1/$status", "operation", {"id": "s1"}),
    ("GET", "ValueSet/$expand", "operation", {}),
    ("POST", "ValueSet/age-units/$expand", "operation", {"id": "age-units"}),
    ("GET", "ValueSet/$validate-code", "operation", {}),
    ("POST", "ValueSet/vs1/$validate-code", "operation", {"id": "vs1"}),
    ("GET", "CodeSystem/$lookup", "operation", {}),
    ("GET", "$export", "operation", {}),
    ("GET", "Patient/$export", "operation", {}),
    ("POST", "$export", "operation", {}),
    ("POST", "Patient/$export", "operation", {}),
    ("GET", "Group/g1/$export", "operation", {"id": "g1"}),
    # a literal segment wins, but a route that does not take the method gives way to one
    # that does (the type and id are then checked by the FHIR core, as before)
    ("POST", "metadata", "create", {"type": "metadata"}),
    ("PUT", "Patient/_history", "update", {"type": "Patient", "id": "_history"}),
    ("GET", "Patient/$validate", "read", {"type": "Patient", "id": "$validate"}),
    ("GET", "Patient/_search/_history", "history-instance", {"type": "Patient", "id": "_search"}),
    (
        "GET",
        ".well-known/smart-configuration",
        "read",
        {"type": ".well-known", "id": "smart-configuration"},
    ),
]


@pytest.mark.parametrize(("method", "path", "interaction", "params"), CLIENT_REQUESTS)
def test_what_a_client_sends_is_routed(
    method: str, path: str, interaction: str, params: dict[str, str]
) -> None:
    found = match(method, path)
    assert (found.interaction, dict(found.params)) == (interaction, params)


def test_a_path_no_route_fits_is_404() -> None:
    for path in (
        "Patient/p1/_history/1/extra",
        "Patient/",  # a trailing slash is another path
        "Patient/p1/_search",
        "Patient/_history/1",
        "a/b/c/d/e",
        "Patient//p1",
    ):
        with pytest.raises(NotFound) as raised:
            match("GET", path, shown=f"/fhir/{path}")
        assert raised.value.diagnostics == f"There is nothing at /fhir/{path}"


def test_a_method_no_route_of_the_path_takes_is_405_with_allow() -> None:
    with pytest.raises(MethodNotAllowed) as raised:
        match("POST", "Patient/p1/_history/1", shown="/fhir/Patient/p1/_history/1")
    assert raised.value.status == 405
    assert raised.value.diagnostics == "POST is not allowed on /fhir/Patient/p1/_history/1"
    assert raised.value.headers["Allow"] == "GET, HEAD, OPTIONS"
    with pytest.raises(MethodNotAllowed) as raised:
        match("GET", "")  # the base takes Bundles only
    assert raised.value.headers["Allow"] == "OPTIONS, POST"
    with pytest.raises(MethodNotAllowed) as raised:
        match("POST", "Patient/p1")
    assert raised.value.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PATCH, PUT"
    with pytest.raises(MethodNotAllowed):
        match("PATCH", "Patient/p1/$what-matters")


def test_allowed_methods_are_what_options_answers() -> None:
    assert router.allowed_methods("Patient") == [
        "DELETE",
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
        "POST",
        "PUT",
    ]
    assert router.allowed_methods("Patient/p1/$validate") == ["OPTIONS", "POST"]
    assert router.allowed_methods("Patient/p1/_history/1/extra") == []


def test_a_bundle_is_a_batch_or_a_transaction_by_its_type() -> None:
    base = match("POST", "")
    assert router.interaction_of(base, {"resourceType": "Bundle", "type": "batch"}) == "batch"
    assert router.interaction_of(base, {"resourceType": "Bundle", "type": "transaction"}) == (
        "transaction"
    )
    assert router.interaction_of(base, None) == "transaction"  # not read (yet): a transaction
    assert router.interaction_of(match("GET", "Goal/g1"), "batch") == "read"
    assert router.interaction_of(None) == "operation"


def test_a_fhir_request_is_plain_data() -> None:
    req = FhirRequest(
        "GET",
        "Goal",
        query=(("patient", "Patient/p1"), ("_count", "5"), ("patient", "Patient/p2")),
        headers=Headers([("Prefer", "handling=strict"), ("Accept", "application/fhir+json")]),
        query_string="patient=Patient/p1&_count=5&patient=Patient/p2",
    )
    assert req.args("patient") == ["Patient/p1", "Patient/p2"]
    assert req.headers.get("prefer") == "handling=strict"
    assert req.headers["ACCEPT"] == "application/fhir+json"
    assert "If-Match" not in req.headers
    assert req.body is None


# -- Bundle entries go through the same table ---------------------------------------------------


def test_batch_entries_are_routed_like_requests(fhir: FhirService) -> None:
    """http.html#transaction: each entry's request.url is relative to the base (or absolute
    under it); what it may be is the table's Bundle routes."""
    fhir.update("Patient", "p1", patient(id="p1"))
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "GET", "url": f"{BASE}/Patient/p1/_history/1"}},
            {"request": {"method": "GET", "url": "Patient?_id=p1"}},
            {"request": {"method": "GET", "url": "Patient/p1/_history"}},
            {"request": {"method": "GET", "url": "Patient/p1/$what-matters"}},
            {"request": {"method": "POST", "url": "Patient/p1"}, "resource": patient()},
            {"request": {"method": "GET", "url": "metadata"}},
            {"request": {"method": "DELETE", "url": "Patient/p1/_history/1"}},
        ],
    }
    entries = body(process_bundle(fhir, fhir.actor, batch, BASE))["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses[:4] == ["200 OK"] * 4
    assert statuses[4:] == [
        "400 Bad Request",
        "400 Bad Request",
        "400 Bad Request",
        "400 Bad Request",
    ]
    said = [e["response"].get("outcome", {}).get("issue", [{}])[0] for e in entries]
    assert said[4]["diagnostics"] == (
        "Bundle.entry[4]: request.url 'Patient/p1/$what-matters' is not understood"
    )
    assert said[4]["expression"] == ["Bundle.entry[4]"]
    assert said[5]["diagnostics"] == (
        "Bundle.entry[5]: POST creates at the type URL, e.g. 'Patient'"
    )
    assert "GET [base]/metadata reads it" in said[6]["diagnostics"]  # not a resource type
    assert said[7]["diagnostics"] == (
        "Bundle.entry[7]: DELETE is not allowed on 'Patient/p1/_history/1'"
    )


# -- the CapabilityStatement lists what routes ----------------------------------------------------


def _statement(fhir: FhirService) -> dict[str, Any]:
    return capability_statement(BASE, "2026-01-01", fhir.search_params)


def test_the_capability_statement_lists_the_interactions_that_route(fhir: FhirService) -> None:
    rest = _statement(fhir)["rest"][0]
    routed = {r.interaction for r in ROUTES if r.level != "system"}
    for resource in rest["resource"]:
        codes = [i["code"] for i in resource["interaction"]]
        if resource["type"] in CONFORMANCE_TYPES:
            assert codes == ["read", "search-type"]  # the profiles folder: read-only
            continue
        assert set(codes) == routed - {"operation"}
        assert codes == router.type_interactions(resource["type"])
    system = {r.interaction for r in ROUTES if r.level == "system"}
    codes = [i["code"] for i in rest["interaction"]]
    # a POST to the base is a transaction or a batch; metadata is not a listed interaction
    assert set(codes) == (system | {"batch"}) - {"capabilities", "operation"}
    assert codes == ["transaction", "batch", "history-system"]


def test_the_capability_statement_lists_the_operations_that_route(fhir: FhirService) -> None:
    resources = {r["type"]: r for r in _statement(fhir)["rest"][0]["resource"]}
    for type_, resource in resources.items():
        listed = {o["name"] for o in resource.get("operation", [])}
        # the read-only conformance types list only their own operations: the generic
        # $validate routes for them too, but answers 405 (they are not written here)
        of_type = (type_,) if type_ in CONFORMANCE_TYPES else (None, type_)
        routed = {
            r.operation
            for r in ROUTES
            if r.operation and r.definition and r.resource_type in of_type and r.level != "system"
        }
        if "operation" in resource:
            assert listed == routed, type_
    assert [o["name"] for o in resources["Patient"]["operation"]] == [
        "validate",
        "record-what-matters",
        "what-matters",
        "summary",
        "export",
    ]
    assert [o["name"] for o in resources["Subscription"]["operation"]] == ["validate", "status"]
    assert [o["name"] for o in resources["Goal"]["operation"]] == ["validate"]
    assert [o["name"] for o in resources["ValueSet"]["operation"]] == ["expand", "validate-code"]
    assert [o["name"] for o in resources["CodeSystem"]["operation"]] == ["lookup"]
    # $ingest routes but has no OperationDefinition to point to: it is not listed; the
    # system-level Bulk Data $export is
    assert [o["name"] for o in _statement(fhir)["rest"][0]["operation"]] == ["export"]
