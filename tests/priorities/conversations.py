"""Builders for $record-what-matters inputs and the patients they are about."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

NHS = "https://fhir.nhs.uk/Id/nhs-number"
FHIR_JSON = {"Content-Type": "application/fhir+json"}


def add_patient(client: FlaskClient, id_: str = "p1", nhs: str = "9000000009") -> None:
    """Store a Patient with an NHS number."""
    patient = {
        "resourceType": "Patient",
        "id": id_,
        "identifier": [{"system": NHS, "value": nhs}],
        "name": [{"family": "Jones", "given": ["Eluned"]}],
        "birthDate": "1941-03-02",
    }
    assert client.put(f"/fhir/Patient/{id_}", json=patient, headers=FHIR_JSON).status_code in (
        200,
        201,
    )


def statement(key: str, text: str, identifier: str | None = None) -> dict[str, Any]:
    """A 'statement' parameter."""
    parts: list[dict[str, Any]] = [
        {"name": "key", "valueString": key},
        {"name": "text", "valueString": text},
    ]
    if identifier:
        parts.append(
            {
                "name": "identifier",
                "valueIdentifier": {"system": "urn:ehr:ids", "value": identifier},
            }
        )
    return {"name": "statement", "part": parts}


def goal(key: str, description: str, *addresses: str, **parts: str) -> dict[str, Any]:
    """A 'goal' parameter; extra parts by name (priority='high', acceptance='agree', ...)."""
    kinds = {
        "priority": "valueCode",
        "acceptance": "valueCode",
        "status": "valueCode",
        "target-date": "valueDate",
        "status-reason": "valueString",
    }
    items: list[dict[str, Any]] = [
        {"name": "key", "valueString": key},
        {"name": "description", "valueString": description},
    ]
    items += [{"name": "addresses", "valueString": a} for a in addresses]
    items += [
        {"name": n.replace("_", "-"), kinds[n.replace("_", "-")]: v} for n, v in parts.items()
    ]
    return {"name": "goal", "part": items}


def ranking(*keys: str) -> dict[str, Any]:
    """A 'ranking' parameter, most important first."""
    return {"name": "ranking", "part": [{"name": "item", "valueString": k} for k in keys]}


def conversation(
    *items: dict[str, Any],
    setting: str = "Ward 7, Ysbyty Gwynedd",
    setting_type: str = "hospital",
    recorder: str = "Nurse Ada Okafor",
    recorded: str | None = None,
) -> dict[str, Any]:
    """A whole Parameters input."""
    parameters = [
        *items,
        {
            "name": "recorder",
            "valueReference": {"reference": "Practitioner/n1", "display": recorder},
        },
        {"name": "setting", "valueReference": {"display": setting}},
        {"name": "setting-type", "valueCode": setting_type},
    ]
    if recorded:
        parameters.append({"name": "recorded", "valueDateTime": recorded})
    return {"resourceType": "Parameters", "parameter": parameters}


def record(client: FlaskClient, body: dict[str, Any], patient: str = "p1") -> Any:
    """POST the conversation; return the response."""
    return client.post(
        f"/fhir/Patient/{patient}/$record-what-matters", json=body, headers=FHIR_JSON
    )


def count(client: FlaskClient, type_: str) -> int:
    """How many resources of a type are stored."""
    return int(client.get(f"/fhir/{type_}?_summary=count").get_json()["total"])


def what_matters(client: FlaskClient, patient: str = "p1", history: bool = False) -> Any:
    """GET $what-matters and return the Bundle."""
    url = f"/fhir/Patient/{patient}/$what-matters" + ("?history=true" if history else "")
    response = client.get(url)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def ranked_texts(bundle: dict[str, Any]) -> list[str]:
    """The merged ranking of a $what-matters Bundle, as the patient's words."""
    resources = {
        f"{e['resource']['resourceType']}/{e['resource'].get('id')}": e["resource"]
        for e in bundle["entry"][1:]
        if "/_history/" not in e["fullUrl"]
    }
    texts = []
    for entry in bundle["entry"][0]["resource"].get("entry", []):
        resource = resources[entry["item"]["reference"]]
        texts.append(resource.get("valueString") or resource.get("description", {}).get("text", ""))
    return texts
