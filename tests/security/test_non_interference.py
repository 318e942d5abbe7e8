"""Non-interference: what a token may not read cannot change its answers.

Three stores hold the same data for patient A and differ only in patient B's: B absent, or
present with different words, identifiers and birth date. B's resources point at A's (and A's
at B's) through references that do not put them in A's compartment. For generated searches
(every stored type, chains, _has, _include, _revinclude, _summary=count, _total=accurate,
paging) made with A's patient token, every store gives the same answer once ids of Bundles,
timestamps and page tokens are set aside. The same for a user/ token limited to Observation and
Goal, over stores that differ only in the types it cannot read. Run over the in-memory store
and SQLite (the SQL the chains and _has become).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import wire_fhir_service
from service.config import Config
from service.errors import FhirError
from service.fhir.access import Access, parse_scopes
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.storage import Store
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry
from tests.direct import Direct

NHS = "https://fhir.nhs.uk/Id/nhs-number"
BASE = "http://test.local/fhir"
# B's words, identifier and birth date in each store (None: B is not there)
B_VARIANTS: list[tuple[str, str, str] | None] = [
    None,
    ("Bryn's secret wish", "9000000017", "1950-05-01"),
    ("Quiet garden mornings", "9000000025", "1961-02-03"),
]
WORDS = ["Bryn", "secret", "wish", "Quiet", "garden", "walk", "dog", "Jones", "e", "q"]
NUMBERS = ["9000000009", "9000000017", "9000000025", f"{NHS}|9000000017", f"{NHS}|9000000009"]
DATES = ["1950-05-01", "1961-02-03", "1972-07-09", "ge1900", "lt1955"]


def _ref(target: str) -> dict[str, str]:
    return {"reference": target}


def _patient(id_: str, family: str, nhs: str, birth: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": id_,
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": family, "given": ["E"]}],
        "birthDate": birth,
    }


def _observation(id_: str, subject: str, words: str, **refs: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id_,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
        "subject": _ref(subject),
        "valueString": words,
    }
    body.update({element: [_ref(t) for t in targets] for element, targets in refs.items()})
    return body


def _goal(id_: str, subject: str, words: str, addresses: str) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "id": id_,
        "lifecycleStatus": "active",
        "description": {"text": words},
        "subject": _ref(subject),
        "addresses": [_ref(addresses)],
    }


def _list(id_: str, subject: str, item: str) -> dict[str, Any]:
    return {
        "resourceType": "List",
        "id": id_,
        "status": "current",
        "mode": "working",
        "subject": _ref(subject),
        "entry": [{"item": _ref(item)}],
    }


def _provenance(id_: str, target: str, who: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": id_,
        "target": [_ref(target)],
        "recorded": "2026-01-02T03:04:05Z",
        "agent": [{"who": {"display": who}}],
    }


def _response(id_: str, subject: str, words: str) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": id_,
        "status": "completed",
        "subject": _ref(subject),
        "item": [{"linkId": "1", "answer": [{"valueString": words}]}],
    }


def a_data() -> list[dict[str, Any]]:
    """A's record, the same in every store; some of it points at B's resources."""
    return [
        _patient("pA", "Jones", "9000000009", "1972-07-09"),
        _observation("a-obs1", "Patient/pA", "Walk the dog", performer=["Patient/pB"]),
        _observation("a-obs2", "Patient/pA", "Walk by the sea", derivedFrom=["Observation/b-obs1"]),
        _goal("a-goal", "Patient/pA", "Walk the dog daily", "Observation/a-obs1"),
        _list("a-list", "Patient/pA", "Observation/a-obs1"),
        _provenance("a-prov", "Goal/a-goal", "Dr A"),
        _response("a-qr", "Patient/pA", "Walk the dog"),
    ]


def b_data(words: str, nhs: str, birth: str) -> list[dict[str, Any]]:
    """B's record; it points at A's resources only through references outside A's
    compartment (derivedFrom, a goal's addresses, list entries, provenance targets)."""
    return [
        _patient("pB", "Bryn", nhs, birth),
        _observation("b-obs1", "Patient/pB", words, derivedFrom=["Observation/a-obs1"]),
        _goal("b-goal", "Patient/pB", f"{words} goal", "Observation/a-obs2"),
        _list("b-list", "Patient/pB", "Observation/a-obs1"),
        _provenance("b-prov", "Goal/b-goal", f"Dr {words}"),
        _response("b-qr", "Patient/pB", words),
    ]


def b_fixed() -> list[dict[str, Any]]:
    """B's Observations and Goals as a user/Observation.rs user/Goal.rs token may read them:
    the same in every store of the user-token check."""
    return [
        _observation("b-obs1", "Patient/pB", "Open words", derivedFrom=["Observation/a-obs1"]),
        _goal("b-goal", "Patient/pB", "Open goal", "Observation/a-obs2"),
    ]


def b_unreadable(words: str, nhs: str, birth: str) -> list[dict[str, Any]]:
    """B's resources of the types the user token cannot read."""
    return [
        resource
        for resource in b_data(words, nhs, birth)
        if resource["resourceType"] not in ("Observation", "Goal")
    ]


# -- the requests -------------------------------------------------------------------------------

Criterion = tuple[str, st.SearchStrategy[str]]
COMMON: list[Criterion] = [
    ("_summary", st.just("count")),
    ("_total", st.just("accurate")),
    ("_count", st.sampled_from(["1", "2", "3"])),
    ("_include", st.just("*")),
    ("_revinclude", st.sampled_from(["Provenance:target", "List:item", "Goal:addresses"])),
    ("_revinclude", st.sampled_from(["Observation:derived-from", "Observation:performer"])),
]
PATIENT_CHAINS: list[Criterion] = [
    ("subject:Patient.name", st.sampled_from(WORDS)),
    ("subject:Patient.identifier", st.sampled_from(NUMBERS)),
    ("subject:Patient.birthdate", st.sampled_from(DATES)),
]
BY_TYPE: dict[str, list[Criterion]] = {
    "Patient": [
        ("name", st.sampled_from(WORDS)),
        ("_has:Observation:subject:value-string:contains", st.sampled_from(WORDS)),
        ("_has:Observation:performer:value-string:contains", st.sampled_from(WORDS)),
        ("_has:Goal:patient:description", st.sampled_from(WORDS)),
        ("_has:Observation:subject:_has:Goal:addresses:lifecycle-status", st.just("active")),
        ("identifier", st.sampled_from(NUMBERS)),
        ("birthdate", st.sampled_from(DATES)),
    ],
    "Observation": [
        *PATIENT_CHAINS,
        ("performer:Patient.name", st.sampled_from(WORDS)),
        ("performer:Patient.identifier", st.sampled_from(NUMBERS)),
        ("performer:Patient.birthdate", st.sampled_from(DATES)),
        ("derived-from:Observation.value-string:contains", st.sampled_from(WORDS)),
        ("derived-from:Observation.subject:Patient.name", st.sampled_from(WORDS)),
        ("_has:Observation:derived-from:value-string:contains", st.sampled_from(WORDS)),
        ("_has:Goal:addresses:description", st.sampled_from(WORDS)),
        ("_has:List:item:status", st.just("current")),
        ("value-string:contains", st.sampled_from(WORDS)),
        ("_include", st.sampled_from(["Observation:performer", "Observation:derived-from"])),
    ],
    "Goal": [
        ("patient:Patient.name", st.sampled_from(WORDS)),
        ("patient:Patient.birthdate", st.sampled_from(DATES)),
        ("addresses:Observation.value-string:contains", st.sampled_from(WORDS)),
        ("_has:Provenance:target:agent", st.just("x")),
        ("_include", st.sampled_from(["Goal:patient", "Goal:addresses"])),
    ],
    "List": [
        *PATIENT_CHAINS,
        ("item:Observation.value-string:contains", st.sampled_from(WORDS)),
        ("_include", st.just("List:item")),
    ],
    "Provenance": [
        ("target:Goal.description", st.sampled_from(WORDS)),
        ("patient:Patient.name", st.sampled_from(WORDS)),
        ("_include", st.just("Provenance:target")),
    ],
    "QuestionnaireResponse": [
        *PATIENT_CHAINS,
        ("_include", st.just("QuestionnaireResponse:subject")),
    ],
}


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, list[tuple[str, str]]]:
    """A search of one stored type: up to three criteria and result parameters."""
    type_ = draw(st.sampled_from(sorted(BY_TYPE)))
    catalogue = BY_TYPE[type_] + COMMON
    chosen = draw(st.lists(st.sampled_from(catalogue), min_size=1, max_size=3))
    return type_, [(name, draw(values)) for name, values in chosen]


# -- running a request against every store --------------------------------------------------------

_PAGE_TOKEN = re.compile(r"_page_token=[^&\"]+")


def _normalised(text: str) -> Any:
    bundle = json.loads(text)
    bundle.pop("id", None)
    bundle.pop("meta", None)
    for link in bundle.get("link", []):
        link["url"] = _PAGE_TOKEN.sub("_page_token=T", link["url"])
    for entry in bundle.get("entry", []):
        entry.get("resource", {}).get("meta", {}).pop("lastUpdated", None)
    return bundle


def answer(fhir: FhirService, access: Access, type_: str, params: list[tuple[str, str]]) -> Any:
    """The normalised answer, and the next page's when there is one."""
    pages = []
    actor = Actor.client(access)
    for _ in range(2):
        try:
            with fhir.session(actor) as session:  # a session per page, as per request
                result = session.search_type(type_, params, BASE)
        except FhirError as error:
            pages.append((error.status, error.diagnostics, error.expression))
            break
        assert result.text is not None
        bundle = json.loads(result.text)
        pages.append(_normalised(result.text))
        following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not following:
            break
        params = parse_qsl(urlsplit(following[0]).query)
    return pages


# -- the stores ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> ProfileRegistry:
    return ProfileRegistry.load(Definitions.shared(), Config().profiles_dir)


StoreMaker = Callable[[int], Store]


@pytest.fixture(scope="module", params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    made: list[Store] = []

    def make(index: int) -> Store:
        if request.param == "memory":
            store: Store = MemoryStore()
        else:
            folder = tmp_path_factory.mktemp("nonint")
            store = SqlStore.from_url(f"sqlite:///{Path(folder) / f'{index}.db'}")
            store.migrate()
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def _stores(
    make: StoreMaker, registry: ProfileRegistry, contents: list[list[dict[str, Any]]]
) -> Iterator[FhirService]:
    for index, resources in enumerate(contents):
        fhir = wire_fhir_service(Config(public_base_url=BASE), make(index), registry)
        direct = Direct(fhir)
        for resource in resources:
            result = direct.update(resource["resourceType"], resource["id"], resource)
            assert result.status == 201
        yield fhir


@pytest.fixture(scope="module")
def patient_stores(make_store: StoreMaker, registry: ProfileRegistry) -> list[FhirService]:
    contents = [a_data() + (b_data(*variant) if variant else []) for variant in B_VARIANTS]
    return list(_stores(make_store, registry, contents))


@pytest.fixture(scope="module")
def user_stores(make_store: StoreMaker, registry: ProfileRegistry) -> list[FhirService]:
    contents = [
        a_data() + b_fixed() + (b_unreadable(*variant) if variant else []) for variant in B_VARIANTS
    ]
    return list(_stores(make_store, registry, contents))


PATIENT_A = Access(parse_scopes("launch/patient patient/*.rs"), patient="pA", subject="a")
NARROW_USER = Access(parse_scopes("user/Observation.rs user/Goal.rs"), subject="u")


def _same_everywhere(
    stores: list[FhirService], access: Access, request: tuple[str, list[tuple[str, str]]]
) -> None:
    type_, params = request
    first, *others = [answer(fhir, access, type_, params) for fhir in stores]
    for other in others:
        assert other == first, (type_, params)
    for page in first:
        if isinstance(page, tuple):
            assert page[0] < 500, page


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_a_patient_tokens_answers_do_not_depend_on_another_patients_data(
    patient_stores: list[FhirService], request: tuple[str, list[tuple[str, str]]]
) -> None:
    _same_everywhere(patient_stores, PATIENT_A, request)


@settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests())
def test_a_narrow_user_tokens_answers_do_not_depend_on_what_it_cannot_read(
    user_stores: list[FhirService], request: tuple[str, list[tuple[str, str]]]
) -> None:
    _same_everywhere(user_stores, NARROW_USER, request)


def test_the_stores_do_differ_for_a_token_that_may_read_b(
    patient_stores: list[FhirService],
) -> None:
    everyone = Access(parse_scopes("system/*.rs"), subject="s")
    request = ("Observation", [("performer:Patient.name", "Bryn"), ("_summary", "count")])
    answers = [answer(fhir, everyone, *request) for fhir in patient_stores]
    assert answers[0] != answers[1]
