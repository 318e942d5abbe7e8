"""Golden runs of inputs as other vendors send them (tests/mapping/vendor/): an ORU^R01 that
makes its own patient, statements over TX continuation lines, a goal and a ranked list; its
corrected resend; and a spreadsheet-made CSV export with a BOM, UK dates, quoted line breaks
and one impossible date. Each runs as a dry run and for real, through ``$ingest`` and the CLI.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from tests.builders import outcome_issues, whatmatters

VENDOR = Path(__file__).parent / "vendor"
HL7 = {"Content-Type": "x-application/hl7-v2+er7"}
CSV = {"Content-Type": "text/csv"}
ORU = (VENDOR / "oru-assessment.hl7").read_bytes()
CORRECTED = (VENDOR / "oru-assessment-corrected.hl7").read_bytes()
EXPORT = (VENDOR / "nursing-export.csv").read_bytes()
NHS = "https://fhir.nhs.uk/Id/nhs-number"
# the statement of OBX sub-ID 2 (a "|" inside a searched identifier is escaped)
STATEMENT_2 = "Observation?identifier=http://community-epr.example/what-matters|ORD-55120\\|2"


@pytest.fixture
def vendor_app(config: Config, folders: dict[str, Any]) -> Iterator[Flask]:
    """The service with the vendor mappings as its mappings folder."""
    application = create_app(
        dataclasses.replace(config, mappings_dir=VENDOR), registry=folders["registry"]
    )
    yield application
    application.extensions["whatmatters.store"].close()


@pytest.fixture
def vendor(vendor_app: Flask) -> FlaskClient:
    return vendor_app.test_client()


def _search(client: FlaskClient, query: str) -> list[dict[str, Any]]:
    bundle = client.get(f"/fhir/{query}").get_json()
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _versions(client: FlaskClient) -> dict[str, str]:
    """Every current what-matters resource and its version."""
    found = {}
    for type_ in ("Patient", "Observation", "Goal", "List"):
        for resource in _search(client, f"{type_}?_count=100"):
            found[f"{type_}/{resource['id']}"] = resource["meta"]["versionId"]
    return found


def _parameters(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return {p["name"]: p["resource"] for p in response.get_json()["parameter"]}


def test_one_message_makes_its_patient_statements_goal_and_ranked_list(
    vendor: FlaskClient,
) -> None:
    response = vendor.post("/fhir/$ingest?mapping=community-oru", data=ORU, headers=HL7)
    assert response.status_code == 200, response.get_data(as_text=True)
    summary = outcome_issues(response)[-1]["diagnostics"]
    assert "6 resources created" in summary
    assert "0 errors" in summary
    # the NHS number is the second repetition of PID-3, after the local MRN
    (patient,) = _search(vendor, f"Patient?identifier={NHS}|9434765919")
    assert patient["identifier"][1] == {
        "system": "http://community-epr.example/mrn",
        "value": "M0042871",
    }
    subject = {"reference": f"Patient/{patient['id']}"}
    statements = {
        s["identifier"][0]["value"]: s for s in _search(vendor, "Observation?code=95541-9")
    }
    assert sorted(statements) == ["ORD-55120|1", "ORD-55120|2", "ORD-55120|3"]
    assert all(s["subject"] == subject for s in statements.values())
    # three TX lines with one sub-ID are one sentence; the NTE after them is its note
    first = statements["ORD-55120|1"]
    assert first["valueString"] == (
        "Getting back to the Thursday choir at Capel Salem, even if I need a lift there and "
        "back, and singing the alto part again."
    )
    assert first["note"] == [{"text": "Said with a smile; choir meets 7pm."}]
    assert first["effectiveDateTime"] == "2026-12-04T14:15:00+00:00"
    (goal,) = _search(vendor, "Goal?_count=10")
    assert goal["addresses"] == [{"reference": f"Observation/{statements['ORD-55120|3']['id']}"}]
    assert goal["subject"] == subject
    assert goal["startDate"] == "2026-12-04"
    # NM rank OBXs name statements by sub-ID: sub-ID 2 first, then 1, then 3
    (ranked,) = _search(vendor, "List?_count=10")
    assert [e["item"]["reference"] for e in ranked["entry"]] == [
        f"Observation/{statements[key]['id']}"
        for key in ("ORD-55120|2", "ORD-55120|1", "ORD-55120|3")
    ]
    assert ranked["subject"] == subject
    assert ranked["text"]["div"].index("Bramble") < ranked["text"]["div"].index("Capel Salem")


def test_the_dry_run_shows_what_would_be_written_and_writes_nothing(vendor: FlaskClient) -> None:
    response = vendor.post("/fhir/$ingest?mapping=community-oru&dryRun=true", data=ORU, headers=HL7)
    parameters = _parameters(response)
    entries = parameters["bundle"]["entry"]
    assert [e["request"]["url"] for e in entries] == [
        "Patient",
        "Observation",
        "Observation",
        "Observation",
        "Goal",
        "List",
    ]
    assert entries[1]["resource"]["subject"] == {
        "reference": f"Patient?identifier={NHS}|9434765919"
    }
    issues = parameters["outcome"]["issue"]
    assert [i["severity"] for i in issues] == ["information"]
    assert "6 resources created" in issues[0]["diagnostics"]
    assert _versions(vendor) == {}


def test_reingesting_changes_nothing_and_a_correction_changes_only_what_it_corrects(
    vendor: FlaskClient,
) -> None:
    assert (
        vendor.post("/fhir/$ingest?mapping=community-oru", data=ORU, headers=HL7).status_code == 200
    )
    before = _versions(vendor)
    again = vendor.post("/fhir/$ingest?mapping=community-oru", data=ORU, headers=HL7)
    assert (
        "0 resources created, 6 already present and unchanged"
        in (outcome_issues(again)[-1]["diagnostics"])
    )
    assert _versions(vendor) == before
    corrected = vendor.post("/fhir/$ingest?mapping=community-oru", data=CORRECTED, headers=HL7)
    assert corrected.status_code == 200, corrected.get_data(as_text=True)
    assert "1 corrected" in outcome_issues(corrected)[-1]["diagnostics"]
    after = _versions(vendor)
    changed = {key for key in after if after[key] != before.get(key)}
    (statement,) = _search(vendor, STATEMENT_2)
    assert changed == {f"Observation/{statement['id']}"}
    assert after[f"Observation/{statement['id']}"] == "2"  # a new version, not a duplicate
    assert statement["status"] == "corrected"
    assert statement["valueString"] == "Keeping Bramble (my spaniel) at home with me"
    resend = vendor.post("/fhir/$ingest?mapping=community-oru", data=CORRECTED, headers=HL7)
    assert "0 corrected" in outcome_issues(resend)[-1]["diagnostics"]
    assert _versions(vendor) == after


def test_a_deleted_result_marks_the_statement_entered_in_error(vendor: FlaskClient) -> None:
    vendor.post("/fhir/$ingest?mapping=community-oru", data=ORU, headers=HL7)
    withdrawn = CORRECTED.replace(
        b"my spaniel) at home with me||||||C|", b"my spaniel) at home with me||||||D|"
    )
    response = vendor.post("/fhir/$ingest?mapping=community-oru", data=withdrawn, headers=HL7)
    assert response.status_code == 200, response.get_data(as_text=True)
    (statement,) = _search(vendor, STATEMENT_2)
    assert statement["status"] == "entered-in-error"


@pytest.mark.parametrize(
    ("bad", "located"),
    [
        (b"|202612041415|", "field OBR-7: value '20261332250000' is not a real date"),
        (b"|20261204141800|", "field OBX-14: value '20261332250000' is not a real date"),
    ],
)
def test_an_impossible_hl7_date_is_an_error_at_its_field_not_a_500(
    vendor: FlaskClient, bad: bytes, located: str
) -> None:
    message = ORU.replace(bad, b"|20261332250000|")
    dry = _parameters(
        vendor.post("/fhir/$ingest?mapping=community-oru&dryRun=true", data=message, headers=HL7)
    )
    errors = [i for i in dry["outcome"]["issue"] if i["severity"] == "error"]
    assert errors
    assert located in errors[0]["diagnostics"]
    assert f"; {len(errors)} errors" in dry["outcome"]["issue"][-1]["diagnostics"]
    real = vendor.post("/fhir/$ingest?mapping=community-oru", data=message, headers=HL7)
    assert real.status_code == 422
    assert located in outcome_issues(real)[0]["diagnostics"]
    assert _versions(vendor) == {}  # one bad OBX in a message: nothing of it is written


def test_statements_refer_to_a_patient_the_message_fails_to_make(vendor: FlaskClient) -> None:
    # no NHS repetition in PID-3: the patient cannot be made, so nothing can refer to it
    message = ORU.replace(b"~9434765919^^^NHS^NH", b"")
    response = vendor.post(
        "/fhir/$ingest?mapping=community-oru&dryRun=true", data=message, headers=HL7
    )
    errors = [i for i in _parameters(response)["outcome"]["issue"] if i["severity"] == "error"]
    assert (
        "variables.nhs_number <- message 1, segment OBX|1, field PID-3(4=NHS).1: "
        "a required value is missing" in errors[0]["diagnostics"]
    )


def test_after_a_failed_record_what_later_records_make_is_still_found_by_the_records_after(
    vendor: FlaskClient,
) -> None:
    # the first statement's date is impossible: the patient is then made by the second
    # statement's record, and the third statement and the goal refer to what was made after the
    # error; only the bad date and the rank of the statement never made are errors
    message = ORU.replace(b"|20261204141500|", b"|20261332250000|")
    dry = vendor.post("/fhir/$ingest?mapping=community-oru&dryRun=true", data=message, headers=HL7)
    real = vendor.post("/fhir/$ingest?mapping=community-oru", data=message, headers=HL7)
    assert real.status_code == 422
    for issues in (_parameters(dry)["outcome"]["issue"], outcome_issues(real)):
        errors = [i["diagnostics"] for i in issues if i["severity"] == "error"]
        assert len(errors) == 2, errors
        assert "segment OBX|1, field OBX-14: value '20261332250000' is not a real date" in errors[0]
        assert "it ranks '1', which no record of the message made into a 'statement'" in errors[1]
    assert _versions(vendor) == {}


def test_a_csv_export_with_uk_dates_stores_the_good_rows_and_names_the_bad_cell(
    vendor: FlaskClient,
) -> None:
    dry = _parameters(
        vendor.post("/fhir/$ingest?mapping=nursing-csv&dryRun=true", data=EXPORT, headers=CSV)
    )
    assert _versions(vendor) == {}
    response = vendor.post("/fhir/$ingest?mapping=nursing-csv", data=EXPORT, headers=CSV)
    assert response.status_code == 200, response.get_data(as_text=True)
    issues = outcome_issues(response)
    assert [i["severity"] for i in issues] == ["error", "information"]
    assert [i["diagnostics"] for i in issues] == [
        i["diagnostics"] for i in dry["outcome"]["issue"]
    ]  # the dry run said exactly what would happen
    # the record that spans lines 2-3 is row 2, so the bad date is on row 4
    assert (
        "<- row 4, column 'Visit Date': value '31/02/2026 09:15' is not a "
        in (issues[0]["diagnostics"])
    )
    assert "3 records read" in issues[1]["diagnostics"]
    assert "1 errors" in issues[1]["diagnostics"]
    statements = {s["identifier"][0]["value"]: s for s in _search(vendor, "Observation?_count=10")}
    assert sorted(statements) == ["V-1001", "V-1003"]
    first = statements["V-1001"]
    assert first["valueString"] == "Singing with the choir on Thursdays,\r\nand the walk there."
    assert first["effectiveDateTime"] == "2026-12-04T14:30:00+00:00"
    assert statements["V-1003"]["valueString"] == 'Seeing my grandson "Ciarán" play football'
    goals = {g["identifier"][0]["value"]: g for g in _search(vendor, "Goal?_count=10")}
    assert goals["V-1003"]["addresses"] == [
        {"reference": f"Observation/{statements['V-1003']['id']}"}
    ]
    assert goals["V-1003"]["startDate"] == "2026-12-05"  # type: date shortens the date-time
    (patient,) = _search(vendor, f"Patient?identifier={NHS}|9434765919")
    assert patient["birthDate"] == "1941-03-07"
    again = vendor.post("/fhir/$ingest?mapping=nursing-csv", data=EXPORT, headers=CSV)
    assert "0 resources created" in outcome_issues(again)[-1]["diagnostics"]


def test_a_quoted_cell_never_closed_is_refused_not_swallowing_the_rows_after_it(
    vendor: FlaskClient,
) -> None:
    # a hand-edited export with an opening quote left open: read leniently, the rows after it
    # would become the words of row 2 and be stored as what the patient said
    header = EXPORT.decode("utf-8-sig").splitlines(keepends=True)[0]
    broken = (
        header
        + "V-1002,9876543210,O'Neill,Padraig,21/11/1938,04/12/2026 09:15,Siân Parry,"
        + '"Being in my own garden,\r\n'
        + "V-1004,9876543210,O'Neill,Padraig,21/11/1938,05/12/2026 10:00,,Bingo on Fridays,\r\n"
    ).encode()
    response = vendor.post("/fhir/$ingest?mapping=nursing-csv", data=broken, headers=CSV)
    # answered like any input with errors: the error names the row; nothing is written
    issue, counts = outcome_issues(response)
    assert issue["severity"] == "error"
    assert issue["diagnostics"].endswith("row 2: a quoted cell is never closed")
    assert "0 resources created" in counts["diagnostics"]
    dry = _parameters(
        vendor.post("/fhir/$ingest?mapping=nursing-csv&dryRun=true", data=broken, headers=CSV)
    )
    assert dry["outcome"]["issue"][0]["diagnostics"] == issue["diagnostics"]
    assert _versions(vendor) == {}


def test_an_export_in_the_charset_its_content_type_names_keeps_the_words(
    vendor: FlaskClient,
) -> None:
    # a spreadsheet saved as "CSV (Windows)": windows-1252, said so in the Content-Type
    windows = EXPORT.decode("utf-8-sig").encode("windows-1252")
    response = vendor.post(
        "/fhir/$ingest?mapping=nursing-csv",
        data=windows,
        headers={"Content-Type": "text/csv; charset=windows-1252"},
    )
    assert outcome_issues(response)[0]["severity"] == "error"  # the impossible date, as in UTF-8
    statements = {s["identifier"][0]["value"]: s for s in _search(vendor, "Observation?_count=10")}
    assert statements["V-1003"]["valueString"] == 'Seeing my grandson "Ciarán" play football'
    assert statements["V-1001"]["performer"][0]["display"] == "Siân Parry"
    unknown = vendor.post(
        "/fhir/$ingest?mapping=nursing-csv",
        data=windows,
        headers={"Content-Type": "text/csv; charset=klingon-8"},
    )
    assert unknown.status_code == 415
    assert "klingon-8" in outcome_issues(unknown)[0]["diagnostics"]


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_map_run_exits_non_zero_and_counts_errors(config: Config, tmp_path: Path) -> None:
    env = {"WHATMATTERS_DATABASE_URL": config.database_url}
    export = tmp_path / "export.csv"
    export.write_bytes(EXPORT)
    mapping = str(VENDOR / "nursing-csv.yaml")
    dry = whatmatters("map", "run", mapping, str(export), "--dry-run", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "row 4, column 'Visit Date'" in dry.stderr
    assert "; 1 errors (dry run: nothing written)" in dry.stderr
    run = whatmatters("map", "run", mapping, str(export), env=env)
    assert run.returncode == 1
    assert "6 resources created" in run.stdout
    assert "1 errors" in run.stdout
    message = tmp_path / "oru.hl7"
    message.write_bytes(ORU)
    oru = whatmatters("map", "run", str(VENDOR / "community-oru.yaml"), str(message), env=env)
    assert oru.returncode == 0, oru.stdout + oru.stderr
    # the export made Mrs Hughes already: the message finds her rather than making her twice
    assert "5 resources created, 1 already present" in oru.stdout
    assert "0 errors" in oru.stdout
