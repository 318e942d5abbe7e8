"""Hostile input against a running service (over HTTP, through gunicorn): malformed JSON,
invalid UTF-8, deep nesting, huge strings, wrong types, odd headers and injection attempts in
search parameters, on the FHIR API and the facade. Always a 4xx OperationOutcome, never a 5xx
or a hang (every request has a time limit). hypothesis generates the input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability.report import Tally
from tests.reliability.traffic import served

INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE resources; --",
    "Robert'); DELETE FROM resource_versions;--",
    "../../../../etc/passwd",
    "<script>alert(1)</script>",
    "${jndi:ldap://x}",
    "%00",
    "\x00",
    "\\",
    "|",
    "a" * 2000,
    "😀" * 150,
    "{{7*7}}",
    "$(reboot)",
]
PATHS = [
    "/fhir/Goal",
    "/fhir/Observation",
    "/fhir/Patient/rel-0",
    "/fhir/Goal/_search",
    "/fhir",
    "/fhir/Patient/rel-0/$record-what-matters",
    "/fhir/Patient/rel-0/$what-matters",
    "/fhir/Goal/$validate",
    "/fhir/$ingest",
    "/api/patients/https%3A%2F%2Ffhir.nhs.uk%2FId%2Fnhs-number|9000000009/priorities",
]
PARAMS = [
    "patient",
    "identifier",
    "_id",
    "code",
    "date",
    "_sort",
    "_count",
    "_include",
    "subject:Patient.name",
    "_has:Goal:patient:lifecycle-status",
    "_elements",
    "_format",
]


def nested(depth: int) -> bytes:
    return ("[" * depth + "]" * depth).encode()


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=40), _containers, max_leaves=25
)
bodies = st.one_of(
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"\xff\xfe\xfa not utf-8",
            b'{"resourceType": "Goal", "description": {"text": "\xed\xa0\x80"}}',
            nested(5000),
            b'{"resourceType": "Goal"' + b', "x": 1' * 20000 + b"}",
            json.dumps({"resourceType": "Goal", "description": {"text": "x" * 2_000_000}}).encode(),
            b'{"resourceType": "Bundle", "type": "transaction", "entry": [{"request": 5}]}',
            b'{"resourceType": "Parameters", "parameter": [{"name": "statement", "part": 7}]}',
            b"",
            b"null",
            b'{"resourceType": "Goal", "subject": {"reference": "Patient/rel-0"}, '
            b'"lifecycleStatus": 3}',
        ]
    ),
)
headers = st.fixed_dictionaries(
    {},
    optional={
        "Content-Type": st.sampled_from(
            [
                "application/fhir+json",
                "application/json",
                "text/plain",
                "application/xml",
                "application/fhir+json; charset=latin-1",
                "multipart/form-data; boundary=x",
                "",
            ]
        ),
        "Accept": st.sampled_from(["application/fhir+xml", "*/*", "text/html", "garbage/;;"]),
        "If-Match": st.sampled_from(['W/"abc"', "*", '"', 'W/"99999999999999999999"']),
        "If-None-Exist": st.sampled_from(["identifier=", "&&&", "foo=bar|||", "x" * 3000]),
        "Prefer": st.sampled_from(["return=nonsense", "handling=strict", "respond-async", ";;"]),
        "X-Request-ID": st.sampled_from(["bad id; with spaces", "a" * 500, "ok-id"]),
    },
)
queries = st.lists(
    st.tuples(st.sampled_from(PARAMS), st.sampled_from(INJECTIONS) | st.text(max_size=30)),
    max_size=3,  # request lines stay under gunicorn's 8190 bytes (longer ones: see below)
)


def test_hostile_requests_get_4xx_outcomes_never_5xx(tmp_path: Path, tally: Tally) -> None:
    service = served("hostile", tmp_path)
    session = requests.Session()
    problems: list[str] = []
    body = {
        "resourceType": "Patient",
        "id": "rel-0",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}],
    }
    session.put(
        f"{service.base}/Patient/rel-0",
        json=body,
        headers={"Content-Type": "application/fhir+json"},
        timeout=30,
    )

    @settings(
        max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    @given(
        method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
        path=st.sampled_from(PATHS),
        query=queries,
        payload=bodies,
        sent_headers=headers,
    )
    def attempt(
        method: str,
        path: str,
        query: list[tuple[str, str]],
        payload: bytes,
        sent_headers: dict[str, str],
    ) -> None:
        url = f"{service.root}{path}"
        try:
            response = session.request(
                method,
                url,
                params=query,
                data=payload if method != "GET" else None,
                headers=sent_headers,
                timeout=20,
            )
        except requests.RequestException as exc:
            problems.append(f"{method} {path}: no answer ({type(exc).__name__})")
            tally.add(requests=1, bad_inputs=1)
            return
        tally.add(requests=1, bad_inputs=1, status_5xx=int(response.status_code >= 500))
        if response.status_code >= 500:
            problems.append(f"{method} {path} {query!r}: {response.status_code}")
        elif response.status_code >= 400 and not is_outcome(response):
            problems.append(f"{method} {path}: {response.status_code} without an OperationOutcome")

    try:
        attempt()
        # a large body sent where no body is read (405): the answer still arrives whole
        big = json.dumps({"resourceType": "Goal", "x": "y" * 2_000_000}).encode()
        refused = session.patch(
            f"{service.base}/Patient/rel-0/$what-matters",
            data=big,
            timeout=20,
            headers={"Content-Type": "application/fhir+json"},
        )
        tally.add(requests=1, bad_inputs=1)
        assert refused.status_code == 405
        assert is_outcome(refused)
        # beyond gunicorn's request-line limit the HTTP server itself answers 414 (plain text)
        # at once: the request never reaches the service
        huge = session.get(f"{service.base}/Goal", params={"code": "x" * 20_000}, timeout=20)
        tally.add(requests=1, bad_inputs=1)
        assert huge.status_code == 414
    finally:
        service.stop()
    assert problems == []


def is_outcome(response: requests.Response) -> bool:
    try:
        body: Any = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and body.get("resourceType") == "OperationOutcome"
