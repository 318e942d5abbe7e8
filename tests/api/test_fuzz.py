"""Property-based checks: whatever a client sends to search or write, the answer is a response
below 500 with a FHIR body, never an unexpected error (hypothesis generates the input)."""

from __future__ import annotations

import json
from urllib.parse import quote

from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.storage.sql import SqlStore
from tests.builders import FHIR_JSON, goal, observation, patient
from tests.conftest import wipe

TYPES = ["Patient", "Goal", "Observation", "List", "QuestionnaireResponse", "Provenance"]
NAMES = [
    "_id",
    "identifier",
    "patient",
    "subject",
    "subject:Patient.identifier",
    "code",
    "category",
    "date",
    "birthdate",
    "name",
    "family",
    "value-quantity",
    "code-value-quantity",
    "_lastUpdated",
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_summary",
    "_elements",
    "_has:Observation:patient:code",
    "url",
    "entry-count",
    "gender:not",
    "name:contains",
    "_tag",
    "status:missing",
    "questionnaire",
    "value-concept:text",
    "nonsense",
]
VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "ge2026",
            "lt1e400",
            "eq1e-999999",
            "9999-12-31",
            "http://x|y",
            "a$b",
            "Patient/1",
            "",
            ",",
            "\\,",
            "|",
            "$",
            "-date",
            "Goal:subject",
            "*",
            "true",
            "count",
            "0",
            "-1",
            "ap100||kg",
        ]
    ),
)


def _fresh(client: FlaskClient, sql_store: SqlStore) -> None:
    """Start each example from the same few resources, so searches have something to find."""
    wipe(sql_store)
    client.put("/fhir/Patient/p1", json=patient(id="p1"), headers={"Content-Type": FHIR_JSON})
    client.put("/fhir/Goal/g1", json=goal(id="g1"), headers={"Content-Type": FHIR_JSON})
    client.put(
        "/fhir/Observation/o1", json=observation(id="o1"), headers={"Content-Type": FHIR_JSON}
    )


SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    type_=st.sampled_from(TYPES),
    pairs=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=4),
    strict=st.booleans(),
)
def test_search_never_fails_with_a_server_error(
    client: FlaskClient,
    sql_store: SqlStore,
    type_: str,
    pairs: list[tuple[str, str]],
    strict: bool,
) -> None:
    _fresh(client, sql_store)
    query = "&".join(f"{quote(n, safe=':')}={quote(v, safe='')}" for n, v in pairs)
    headers = {"Prefer": "handling=strict"} if strict else {}
    response = client.get(f"/fhir/{type_}?{query}", headers=headers)
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    body = json.loads(response.data)
    assert body["resourceType"] in ("Bundle", "OperationOutcome")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                [
                    "resourceType",
                    "id",
                    "status",
                    "code",
                    "subject",
                    "valueString",
                    "extension",
                    "url",
                    "reference",
                    "coding",
                    "meta",
                    "contained",
                    "text",
                    "x",
                ]
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=15,
)


@SETTINGS
@given(type_=st.sampled_from(TYPES), body=JSON_VALUES)
def test_create_never_fails_with_a_server_error(
    client: FlaskClient, sql_store: SqlStore, type_: str, body: object
) -> None:
    wipe(sql_store)  # each example starts from the same state, so failures replay
    if isinstance(body, dict) and "resourceType" not in body:
        body = {**body, "resourceType": type_}
    response = client.post(
        f"/fhir/{type_}", data=json.dumps(body), headers={"Content-Type": FHIR_JSON}
    )
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
    assert json.loads(response.data)["resourceType"] in (type_, "OperationOutcome")


@SETTINGS
@given(entries=st.lists(JSON_VALUES, max_size=3), kind=st.sampled_from(["batch", "transaction"]))
def test_bundles_never_fail_with_a_server_error(
    client: FlaskClient, sql_store: SqlStore, entries: list[object], kind: str
) -> None:
    wipe(sql_store)
    bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
    response = client.post("/fhir", data=json.dumps(bundle), headers={"Content-Type": FHIR_JSON})
    assert response.status_code < 500, response.get_data(as_text=True)[:500]
