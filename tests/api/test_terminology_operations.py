"""ValueSet/$expand, ValueSet/$validate-code and CodeSystem/$lookup over the terminology held:
valueset-operation-expand.html, valueset-operation-validate-code.html and
codesystem-operation-lookup.html of R4, by GET and by POST with Parameters."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from service.validation.definitions import Definitions
from service.validation.structure import StructureValidator

GENDER = "http://hl7.org/fhir/ValueSet/administrative-gender"
GENDER_CS = "http://hl7.org/fhir/administrative-gender"
AGE_UNITS = "http://hl7.org/fhir/ValueSet/age-units"
UCUM = "http://unitsofmeasure.org"
FHIR_JSON = "application/fhir+json"


def _parameters(*parts: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(parts)}


def _out(body: dict[str, Any]) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k != "name") for p in body["parameter"]}


def test_expand_by_url_lists_every_code(client: FlaskClient) -> None:
    response = client.get(f"/fhir/ValueSet/$expand?url={GENDER}")
    assert response.status_code == 200
    body = response.get_json()
    assert body["resourceType"] == "ValueSet"
    assert body["url"] == GENDER
    expansion = body["expansion"]
    assert expansion["total"] == 4
    codes = {(c["system"], c["code"], c["display"]) for c in expansion["contains"]}
    assert (GENDER_CS, "female", "Female") in codes
    assert {"name": "url", "valueUri": GENDER} in expansion["parameter"]


def test_expand_by_id_and_enumerated_ucum_codes(client: FlaskClient) -> None:
    body = client.get("/fhir/ValueSet/age-units/$expand").get_json()
    assert body["url"] == AGE_UNITS
    assert {c["code"] for c in body["expansion"]["contains"]} == {"min", "h", "d", "wk", "mo", "a"}


def test_expand_filter_count_and_offset(client: FlaskClient) -> None:
    full = client.get(f"/fhir/ValueSet/$expand?url={GENDER}").get_json()["expansion"]
    filtered = client.get(f"/fhir/ValueSet/$expand?url={GENDER}&filter=MAL").get_json()
    assert {c["code"] for c in filtered["expansion"]["contains"]} == {"male", "female"}
    page = client.get(f"/fhir/ValueSet/$expand?url={GENDER}&count=2&offset=1").get_json()
    assert page["expansion"]["total"] == 4
    assert page["expansion"]["offset"] == 1
    assert page["expansion"]["contains"] == full["contains"][1:3]


def test_expand_by_post_with_parameters(client: FlaskClient) -> None:
    body = _parameters({"name": "url", "valueUri": GENDER}, {"name": "count", "valueInteger": 1})
    response = client.post("/fhir/ValueSet/$expand", json=body, content_type=FHIR_JSON)
    assert response.status_code == 200
    assert len(response.get_json()["expansion"]["contains"]) == 1


def test_expand_a_value_set_given_in_the_parameters(client: FlaskClient) -> None:
    inline = {
        "resourceType": "ValueSet",
        "url": "http://example.org/vs",
        "status": "active",
        "compose": {"include": [{"system": GENDER_CS, "concept": [{"code": "other"}]}]},
    }
    body = _parameters({"name": "valueSet", "resource": inline})
    answer = client.post("/fhir/ValueSet/$expand", json=body, content_type=FHIR_JSON).get_json()
    assert answer["expansion"]["contains"] == [
        {"system": GENDER_CS, "code": "other", "display": "Other"}
    ]


def test_expand_errors(client: FlaskClient) -> None:
    missing = client.get("/fhir/ValueSet/$expand")
    assert missing.status_code == 400
    assert missing.get_json()["issue"][0]["expression"] == ["url"]
    unknown = client.get("/fhir/ValueSet/$expand?url=http://example.org/none")
    assert unknown.status_code == 404
    assert unknown.get_json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/ValueSet/no-such-id/$expand").status_code == 404
    bad_count = client.get(f"/fhir/ValueSet/$expand?url={GENDER}&count=many")
    assert bad_count.status_code == 400
    assert bad_count.get_json()["issue"][0]["expression"] == ["count"]
    # SNOMED CT content is not shipped, so neither are the value sets enumerating it
    snomed = client.get("/fhir/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/clinical-findings")
    assert snomed.status_code == 404
    # held, but drawing on a code system not held (every media type of BCP-13)
    mime = client.get("/fhir/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/mimetypes")
    assert mime.status_code == 422
    assert mime.get_json()["issue"][0]["code"] == "not-supported"


def test_validate_code_by_code_and_system(client: FlaskClient) -> None:
    ok = client.get(f"/fhir/ValueSet/$validate-code?url={GENDER}&system={GENDER_CS}&code=male")
    assert ok.status_code == 200
    assert _out(ok.get_json()) == {"result": True, "display": "Male"}
    wrong = client.get(f"/fhir/ValueSet/$validate-code?url={AGE_UNITS}&system={UCUM}&code=m")
    out = _out(wrong.get_json())
    assert out["result"] is False
    assert "age-units" in out["message"]


def test_validate_code_wrong_display_is_true_with_a_message(client: FlaskClient) -> None:
    query = f"url={GENDER}&system={GENDER_CS}&code=male&display=Man"
    out = _out(client.get(f"/fhir/ValueSet/$validate-code?{query}").get_json())
    assert out["result"] is True
    assert "Man" in out["message"]
    assert out["display"] == "Male"


def test_validate_code_at_instance_level_with_a_codeable_concept(client: FlaskClient) -> None:
    concept = {
        "coding": [
            {"system": "http://example.org/local", "code": "x"},
            {"system": UCUM, "code": "d"},
        ]
    }
    body = _parameters({"name": "codeableConcept", "valueCodeableConcept": concept})
    response = client.post(
        "/fhir/ValueSet/age-units/$validate-code", json=body, content_type=FHIR_JSON
    )
    assert response.status_code == 200
    assert _out(response.get_json())["result"] is True
    coding = _parameters(
        {"name": "url", "valueUri": AGE_UNITS},
        {"name": "coding", "valueCoding": {"system": UCUM, "code": "cm"}},
    )
    answer = client.post("/fhir/ValueSet/$validate-code", json=coding, content_type=FHIR_JSON)
    assert _out(answer.get_json())["result"] is False


def test_validate_code_errors(client: FlaskClient) -> None:
    no_code = client.get(f"/fhir/ValueSet/$validate-code?url={GENDER}")
    assert no_code.status_code == 400
    assert no_code.get_json()["issue"][0]["expression"] == ["code"]
    unknown = client.get("/fhir/ValueSet/$validate-code?url=http://example.org/vs&code=a")
    assert unknown.status_code == 404
    not_parameters = client.post(
        "/fhir/ValueSet/$validate-code", json={"resourceType": "Patient"}, content_type=FHIR_JSON
    )
    assert not_parameters.status_code == 400


def test_lookup_gives_name_display_and_designations(client: FlaskClient) -> None:
    response = client.get(f"/fhir/CodeSystem/$lookup?system={GENDER_CS}&code=unknown")
    assert response.status_code == 200
    out = _out(response.get_json())
    assert out["display"] == "Unknown"
    assert out["name"] == "AdministrativeGender"
    assert out["abstract"] is False
    body = _parameters(
        {"name": "coding", "valueCoding": {"system": UCUM, "code": "a"}},
    )
    # UCUM is not held as a code system: its units are enumerated by value sets only
    assert (
        client.post("/fhir/CodeSystem/$lookup", json=body, content_type=FHIR_JSON).status_code
        == 404
    )


def test_lookup_in_a_tho_code_system_with_properties(client: FlaskClient) -> None:
    system = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    response = client.get(f"/fhir/CodeSystem/$lookup?system={system}&code=AMB")
    assert response.status_code == 200
    assert _out(response.get_json())["display"] == "ambulatory"


def test_lookup_errors(client: FlaskClient) -> None:
    assert client.get("/fhir/CodeSystem/$lookup?code=male").status_code == 400
    missing_code = client.get(f"/fhir/CodeSystem/$lookup?system={GENDER_CS}")
    assert missing_code.status_code == 400
    assert missing_code.get_json()["issue"][0]["expression"] == ["code"]
    unknown = client.get(f"/fhir/CodeSystem/$lookup?system={GENDER_CS}&code=nope")
    assert unknown.status_code == 404
    assert unknown.get_json()["issue"][0]["expression"] == ["code"]
    not_held = client.get("/fhir/CodeSystem/$lookup?system=http://snomed.info/sct&code=22298006")
    assert not_held.status_code == 404


def test_capability_statement_lists_the_terminology_operations(client: FlaskClient) -> None:
    rest = client.get("/fhir/metadata").get_json()["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    value_set_ops = {o["name"]: o["definition"] for o in by_type["ValueSet"]["operation"]}
    assert value_set_ops == {
        "expand": "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
        "validate-code": "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
    }
    assert [o["name"] for o in by_type["CodeSystem"]["operation"]] == ["lookup"]
    assert "operation" not in by_type["StructureDefinition"]


def test_metadata_in_terminology_mode_is_terminology_capabilities(client: FlaskClient) -> None:
    """http.html#capabilities: ``mode=terminology`` asks for a TerminologyCapabilities. A
    terminology client got the CapabilityStatement (which it would read as the wrong resource);
    now it gets the code systems $lookup and $validate-code answer for, valid against R4, and
    an unknown mode is a 400."""
    response = client.get("/fhir/metadata?mode=terminology")
    assert response.status_code == 200
    capabilities = response.get_json()
    assert capabilities["resourceType"] == "TerminologyCapabilities"
    assert capabilities["kind"] == "instance"
    uris = {entry["uri"] for entry in capabilities["codeSystem"]}
    assert "http://hl7.org/fhir/administrative-gender" in uris
    structure = StructureValidator(Definitions.shared(), invariants=True)
    errors = [i for i in structure.validate(capabilities) if i.severity in ("error", "fatal")]
    assert errors == []
    assert client.get("/fhir/metadata?mode=full").get_json()["resourceType"] == (
        "CapabilityStatement"
    )
    assert client.get("/fhir/metadata?mode=everything").status_code == 400
