"""A small, fixed data set for the table-driven search tests: every id is named for what it is."""

from __future__ import annotations

from typing import Any

NHS = "https://fhir.nhs.uk/Id/nhs-number"
MRN = "urn:oid:1.2.36.146.595.217.0.1"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
UCUM = "http://unitsofmeasure.org"
PCO = "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary"
OBS_CAT = "http://terminology.hl7.org/CodeSystem/observation-category"
WMTY_Q = "http://whatmatters.example/fhir/Questionnaire/wmty"


def _coding(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def _cc(
    system: str, code: str, display: str | None = None, text: str | None = None
) -> dict[str, Any]:
    concept: dict[str, Any] = {"coding": [_coding(system, code, display)]}
    if text:
        concept["text"] = text
    return concept


WHAT_MATTERS_CATEGORY = [_cc(OBS_CAT, "survey"), _cc(PCO, "what-matters")]
STATEMENT_CODE = _cc(LOINC, "95541-9", "Care experience preference")


def resources() -> list[dict[str, Any]]:
    """Every resource of the data set."""
    return [
        {
            "resourceType": "Patient",
            "id": "pat-ada",
            "identifier": [{"system": NHS, "value": "111"}],
            "active": True,
            "name": [{"family": "Okafor", "given": ["Adaeze"]}],
            "gender": "female",
            "birthDate": "1941-03-07",
            "address": [{"city": "Leeds", "postalCode": "LS1 4AP"}],
            "telecom": [
                {"system": "email", "value": "ada@example.org"},
                {"system": "phone", "value": "0113 496 0000"},
            ],
            "communication": [{"language": _cc("urn:ietf:bcp:47", "yo")}],
            "text": {
                "status": "generated",
                "div": '<div xmlns="http://www.w3.org/1999/xhtml">Adaeze Okafor</div>',
            },
        },
        {
            "resourceType": "Patient",
            "id": "pat-bob",
            "identifier": [{"system": NHS, "value": "222"}, {"system": MRN, "value": "x1"}],
            "active": False,
            "name": [{"family": "Smith", "given": ["Robert", "Bob"]}],
            "gender": "male",
            "birthDate": "1950-01-01",
        },
        {
            "resourceType": "Patient",
            "id": "pat-bjo",
            "identifier": [{"system": NHS, "value": "444"}],
            "name": [{"family": "Björk", "given": ["Åsa"]}],
            "gender": "female",
            "birthDate": "1962-08-15",
            "address": [{"city": "Léeds"}],
        },
        {
            "resourceType": "Patient",
            "id": "pat-cai",
            "identifier": [{"system": NHS, "value": "333"}],
            "name": [{"family": "Cai", "given": ["Wen"]}],
            "birthDate": "1999-12-31",
            "deceasedDateTime": "2020-05-01",
        },
        {
            "resourceType": "Observation",
            "id": "obs-wm1",
            "status": "final",
            "category": WHAT_MATTERS_CATEGORY,
            "code": STATEMENT_CODE,
            "subject": {"reference": "Patient/pat-ada"},
            "effectiveDateTime": "2026-11-20T10:15:00Z",
            "performer": [{"reference": "Practitioner/pr1"}],
            "valueString": "Être chez moi pour Noël",
        },
        {
            "resourceType": "Observation",
            "id": "obs-wm2",
            "status": "preliminary",
            "category": WHAT_MATTERS_CATEGORY,
            "code": STATEMENT_CODE,
            "subject": {"reference": "Patient/pat-bob"},
            "effectiveDateTime": "2026-11-18",
            "valueString": "Walking my dog every morning",
        },
        {
            "resourceType": "Observation",
            "id": "obs-bp",
            "status": "final",
            "category": [_cc(OBS_CAT, "vital-signs")],
            "code": _cc(LOINC, "85354-9", "Blood pressure panel"),
            "subject": {"reference": "Patient/pat-ada"},
            "effectiveDateTime": "2026-11-21T08:00:00+01:00",
            "component": [
                {
                    "code": _cc(LOINC, "8480-6", "Systolic blood pressure"),
                    "valueQuantity": {
                        "value": 120,
                        "unit": "mmHg",
                        "system": UCUM,
                        "code": "mm[Hg]",
                    },
                },
                {
                    "code": _cc(LOINC, "8462-4", "Diastolic blood pressure"),
                    "valueQuantity": {
                        "value": 80,
                        "unit": "mmHg",
                        "system": UCUM,
                        "code": "mm[Hg]",
                    },
                },
            ],
        },
        {
            "resourceType": "Observation",
            "id": "obs-wt",
            "status": "final",
            "category": [_cc(OBS_CAT, "vital-signs")],
            "code": _cc(LOINC, "29463-7", "Body weight"),
            "subject": {"reference": "Patient/pat-ada"},
            "effectivePeriod": {"start": "2026-11-01", "end": "2026-11-02"},
            "valueQuantity": {"value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"},
        },
        {
            "resourceType": "Observation",
            "id": "obs-hr",
            "meta": {
                "tag": [{"system": "urn:tags", "code": "test"}],
                "profile": ["http://whatmatters.example/fhir/StructureDefinition/x"],
                "source": "http://ehr.example.org/a",
                "security": [
                    _coding("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")
                ],
            },
            "status": "amended",
            "code": _cc(LOINC, "8867-4", "Heart rate"),
            "subject": {"reference": "Patient/pat-bob"},
            "effectiveDateTime": "2025-06-15",
            "valueQuantity": {"value": 100, "unit": "/min", "system": UCUM, "code": "/min"},
        },
        {
            "resourceType": "Observation",
            "id": "obs-smoke",
            "status": "final",
            "code": _cc(LOINC, "72166-2", "Tobacco smoking status"),
            "subject": {
                "reference": "Patient/pat-cai",
                "identifier": {"system": NHS, "value": "333"},
            },
            "effectiveDateTime": "2024",
            "valueCodeableConcept": _cc(SNOMED, "8517006", "Ex-smoker", text="Former smoker"),
        },
        {
            "resourceType": "Observation",
            "id": "obs-date",
            "status": "final",
            "code": _cc(LOINC, "11778-8", "Delivery date Estimated"),
            "subject": {"reference": "Patient/pat-cai"},
            "valueDateTime": "2026-01-01",
        },
        {
            "resourceType": "Goal",
            "id": "goal-walk",
            "lifecycleStatus": "active",
            "achievementStatus": _cc(
                "http://terminology.hl7.org/CodeSystem/goal-achievement", "in-progress"
            ),
            "category": [_cc(PCO, "what-matters")],
            "description": {"text": "Walk to the corner shop on my own"},
            "subject": {"reference": "Patient/pat-ada"},
            "startDate": "2026-11-20",
            "target": [{"dueDate": "2027-03-01"}],
            "addresses": [{"reference": "Observation/obs-wm1"}],
        },
        {
            "resourceType": "Goal",
            "id": "goal-home",
            "lifecycleStatus": "completed",
            "description": {"text": "Be home for Christmas"},
            "subject": {"reference": "Patient/pat-ada"},
            "startDate": "2026-01-01",
        },
        {
            "resourceType": "Goal",
            "id": "goal-dog",
            "lifecycleStatus": "active",
            "description": {"text": "Walk the dog"},
            "subject": {"reference": "Patient/pat-bob"},
            "startDate": "2026-10-01",
        },
        {
            "resourceType": "List",
            "id": "list-ada",
            "status": "current",
            "mode": "working",
            "title": "What matters to Ada",
            "code": _cc(LOINC, "81340-2"),
            "subject": {"reference": "Patient/pat-ada"},
            "source": {"reference": "Practitioner/pr1"},
            "date": "2026-11-20T10:30:00Z",
            "orderedBy": _cc("http://terminology.hl7.org/CodeSystem/list-order", "priority"),
            "entry": [
                {"item": {"reference": "Goal/goal-walk"}},
                {"item": {"reference": "Goal/goal-home"}},
                {"item": {"reference": "Observation/obs-wm1"}},
            ],
        },
        {
            "resourceType": "List",
            "id": "list-bob",
            "status": "current",
            "mode": "working",
            "title": "Bob's priorities",
            "subject": {"reference": "Patient/pat-bob"},
            "entry": [{"item": {"reference": "Goal/goal-dog"}}],
        },
        {
            "resourceType": "Questionnaire",
            "id": "q-wm",
            "url": WMTY_Q,
            "name": "WhatMatters",
            "title": "What matters to you?",
            "status": "active",
            "date": "2026-01-01",
            "item": [{"linkId": "1", "type": "string", "code": [_coding(LOINC, "95541-9")]}],
        },
        {
            "resourceType": "Questionnaire",
            "id": "q-old",
            "url": WMTY_Q + "/v1",
            "name": "WhatMattersV1",
            "status": "retired",
            "date": "2020-01-01",
        },
        {
            "resourceType": "QuestionnaireResponse",
            "id": "qr-ada",
            "identifier": {"system": "urn:qr", "value": "1"},
            "questionnaire": WMTY_Q + "|1.0",
            "status": "completed",
            "subject": {"reference": "Patient/pat-ada"},
            "authored": "2026-11-20T10:00:00Z",
            "author": {"reference": "Practitioner/pr1"},
            "item": [{"linkId": "1", "answer": [{"valueString": "Être chez moi pour Noël"}]}],
        },
        {
            "resourceType": "Provenance",
            "id": "prov-1",
            "target": [{"reference": "Goal/goal-walk"}, {"reference": "Observation/obs-wm1"}],
            "recorded": "2026-11-20T10:20:00Z",
            "agent": [{"who": {"reference": "Practitioner/pr1"}}],
        },
        {
            "resourceType": "Provenance",
            "id": "prov-2",
            "target": [{"reference": "Patient/pat-bob"}],
            "recorded": "2026-11-18T09:00:00Z",
            "agent": [{"who": {"reference": "Practitioner/pr2"}}],
        },
    ]
