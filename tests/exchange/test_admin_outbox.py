"""The outbox admin endpoint refuses what it cannot answer with a 400 OperationOutcome that
names the parameter (FHIR R4 http.html#2.21.0.2: errors are OperationOutcomes)."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("id=99999999999999999999999", "id"),
        ("id=-1", "id"),
        ("id=abc", "id"),
        ("_count=-5", "_count"),
        ("_count=0", "_count"),
        ("_count=100000", "_count"),
        ("state=sent", "state"),
    ],
)
def test_bad_selections_are_400_naming_the_parameter(
    client: FlaskClient, query: str, parameter: str
) -> None:
    response = client.get(f"/admin/outbox?{query}")
    assert response.status_code == 400
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [parameter]


@pytest.mark.parametrize("action", ["retry", "discard"])
def test_a_huge_id_is_refused_by_retry_and_discard(client: FlaskClient, action: str) -> None:
    response = client.post(f"/admin/outbox/{action}?id=18446744073709551616")
    assert response.status_code == 400
    assert response.get_json()["issue"][0]["expression"] == ["id"]


def test_good_selections_answer(client: FlaskClient) -> None:
    response = client.get("/admin/outbox?state=dead&state=pending&_count=1000&id=1")
    assert response.status_code == 200
    assert response.get_json()["rows"] == []


def test_the_queue_is_paged_with_next_links(client: FlaskClient) -> None:
    # five queued rows, as writes for a partner would queue them
    from service.fhir.interactions import FhirService
    from service.storage.outbox import OutboxRow

    fhir: FhirService = client.application.extensions["whatmatters.fhir"]
    fhir.run(
        lambda tx: tx.outbox.add(
            [
                OutboxRow("partner:gp", "Patient/p1", "resource", "Goal", f"g{n}", 1, n)
                for n in range(5)
            ]
        )
    )
    seen: list[int] = []
    url: str | None = "/admin/outbox?_count=2&partner=gp"
    pages = 0
    while url:
        body = client.get(url).get_json()
        seen += [row["id"] for row in body["rows"]]
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
        pages += 1
    assert pages == 3
    assert len(seen) == 5
    assert seen == sorted(set(seen))  # each row once, in queue order
    assert client.get("/admin/outbox?after=x").status_code == 400
