"""$ingest over REST and ``whatmatters map run``: one transaction per input, dry runs that
write nothing, and re-ingesting the same input changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from service.errors import Unprocessable
from service.fhir.actor import Actor
from tests.builders import outcome_issues, whatmatters
from tests.direct import Direct
from tests.priorities.conversations import add_patient

HL7 = {"Content-Type": "x-application/hl7-v2+er7"}
CSV = {"Content-Type": "text/csv"}
MESSAGE = (
    "MSH|^~\\&|EPR|YSBYTY-GWYNEDD^Ward 7|WM|WM|202611201015||ORU^R01|MSG0001|P|2.5.1\r"
    "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r"
    "OBX|1|ST|95541-9^Care experience preference^LN||Walking Bramble \\T\\ the sea||||||F|||"
    "20261120101500||^Nurse Ada Okafor\r"
    "OBX|2|ST|75773-2^Treatment preference^LN||Cared for at home||||||F|||20260720101500\r"
)
SURVEY = (
    "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
    "r-1,9000000009,2026-11-20 10:15,Singing in the choir,Nurse Ada Okafor,Bodnant Surgery,GP\n"
    "r-2,9000000009,2026-11-21 09:00,Keeping my own front door key,,,\n"
)


def _history_size(client: FlaskClient) -> int:
    return len(client.get("/fhir/_history?_count=1000").get_json().get("entry", []))


def test_ingesting_the_same_hl7_file_twice_leaves_the_store_unchanged(client: FlaskClient) -> None:
    add_patient(client)
    first = client.post("/fhir/$ingest?mapping=wmty-oru", data=MESSAGE, headers=HL7)
    assert first.status_code == 200
    assert "2 resources created" in outcome_issues(first)[0]["diagnostics"]
    before = _history_size(client)
    second = client.post("/fhir/$ingest?mapping=wmty-oru", data=MESSAGE, headers=HL7)
    assert second.status_code == 200
    assert "0 resources created, 2 already present" in outcome_issues(second)[0]["diagnostics"]
    assert _history_size(client) == before
    found = client.get("/fhir/Observation?code=http://loinc.org|95541-9").get_json()
    (statement,) = [e["resource"] for e in found["entry"]]
    assert statement["subject"] == {"reference": "Patient/p1"}  # the conditional reference resolved
    assert statement["valueString"] == "Walking Bramble & the sea"


def test_two_records_of_one_message_with_one_identifier_are_an_error_not_one_dropped(
    client: FlaskClient,
) -> None:
    """Another vendor's ORU^R01 with two OBR groups and no order numbers restarts OBX set ids
    at 1 in each: the mapping's identifier (facility, message id, set id) is then the same for
    two answers. The first was kept and the second dropped with a warning (exit status 0 for
    ``map run``): a patient's words lost. It is now an error naming the second record, and
    the input, one transaction, writes nothing."""
    add_patient(client)
    message = (
        "MSH|^~\\&|EPR|WARD7|WM|WM|202611201015||ORU^R01|MSG0100|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH||Jones\r"
        "OBR|1|||95541-9^What matters^LN\r"
        "OBX|1|ST|95541-9^Care^LN||Walking the dog||||||F|||20261120101500\r"
        "OBR|2|||95541-9^What matters^LN\r"
        "OBX|1|ST|95541-9^Care^LN||Seeing the sea||||||F|||20261120101500\r"
    )
    response = client.post("/fhir/$ingest?mapping=wmty-oru", data=message, headers=HL7)
    assert response.status_code == 422, response.get_data(as_text=True)
    error = outcome_issues(response)[0]
    assert error["severity"] == "error"
    assert error["diagnostics"].startswith("message 1, segment OBX|1")
    assert "an earlier record of this input has the same identifier" in error["diagnostics"]
    assert "WARD7|MSG0100|1) and other content" in error["diagnostics"]
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0
    numbered = message.replace("OBR|1|||", "OBR|1||ORD-1|").replace("OBR|2|||", "OBR|2||ORD-2|")
    stored = client.post("/fhir/$ingest?mapping=wmty-oru", data=numbered, headers=HL7)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 2


def test_a_resent_row_with_other_words_is_kept_as_stored_and_the_sender_is_told(
    client: FlaskClient,
) -> None:
    # the survey export sends r-1 again with other words; the mapping has no corrects rule
    add_patient(client)
    assert (
        client.post("/fhir/$ingest?mapping=survey-csv", data=SURVEY, headers=CSV).status_code == 200
    )
    before = _history_size(client)
    resent = SURVEY.replace("Singing in the choir", "Singing in the chapel choir")
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=resent, headers=CSV)
    assert response.status_code == 200
    warning, counts = outcome_issues(response)
    assert warning["severity"] == "warning"
    assert warning["diagnostics"].startswith("row 2: Observation/")
    assert "survey-csv|r-1) is already stored with other content" in warning["diagnostics"]
    assert "0 resources created, 2 already present" in counts["diagnostics"]
    assert _history_size(client) == before
    # the same row twice in one input, the second with other words: an error at row 4
    twice = (
        SURVEY.replace("r-2,", "r-3,")
        + SURVEY.splitlines()[2].replace("r-2,", "r-3,").replace("front door key", "back door key")
        + "\n"
    )
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=twice, headers=CSV)
    assert response.status_code == 422
    errors = [i for i in outcome_issues(response) if i["severity"] == "error"]
    assert [e["diagnostics"].split(":")[0] for e in errors] == ["row 4"]
    unchanged = client.post("/fhir/$ingest?mapping=survey-csv", data=SURVEY, headers=CSV)
    assert [i["severity"] for i in outcome_issues(unchanged)] == ["information"]


def test_dry_run_returns_the_bundle_and_its_outcome_and_writes_nothing(client: FlaskClient) -> None:
    add_patient(client)
    response = client.post("/fhir/$ingest?mapping=survey-csv&dryRun=true", data=SURVEY, headers=CSV)
    assert response.status_code == 200
    parameters = {p["name"]: p["resource"] for p in response.get_json()["parameter"]}
    bundle = parameters["bundle"]
    assert bundle["type"] == "transaction"
    assert [e["request"]["ifNoneExist"] for e in bundle["entry"]] == [
        "identifier=http://whatmatters.example/fhir/identifier/survey-csv|r-1",
        "identifier=http://whatmatters.example/fhir/identifier/survey-csv|r-2",
    ]
    assert parameters["outcome"]["issue"][0]["severity"] == "information"
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_one_bad_record_writes_nothing_and_names_the_place(client: FlaskClient) -> None:
    add_patient(client)
    bad = SURVEY + "r-3,9000000009,2026-11-22 09:00,,,,\n"
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=bad, headers=CSV)
    assert response.status_code == 422
    issues = outcome_issues(response)
    assert issues[0]["diagnostics"].startswith("survey-csv.yaml:")
    assert (
        "rules[0].fields.valueString <- row 4, column 'what_matters': a required value is missing"
        in issues[0]["diagnostics"]
    )
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_invalid_output_is_reported_with_rule_and_position(client: FlaskClient) -> None:
    add_patient(client)
    # no patient with this NHS number: the subject cannot be resolved
    orphan = SURVEY.replace("9000000009", "1111111111")
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=orphan, headers=CSV)
    assert response.status_code == 422
    message = outcome_issues(response)[0]["diagnostics"]
    assert message.startswith("survey-csv.yaml:")
    assert "rules[0].fields.subject <- row 2: " in message  # the field that made the reference
    assert "matches no resource" in message


def test_a_questionnaire_response_is_extracted(client: FlaskClient) -> None:
    add_patient(client)
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "qr-7",
        "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty",
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-20T10:15:00+00:00",
        "item": [{"linkId": "what-matters", "answer": [{"valueString": "Gweld y môr"}]}],
    }
    result = client.post(
        "/fhir/$ingest?mapping=wmty-questionnaire",
        data=json.dumps(response),
        headers={"Content-Type": "application/fhir+json"},
    )
    assert result.status_code == 200, result.get_data(as_text=True)
    found = client.get("/fhir/Observation?patient=Patient/p1").get_json()["entry"]
    assert [e["resource"]["valueString"] for e in found] == ["Gweld y môr"]
    assert found[0]["resource"]["performer"] == [{"reference": "Patient/p1"}]


def test_unknown_mapping_and_wrong_media_type(client: FlaskClient) -> None:
    unknown = client.post("/fhir/$ingest?mapping=nope", data="x", headers=CSV)
    assert unknown.status_code == 400
    assert "survey-csv" in outcome_issues(unknown)[0]["diagnostics"]
    wrong = client.post("/fhir/$ingest?mapping=survey-csv", data="x", headers=HL7)
    assert wrong.status_code == 415
    outcome_issues(wrong)
    assert (
        client.post(
            "/fhir/$ingest?mapping=survey-csv&dryRun=yes", data=SURVEY, headers=CSV
        ).status_code
        == 400
    )


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_map_run_command_writes_and_dry_runs(tmp_path: Path) -> None:
    from service import build_fhir_service
    from service.config import Config

    database = f"sqlite:///{tmp_path}/ingest.db"
    env = {"WHATMATTERS_DATABASE_URL": database}
    survey = tmp_path / "survey.csv"
    survey.write_text(SURVEY, encoding="utf-8")
    mapping = str(Path(__file__).resolve().parents[2] / "mappings" / "survey-csv.yaml")
    assert whatmatters("init-db", env=env).returncode == 0
    dry = whatmatters("map", "run", mapping, str(survey), "--dry-run", env=env)
    assert dry.returncode == 1, dry.stdout + dry.stderr  # the dry run meets what the run would
    # stdout is the JSON alone (a pipe into jq failed on the summary lines after it); what the
    # dry run found is on stderr
    shown = json.loads(dry.stdout)
    assert shown["resourceType"] == "Parameters"
    assert shown["parameter"][0]["resource"]["resourceType"] == "Bundle"
    assert "rules[0].fields.subject <- row 2: " in dry.stderr
    assert "(dry run: nothing written)" in dry.stderr
    orphan = whatmatters("map", "run", mapping, str(survey), env=env)
    assert orphan.returncode == 1  # no such patient yet: nothing is written
    assert "rules[0].fields.subject <- row 2: " in orphan.stdout
    fhir = build_fhir_service(Config(database_url=database))
    nhs = {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000009"}
    Direct(fhir).create("Patient", {"resourceType": "Patient", "identifier": [nhs]})
    fhir.store.close()
    run = whatmatters("map", "run", mapping, str(survey), env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "2 resources created" in run.stdout
    assert "survey-csv [" in run.stderr  # the progress bar
    again = whatmatters("map", "run", mapping, str(survey), env=env)
    assert "0 resources created, 2 already present" in again.stdout


def test_hostile_inputs_get_422_outcomes_not_500(client: FlaskClient) -> None:
    add_patient(client)
    cases = [
        ("survey-csv", CSV, b"response_id,nhs_number\n\xff\xfe,1\n"),
        ("survey-csv", CSV, SURVEY.replace(",GP\n", ",GP,extra,cells\n").encode()),
        ("wmty-oru", HL7, b"\x00\x01 not hl7 at all"),
        ("wmty-oru", HL7, b"MSH|^~\\&|broken"),
        (
            "wmty-questionnaire",
            {"Content-Type": "application/fhir+json"},
            b'{"resourceType": "Patient"}',
        ),
        ("wmty-questionnaire", {"Content-Type": "application/fhir+json"}, b"[1, 2"),
    ]
    for mapping, headers, body in cases:
        response = client.post(f"/fhir/$ingest?mapping={mapping}", data=body, headers=headers)
        assert response.status_code == 422, (mapping, body, response.get_data(as_text=True))
        assert outcome_issues(response)[0]["diagnostics"]
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_a_row_that_lost_cells_is_refused_naming_its_row_not_stored_shifted(
    client: FlaskClient,
) -> None:
    """A spreadsheet export whose second row lost two trailing cells (the text editor of the
    person fixing it trimmed them): which cells are missing cannot be told, so the input is
    refused at that row and nothing is written (it was stored with the columns left empty)."""
    add_patient(client)
    short = SURVEY.replace(",Bodnant Surgery,GP\n", "\n")
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=short, headers=CSV)
    assert response.status_code == 422
    assert (
        "row 2: 5 cells where the header has 7 columns"
        in outcome_issues(response)[0]["diagnostics"]
    )
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_a_repeated_answer_and_the_nurses_notes_after_it_are_all_stored(
    client: FlaskClient,
) -> None:
    """An EPR's ORU^R01 sends a treatment preference as two repetitions of OBX-5 (ST allows
    ``~``) and two NTE comments after the OBX. Only the first repetition was stored and the
    comments were dropped: now each repetition is a line of valueString and the NTEs are the
    Observation's note (R4 Observation.note, Annotation)."""
    add_patient(client)
    message = (
        "MSH|^~\\&|EPR|YSBYTY-GWYNEDD^Ward 7|WM|WM|202611201015||ORU^R01|MSG0107|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r"
        "OBR|1|||75773-2^Treatment preference^LN\r"
        "OBX|1|ST|75773-2^Treatment preference^LN||At home with Huw~No ambulance at night||||||F"
        "|||20261120101500\r"
        "NTE|1|L|Daughter was present\r"
        "NTE|2|L|Wants her GP told \\T\\ the out-of-hours team\r"
    )
    response = client.post("/fhir/$ingest?mapping=wmty-oru", data=message, headers=HL7)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = client.get("/fhir/Observation?code=http://loinc.org|75773-2").get_json()
    (preference,) = [e["resource"] for e in found["entry"]]
    assert preference["valueString"] == "At home with Huw\nNo ambulance at night"
    assert preference["note"] == [
        {"text": "Daughter was present\nWants her GP told & the out-of-hours team"}
    ]


def test_an_empty_input_writes_nothing_and_says_so(client: FlaskClient) -> None:
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=b"", headers=CSV)
    assert response.status_code == 200
    assert outcome_issues(response)[0]["diagnostics"].startswith("0 records read")


def test_an_output_that_breaks_its_profile_names_rule_and_record(
    client: FlaskClient, tmp_path: Path
) -> None:
    from service.fhir.ingest import ingest
    from service.mapping.files import load_mapping

    add_patient(client)
    source = Path(__file__).resolve().parents[2] / "mappings" / "survey-csv.yaml"
    text = source.read_text(encoding="utf-8")
    what_matters = (
        "        - coding: [{system: http://hl7.org/fhir/us/pco/CodeSystem/"
        "pco-concepts-temporary, code: what-matters}]\n"
    )
    assert what_matters in text
    broken = tmp_path / "survey-csv.yaml"
    broken.write_text(text.replace(what_matters, "", 1), encoding="utf-8")
    mapping = load_mapping(broken)
    fhir = client.application.extensions["whatmatters.fhir"]
    mappings = client.application.extensions["whatmatters.mappings"]
    with pytest.raises(Unprocessable) as caught:
        ingest(fhir, Actor.system(), mapping, SURVEY, {}, conceptmaps=mappings.conceptmaps)
    issues = caught.value.outcome_issues()
    rule_line = next(
        n for n, line in enumerate(broken.read_text().splitlines(), 1) if "- id: statement" in line
    )
    first = issues[0].diagnostics
    assert first.startswith(f"survey-csv.yaml:{rule_line} rules[0] <- row 2: the Observation made")
    assert "Observation.category needs at least 2" in first
    assert any("slice 'whatMatters'" in i.diagnostics for i in issues)
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_an_empty_reference_the_profile_requires_is_an_error_at_its_field(
    client: FlaskClient, tmp_path: Path
) -> None:
    from service.fhir.ingest import ingest
    from service.mapping.files import load_mapping

    source = Path(__file__).resolve().parents[2] / "mappings" / "survey-csv.yaml"
    required = "nhs_number: {column: nhs_number, required: true, normalise: trim}"
    text = source.read_text(encoding="utf-8")
    assert required in text
    optional = tmp_path / "survey-csv.yaml"
    optional.write_text(text.replace(required, required.replace(" required: true,", "")))
    mapping = load_mapping(optional)
    add_patient(client)
    fhir = client.application.extensions["whatmatters.fhir"]
    mappings = client.application.extensions["whatmatters.mappings"]
    no_nhs = SURVEY.replace("r-2,9000000009,", "r-2,,")
    result, report = ingest(
        fhir, Actor.system(), mapping, no_nhs, {}, dry_run=True, conceptmaps=mappings.conceptmaps
    )
    subject_line = next(
        n for n, line in enumerate(optional.read_text().splitlines(), 1) if "subject:" in line
    )
    assert [issue.diagnostics for issue in report.errors] == [
        f"survey-csv.yaml:{subject_line} rules[0].fields.subject <- row 3: the Observation made "
        "is not valid: Observation.subject needs at least 1 value(s) but has 0 "
        "(profile WMTYStatement)"
    ]
    summary = result.body["parameter"][1]["resource"]["issue"][-1]["diagnostics"]
    # one error, and the input is one transaction: nothing would be written
    assert summary.endswith(
        "0 resources created, 0 already present and unchanged, 0 corrected; 1 errors"
    )


def _result(
    message_id: str, status: str, words: str, set_id: int = 1, code: str = "95541-9"
) -> str:
    return (
        f"MSH|^~\\&|EPR|YSBYTY-GWYNEDD^Ward 7|WM|WM|202611201015||ORU^R01|{message_id}|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r"
        "OBR|1|PLC-31|ORD-7705|WMTY^What matters^L\r"
        f"OBX|{set_id}|ST|{code}^What matters^LN||{words}||||||{status}|||20261120101500"
        "||^Nurse Ada\r"
    )


def test_a_resend_and_a_correction_with_new_control_ids_update_one_statement(
    client: FlaskClient,
) -> None:
    """An EPR's interface engine sends a result, resends it, corrects it (OBX-11 C), and later
    deletes another (D), each message with its own MSH-10 as HL7 v2.5.1 section 2.14.9.10 asks.
    The wmty-oru identifier held MSH-10 and the mapping had no ``corrects`` rule: four
    Observations, the old and corrected words both on the patient's list and the deleted one
    still final. Now the order number (OBR-3) keys the result."""
    add_patient(client)
    first = _result("EPR-1001", "F", "Singing in the choir")
    preference = _result("EPR-1002", "F", "At home", set_id=2, code="75773-2")
    for message in (first, preference):
        assert (
            client.post("/fhir/$ingest?mapping=wmty-oru", data=message, headers=HL7).status_code
            == 200
        )
    resend = client.post(
        "/fhir/$ingest?mapping=wmty-oru", data=first.replace("EPR-1001", "EPR-1003"), headers=HL7
    )
    assert "0 resources created, 1 already present" in outcome_issues(resend)[0]["diagnostics"]
    corrected = _result("EPR-1004", "C", "Singing in the chapel choir")
    assert (
        client.post("/fhir/$ingest?mapping=wmty-oru", data=corrected, headers=HL7).status_code
        == 200
    )
    deleted = _result("EPR-1005", "D", "At home", set_id=2, code="75773-2")
    assert (
        client.post("/fhir/$ingest?mapping=wmty-oru", data=deleted, headers=HL7).status_code == 200
    )
    found = client.get("/fhir/Observation?patient=Patient/p1").get_json()
    stored = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in found["entry"]}
    assert len(found["entry"]) == 2
    statement, kept = stored["95541-9"], stored["75773-2"]
    assert (statement["status"], statement["valueString"]) == (
        "corrected",
        "Singing in the chapel choir",
    )
    assert statement["meta"]["versionId"] == "2"
    assert kept["status"] == "entered-in-error"
    assert statement["identifier"][0]["value"] == "YSBYTY-GWYNEDD|ORD-7705|1"
    words = json.dumps(client.get("/fhir/Patient/p1/$what-matters").get_json())
    assert "Singing in the chapel choir" in words
    assert 'Singing in the choir"' not in words


def _response(status: str, *answers: str) -> str:
    return json.dumps(
        {
            "resourceType": "QuestionnaireResponse",
            "id": "gp-qr-31",
            "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty",
            "status": status,
            "subject": {"reference": "Patient/p1"},
            "authored": "2026-11-20T10:15:00+00:00",
            "item": [{"linkId": "what-matters", "answer": [{"valueString": a} for a in answers]}],
        }
    )


def test_a_questionnaire_response_from_another_system_keeps_its_status_and_every_answer(
    client: FlaskClient,
) -> None:
    """A GP system sends its QuestionnaireResponses as the patient fills them in: first
    in-progress, then completed, later amended with other words, and finally entered in error.
    Every one became a final statement (the status was not read), the amendment kept the old
    words, and a second answer to the non-repeating what-matters item was dropped without a
    word. Now: in-progress is refused, completed is final, amended updates the statement
    (R4 QuestionnaireResponse.status), entered-in-error retracts it, and two answers to an item
    that allows one are refused naming the item."""
    add_patient(client)
    headers = {"Content-Type": "application/fhir+json"}

    def ingest(body: str) -> object:
        return client.post("/fhir/$ingest?mapping=wmty-questionnaire", data=body, headers=headers)

    def statements() -> list[dict[str, object]]:
        found = client.get("/fhir/Observation?patient=Patient/p1").get_json()
        return [e["resource"] for e in found.get("entry", [])]

    early = ingest(_response("in-progress", "Singing"))
    assert early.status_code == 422
    assert "'in-progress' not in map 'response-status'" in outcome_issues(early)[0]["diagnostics"]
    two = ingest(_response("completed", "Singing in the choir", "My garden"))
    assert two.status_code == 422
    assert "2 answers to item 'what-matters'" in outcome_issues(two)[0]["diagnostics"]
    assert statements() == []
    assert ingest(_response("completed", "Singing in the choir")).status_code == 200
    assert ingest(_response("amended", "Singing in the chapel choir")).status_code == 200
    (amended,) = statements()
    assert (amended["status"], amended["valueString"]) == ("amended", "Singing in the chapel choir")
    assert ingest(_response("entered-in-error", "Singing in the chapel choir")).status_code == 200
    (retracted,) = statements()
    assert retracted["status"] == "entered-in-error"
    assert retracted["meta"]["versionId"] == "3"


def test_a_uk_spreadsheet_export_with_its_dates_and_trailing_empty_rows_is_read(
    client: FlaskClient,
) -> None:
    """A practice saves the survey from Excel (UK locale): dates as 20/11/2026 10:15 and rows of
    empty cells after the data. The dates were refused (only ISO 8601) and the empty rows
    failed the whole file as rows without a response id."""
    add_patient(client)
    export = (
        "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\r\n"
        "x-1,9000000009,20/11/2026 10:15,Singing in the choir,Nurse Ada Okafor,Bodnant Surgery,"
        "GP\r\n"
        "x-2,9000000009,21/07/2026 09:00,Keeping my own front door key,,,\r\n"
        ",,,,,,\r\n"
        ",,,,,,\r\n"
    )
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=export, headers=CSV)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = client.get("/fhir/Observation?patient=Patient/p1&_sort=date").get_json()["entry"]
    assert [e["resource"]["effectiveDateTime"] for e in found] == [
        "2026-07-21T09:00:00+01:00",  # British Summer Time
        "2026-11-20T10:15:00+00:00",
    ]


def test_an_hl7_message_in_the_character_set_its_header_declares_is_read(
    client: FlaskClient,
) -> None:
    """A Welsh EPR sends ISO 8859-1 and says so where HL7 v2 says it (MSH-18 "8859/1", table
    0211), not in an HTTP charset. It was refused as "not UTF-8"; now MSH-18 is read. Without
    MSH-18 the bytes are still refused, and the error says what the header declared."""
    add_patient(client)
    message = (
        "MSH|^~\\&|EPR|YSBYTY-GWYNEDD^Ward 7|WM|WM|202611201015||ORU^R01|EPR-8859|P|2.5.1|||AL|NE"
        "|GBR|8859/1\r"
        "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r"
        "OBX|1|ST|75773-2^Treatment preference^LN||Caf\u00e9 in Llan with Si\u00e2n||||||F|||"
        "20261120101500\r"
    )
    sent = client.post(
        "/fhir/$ingest?mapping=wmty-oru", data=message.encode("latin-1"), headers=HL7
    )
    assert sent.status_code == 200, sent.get_data(as_text=True)
    (stored,) = client.get("/fhir/Observation?patient=Patient/p1").get_json()["entry"]
    assert stored["resource"]["valueString"] == "Caf\u00e9 in Llan with Si\u00e2n"
    undeclared = message.replace("|GBR|8859/1", "|GBR|").replace("EPR-8859", "EPR-8860")
    refused = client.post(
        "/fhir/$ingest?mapping=wmty-oru", data=undeclared.encode("latin-1"), headers=HL7
    )
    assert refused.status_code == 422
    assert "not UTF-8" in outcome_issues(refused)[0]["diagnostics"]


def test_a_byte_that_is_not_utf8_is_refused_at_its_row_and_column(client: FlaskClient) -> None:
    """A survey export of 50 rows whose 50th holds one Latin-1 byte (a name typed on another
    machine): the error said "row 1: not UTF-8", the start of the input; it names the row and
    the column now, and nothing is written."""
    add_patient(client)
    header = "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
    rows = "".join(f"r-{n},9000000009,2026-11-20 10:15,Walking {n},,,\n" for n in range(1, 50))
    bad = b"r-50,9000000009,2026-11-20 10:15,Caf\xe9 with friends,,,\n"
    data = (header + rows).encode("utf-8") + bad
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=data, headers=CSV)
    assert response.status_code == 422
    assert "row 51, column 'what_matters': not UTF-8" in outcome_issues(response)[0]["diagnostics"]
    assert client.get("/fhir/Observation?_summary=count").get_json()["total"] == 0


def test_a_semicolon_export_is_refused_with_the_setting_that_reads_it(
    client: FlaskClient,
) -> None:
    """A German-locale spreadsheet saves the survey with ';' between cells: the header read as
    one column and the error said only "unknown column" (or "more cells"), with no word of
    source.delimiter."""
    add_patient(client)
    export = SURVEY.replace(",", ";")
    response = client.post("/fhir/$ingest?mapping=survey-csv", data=export, headers=CSV)
    assert response.status_code == 422
    assert "set source.delimiter" in outcome_issues(response)[0]["diagnostics"]
    mixed = export.replace("Singing in the choir", "Singing, and the choir")
    refused = client.post("/fhir/$ingest?mapping=survey-csv", data=mixed, headers=CSV)
    assert refused.status_code == 422
    assert "set source.delimiter" in outcome_issues(refused)[0]["diagnostics"]


def test_hl7_null_values_and_text_split_over_obx_lines(client: FlaskClient) -> None:
    """HL7 v2.5 §2.5.3: a field of "" (two double quotes) is null, not text; §7.4.2.4: OBX
    segments sharing OBX-3 and the OBX-4 sub-ID are parts of one observation. Another vendor's
    ORU stored '""' as the patient's words, refused an OBX-14 of "" rather than falling back
    to OBR-7, and made two statements of one sentence split over two TX lines."""
    add_patient(client)
    message = (
        "MSH|^~\\&|EPR|WARD7|WM|WM|202611201015||ORU^R01|MSG0200|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH||Jones\r"
        "OBR|1||ORD-7|95541-9^What matters^LN|||20261120093000\r"
        'OBX|1|TX|95541-9^Care^LN|1|I do not want to go back into a care home,||||||F|||""\r'
        "OBX|2|TX|95541-9^Care^LN|1|I want to die at home with my dog.||||||F\r"
        'OBX|3|ST|95541-9^Care^LN|2|""||||||F|||20261120101500\r'
    )
    response = client.post("/fhir/$ingest?mapping=wmty-oru", data=message, headers=HL7)
    assert response.status_code == 422, response.get_data(as_text=True)
    problem = outcome_issues(response)[0]["diagnostics"]
    assert "OBX|3" in problem
    assert "valueString" in problem
    fixed = message.replace('OBX|3|ST|95541-9^Care^LN|2|""', "OBX|3|ST|95541-9^Care^LN|2|Tea")
    stored = client.post("/fhir/$ingest?mapping=wmty-oru", data=fixed, headers=HL7)
    assert stored.status_code == 200, stored.get_data(as_text=True)
    found = client.get("/fhir/Observation?code=http://loinc.org|95541-9&_sort=_id").get_json()
    said = sorted(
        (e["resource"]["valueString"], e["resource"]["effectiveDateTime"]) for e in found["entry"]
    )
    assert said == [
        (
            "I do not want to go back into a care home,\nI want to die at home with my dog.",
            "2026-11-20T09:30:00+00:00",
        ),
        ("Tea", "2026-11-20T10:15:00+00:00"),
    ]


def test_each_coded_answer_gives_its_own_words(client: FlaskClient) -> None:
    """HL7 v2.5.1 2.A.13 (CWE): the original text (component 9) is optional on each
    repetition. A treatment preference of two coded answers, one with its original text and
    one without, kept only one of them: ``first`` took the choice that found anything in any
    repetition, and dropped the other answer's words."""
    add_patient(client)
    message = (
        "MSH|^~\\&|EPR|WARD7|WM|WM|202611201015||ORU^R01|MSG0300|P|2.5.1\r"
        "PID|1||9000000009^^^NHS^NH||Jones\r"
        "OBR|1||ORD-9|75773-2^Treatment preferences^LN\r"
        "OBX|1|CWE|75773-2^TP^LN||A^Home^L^^^^^^Home with my family~B^No feeding tubes^L"
        "||||||F|||20261201090000\r"
    )
    response = client.post("/fhir/$ingest?mapping=wmty-oru", data=message, headers=HL7)
    assert response.status_code == 200, response.get_data(as_text=True)
    found = client.get("/fhir/Observation?code=http://loinc.org|75773-2").get_json()
    (preference,) = [e["resource"] for e in found["entry"]]
    assert preference["valueString"] == "Home with my family\nNo feeding tubes"


def test_a_correction_with_nothing_of_the_patients_to_correct_is_flagged(
    client: FlaskClient,
) -> None:
    """An interface engineer sent a result for one patient, then a correction (OBX-11 C) of
    the same order and OBX for another patient: the correction was stored as a new result,
    'corrected' with no earlier version, and the first patient's result stayed final, with no
    word to anyone. It is still stored (the other patient's result is not touched), and the
    sender is now told: a correction that corrects nothing may be a wrong-patient posting."""
    add_patient(client)
    add_patient(client, "p2", "9000000017")
    first = _result("EPR-2001", "F", "Singing in the choir")
    assert client.post("/fhir/$ingest?mapping=wmty-oru", data=first, headers=HL7).status_code == 200
    other = _result("EPR-2002", "C", "Singing in the choir").replace("9000000009", "9000000017")
    response = client.post("/fhir/$ingest?mapping=wmty-oru", data=other, headers=HL7)
    assert response.status_code == 200, response.get_data(as_text=True)
    warnings = [i for i in outcome_issues(response) if i["severity"] == "warning"]
    assert len(warnings) == 1
    assert "corrects nothing" in warnings[0]["diagnostics"]
    assert "YSBYTY-GWYNEDD|ORD-7705|1" in warnings[0]["diagnostics"]
