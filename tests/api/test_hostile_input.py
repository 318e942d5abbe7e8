"""Odd and hostile input gets a clear 4xx OperationOutcome, never a 500, a hang or a search
that silently widens (https://hl7.org/fhir/R4/search.html#errors)."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.builders import FHIR_JSON, goal, observation, outcome_issues, patient

JSON = {"Content-Type": FHIR_JSON}
NHS = "https://fhir.nhs.uk/Id/nhs-number"


@pytest.mark.parametrize(
    "query",
    [
        "Observation?value-quantity=1e999999999",
        "Observation?value-quantity=1e400",
        "List?entry-count=9e99999",
        "Patient?birthdate=2024-02-30",
        "Patient?birthdate=soon",
        "Patient?gender:in=http://example.org/vs",
        "Patient?family:below=x",
        "Patient?identifier=a|b|c",
        "Observation?code-value-quantity=nodollar",
        "Patient?_count=many",
        "Patient?_count=-1",
        "Patient?_summary=maybe",
        "Patient?gender=" + ",".join(["female"] * 101),
        "Patient?family=" + "x" * 1001,
        "Patient?family=a%00b",
    ],
)
def test_malformed_value_or_unsupported_modifier_is_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/fhir/{query}")
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    assert outcome_issues(response)[0]["severity"] == "error"


def test_stray_comma_does_not_widen_a_search(client: FlaskClient) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON)
    client.put(
        "/fhir/Goal/g2", json=goal(id="g2", subject={"reference": "Patient/p2"}), headers=JSON
    )
    bundle = client.get("/fhir/Goal?patient=Patient/p1,").get_json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["g1"]


def test_open_ended_dates_at_the_end_of_the_calendar(client: FlaskClient) -> None:
    sent = goal(id="g9", target=[{"dueDate": "9999-12-31"}])
    assert client.put("/fhir/Goal/g9", json=sent, headers=JSON).status_code == 201
    found = client.get("/fhir/Goal?target-date=9999-12-31").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["g9"]
    assert client.get("/fhir/Goal?target-date=gt9999-12").status_code == 200


def test_control_characters_in_strings_are_refused(client: FlaskClient) -> None:
    response = client.post(
        "/fhir/Observation", json=observation(valueString="a\u0000b"), headers=JSON
    )
    assert response.status_code == 400
    assert outcome_issues(response)[0]["expression"] == ["Observation.valueString"]
    # other control characters are discouraged (SHOULD NOT), not forbidden: a warning only
    tolerated = client.post(
        "/fhir/Observation", json=observation(valueString="bell\u0007"), headers=JSON
    )
    assert tolerated.status_code == 201
    ok = client.post(
        "/fhir/Observation", json=observation(valueString="line one\nline\ttwo"), headers=JSON
    )
    assert ok.status_code == 201


@pytest.mark.parametrize(
    "path", ["/fhir/Goal/g1/_history/\u00b2", "/fhir/Goal/g1/_history/99999999999999999999999"]
)
def test_odd_version_numbers_are_404(client: FlaskClient, path: str) -> None:
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers=JSON)
    assert client.get(path).status_code == 404


def test_history_page_token_must_be_a_number(client: FlaskClient) -> None:
    assert client.get("/fhir/_history?_page=\u00b2").status_code == 400


def test_an_error_echoing_marker_like_text_is_still_valid_json(client: FlaskClient) -> None:
    # a parameter name that looks like the decimal placeholder the writer uses internally
    response = client.get("/fhir/Patient?%00%23e%00=x", headers={"Prefer": "handling=strict"})
    assert response.status_code == 400
    outcome_issues(response)  # parses as JSON


def test_conditional_criteria_that_are_not_utf8_are_400(client: FlaskClient) -> None:
    # WSGI carries the query string as latin-1 text: "\xff" is the byte 0xFF on the wire
    raw = client.open(
        "/fhir/Patient", method="DELETE", environ_overrides={"QUERY_STRING": "identifier=\xff"}
    )
    assert raw.status_code == 400
    outcome_issues(raw)


def test_question_mark_inside_a_criteria_value(client: FlaskClient) -> None:
    odd = [{"system": "http://example.org/?a", "value": "1"}]
    client.post("/fhir/Patient", json=patient(identifier=odd), headers=JSON)
    response = client.post(
        "/fhir/Patient",
        json=patient(identifier=odd),
        headers={**JSON, "If-None-Exist": "identifier=http://example.org/?a|1"},
    )
    assert response.status_code == 200


def test_search_by_versioned_canonical(client: FlaskClient) -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr1",
        "status": "completed",
        "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty|2.0",
    }
    client.put("/fhir/QuestionnaireResponse/qr1", json=response, headers=JSON)
    url = "http://whatmatters.example/fhir/Questionnaire/wmty"
    for value in (url, url + "|2.0"):
        bundle = client.get(f"/fhir/QuestionnaireResponse?questionnaire={value}").get_json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == ["qr1"]
    # search.html#versions: a version asked for matches that version only
    other = {**response, "id": "qr2", "questionnaire": url + "|3.0"}
    client.put("/fhir/QuestionnaireResponse/qr2", json=other, headers=JSON)
    unversioned = {**response, "id": "qr3", "questionnaire": url, "status": "in-progress"}
    stored = client.put("/fhir/QuestionnaireResponse/qr3", json=unversioned, headers=JSON)
    assert stored.status_code == 201, stored.get_data(as_text=True)
    expected = {url: ["qr1", "qr2", "qr3"], url + "|2.0": ["qr1"], url + "|3.0": ["qr2"]}
    for value, ids in expected.items():
        bundle = client.get(f"/fhir/QuestionnaireResponse?questionnaire={value}").get_json()
        assert sorted(e["resource"]["id"] for e in bundle.get("entry", [])) == ids, value


def test_uri_below_is_case_sensitive(client: FlaskClient) -> None:
    q = {
        "resourceType": "Questionnaire",
        "id": "q1",
        "status": "active",
        "url": "http://example.org/fhir/Q/one",
    }
    client.put("/fhir/Questionnaire/q1", json=q, headers=JSON)
    found = client.get("/fhir/Questionnaire?url:below=http://example.org/fhir").get_json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["q1"]
    other = client.get("/fhir/Questionnaire?url:below=http://EXAMPLE.org/fhir").get_json()
    assert "entry" not in other


def test_offset_without_a_token_pages(client: FlaskClient) -> None:
    for n in range(5):
        # each Patient its own number: no two Patients share an NHS number
        mrn = [{"system": "https://hospital.example/Id/mrn", "value": f"p{n}"}]
        client.put(f"/fhir/Patient/p{n}", json=patient(id=f"p{n}", identifier=mrn), headers=JSON)
    bundle = client.get("/fhir/Patient?_count=2&_offset=2").get_json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["p2", "p3"]
    relations = {link["relation"] for link in bundle["link"]}
    assert relations == {"self", "next", "previous"}


def test_batch_with_entry_that_is_not_an_array_is_400(client: FlaskClient) -> None:
    for entry in (None, 5, "x"):
        response = client.post(
            "/fhir", json={"resourceType": "Bundle", "type": "batch", "entry": entry}, headers=JSON
        )
        assert response.status_code == 400
        outcome_issues(response)


def test_transaction_conditional_update_does_not_overwrite_an_unrelated_id(
    client: FlaskClient,
) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": patient(
                    id="p1", identifier=[{"system": NHS, "value": "new"}], gender="male"
                ),
                "request": {"method": "PUT", "url": f"Patient?identifier={NHS}|new"},
            }
        ],
    }
    response = client.post("/fhir", json=bundle, headers=JSON)
    assert response.status_code == 409
    assert client.get("/fhir/Patient/p1").get_json()["gender"] == "female"


def test_transaction_with_two_identical_conditional_creates_makes_one(
    client: FlaskClient,
) -> None:
    criteria = f"identifier={NHS}|twice"
    body = patient(identifier=[{"system": NHS, "value": "twice"}])
    first, second = (
        "urn:uuid:11111111-1111-4111-8111-111111111111",
        "urn:uuid:22222222-2222-4222-8222-222222222222",
    )
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": first,
                "resource": body,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria},
            },
            {
                "fullUrl": second,
                "resource": body,
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria},
            },
            {
                "resource": goal(subject={"reference": second}),
                "request": {"method": "POST", "url": "Goal"},
            },
        ],
    }
    response = client.post("/fhir", json=bundle, headers=JSON)
    assert response.status_code == 200, response.get_data(as_text=True)
    statuses = [e["response"]["status"] for e in response.get_json()["entry"]]
    assert statuses[:2] == ["201 Created", "200 OK"]
    found = client.get(f"/fhir/Patient?{criteria}&_total=accurate").get_json()
    assert found["total"] == 1
    patient_id = found["entry"][0]["resource"]["id"]
    goals = client.get(f"/fhir/Goal?subject=Patient/{patient_id}").get_json()
    assert len(goals["entry"]) == 1


def test_reference_with_a_very_long_id_is_stored(client: FlaskClient) -> None:
    long_ref = "Patient/" + "x" * 200
    response = client.post("/fhir/Goal", json=goal(subject={"reference": long_ref}), headers=JSON)
    assert response.status_code == 201
    found = client.get(f"/fhir/Goal?subject={long_ref}").get_json()
    assert len(found.get("entry", [])) == 1


# A JSON string may spell a UTF-16 surrogate as an escape (RFC 8259 section 7); alone, one is
# no Unicode character (RFC 8259 section 8.2) and has no UTF-8 form, which FHIR JSON requires
# (https://hl7.org/fhir/R4/json.html): the request is refused where the escape stands.
@pytest.mark.parametrize(
    ("path", "method", "body", "where"),
    [
        (
            "/fhir/Goal",
            "POST",
            '{"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text":'
            ' "walk"}, "subject": {"reference": "Patient/p1"}, "note": [{"text": "\\ud800"}]}',
            "Goal.note[0].text",
        ),
        (
            "/fhir/Patient/p1",
            "PUT",
            '{"resourceType": "Patient", "id": "p1", "name": [{"family": "Sm\\uDFFFith"}]}',
            "Patient.name[0].family",
        ),
        (
            "/fhir",
            "POST",
            '{"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET",'
            ' "url": "Goal?identifier=\\ud800"}}]}',
            "Bundle.entry[0].request.url",
        ),
        (
            "/fhir/Patient/p1",
            "PUT",
            '{"resourceType": "Patient", "id": "p1", "extension": [{"url": "http://example.org",'
            ' "valueString": "x"}], "\\ud83d": 1}',
            "Patient",
        ),
    ],
)
def test_a_lone_surrogate_escape_is_400_at_its_place(
    client: FlaskClient, path: str, method: str, body: str, where: str
) -> None:
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON)
    response = client.open(path, method=method, data=body.encode("ascii"), headers=JSON)
    assert response.status_code == 400, response.get_data(as_text=True)[:300]
    issue = outcome_issues(response)[0]
    assert "surrogate" in issue["diagnostics"]
    assert issue["expression"] == [where]


def test_a_surrogate_pair_escape_is_the_character_it_spells(client: FlaskClient) -> None:
    body = goal(subject={"reference": "Patient/p1"})
    body["note"] = [{"text": "PLACEHOLDER"}]
    text = client.application.json.dumps(body).replace("PLACEHOLDER", "\\ud83d\\ude00 walk")
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers=JSON)
    created = client.post("/fhir/Goal", data=text.encode("ascii"), headers=JSON)
    assert created.status_code == 201, created.get_data(as_text=True)[:300]
    assert created.get_json()["note"][0]["text"] == "\U0001f600 walk"
    read = client.get(f"/fhir/Goal/{created.get_json()['id']}")
    assert read.get_json()["note"][0]["text"] == "\U0001f600 walk"


SCRIPTED = [
    '<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:steal()">GP letter</a></div>',
    '<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="steal()">Walking Bramble</p></div>',
]


@pytest.mark.parametrize("div", SCRIPTED, ids=["script", "javascript-url", "event-attribute"])
def test_a_narrative_with_a_script_is_refused_on_write_as_in_validate(
    client: FlaskClient, div: str
) -> None:
    """Another system's Patient whose narrative carries a script (R4 narrative.html, txt-1;
    security.html#narrative): $validate reported it, but the create stored it (201), ready to run
    in the next reader that shows narrative. Now the write is refused at Patient.text.div, and
    in a transaction too; a plain narrative is still taken."""
    body = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    created = client.post("/fhir/Patient", json=body, headers=JSON)
    # 400: a base rule of the R4 definitions, not a profile (http.html, create)
    assert created.status_code == 400, created.get_data(as_text=True)[:300]
    issue = outcome_issues(created)[0]
    assert issue["code"] == "invariant"
    assert "txt-1" in issue["diagnostics"]
    assert issue["expression"] == ["Patient.text.div"]
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": body, "request": {"method": "POST", "url": "Patient"}}],
    }
    assert client.post("/fhir", json=bundle, headers=JSON).status_code in (400, 422)
    assert client.get("/fhir/Patient?_summary=count").get_json()["total"] == 0
    plain = '<div xmlns="http://www.w3.org/1999/xhtml"><p><b>Eluned</b> Jones</p></div>'
    body["text"]["div"] = plain
    assert client.post("/fhir/Patient", json=body, headers=JSON).status_code == 201


XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'
MALFORMED = [
    "<div>no namespace</div>",
    f"<div {XHTML}><p>unclosed</div>",
    f"<div {XHTML}>a & b < c</div>",
    f"<div {XHTML}><b><i>x</b></i></div>",
    f"<div {XHTML}><br>x</div>",
    f'<div {XHTML}><p class="a" class="b">twice</p></div>',
    f"<div {XHTML}>one</div><div {XHTML}>two</div>",
    f'<!DOCTYPE div [<!ENTITY e "x">]><div {XHTML}>&e;</div>',
]


@pytest.mark.parametrize("div", MALFORMED)
def test_a_narrative_that_is_not_well_formed_xhtml_is_refused(
    client: FlaskClient, div: str
) -> None:
    """R4 narrative.html#xhtml: Narrative.div is a well-formed XHTML fragment, one <div> in the
    XHTML namespace. Another system's narrative with a bare '&', an unclosed tag or no
    namespace was reported valid by $validate and stored; readers that parse it as XML fail."""
    body = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    checked = client.post("/fhir/Patient/$validate", json=body, headers=JSON)
    errors = [i for i in outcome_issues(checked) if i["severity"] == "error"]
    assert [i["expression"] for i in errors] == [["Patient.text.div"]], errors
    created = client.post("/fhir/Patient", json=body, headers=JSON)
    assert created.status_code == 400, created.get_data(as_text=True)[:300]
    assert outcome_issues(created)[0]["expression"] == ["Patient.text.div"]


def test_html_named_entities_and_xml_forms_in_a_narrative_are_taken(client: FlaskClient) -> None:
    # what the HL7 reference validator takes: HTML's named entities (&nbsp;), numeric ones,
    # self-closed <br/>, xml:lang, whitespace around the div
    for div in (
        f"<div {XHTML}><p>Mrs&nbsp;Jones &amp; her daughter &#8212; &eacute;</p><br/></div>",
        f"\n  <div {XHTML}><p>x</p></div>\n",
        f'<div {XHTML} xml:lang="cy" lang="cy"><p>Croeso</p></div>',
    ):
        body = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
        created = client.post("/fhir/Patient", json=body, headers=JSON)
        assert created.status_code == 201, (div, created.get_data(as_text=True)[:300])


CONDITION = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"}}


@pytest.mark.parametrize(
    ("changes", "rule", "where"),
    [
        # a contained resource nothing refers to (dom-3)
        ({"contained": [CONDITION]}, "dom-3", "Goal.contained[0]"),
        # a local reference with no contained resource of that id (ref-1)
        ({"addresses": [{"reference": "#c2"}]}, "ref-1", "Goal.addresses[0]"),
        (
            {"contained": [CONDITION], "addresses": [{"reference": "#c1"}, {"reference": "#x"}]},
            "ref-1",
            "Goal.addresses[1]",
        ),
        # a contained resource without an id cannot be referred to (dom-3)
        (
            {"contained": [{k: v for k, v in CONDITION.items() if k != "id"}]},
            "dom-3",
            "Goal.contained[0]",
        ),
    ],
)
def test_contained_resources_and_local_references_must_meet(
    client: FlaskClient, changes: dict[str, Any], rule: str, where: str
) -> None:
    """R4 dom-3: a contained resource is referred to from elsewhere in the resource (or refers
    to its container); ref-1: a local reference (#id) names a contained resource. Both were
    left unevaluated, so another system's Goal with an orphan or a dangling #reference was
    valid and stored; the HL7 reference validator refuses both."""
    body = goal(**changes)
    checked = client.post("/fhir/Goal/$validate", json=body, headers=JSON)
    errors = [i for i in outcome_issues(checked) if i["severity"] == "error"]
    assert [(rule in i["diagnostics"], i["expression"]) for i in errors] == [(True, [where])]
    created = client.post("/fhir/Goal", json=body, headers=JSON)
    assert created.status_code == 400, created.get_data(as_text=True)[:300]


def test_a_contained_resource_referred_to_or_referring_to_its_container_is_taken(
    client: FlaskClient,
) -> None:
    referred = goal(contained=[CONDITION], addresses=[{"reference": "#c1"}])
    assert client.post("/fhir/Goal", json=referred, headers=JSON).status_code == 201
    # a contained Provenance pointing back at its container with "#" (dom-3's other way)
    back = {
        "resourceType": "Provenance",
        "id": "pv",
        "target": [{"reference": "#"}],
        "recorded": "2026-12-01T09:00:00Z",
        "agent": [{"who": {"display": "Nurse"}}],
    }
    pointing = goal(contained=[back])
    assert client.post("/fhir/Goal", json=pointing, headers=JSON).status_code == 201


def _condition_with_age(age: dict[str, Any]) -> dict[str, Any]:
    condition = {**CONDITION, "onsetAge": age}
    return goal(contained=[condition], addresses=[{"reference": "#c1"}])


QUESTION = {"linkId": "1", "type": "string", "text": "Anything else?"}


@pytest.mark.parametrize(
    ("type_", "resource", "words", "where"),
    [
        # age-1: a value needs a code; UCUM only; a positive value
        ("Goal", _condition_with_age({"value": 5}), "age-1", "Goal.contained[0].onsetAge"),
        (
            "Goal",
            _condition_with_age({"value": 5, "system": "http://snomed.info/sct", "code": "a"}),
            "age-1",
            "Goal.contained[0].onsetAge",
        ),
        (
            "Goal",
            _condition_with_age({"value": -1, "system": "http://unitsofmeasure.org", "code": "a"}),
            "age-1",
            "Goal.contained[0].onsetAge",
        ),
        # que-7: operator exists answers true or false
        (
            "Questionnaire",
            {
                "resourceType": "Questionnaire",
                "status": "active",
                "item": [
                    QUESTION,
                    {
                        **QUESTION,
                        "linkId": "2",
                        "enableWhen": [
                            {"question": "1", "operator": "exists", "answerString": "x"}
                        ],
                    },
                ],
            },
            "que-7",
            "Questionnaire.item[1].enableWhen[0]",
        ),
        # ele-1: an id alone is neither a value nor a child
        (
            "Patient",
            {"resourceType": "Patient", "name": [{"id": "x"}]},
            "value or children",
            "Patient.name[0]",
        ),
        # json.html: a null in a primitive array stands beside its _name companion only
        (
            "Patient",
            {"resourceType": "Patient", "name": [{"given": ["A", None]}]},
            "null",
            "Patient.name[0].given[1]",
        ),
    ],
)
def test_rules_the_reference_validator_applies_are_applied(
    client: FlaskClient, type_: str, resource: dict[str, Any], words: str, where: str
) -> None:
    checked = client.post(f"/fhir/{type_}/$validate", json=resource, headers=JSON)
    errors = [i for i in outcome_issues(checked) if i["severity"] == "error"]
    assert [(words in i["diagnostics"], i["expression"]) for i in errors] == [(True, [where])]


def test_a_primitive_whose_companion_holds_only_an_id_is_taken(client: FlaskClient) -> None:
    # json.html: the _name companion carries the primitive's id; the value is the primitive's
    for body in (
        {"resourceType": "Patient", "birthDate": "1970-01-01", "_birthDate": {"id": "bd1"}},
        {"resourceType": "Patient", "name": [{"given": ["A"], "_given": [{"id": "g1"}]}]},
    ):
        assert client.post("/fhir/Patient", json=body, headers=JSON).status_code == 201


def test_a_null_beside_its_extension_and_a_good_age_are_taken(client: FlaskClient) -> None:
    paired = {
        "resourceType": "Patient",
        "name": [
            {
                "given": ["A", None],
                "_given": [
                    None,
                    {"extension": [{"url": "http://x.example/e", "valueString": "y"}]},
                ],
            }
        ],
    }
    age = _condition_with_age({"value": 5, "system": "http://unitsofmeasure.org", "code": "a"})
    for type_, body in (("Patient", paired), ("Goal", age)):
        checked = client.post(f"/fhir/{type_}/$validate", json=body, headers=JSON)
        assert [i for i in outcome_issues(checked) if i["severity"] == "error"] == []
