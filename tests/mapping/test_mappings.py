"""Mapping files: golden tests of the shipped mappings, and every class of error naming the
mapping file, line and rule, and the input position."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from service.fhir.mapping_paths import target_problems
from service.mapping.files import MappingError, load_folder, load_mapping
from service.mapping.golden import map_input, run_golden
from service.validation.definitions import Definitions
from service.validation.profiles import ProfileRegistry, load_profile_resources
from service.validation.validator import ResourceValidator
from tests.builders import whatmatters

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
RESOURCES = load_profile_resources(ROOT / "profiles")
QUESTIONNAIRES = {r["url"]: r for r in RESOURCES if r["resourceType"] == "Questionnaire"}
CONCEPT_MAPS = {r["url"]: r for r in RESOURCES if r["resourceType"] == "ConceptMap"}
SHIPPED = load_folder(MAPPINGS)
ORU = (
    "MSH|^~\\&|EPR|WARD7|WM|WM|202611201015||ORU^R01|MSG0009|P|2.5.1\r"
    "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r"
    "OBX|1|ST|95541-9^^LN||Home||||||{status}|||{time}\r"
)


def _line(path: Path, pattern: str) -> int:
    """The line of the first match of ``pattern`` in a file (1-based)."""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if re.search(pattern, line):
            return number
    raise AssertionError(f"{pattern!r} not in {path}")


def _copy(tmp_path: Path, name: str, change: tuple[str, str] | None = None) -> Path:
    target = tmp_path / name
    shutil.copy(MAPPINGS / name, target)
    if change is not None:
        text = target.read_text(encoding="utf-8")
        assert change[0] in text
        target.write_text(text.replace(change[0], change[1], 1), encoding="utf-8")
    return target


def test_three_mappings_ship_for_hl7_csv_and_the_questionnaire() -> None:
    assert {m.content["source"]["format"] for m in SHIPPED.values()} == {
        "hl7v2",
        "csv",
        "questionnaire-response",
    }


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_golden_tests_of_shipped_mappings_pass_and_outputs_meet_profiles(name: str) -> None:
    mapping = SHIPPED[name]
    results = run_golden(mapping, QUESTIONNAIRES, CONCEPT_MAPS)
    assert results, "every shipped mapping carries golden tests"
    assert [(r.name, r.detail) for r in results if not r.passed] == []
    validator = ResourceValidator(ProfileRegistry.load(Definitions.shared(), ROOT / "profiles"))
    for result in results:
        for resource in result.outputs:
            issues = validator.validate(resource) + validator.validate_profiles(resource)
            assert [i for i in issues if i.severity == "error"] == []


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_map_test_command_runs_every_golden_test() -> None:
    result = whatmatters("map", "test")
    assert result.returncode == 0, result.stdout
    assert "12 passed, 0 failed" in result.stdout


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_a_failing_golden_test_fails_the_command(tmp_path: Path) -> None:
    broken = _copy(tmp_path, "survey-csv.yaml", ("value: r-1}", "value: r-99}"))
    result = whatmatters("map", "test", str(broken))
    assert result.returncode == 1
    assert "FAIL survey-csv.yaml:" in result.stdout
    assert "identifier" in result.stdout


# -- each class of error names file, line, rule and input position ------------------------


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_schema_error(tmp_path: Path) -> None:
    broken = _copy(
        tmp_path, "survey-csv.yaml", ("    resource: Observation", "    resorce: Observation")
    )
    with pytest.raises(MappingError) as caught:
        load_mapping(broken)
    line = _line(broken, r"^  - id: statement")
    assert f"survey-csv.yaml:{line} rules[0]: unknown key" in str(caught.value)
    result = whatmatters("map", "check", str(broken))
    assert result.returncode == 1
    assert f"survey-csv.yaml:{line}" in result.stdout


def test_a_value_with_two_sources_is_a_schema_error(tmp_path: Path) -> None:
    broken = _copy(
        tmp_path,
        "survey-csv.yaml",
        (
            "valueString: {column: what_matters, required: true}",
            "valueString: {column: what_matters, const: x}",
        ),
    )
    with pytest.raises(MappingError, match="needs exactly one source") as caught:
        load_mapping(broken)
    assert f"survey-csv.yaml:{_line(broken, 'valueString: ')} rules[0].fields.valueString" in str(
        caught.value
    )


def test_lint_finds_names_that_do_not_resolve(tmp_path: Path) -> None:
    broken = _copy(
        tmp_path, "wmty-oru.yaml", ("{translate: result-status,", "{translate: status-map,")
    )
    with pytest.raises(MappingError, match="no codemap 'status-map'") as caught:
        load_mapping(broken)
    assert f"wmty-oru.yaml:{_line(broken, 'status-map')} rules[0].fields.status" in str(
        caught.value
    )


def test_unknown_column() -> None:
    mapping = SHIPPED["survey-csv"]
    data = (
        "response_id,nhs,answered_at,what_matters,recorded_by,setting,setting_type\nr-1,1,x,x,,,\n"
    )
    with pytest.raises(MappingError) as caught:
        map_input(mapping, data, {}, CONCEPT_MAPS)
    line = _line(mapping.path, r"nhs_number: \{column: nhs_number")
    assert str(caught.value).startswith(f"survey-csv.yaml:{line} variables.nhs_number <- row 2:")
    assert "unknown column 'nhs_number'; the header has: response_id, nhs," in str(caught.value)


def test_unmapped_code() -> None:
    mapping = SHIPPED["wmty-oru"]
    with pytest.raises(MappingError) as caught:
        map_input(mapping, ORU.format(status="X", time="20261120101500"), {})
    line = _line(mapping.path, r"status: \{translate")
    assert str(caught.value) == (
        f"wmty-oru.yaml:{line} rules[0].fields.status <- message 1, segment OBX|1, field OBX-11: "
        "value 'X' not in map 'result-status' (http://terminology.hl7.org/CodeSystem/v2-0085)"
    )


def test_missing_time_zone(tmp_path: Path) -> None:
    no_zone = load_mapping(_copy(tmp_path, "wmty-oru.yaml", ("  timezone: Europe/London", "")))
    with pytest.raises(MappingError) as caught:
        map_input(no_zone, ORU.format(status="F", time="20261120101500"), {})
    # the error names the source tried (OBX-14, the first of the field's choices)
    assert "rules[0].fields.effectiveDateTime.first[0] <- message 1, segment OBX|1" in str(
        caught.value
    )
    assert "no time zone offset" in str(caught.value)
    with_offset = map_input(no_zone, ORU.format(status="F", time="20261120101500+0100"), {})
    assert with_offset[0].resource["effectiveDateTime"] == "2026-11-20T10:15:00+01:00"


def test_unmatched_record() -> None:
    mapping = SHIPPED["wmty-oru"]
    message = ORU.format(status="F", time="20261120101500").replace("95541-9", "8867-4")
    with pytest.raises(MappingError) as caught:
        map_input(mapping, message, {})
    line = _line(mapping.path, r"^rules:")
    assert str(caught.value).startswith(
        f"wmty-oru.yaml:{line} rules <- message 1, segment OBX|1: the record matches no rule"
    )


def test_a_mapping_may_say_to_skip_unmatched_records() -> None:
    mapping = SHIPPED["wmty-questionnaire"]
    response = {
        "resourceType": "QuestionnaireResponse",
        "id": "q9",
        "status": "completed",
        "questionnaire": "http://whatmatters.example/fhir/Questionnaire/wmty",
        "subject": {"reference": "Patient/p1"},
        "item": [{"linkId": "goal", "answer": [{"valueString": "Walk"}]}],
    }
    assert map_input(mapping, response, QUESTIONNAIRES) == []


def test_records_of_the_second_message_say_so() -> None:
    mapping = SHIPPED["wmty-oru"]
    good = ORU.format(status="F", time="20261120101500")
    bad = good.replace("MSG0009", "MSG0010").replace("|F|||", "|Q|||")
    with pytest.raises(
        MappingError, match="<- message 2, segment OBX\\|1, field OBX-11: value 'Q'"
    ):
        map_input(mapping, good + bad, {})


def test_python_hl7_escapes_are_decoded_not_altered() -> None:
    mapping = SHIPPED["wmty-oru"]
    message = ORU.format(status="F", time="20261120101500").replace(
        "||Home||", "||Caf\\E\\ \\T\\ \\F\\ Ŵyr  ||"
    )
    (output,) = map_input(mapping, message, {})
    assert output.resource["valueString"] == "Caf\\ & | Ŵyr  "


@pytest.mark.parametrize(
    ("local", "translated"),
    [
        ("WARD", "hospital"),
        ("GP", "primary-care"),
        ("OPD", "outpatient"),
        ("UNK", "other"),
        ("SPACESHIP", "other"),
    ],
)
def test_concept_map_translation_with_its_unmapped_rule(local: str, translated: str) -> None:
    mapping = SHIPPED["survey-csv"]
    data = (
        "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
        f"r-1,9000000009,2026-11-20 10:15,Home,,Somewhere,{local}\n"
    )
    (output,) = map_input(mapping, data, {}, CONCEPT_MAPS)
    assert output.resource["extension"][1]["valueCoding"]["code"] == translated


def test_a_concept_map_missing_from_the_profiles_folder_stops_loading(tmp_path: Path) -> None:
    from service import load_mappings
    from service.config import Config

    folder = tmp_path / "mappings"
    folder.mkdir()
    _copy(folder, "survey-csv.yaml", ("to-wmty-care-setting-type", "to-nowhere"))
    with pytest.raises(MappingError) as caught:
        load_mappings(Config(mappings_dir=folder))
    line = _line(folder / "survey-csv.yaml", "to-nowhere")
    assert f"survey-csv.yaml:{line} codemaps.setting-type.conceptmap: no ConceptMap" in str(
        caught.value
    )


def test_a_message_without_the_segment_a_variable_needs() -> None:
    mapping = SHIPPED["wmty-oru"]
    message = ORU.format(status="F", time="20261120101500").replace(
        "PID|1||9000000009^^^NHS^NH||Jones^Eluned\r", ""
    )
    with pytest.raises(MappingError) as caught:
        map_input(mapping, message, {})
    assert (
        "variables.nhs_number <- message 1, segment OBX|1, field PID-3(4=NHS).1: "
        "a required value is missing" in str(caught.value)
    )


def test_hl7_files_with_mllp_framing_and_lf_line_ends_are_read() -> None:
    mapping = SHIPPED["wmty-oru"]
    first = ORU.format(status="F", time="20261120101500")
    second = first.replace("MSG0009", "MSG0010").replace("||Home||", "||Garden||")
    framed = "\x0b" + first.replace("\r", "\n") + "\x1c\r\n\n\x0b" + second + "\x1c\r"
    outputs = map_input(mapping, framed, {})
    assert [o.resource["valueString"] for o in outputs] == ["Home", "Garden"]
    assert [o.position for o in outputs] == [
        "message 1, segment OBX|1",
        "message 2, segment OBX|1",
    ]


JSON_MAPPING = """\
mapping: app-export
source: {format: json, timezone: Europe/London}
rules:
  - id: statement
    when: {path: kind, equals: what-matters}
    resource: Observation
    identifier: {system: "urn:app:answers", value: {path: id, required: true}}
    template: {status: final, code: {text: "What matters to you?"}}
    fields:
      subject: {reference: {type: Patient, system: "urn:app:patients", value: {path: patient.id}}}
      valueString: {path: "answers[0].text", required: true}
      effectiveDateTime: {path: at, type: dateTime}
"""


@pytest.mark.parametrize("wildcard", ["answers[*].text", "answers[x].text", "answers[].text"])
def test_a_json_path_is_names_and_numbered_indexes_only(tmp_path: Path, wildcard: str) -> None:
    # a path reads one value: [*] read nothing at all, silently, and a required one then
    # failed with "a required value is missing" though the value was there
    path = tmp_path / "app-export.yaml"
    path.write_text(JSON_MAPPING.replace("answers[0].text", wildcard), encoding="utf-8")
    with pytest.raises(MappingError, match=re.escape(f"{wildcard!r} is not a path")):
        load_mapping(path)


def test_json_records_as_an_array_or_ndjson(tmp_path: Path) -> None:
    path = tmp_path / "app-export.yaml"
    path.write_text(JSON_MAPPING, encoding="utf-8")
    mapping = load_mapping(path)
    records = [
        {
            "id": "a1",
            "kind": "what-matters",
            "patient": {"id": "77"},
            "answers": [{"text": "Tea in the garden"}],
            "at": "2026-07-01T09:30",
        },
        {
            "id": "a2",
            "kind": "what-matters",
            "patient": {"id": "78"},
            "answers": [{"text": "Choir"}],
            "at": "2026-01-01T09:30:00Z",
        },
    ]
    as_array = map_input(mapping, records, {})
    ndjson = "\n".join(json.dumps(r) for r in records) + "\n"
    as_lines = map_input(mapping, ndjson, {})
    assert [o.resource for o in as_array] == [o.resource for o in as_lines]
    first = as_array[0].resource
    assert first["valueString"] == "Tea in the garden"
    assert first["effectiveDateTime"] == "2026-07-01T09:30:00+01:00"  # British Summer Time
    assert first["subject"] == {"reference": "Patient?identifier=urn:app:patients|77"}
    assert [o.position for o in as_array] == ["record 1", "record 2"]
    assert [o.position for o in as_lines] == ["line 1", "line 2"]
    with pytest.raises(MappingError, match=r"rules <- record 1: the record matches no rule"):
        map_input(mapping, [{"id": "x", "kind": "other"}], {})


def test_json_records_under_a_path_and_a_single_pretty_printed_object(tmp_path: Path) -> None:
    """A web form posts ``{"submissions": [...], "count": 2}`` and the mapping says
    ``record: submissions`` (the schema's "path of the record array"): it was ignored and the
    whole object read as one record. A single submission pretty-printed over several lines was
    refused as invalid JSON (read line by line). A record path the input lacks is named."""
    path = tmp_path / "app-export.yaml"
    path.write_text(JSON_MAPPING, encoding="utf-8")
    one = {
        "id": "a1",
        "kind": "what-matters",
        "patient": {"id": "77"},
        "answers": [{"text": "Tea in the garden"}],
    }
    pretty = json.dumps(one, indent=2)
    (single,) = map_input(load_mapping(path), pretty, {})
    assert single.resource["valueString"] == "Tea in the garden"
    nested = JSON_MAPPING.replace(
        "source: {format: json, timezone: Europe/London}",
        "source: {format: json, timezone: Europe/London, record: data.submissions}",
    )
    path.write_text(nested, encoding="utf-8")
    mapping = load_mapping(path)
    wrapped = {"data": {"submissions": [one, {**one, "id": "a2"}]}, "count": 2}
    outputs = map_input(mapping, json.dumps(wrapped, indent=2), {})
    assert [o.resource["identifier"][0]["value"] for o in outputs] == ["a1", "a2"]
    with pytest.raises(MappingError, match=r"no 'data.submissions' array \(source.record\)"):
        map_input(mapping, json.dumps({"submisions": []}), {})


@pytest.mark.slow  # runs the whatmatters command in a new process
def test_serve_refuses_a_broken_mappings_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    _copy(folder, "survey-csv.yaml", ("    resource: Observation", "    resorce: Observation"))
    env = {
        "WHATMATTERS_MAPPINGS_DIR": str(folder),
        "WHATMATTERS_DATABASE_URL": f"sqlite:///{tmp_path}/x.db",
    }
    result = whatmatters("serve", "--port", "1", env=env)
    assert result.returncode == 2
    assert "survey-csv.yaml:" in result.stderr
    assert "unknown key" in result.stderr


def test_a_batch_file_and_another_field_separator_are_read_as_their_messages() -> None:
    """An interface engine's overnight file wraps its messages in FHS/BHS ... BTS/FTS (HL7
    v2.5.1 section 2.10.3), and another sender's MSH-1 is ``#``: both were refused with "an
    HL7 v2 message starts with an MSH segment"."""
    mapping = SHIPPED["wmty-oru"]
    first = ORU.format(status="F", time="20261120101500")
    second = first.replace("MSG0009", "MSG0010").replace("||Home||", "||The sea||")
    batch = f"FHS|^~\\&|EPR|WARD7\rBHS|^~\\&|EPR|WARD7\r{first}{second}BTS|2\rFTS|1\r"
    words = [o.resource["valueString"] for o in map_input(mapping, batch, {})]
    assert len(words) == 2
    assert words[0] != words[1]
    hashed = first.replace("|", "#")
    (made,) = map_input(mapping, hashed, {})
    assert made.resource["valueString"] == words[0]


def test_date_formats_and_variables_that_need_themselves_fail_the_check_at_their_line(
    tmp_path: Path,
) -> None:
    """A newcomer writes %H:%m (the month again) for the minutes, %i for them, and a
    variable whose fallback is itself: each passed the check and failed later, the first with
    a regex error blamed on the rules, the last blamed on the identifier of whatever record
    came without the first source. The check now names each at its own line."""
    path = _copy(
        tmp_path,
        "wmty-oru.yaml",
        (
            "  timezone: Europe/London",
            '  timezone: Europe/London\n  date_formats: ["%d.%m.%Y %H:%m", "%H:%i"]',
        ),
    )
    text = path.read_text(encoding="utf-8").replace(
        "{var: message_id}]}", "{var: message_id}, {var: order}]}"
    )
    path.write_text(text, encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    message = str(caught.value)
    assert "source.date_formats[0]: '%d.%m.%Y %H:%m' is not a date format" in message
    assert "a directive is used twice" in message
    assert "source.date_formats[1]: '%H:%i' is not a date format" in message
    assert "variables.order: the variable 'order' needs itself" in message
    line = _line(path, r"^  order:")
    assert f"wmty-oru.yaml:{line} variables.order" in message


def test_a_misspelt_hl7_path_and_a_golden_error_text_are_explained(tmp_path: Path) -> None:
    """A newcomer's ``msh-4.1`` got the schema's raw regex back, and a golden test whose
    expected error text did not match was reported as "unexpected error" without the text it
    looked for."""
    path = _copy(tmp_path, "wmty-oru.yaml", ("{hl7: MSH-4.1, required: true}", "{hl7: msh-4.1}"))
    with pytest.raises(MappingError) as caught:
        load_mapping(path)
    assert "variables.facility.hl7: 'msh-4.1' is not an HL7 v2 path" in str(caught.value)
    assert "PID-3(4=NHS).1" in str(caught.value)
    wrong = _copy(tmp_path, "wmty-oru.yaml", ('error: "nhs_number"', 'error: "nhs_numbr"'))
    results = run_golden(load_mapping(wrong), QUESTIONNAIRES, CONCEPT_MAPS)
    (failed,) = [r for r in results if not r.passed]
    assert failed.detail.startswith("the error does not contain 'nhs_numbr'; it was: ")


def test_the_check_reads_a_rules_template_as_it_reads_its_fields(tmp_path: Path) -> None:
    """A typo in a template key (``categroy``) or a constant of the wrong JSON type in it passed
    ``map check`` and failed only at run time, blamed on the whole rule. The template is now
    checked element by element, at its key's line, with a "did you mean"."""
    typo = _copy(
        tmp_path,
        "wmty-oru.yaml",
        ("    template:\n      category:", "    template:\n      categroy:"),
    )
    problems = target_problems(load_mapping(typo))
    assert len(problems) == 1
    line = _line(typo, r"^      categroy:")
    assert problems[0].startswith(f"wmty-oru.yaml:{line} rules[0].template.categroy: ")
    assert "did you mean 'category'?" in problems[0]
    assert target_problems(load_mapping(MAPPINGS / "wmty-oru.yaml")) == []
