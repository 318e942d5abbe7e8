"""Measure/what-matters/$evaluate-measure over 1,000 patients in three settings with known
answers (cohort.py): counts, stratifiers and subject lists equal the expected ones exactly, on
the SQL store under test (SQLite, or PostgreSQL with WHATMATTERS_TEST_DATABASE_URL) and on the
memory store; the Measure and MeasureReport validate against the R4 base definitions."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import wire_fhir_service
from service.config import Config
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.priorities.measure import WhatMattersMeasure, parse_period
from service.priorities.measure_report import measure_report
from service.storage.memory import MemoryStore
from tests.measure import cohort

PATIENTS = 1000
URL = "/fhir/Measure/what-matters/$evaluate-measure?periodStart=2026-01-01&periodEnd=2026-06-30"
FACTS = [cohort.draw(n) for n in range(PATIENTS)]
EXPECTED = cohort.expected(FACTS)
GROUPS = ("documented", "acted-on", "reviewed")


@pytest.fixture
def loaded(app: Flask) -> Flask:
    cohort.load(app.extensions["whatmatters.fhir"], FACTS)
    return app


def _counts(populations: list[dict[str, Any]]) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in populations}


def _key(stratum: dict[str, Any]) -> str:
    return str(stratum["value"]["text"])


def check_report(report: dict[str, Any], expected: cohort.Expected = EXPECTED) -> None:
    """Every count of every group and stratum equals the expected one."""
    assert [g["id"] for g in report["group"]] == list(GROUPS)
    for n, group in enumerate(report["group"]):
        assert _counts(group["population"]) == {
            "initial-population": len(expected.population["overall"]),
            "denominator": len(expected.population["overall"]),
            "numerator": len(expected.numerators["overall"][n]),
        }, group["id"]
        seen = set()
        for stratifier in group["stratifier"]:
            for stratum in stratifier["stratum"]:
                key = _key(stratum)
                seen.add(key)
                assert _counts(stratum["population"]) == {
                    "initial-population": len(expected.population[key]),
                    "denominator": len(expected.population[key]),
                    "numerator": len(expected.numerators[key][n]),
                }, (group["id"], key)
        assert seen == set(expected.population) - {"overall"}


def test_the_data_set_has_what_the_test_needs() -> None:
    """Three settings, each band, patients in two settings and in none, every numerator."""
    population = EXPECTED.population
    assert {"hospital", "primary-care", "care-home", "unspecified"} <= set(population)
    assert {"65-74", "75-84", "85+"} <= set(population)
    assert 500 < len(population["overall"]) < PATIENTS
    assert all(len(EXPECTED.numerators["overall"][n]) > 20 for n in range(3))
    assert sum(len(population[s]) for s in cohort.SETTINGS) > len(population["overall"]) - len(
        population["unspecified"]
    )


def test_summary_counts_and_stratifiers_are_exact(loaded: Flask, client: FlaskClient) -> None:
    response = client.get(URL)
    assert response.status_code == 200, response.get_data(as_text=True)
    report = response.get_json()
    assert report["resourceType"] == "MeasureReport"
    assert report["type"] == "summary"
    assert report["measure"] == "http://whatmatters.example/fhir/Measure/what-matters"
    assert report["period"] == {"start": "2026-01-01", "end": "2026-06-30"}
    check_report(report)
    overall = EXPECTED.population["overall"]
    documented = EXPECTED.numerators["overall"][0]
    score = report["group"][0]["measureScore"]["value"]
    assert score == round(len(documented) / len(overall), 4)


def test_subject_list_names_exactly_the_expected_patients(
    loaded: Flask, client: FlaskClient
) -> None:
    response = client.post(
        "/fhir/Measure/what-matters/$evaluate-measure",
        json={
            "resourceType": "Parameters",
            "parameter": [
                {"name": "periodStart", "valueDate": "2026-01-01"},
                {"name": "periodEnd", "valueDate": "2026-06-30"},
                {"name": "reportType", "valueCode": "subject-list"},
            ],
        },
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    report = response.get_json()
    assert report["type"] == "subject-list"
    check_report(report)
    lists = {f"#{c['id']}": c for c in report["contained"]}

    def patients(population: dict[str, Any]) -> set[str]:
        found = lists[population["subjectResults"]["reference"]]
        return {e["item"]["reference"].removeprefix("Patient/") for e in found.get("entry", [])}

    for n, group in enumerate(report["group"]):
        pops = {p["code"]["coding"][0]["code"]: p for p in group["population"]}
        assert patients(pops["initial-population"]) == EXPECTED.population["overall"]
        assert patients(pops["numerator"]) == EXPECTED.numerators["overall"][n]
        for stratifier in group["stratifier"]:
            for stratum in stratifier["stratum"]:
                key = _key(stratum)
                spops = {p["code"]["coding"][0]["code"]: p for p in stratum["population"]}
                assert patients(spops["initial-population"]) == EXPECTED.population[key]
                assert patients(spops["numerator"]) == EXPECTED.numerators[key][n]


def test_review_days_changes_who_was_reviewed(loaded: Flask, client: FlaskClient) -> None:
    report = client.get(URL + "&review-days=200").get_json()
    check_report(report, cohort.expected(FACTS, review_days=200))


def test_one_subject(loaded: Flask, client: FlaskClient) -> None:
    someone = sorted(EXPECTED.numerators["overall"][1])[0]
    report = client.get(URL + f"&subject=Patient/{someone}").get_json()
    assert report["type"] == "individual"
    assert report["subject"] == {"reference": f"Patient/{someone}"}
    assert _counts(report["group"][1]["population"])["numerator"] == 1


def test_the_memory_store_gives_the_same_answers(folders: dict[str, Any]) -> None:
    fhir: FhirService = wire_fhir_service(Config(), MemoryStore(), folders["registry"])
    cohort.load(fhir, FACTS)
    period = parse_period("2026-01-01", "2026-06-30")
    figures = WhatMattersMeasure(fhir).evaluate(Actor.client(None), period, members=True)
    check_report(measure_report(figures, "subject-list", "2026-07-01"))


def test_report_and_measure_validate_against_r4(loaded: Flask, client: FlaskClient) -> None:
    """The service's validator (base R4 structure, bindings and invariants) finds no error."""
    fhir: FhirService = loaded.extensions["whatmatters.fhir"]
    report = client.get(URL.replace("periodEnd", "reportType=subject-list&periodEnd")).get_json()
    summary = client.get(URL).get_json()
    measure = client.get("/fhir/Measure/what-matters")
    assert measure.status_code == 200
    for resource in (report, summary, measure.get_json()):
        issues = fhir.thorough.validate(resource) + fhir.thorough.validate_profiles(resource)
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        assert errors == [], (resource["resourceType"], errors)


def test_bad_parameters_are_400(client: FlaskClient) -> None:
    base = "/fhir/Measure/what-matters/$evaluate-measure"
    assert client.get(base).status_code == 400
    assert client.get(base + "?periodStart=2026-01-01&periodEnd=2025-01-01").status_code == 400
    assert client.get(URL + "&reportType=population").status_code == 400
    assert client.get(URL + "&review-days=soon").status_code == 400
    assert client.get(URL.replace("what-matters/", "other/")).status_code == 404


def test_capability_statement_lists_the_operation(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    measure = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Measure")
    assert measure["operation"] == [
        {
            "name": "evaluate-measure",
            "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure",
        }
    ]
    assert "read" in [i["code"] for i in measure["interaction"]]
