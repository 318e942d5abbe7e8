"""Bulk Data export (Bulk Data Access IG v2): kick-off, status, files, _type and _since,
cancelling, and a worker that stops half way (its successor resumes without duplicate lines)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import build_worker, create_app
from service.config import Config
from service.exchange.bulk_export import BulkExport, ExportFolder
from service.exchange.worker import Worker
from service.fhir.model import instant, now_us

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
FHIR_JSON = {"Content-Type": "application/fhir+json"}
STATUS_PREFIX = "http://test.local/bulk-export/"


@pytest.fixture
def export_app(config: Config, folders: dict[str, Any], tmp_path: Path) -> Iterator[Flask]:
    app = create_app(replace(config, export_dir=tmp_path / "exports"), **folders)
    yield app
    app.extensions["whatmatters.store"].close()


@pytest.fixture
def client(export_app: Flask) -> FlaskClient:
    return export_app.test_client()


def worker_of(app: Flask) -> Worker:
    config: Config = app.config["WHATMATTERS"]
    return build_worker(config, app.extensions["whatmatters.fhir"], ())


def put(client: FlaskClient, resource: dict[str, Any]) -> dict[str, Any]:
    path = f"/fhir/{resource['resourceType']}/{resource['id']}"
    response = client.put(path, json=resource, headers=FHIR_JSON)
    assert response.status_code in (200, 201), response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


def patient(n: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": f"bx{n}", "name": [{"family": f"Export{n}"}]}


def goal(n: int, p: int) -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "id": f"bx-goal{n}",
        "lifecycleStatus": "active",
        "description": {"text": f"Walk to the shop {n} \u2014 gweld y m\u00f4r"},
        "subject": {"reference": f"Patient/bx{p}"},
    }


def load(client: FlaskClient, patients: int = 4, goals: int = 7) -> list[dict[str, Any]]:
    stored = [put(client, patient(n)) for n in range(patients)]
    stored += [put(client, goal(n, n % patients)) for n in range(goals)]
    return stored


def kick_off(client: FlaskClient, path: str = "/fhir/$export", **params: str) -> str:
    response = client.get(path, query_string=params, headers=ASYNC)
    assert response.status_code == 202, response.get_json()
    location = response.headers["Content-Location"]
    assert location.startswith(STATUS_PREFIX)
    return location.removeprefix("http://test.local")


def manifest(client: FlaskClient, status: str) -> dict[str, Any]:
    response = client.get(status)
    assert response.status_code == 200, response.data
    assert response.mimetype == "application/json"
    assert "Expires" in response.headers
    body: dict[str, Any] = response.get_json()
    return body


def lines(client: FlaskClient, url: str) -> list[dict[str, Any]]:
    response = client.get(url.removeprefix("http://test.local"))
    assert response.status_code == 200
    assert response.mimetype == "application/fhir+ndjson"
    text = response.get_data(as_text=True)
    response.close()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def exported(client: FlaskClient, body: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for item in body["output"]:
        found[item["type"]] = lines(client, item["url"])
        assert item["count"] == len(found[item["type"]])
    return found


def test_a_system_export_writes_every_stored_resource_once(
    client: FlaskClient, export_app: Flask
) -> None:
    stored = load(client)
    status = kick_off(client, _outputFormat="application/fhir+ndjson")
    waiting = client.get(status)
    assert waiting.status_code == 202
    assert waiting.headers["Retry-After"].isdigit()
    assert "X-Progress" in waiting.headers
    assert waiting.data == b""
    assert "Content-Type" not in waiting.headers  # no body, so no media type
    worker_of(export_app).drain()
    body = manifest(client, status)
    assert body["requiresAccessToken"] is False
    assert (
        body["request"] == "http://test.local/fhir/$export?_outputFormat=application/fhir%2Bndjson"
    )
    assert body["error"] == []
    assert body["transactionTime"].endswith("Z")
    files = exported(client, body)
    assert set(files) == {"Patient", "Goal"}
    by_key = {(r["resourceType"], r["id"]): r for found in files.values() for r in found}
    assert len(by_key) == sum(len(found) for found in files.values())  # no line twice
    # each line is the resource as stored: what a read returns
    for resource in stored:
        key = (resource["resourceType"], resource["id"])
        assert by_key[key] == client.get(f"/fhir/{key[0]}/{key[1]}").get_json()
    assert len(by_key) == len(stored)


def test_type_and_since_filter_what_is_exported(client: FlaskClient, export_app: Flask) -> None:
    load(client)
    time.sleep(0.01)
    since = instant(now_us())
    time.sleep(0.01)
    changed = put(client, {**goal(3, 1), "lifecycleStatus": "completed"})
    added = put(client, patient(99))
    worker = worker_of(export_app)

    only_goals = kick_off(client, _type="Goal", _outputFormat="ndjson")
    worker.drain()
    files = exported(client, manifest(client, only_goals))
    assert set(files) == {"Goal"}
    assert len(files["Goal"]) == 7

    recent = kick_off(client, _since=since, _outputFormat="application/ndjson")
    worker.drain()
    files = exported(client, manifest(client, recent))
    assert files == {"Goal": [changed], "Patient": [added]}

    both = kick_off(client, _since=since, _type="Patient,Observation")
    worker.drain()
    body = manifest(client, both)
    assert exported(client, body) == {"Patient": [added]}  # no file for a type with none


def test_patient_level_export_writes_the_compartment_types(
    client: FlaskClient, export_app: Flask
) -> None:
    load(client, patients=2, goals=3)
    status = kick_off(client, "/fhir/Patient/$export")
    worker_of(export_app).drain()
    body = manifest(client, status)
    assert body["request"] == "http://test.local/fhir/Patient/$export"
    files = exported(client, body)
    assert {t: len(found) for t, found in files.items()} == {"Goal": 3, "Patient": 2}


@pytest.mark.parametrize(
    ("path", "params", "headers", "status", "words"),
    [
        ("/fhir/$export", {}, {"Accept": "application/fhir+json"}, 400, "Prefer: respond-async"),
        ("/fhir/$export", {"_outputFormat": "text/csv"}, ASYNC, 400, "_outputFormat"),
        ("/fhir/$export", {"_type": "Goal,Banana"}, ASYNC, 400, "Banana"),
        ("/fhir/$export", {"_since": "yesterday"}, ASYNC, 400, "_since"),
        ("/fhir/Patient/$export", {"_type": "Questionnaire"}, ASYNC, 400, "Questionnaire"),
        (
            "/fhir/$export",
            {"_typeFilter": "Goal?x=y"},
            {**ASYNC, "Prefer": "respond-async, handling=strict"},
            400,
            "_typeFilter",
        ),
        ("/fhir/$export", {"_bogus": "1"}, ASYNC, 400, "_bogus"),
        ("/fhir/Group/g1/$export", {}, ASYNC, 404, "Group"),
    ],
)
def test_kick_off_refusals(
    client: FlaskClient,
    path: str,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    response = client.get(path, query_string=params, headers=headers)
    assert response.status_code == status
    outcome = response.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert words in json.dumps(outcome)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("_elements", "id"),
        ("_typeFilter", "Goal?lifecycle-status=active"),
        ("includeAssociatedData", "LatestProvenanceResources"),
    ],
)
def test_an_unsupported_parameter_is_refused_unless_lenient(
    client: FlaskClient, export_app: Flask, name: str, value: str
) -> None:
    """export.html, Query Parameters: a server that cannot support a parameter SHOULD answer
    an error and OperationOutcome; with Prefer: handling=lenient it MAY go on. The export ran
    unfiltered by default, so a client that narrowed it got everything."""
    load(client, patients=1, goals=0)
    refused = client.get("/fhir/$export", query_string={name: value}, headers=ASYNC)
    assert refused.status_code == 400, refused.get_json()
    assert name in json.dumps(refused.get_json())
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    taken = client.get("/fhir/$export", query_string={name: value}, headers=lenient)
    assert taken.status_code == 202, taken.get_json()
    assert name in json.dumps(taken.get_json())  # the kick-off's outcome says what was ignored
    worker_of(export_app).drain()
    status = taken.headers["Content-Location"].removeprefix("http://test.local")
    assert set(exported(client, manifest(client, status))) == {"Patient"}


def test_a_patient_export_holds_only_the_patients_asked_for(
    client: FlaskClient, export_app: Flask
) -> None:
    """export.html, Query Parameters, patient: the server SHALL NOT return resources in the
    compartments of patients outside the list. It was ignored: every patient went out."""
    load(client, patients=3, goals=6)  # goal n belongs to Patient/bx{n % 3}
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/bx0"}},
            {"name": "patient", "valueReference": {"reference": "Patient/bx2"}},
        ],
    }
    response = client.post("/fhir/Patient/$export", json=body, headers={**ASYNC, **FHIR_JSON})
    assert response.status_code == 202, response.get_json()
    status = response.headers["Content-Location"].removeprefix("http://test.local")
    worker_of(export_app).drain()
    files = exported(client, manifest(client, status))
    assert sorted(p["id"] for p in files["Patient"]) == ["bx0", "bx2"]
    assert sorted(g["subject"]["reference"] for g in files["Goal"]) == [
        "Patient/bx0",
        "Patient/bx0",
        "Patient/bx2",
        "Patient/bx2",
    ]
    # the IG: not applicable to a system-level export; and a reference that is no Patient
    system = client.post("/fhir/$export", json=body, headers={**ASYNC, **FHIR_JSON})
    assert system.status_code == 400
    assert "Patient/$export" in json.dumps(system.get_json())
    wrong = {
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": "Goal/bx-goal1"}}],
    }
    answer = client.post("/fhir/Patient/$export", json=wrong, headers={**ASYNC, **FHIR_JSON})
    assert answer.status_code == 400
    assert "Goal/bx-goal1" in json.dumps(answer.get_json())


def test_output_format_with_an_unencoded_plus_is_the_ndjson_format(
    client: FlaskClient, export_app: Flask
) -> None:
    # export.html: the server SHALL accept application/fhir+ndjson; a client that leaves the
    # '+' unencoded sends it as a space (form encoding)
    load(client, patients=1, goals=0)
    response = client.get("/fhir/$export?_outputFormat=application/fhir+ndjson", headers=ASYNC)
    assert response.status_code == 202, response.get_json()


def test_a_cancelled_export_leaves_no_files(
    client: FlaskClient, export_app: Flask, tmp_path: Path
) -> None:
    load(client, patients=6, goals=10)
    status = kick_off(client)
    job_folder = tmp_path / "exports" / status.rsplit("/", 1)[1]
    assert job_folder.is_dir()
    worker = worker_of(export_app)
    channel = worker.bulk_export
    assert channel is not None
    channel.page_size = 2
    renew = channel.renew
    assert renew is not None
    pages = []

    def cancel_on_the_third_page(row: Any) -> bool:
        pages.append(row.id)
        if len(pages) == 3:  # files are half written: the client cancels
            assert any(job_folder.iterdir())
            response = client.delete(status)
            assert response.status_code == 202
        return renew(row)

    channel.renew = cancel_on_the_third_page
    worker.drain()
    assert len(pages) == 3  # the worker stopped at the next page
    assert not job_folder.exists()
    assert client.get(status).status_code == 404
    assert client.delete(status).status_code == 404
    rows = export_app.extensions["whatmatters.fhir"].read_only(
        lambda tx: tx.outbox.rows(destination=f"export:{job_folder.name}")
    )
    assert [row.state for row in rows] == ["discarded"]
    progress = export_app.extensions["whatmatters.fhir"].read_only(
        lambda tx: tx.jobs.progress(f"export:{job_folder.name}")
    )
    assert progress is None


def test_an_export_survives_a_worker_that_stops_half_way(
    client: FlaskClient, export_app: Flask, tmp_path: Path
) -> None:
    stored = load(client, patients=5, goals=11)
    status = kick_off(client)
    first = worker_of(export_app)
    channel = first.bulk_export
    assert channel is not None
    channel.page_size = 2
    record = channel._record
    recorded: list[int] = []

    def crash_before_the_third_record(key: str, after: tuple[str, str], lines: int) -> None:
        if len(recorded) == 2:
            # the page's lines are on disk, its progress is not: the worker dies here
            raise RuntimeError("the worker process was killed")
        recorded.append(lines)
        record(key, after, lines)

    channel._record = crash_before_the_third_record  # type: ignore[method-assign]
    first.drain()
    assert client.get(status).status_code == 202
    job_folder = tmp_path / "exports" / status.rsplit("/", 1)[1]
    part = job_folder / "Goal.ndjson.part"
    assert len(part.read_text().splitlines()) == 6  # 3 pages written, 2 recorded

    second = worker_of(export_app)  # a new worker process, later
    second.clock = lambda: now_us() + 3600 * 1_000_000
    second.drain()
    files = exported(client, manifest(client, status))
    keys = [(r["resourceType"], r["id"]) for found in files.values() for r in found]
    assert len(keys) == len(set(keys)) == len(stored)
    assert not list(job_folder.glob("*.part"))


def test_expired_exports_are_removed(
    client: FlaskClient, export_app: Flask, tmp_path: Path
) -> None:
    load(client, patients=1, goals=1)
    status = kick_off(client)
    worker_of(export_app).drain()
    manifest(client, status)
    folder = ExportFolder(tmp_path / "exports", ttl_seconds=60)
    assert folder.sweep(force=True) == []
    later = now_us() + 61 * 1_000_000
    assert folder.sweep(later, force=True) == [status.rsplit("/", 1)[1]]
    assert client.get(status).status_code == 404


def test_the_capability_statement_names_the_export_operations(client: FlaskClient) -> None:
    statement = client.get("/fhir/metadata").get_json()
    assert (
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
        in (statement["instantiates"])
    )
    rest = statement["rest"][0]
    bulk = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
    assert {"name": "export", "definition": f"{bulk}/export"} in rest["operation"]
    patient_ = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"name": "export", "definition": f"{bulk}/patient-export"} in patient_["operation"]


def test_the_channel_skips_an_unknown_job(tmp_path: Path, export_app: Flask) -> None:
    from service.exchange.channels import Skipped
    from service.storage.outbox import OutboxRow

    channel = BulkExport(export_app.extensions["whatmatters.fhir"], ExportFolder(tmp_path))
    row = OutboxRow("export:" + "0" * 32, "0" * 32, "export", "Bulk", "0" * 32, 0, 0)
    with pytest.raises(Skipped):
        channel.deliver(row)


def test_an_export_whose_row_an_operator_discarded_is_answered_as_failed(
    client: FlaskClient, export_app: Flask
) -> None:
    from service.exchange.queue import discard

    load(client, patients=1, goals=0)
    status = kick_off(client)
    fhir = export_app.extensions["whatmatters.fhir"]
    fhir.run(lambda tx: discard(tx, None, f"export:{status.rsplit('/', 1)[1]}"))
    response = client.get(status)
    assert response.status_code == 202  # discard without ids gives up dead rows only
    rows = fhir.read_only(lambda tx: tx.outbox.rows(destination=f"export:{status[-32:]}"))
    fhir.run(lambda tx: discard(tx, [rows[0].id], None))
    response = client.get(status)
    assert response.status_code == 500
    assert response.get_json()["issue"][0]["diagnostics"].startswith("The export was stopped")


def test_a_failed_export_is_answered_with_its_outcome_and_runs_again_when_retried(
    client: FlaskClient, export_app: Flask
) -> None:
    from service.errors import Forbidden
    from service.exchange.queue import retry

    load(client, patients=2, goals=1)
    status = kick_off(client)
    worker = worker_of(export_app)
    channel = worker.bulk_export
    assert channel is not None
    page = channel._page

    def refused(*args: Any) -> Any:
        raise Forbidden("The access token's scopes do not allow read on Goal")

    channel._page = refused  # type: ignore[method-assign]
    worker.drain()
    failed = client.get(status)
    assert failed.status_code == 500
    assert "do not allow read on Goal" in failed.get_json()["issue"][0]["diagnostics"]

    channel._page = page  # type: ignore[method-assign]
    fhir = export_app.extensions["whatmatters.fhir"]
    fhir.run(lambda tx: retry(tx, now_us(), None, f"export:{status[-32:]}"))
    assert client.get(status).status_code == 202
    worker.drain()
    assert set(exported(client, manifest(client, status))) == {"Goal", "Patient"}


def test_a_kick_off_may_be_posted_with_a_parameters_resource(
    client: FlaskClient, export_app: Flask
) -> None:
    load(client, patients=2, goals=3)
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
            {"name": "_type", "valueString": "Goal"},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"},
        ],
    }
    headers = {**ASYNC, **FHIR_JSON}
    response = client.post("/fhir/Patient/$export", json=body, headers=headers)
    assert response.status_code == 202
    status = response.headers["Content-Location"].removeprefix("http://test.local")
    worker_of(export_app).drain()
    files = exported(client, manifest(client, status))
    assert {t: len(found) for t, found in files.items()} == {"Goal": 3}

    wrong = client.post("/fhir/$export", json={"resourceType": "Patient"}, headers=headers)
    assert wrong.status_code == 400
    bad_type = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "X"}]}
    assert client.post("/fhir/$export", json=bad_type, headers=headers).status_code == 400


def test_files_in_a_relative_export_folder_are_served(
    config: Config, folders: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default WHATMATTERS_EXPORT_DIR is relative (instance/exports): every download was a
    500, as Flask's send_file reads a relative path from the package's folder, not the working
    directory the files were written under."""
    monkeypatch.chdir(tmp_path)
    app = create_app(replace(config, export_dir=Path("instance") / "exports"), **folders)
    try:
        client = app.test_client()
        load(client, patients=1, goals=1)
        status = kick_off(client)
        worker_of(app).drain()
        files = exported(client, manifest(client, status))
        assert {t: len(found) for t, found in files.items()} == {"Goal": 1, "Patient": 1}
    finally:
        app.extensions["whatmatters.store"].close()
