"""Table-driven search tests: every parameter type, prefix and modifier, with expected ids.

https://hl7.org/fhir/R4/search.html. Each row runs on MemoryStore and on the SQL database of
the run (SQLite by default, PostgreSQL with WHATMATTERS_TEST_DATABASE_URL).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

import pytest

from service.fhir.interactions import FhirService
from service.storage import Store
from service.storage.memory import MemoryStore
from service.storage.sql import SqlStore
from tests.conftest import wipe
from tests.direct import Direct
from tests.search.conftest import build_service

BASE = "http://test.local/fhir"
NHS = "https://fhir.nhs.uk/Id/nhs-number"
LOINC = "http://loinc.org"
Q = "http://whatmatters.example/fhir/Questionnaire/wmty"

CASES: list[tuple[str, str, list[str]]] = [
    # token
    ("Patient", "gender=female", ["pat-ada", "pat-bjo"]),
    ("Patient", "gender=male,female", ["pat-ada", "pat-bjo", "pat-bob"]),
    ("Patient", "gender:not=female", ["pat-bob", "pat-cai"]),
    ("Patient", "gender:missing=true", ["pat-cai"]),
    ("Patient", "gender:missing=false", ["pat-ada", "pat-bjo", "pat-bob"]),
    ("Patient", f"identifier={NHS}|111", ["pat-ada"]),
    ("Patient", "identifier=111", ["pat-ada"]),
    ("Patient", "identifier=|111", []),
    ("Patient", f"identifier={NHS}|", ["pat-ada", "pat-bjo", "pat-bob", "pat-cai"]),
    ("Patient", "identifier=urn:oid:1.2.36.146.595.217.0.1|x1", ["pat-bob"]),
    ("Patient", "active=true", ["pat-ada"]),
    ("Patient", "active=false", ["pat-bob"]),
    ("Patient", "email=ada@example.org", ["pat-ada"]),
    ("Patient", "phone=0113 496 0000", ["pat-ada"]),
    ("Patient", "deceased=true", ["pat-cai"]),
    ("Patient", "language=yo", ["pat-ada"]),
    ("Observation", f"code={LOINC}|95541-9", ["obs-wm1", "obs-wm2"]),
    ("Observation", "category=what-matters", ["obs-wm1", "obs-wm2"]),
    ("Observation", "category=what-matters&status=final", ["obs-wm1"]),
    ("Observation", "code:text=care exp", ["obs-wm1", "obs-wm2"]),
    ("Observation", "value-concept=http://snomed.info/sct|8517006", ["obs-smoke"]),
    ("Observation", "value-concept:text=former", ["obs-smoke"]),
    ("Observation", "combo-code=8480-6", ["obs-bp"]),
    ("Observation", "component-code=8462-4", ["obs-bp"]),
    ("Observation", "_tag=urn:tags|test", ["obs-hr"]),
    ("Observation", "_security=R", ["obs-hr"]),
    ("Observation", "status:not=final", ["obs-hr", "obs-wm2"]),
    ("Goal", "lifecycle-status=active", ["goal-dog", "goal-walk"]),
    ("Goal", "lifecycle-status=active&subject=Patient/pat-ada", ["goal-walk"]),
    ("Goal", "achievement-status=in-progress", ["goal-walk"]),
    ("QuestionnaireResponse", "identifier=urn:qr|1", ["qr-ada"]),
    ("QuestionnaireResponse", "status=completed", ["qr-ada"]),
    ("Questionnaire", "code=95541-9", ["q-wm"]),
    ("List", f"code={LOINC}|81340-2", ["list-ada"]),
    # string
    ("Patient", "name=oka", ["pat-ada"]),
    ("Patient", "family=OKAFOR", ["pat-ada"]),
    ("Patient", "family:exact=Okafor", ["pat-ada"]),
    ("Patient", "family:exact=okafor", []),
    ("Patient", "name:contains=kaf", ["pat-ada"]),
    ("Patient", "given=bob", ["pat-bob"]),
    ("Patient", "family=bjork", ["pat-bjo"]),
    ("Patient", "given=asa", ["pat-bjo"]),
    ("Patient", "given=a", ["pat-ada", "pat-bjo"]),
    ("Patient", "given=a&family=bj", ["pat-bjo"]),
    ("Patient", "family=okafor,smith", ["pat-ada", "pat-bob"]),
    ("Patient", "address-city=leeds", ["pat-ada", "pat-bjo"]),
    ("Patient", "address-city:exact=Léeds", ["pat-bjo"]),
    ("Patient", "address-postalcode=ls1", ["pat-ada"]),
    ("Observation", "value-string=etre", ["obs-wm1"]),
    ("Observation", "value-string:contains=noël", ["obs-wm1"]),
    ("List", "title=what", ["list-ada"]),
    ("Questionnaire", "title:contains=matters", ["q-wm"]),
    # date
    ("Patient", "birthdate=1941-03-07", ["pat-ada"]),
    ("Patient", "birthdate=1941", ["pat-ada"]),
    ("Patient", "birthdate=eq1950", ["pat-bob"]),
    ("Patient", "birthdate=ne1950", ["pat-ada", "pat-bjo", "pat-cai"]),
    ("Patient", "birthdate=gt1950", ["pat-bjo", "pat-cai"]),
    ("Patient", "birthdate=ge1950", ["pat-bjo", "pat-bob", "pat-cai"]),
    ("Patient", "birthdate=lt1950", ["pat-ada"]),
    ("Patient", "birthdate=le1950-01-01", ["pat-ada", "pat-bob"]),
    ("Patient", "birthdate=sa1962-08-15", ["pat-cai"]),
    ("Patient", "birthdate=eb1950-01-01", ["pat-ada"]),
    ("Patient", "birthdate=ap1962-08-01", ["pat-bjo"]),
    ("Patient", "birthdate=ge1950&birthdate=lt1999", ["pat-bjo", "pat-bob"]),
    ("Patient", "death-date=2020", ["pat-cai"]),
    ("Observation", "date=2026-11-20", ["obs-wm1"]),
    ("Observation", "date=2026-11", ["obs-bp", "obs-wm1", "obs-wm2", "obs-wt"]),
    ("Observation", "date=2026-11-01", []),
    ("Observation", "date=ge2026-11-18", ["obs-bp", "obs-wm1", "obs-wm2"]),
    ("Observation", "date=2026-11-21T07:00:00Z", ["obs-bp"]),
    ("Observation", "date=2026-11-21T08:00:00+01:00", ["obs-bp"]),
    ("Observation", "date=lt2025", ["obs-smoke"]),
    ("Observation", "date=2024-06", []),
    (
        "Observation",
        "date=ge2024-06",
        ["obs-bp", "obs-hr", "obs-smoke", "obs-wm1", "obs-wm2", "obs-wt"],
    ),
    ("Observation", "value-date=2026-01-01", ["obs-date"]),
    ("Observation", "date=ge2026-11-20T10:15:00Z", ["obs-bp", "obs-wm1"]),
    ("Observation", "date=le2026-11-18", ["obs-hr", "obs-smoke", "obs-wm2", "obs-wt"]),
    ("Observation", "date=le2026-11-01", ["obs-hr", "obs-smoke"]),
    ("Observation", "date=gt2026-11-01&date=lt2026-11-21", ["obs-wm1", "obs-wm2", "obs-wt"]),
    ("Goal", "start-date=2026-11-20", ["goal-walk"]),
    ("Goal", "target-date=lt2027-06", ["goal-walk"]),
    ("Provenance", "recorded=le2026-11-19", ["prov-2"]),
    ("QuestionnaireResponse", "authored=2026-11-20", ["qr-ada"]),
    ("Patient", "_lastUpdated=gt2000-01-01", ["pat-ada", "pat-bjo", "pat-bob", "pat-cai"]),
    ("Patient", "_lastUpdated=lt2000-01-01", []),
    # number (entry-count is a SearchParameter from profiles/)
    ("List", "entry-count=3", ["list-ada"]),
    ("List", "entry-count=gt1", ["list-ada"]),
    ("List", "entry-count=le1", ["list-bob"]),
    ("List", "entry-count=ne3", ["list-bob"]),
    ("List", "entry-count=ap3", ["list-ada"]),
    # quantity
    ("Observation", "value-quantity=72.50", ["obs-wt"]),
    ("Observation", "value-quantity=72.4", []),
    ("Observation", "value-quantity=72.5|http://unitsofmeasure.org|kg", ["obs-wt"]),
    ("Observation", "value-quantity=72.5|http://unitsofmeasure.org|g", []),
    ("Observation", "value-quantity=gt80", ["obs-hr"]),
    ("Observation", "value-quantity=lt80||kg", ["obs-wt"]),
    ("Observation", "value-quantity=ap95", ["obs-hr"]),
    ("Observation", "value-quantity=le100", ["obs-hr", "obs-wt"]),
    ("Observation", "component-value-quantity=gt100", ["obs-bp"]),
    ("Observation", "component-value-quantity=lt70", []),
    # reference
    ("Observation", "subject=Patient/pat-ada", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "subject=pat-ada", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "patient=pat-ada", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "subject:Patient=pat-ada", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", f"subject={BASE}/Patient/pat-ada", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "performer=Practitioner/pr1", ["obs-wm1"]),
    (
        "Observation",
        "subject=Patient/pat-ada,Patient/pat-bob",
        ["obs-bp", "obs-hr", "obs-wm1", "obs-wm2", "obs-wt"],
    ),
    ("Observation", f"subject:identifier={NHS}|333", ["obs-smoke"]),
    ("Goal", "subject:missing=false", ["goal-dog", "goal-home", "goal-walk"]),
    ("Goal", "patient:missing=true", []),
    ("QuestionnaireResponse", f"questionnaire={Q}", ["qr-ada"]),
    ("List", "item=Goal/goal-dog", ["list-bob"]),
    ("Provenance", "target=Goal/goal-walk", ["prov-1"]),
    ("Provenance", "patient=pat-bob", ["prov-2"]),
    ("Provenance", "agent=Practitioner/pr1", ["prov-1"]),
    # chains and reverse chains
    ("Observation", f"subject:Patient.identifier={NHS}|111", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "patient.family=smith", ["obs-hr", "obs-wm2"]),
    ("Goal", "subject.gender=male", ["goal-dog"]),
    ("QuestionnaireResponse", "subject:Patient.name=oka", ["qr-ada"]),
    ("Provenance", f"target:Goal.subject:Patient.identifier={NHS}|111", ["prov-1"]),
    ("Patient", f"_has:Observation:subject:code={LOINC}|95541-9", ["pat-ada", "pat-bob"]),
    ("Patient", "_has:Goal:patient:lifecycle-status=completed", ["pat-ada"]),
    (
        "Patient",
        "_has:Observation:patient:_has:Provenance:target:agent=Practitioner/pr1",
        ["pat-ada"],
    ),
    # uri
    ("Questionnaire", f"url={Q}", ["q-wm"]),
    ("Questionnaire", f"url:below={Q}", ["q-old", "q-wm"]),
    ("Questionnaire", f"url:above={Q}/v1/extra", ["q-old", "q-wm"]),
    ("Questionnaire", "url:missing=true", []),
    ("Observation", "_profile=http://whatmatters.example/fhir/StructureDefinition/x", ["obs-hr"]),
    ("Observation", "_source=http://ehr.example.org/a", ["obs-hr"]),
    # composite
    ("Observation", f"code-value-string={LOINC}|95541-9$walk", ["obs-wm2"]),
    ("Observation", f"code-value-quantity={LOINC}|29463-7$gt70", ["obs-wt"]),
    ("Observation", f"code-value-quantity={LOINC}|29463-7$lt70", []),
    (
        "Observation",
        f"code-value-concept={LOINC}|72166-2$http://snomed.info/sct|8517006",
        ["obs-smoke"],
    ),
    ("Observation", f"code-value-date={LOINC}|11778-8$2026", ["obs-date"]),
    ("Observation", f"component-code-value-quantity={LOINC}|8480-6$gt100", ["obs-bp"]),
    ("Observation", f"component-code-value-quantity={LOINC}|8462-4$gt100", []),
    ("Observation", f"combo-code-value-quantity={LOINC}|29463-7$72.5", ["obs-wt"]),
    # _id
    ("Patient", "_id=pat-ada,pat-bob", ["pat-ada", "pat-bob"]),
    ("Patient", "_id=pat-ada&gender=male", []),
]


def _search(service: FhirService, type_: str, query: str) -> dict[str, Any]:
    params = parse_qsl(query, keep_blank_values=True)
    result = Direct(service).search_type(type_, params, BASE, strict=True)
    assert result.text is not None
    bundle: dict[str, Any] = json.loads(result.text)
    return bundle


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


@pytest.mark.parametrize(
    ("type_", "query", "expected"), CASES, ids=[f"{t}?{q}" for t, q, _ in CASES]
)
def test_search(loaded: FhirService, type_: str, query: str, expected: list[str]) -> None:
    assert sorted(_ids(_search(loaded, type_, query))) == expected


SORTS: list[tuple[str, str, list[str]]] = [
    ("Patient", "_sort=birthdate", ["pat-ada", "pat-bob", "pat-bjo", "pat-cai"]),
    ("Patient", "_sort=-birthdate", ["pat-cai", "pat-bjo", "pat-bob", "pat-ada"]),
    ("Patient", "_sort=gender,-birthdate", ["pat-bjo", "pat-ada", "pat-bob", "pat-cai"]),
    ("Patient", "_sort=family", ["pat-bjo", "pat-cai", "pat-ada", "pat-bob"]),
    ("Patient", "_sort=-_id", ["pat-cai", "pat-bob", "pat-bjo", "pat-ada"]),
    ("Observation", "subject=pat-ada&_sort=-date", ["obs-bp", "obs-wm1", "obs-wt"]),
    ("Observation", "subject=pat-ada&_sort=date", ["obs-wt", "obs-wm1", "obs-bp"]),
]


@pytest.mark.parametrize(
    ("type_", "query", "expected"), SORTS, ids=[f"{t}?{q}" for t, q, _ in SORTS]
)
def test_sort(loaded: FhirService, type_: str, query: str, expected: list[str]) -> None:
    assert _ids(_search(loaded, type_, query)) == expected


INCLUDES: list[tuple[str, str, list[str], list[str]]] = [
    ("Goal", "_id=goal-walk&_include=Goal:subject", ["goal-walk"], ["pat-ada"]),
    ("Goal", "_id=goal-walk&_include=Goal:subject:Patient", ["goal-walk"], ["pat-ada"]),
    ("Goal", "_id=goal-walk&_include=Goal:subject:Group", ["goal-walk"], []),
    ("Goal", "_id=goal-walk&_revinclude=Provenance:target", ["goal-walk"], ["prov-1"]),
    (
        "List",
        "_id=list-ada&_include=List:item",
        ["list-ada"],
        ["goal-home", "goal-walk", "obs-wm1"],
    ),
    (
        "List",
        "_id=list-ada&_include=List:item&_include:iterate=Goal:subject",
        ["list-ada"],
        ["goal-home", "goal-walk", "obs-wm1", "pat-ada"],
    ),
    (
        "List",
        "_id=list-ada&_include=*",
        ["list-ada"],
        ["goal-home", "goal-walk", "obs-wm1", "pat-ada"],
    ),
    (
        "Patient",
        "_id=pat-ada&_revinclude=Goal:patient&_revinclude:iterate=Provenance:target",
        ["pat-ada"],
        ["goal-home", "goal-walk", "prov-1"],
    ),
]


@pytest.mark.parametrize(
    ("type_", "query", "matches", "included"), INCLUDES, ids=[f"{t}?{q}" for t, q, _, _ in INCLUDES]
)
def test_include(
    loaded: FhirService, type_: str, query: str, matches: list[str], included: list[str]
) -> None:
    bundle = _search(loaded, type_, query)
    assert sorted(_ids(bundle)) == matches
    assert sorted(_ids(bundle, "include")) == included


def test_summary_count_returns_total_only(loaded: FhirService) -> None:
    bundle = _search(loaded, "Patient", "gender=female&_summary=count")
    assert bundle["total"] == 2
    assert "entry" not in bundle


def test_total_accurate(loaded: FhirService) -> None:
    bundle = _search(loaded, "Observation", "_total=accurate&_count=2")
    assert bundle["total"] == 7
    assert len(_ids(bundle)) == 2


def test_elements_keep_asked_and_mandatory_elements(loaded: FhirService) -> None:
    resource = _search(loaded, "Patient", "_id=pat-ada&_elements=gender")["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "gender"}
    assert {
        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
        "code": "SUBSETTED",
    } in resource["meta"]["tag"]
    goal = _search(loaded, "Goal", "_id=goal-walk&_elements=startDate")["entry"][0]["resource"]
    # lifecycleStatus, description and subject are mandatory (min 1) in Goal
    assert set(goal) == {
        "resourceType",
        "id",
        "meta",
        "startDate",
        "lifecycleStatus",
        "description",
        "subject",
    }


def test_summary_true_keeps_summary_elements(loaded: FhirService) -> None:
    resource = _search(loaded, "Patient", "_id=pat-ada&_summary=true")["entry"][0]["resource"]
    assert "name" in resource
    assert "communication" not in resource  # not a summary element of Patient
    assert "text" not in resource


def test_summary_text_and_data(loaded: FhirService) -> None:
    text = _search(loaded, "Patient", "_id=pat-ada&_summary=text")["entry"][0]["resource"]
    assert set(text) == {"resourceType", "id", "meta", "text"}
    data = _search(loaded, "Patient", "_id=pat-ada&_summary=data")["entry"][0]["resource"]
    assert "text" not in data
    assert "communication" in data


@pytest.mark.parametrize("backend", ["memory", "sql"])
def test_a_reference_to_a_contained_resource_is_not_missing(
    backend: str, sql_store: SqlStore
) -> None:
    """search.html#missing: :missing=true finds resources without a value of the element. A
    subject that references a contained Patient (as the HL7 Apgar examples' do) has one."""
    store: Store = MemoryStore() if backend == "memory" else sql_store
    if backend == "sql":
        wipe(sql_store)
    service = build_service(store)
    code = {"coding": [{"system": LOINC, "code": "9272-6"}]}
    contained = {
        "resourceType": "Observation",
        "id": "obs-contained",
        "contained": [{"resourceType": "Patient", "id": "newborn", "gender": "male"}],
        "status": "final",
        "code": code,
        "subject": {"reference": "#newborn"},
    }
    nobody = {"resourceType": "Observation", "id": "obs-nobody", "status": "final", "code": code}
    for resource in (contained, nobody):
        Direct(service).update("Observation", resource["id"], resource)
    assert _ids(_search(service, "Observation", "subject:missing=true")) == ["obs-nobody"]
    assert _ids(_search(service, "Observation", "subject:missing=false")) == ["obs-contained"]
    assert _ids(_search(service, "Observation", "subject=Patient/newborn")) == []
