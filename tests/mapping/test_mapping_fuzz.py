"""Property-based checks: whatever bytes, dates or field values reach a mapping, through
``$ingest`` or ``whatmatters map run``, the answer is a located error or a success: never a
5xx, never a traceback (hypothesis generates the input)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service import cli, create_app
from service.config import Config

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).parent / "vendor"
HL7 = "x-application/hl7-v2+er7"
CSV = "text/csv"
JSON = "application/fhir+json"
SAMPLE_ORU = (VENDOR / "oru-assessment.hl7").read_text(encoding="utf-8")

# every shipped mapping and each vendor example: a realistic input with a date and a text slot
TEMPLATES: dict[str, tuple[str, str]] = {
    "survey-csv": (
        CSV,
        "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
        'r-1,9000000009,{date},"{text}",Nurse Ada,Bodnant Surgery,GP\n',
    ),
    "wmty-oru": (
        HL7,
        "MSH|^~\\&|EPR|WARD7|WM|WM|202611201015||ORU^R01|MSG1|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH\r"
        "OBX|1|ST|95541-9^^LN||{text}||||||F|||{date}\r",
    ),
    "wmty-questionnaire": (JSON, "questionnaire"),
    "community-oru": (
        HL7,
        SAMPLE_ORU.replace("|202612041415|", "|{date}|").replace(
            "Keeping Bramble (my dog) at home with me", "{text}"
        ),
    ),
    "nursing-csv": (
        CSV,
        "Visit ID,NHS Number,Surname,Forename,Date of Birth,Visit Date,Nurse,"
        "What Matters To Me,Goal\n"
        'V-1,9434765919,Hughes,Gwen,07/03/1941,{date},Siân,"{text}",Walk to chapel\n',
    ),
}
DATES = st.one_of(
    st.text(max_size=20),
    st.from_regex(
        r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2})?([+-]\d{2}:?\d{2}|Z)?", fullmatch=True
    ),
    st.from_regex(r"\d{4,14}([+-]\d{4})?", fullmatch=True),
    st.from_regex(r"\d{1,2}/\d{1,2}/\d{2,4}( \d{1,2}:\d{2})?", fullmatch=True),
    st.sampled_from(["2026-13-31 25:00", "20261332250000", "2026-03-29 01:30", "0000-00-00"]),
)
TEXTS = st.text(max_size=60)


def _body(name: str, date: str, text: str) -> tuple[str, bytes]:
    media, template = TEMPLATES[name]
    if name == "wmty-questionnaire":
        response = {
            "resourceType": "QuestionnaireResponse",
            "id": "qr-1",
            "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty",
            "status": "completed",
            "subject": {"reference": "Patient/p1"},
            "authored": date,
            "item": [{"linkId": "what-matters", "answer": [{"valueString": text}]}],
        }
        return media, json.dumps(response).encode()
    return media, template.replace("{date}", date).replace("{text}", text).encode()


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """The shipped mappings and the vendor examples in one folder."""
    folder = tmp_path / "mappings"
    folder.mkdir()
    for path in [*ROOT.glob("mappings/*.yaml"), *VENDOR.glob("*.yaml")]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture
def fuzz_app(config: Config, mappings_dir: Path, folders: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(
        dataclasses.replace(config, mappings_dir=mappings_dir), registry=folders["registry"]
    )
    yield application
    application.extensions["whatmatters.store"].close()


def _assert_located(status: int, body: dict[str, object]) -> None:
    assert status < 500, body
    outcome = body
    if body.get("resourceType") == "Parameters":
        parameters = {p["name"]: p["resource"] for p in body["parameter"]}  # type: ignore[attr-defined]
        outcome = parameters["outcome"]
    assert outcome["resourceType"] == "OperationOutcome", body
    for issue in outcome["issue"]:  # type: ignore[attr-defined]
        if issue["severity"] in ("error", "fatal") and status != 415:
            assert " <- " in issue["diagnostics"] or status == 400, issue


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(TEMPLATES)),
    date=DATES,
    text=TEXTS,
    dry_run=st.booleans(),
)
def test_ingest_of_random_dates_and_values_never_fails_unlocated(
    fuzz_app: Flask, name: str, date: str, text: str, dry_run: bool
) -> None:
    client: FlaskClient = fuzz_app.test_client()
    media, body = _body(name, date, text)
    response = client.post(
        f"/fhir/$ingest?mapping={name}&dryRun={str(dry_run).lower()}",
        data=body,
        headers={"Content-Type": media},
    )
    _assert_located(response.status_code, response.get_json(force=True))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(name=st.sampled_from(sorted(TEMPLATES)), data=st.binary(max_size=200))
def test_ingest_of_random_bytes_never_fails_unlocated(
    fuzz_app: Flask, name: str, data: bytes
) -> None:
    client: FlaskClient = fuzz_app.test_client()
    media = TEMPLATES[name][0]
    response = client.post(
        f"/fhir/$ingest?mapping={name}&dryRun=true", data=data, headers={"Content-Type": media}
    )
    _assert_located(response.status_code, response.get_json(force=True))


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    name=st.sampled_from(sorted(TEMPLATES)),
    date=DATES,
    text=TEXTS,
    noise=st.binary(max_size=40),
)
def test_map_run_of_random_input_exits_with_located_errors_not_a_traceback(
    config: Config,
    mappings_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    name: str,
    date: str,
    text: str,
    noise: bytes,
) -> None:
    monkeypatch.setenv("WHATMATTERS_DATABASE_URL", config.database_url)
    monkeypatch.setenv("WHATMATTERS_MAPPINGS_DIR", str(mappings_dir))
    _, body = _body(name, date, text)
    source = tmp_path / "input"
    source.write_bytes(body + noise)
    capsys.readouterr()
    code = cli.main(["map", "run", str(mappings_dir / f"{name}.yaml"), str(source), "--dry-run"])
    captured = capsys.readouterr()
    json.loads(captured.out)  # a dry run's stdout is its JSON alone
    out = captured.err
    assert code in (0, 1)
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert (code == 1) == bool(errors), out
    assert all(" <- " in line for line in errors), errors
    assert out.rstrip().endswith(f"; {len(errors)} errors (dry run: nothing written)"), out
