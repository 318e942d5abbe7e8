"""Dates a mapping can describe (strptime formats, time zones, clock changes) and HL7 v2 fields
read by repetition: every impossible value is an error at its record and column or field."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.mapping.files import MappingError, load_mapping
from service.mapping.golden import map_input

CSV_MAPPING = """\
mapping: dates
source:
  format: csv
  timezone: Europe/London
  date_formats: ["%d/%m/%Y %H:%M", "%d/%m/%Y"]
{extra}
rules:
  - id: statement
    resource: Observation
    identifier:
      system: http://example.org/id
      value: {{column: id}}
    fields:
      effectiveDateTime: {{column: when, type: dateTime{field}}}
      issued: {{column: when, type: date}}
"""


def _map_when(tmp_path: Path, when: str, extra: str = "", field: str = "") -> dict[str, str]:
    path = tmp_path / "dates.yaml"
    path.write_text(CSV_MAPPING.format(extra=extra, field=field), encoding="utf-8")
    (output,) = map_input(load_mapping(path), f"id,when\nx-1,{when}\n", {})
    return {k: output.resource[k] for k in ("effectiveDateTime", "issued")}


@pytest.mark.parametrize(
    ("when", "instant", "day"),
    [
        ("04/12/2026 14:30", "2026-12-04T14:30:00+00:00", "2026-12-04"),  # UK day first
        ("04/07/2026 14:30", "2026-07-04T14:30:00+01:00", "2026-07-04"),  # summer time
        ("04/12/2026", "2026-12-04", "2026-12-04"),  # a date alone stays a date
        ("2026-12-04T14:30:00Z", "2026-12-04T14:30:00Z", "2026-12-04"),  # ISO still reads
        ("20261204143000+0100", "2026-12-04T14:30:00+01:00", "2026-12-04"),  # and HL7 DTM
    ],
)
def test_declared_formats_then_iso_and_hl7(
    tmp_path: Path, when: str, instant: str, day: str
) -> None:
    assert _map_when(tmp_path, when) == {"effectiveDateTime": instant, "issued": day}


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        ("2026-13-31 25:00", "value '2026-13-31 25:00' is not a real date and time"),
        ("31/02/2026 09:15", "value '31/02/2026 09:15' is not a date-time"),
        ("20261332250000", "value '20261332250000' is not a real date"),
        ("2026-12-04T10:00+25:00", "has no real time zone offset"),
        ("next Tuesday", "(expected one of: %d/%m/%Y %H:%M, %d/%m/%Y)"),
    ],
)
def test_an_impossible_date_is_an_error_at_its_row_and_column(
    tmp_path: Path, when: str, problem: str
) -> None:
    with pytest.raises(MappingError) as caught:
        _map_when(tmp_path, when)
    message = str(caught.value)
    assert "rules[0].fields.effectiveDateTime <- row 2, column 'when': " in message
    assert problem in message


@pytest.mark.parametrize(
    ("when", "what"),
    [("29/03/2026 01:30", "does not exist"), ("25/10/2026 01:30", "happens twice")],
)
def test_a_time_in_a_clock_change_is_an_error_unless_the_mapping_chooses(
    tmp_path: Path, when: str, what: str
) -> None:
    with pytest.raises(MappingError, match=f"row 2, column 'when': value '{when}' {what} in"):
        _map_when(tmp_path, when)


@pytest.mark.parametrize(
    ("when", "policy", "instant"),
    [
        ("25/10/2026 01:30", "earlier", "2026-10-25T01:30:00+01:00"),  # still summer time
        ("25/10/2026 01:30", "later", "2026-10-25T01:30:00+00:00"),
        ("29/03/2026 01:30", "earlier", "2026-03-29T01:30:00+01:00"),  # 00:30 UTC
        ("29/03/2026 01:30", "later", "2026-03-29T01:30:00+00:00"),  # 01:30 UTC
    ],
)
def test_clock_change_policy_for_the_source_or_the_field(
    tmp_path: Path, when: str, policy: str, instant: str
) -> None:
    by_source = _map_when(tmp_path, when, extra=f"  clock_change: {policy}")
    by_field = _map_when(tmp_path, when, field=f", clock_change: {policy}")
    assert by_source["effectiveDateTime"] == by_field["effectiveDateTime"] == instant


def test_a_field_format_is_tried_before_the_sources(tmp_path: Path) -> None:
    # a US export: month first for this column only
    dates = _map_when(tmp_path, "12/04/2026 14:30", field=', format: "%m/%d/%Y %H:%M"')
    assert dates["effectiveDateTime"] == "2026-12-04T14:30:00+00:00"


HL7_MAPPING = """\
mapping: pid
source:
  format: hl7v2
  record: OBX
  timezone: Europe/London
  continuation: {separator: " / "}
rules:
  - id: statement
    resource: Observation
    identifier:
      system: http://example.org/id
      value: {hl7: "PID-3(4=NHS).1"}
    fields:
      valueString: {hl7: OBX-5}
      note[0].text: {hl7: "PID-3(2).1"}
      note[1].text: {hl7: "PID-3(3).1"}
"""
PID = "PID|1||M0042871^^^RYJ^MR~9434765919^^^NHS^NH||Hughes^Gwen\r"


def _hl7(tmp_path: Path, body: str) -> list[dict[str, object]]:
    path = tmp_path / "pid.yaml"
    path.write_text(HL7_MAPPING, encoding="utf-8")
    message = "MSH|^~\\&|RIO|RYJ|WM|WM|20261204||ORU^R01|1|P|2.5\r" + body
    return [o.resource for o in map_input(load_mapping(path), message, {})]


def test_repetitions_by_index_and_by_component(tmp_path: Path) -> None:
    (resource,) = _hl7(tmp_path, PID + "OBX|1|ST|X^^L||Home||||||F\r")
    assert resource["identifier"] == [{"system": "http://example.org/id", "value": "9434765919"}]
    assert resource["note"] == [{"text": "9434765919"}]  # PID-3(3) does not exist: nothing set


def test_continuation_lines_join_only_with_the_same_code_and_sub_id(tmp_path: Path) -> None:
    resources = _hl7(
        tmp_path,
        PID + "OBX|1|TX|X^^L|1|first||||||F\rOBX|2|TX|X^^L|1|second||||||F\r"
        "OBX|3|TX|X^^L|2|other||||||F\rOBX|4|TX|Y^^L|2|new code||||||F\r",
    )
    assert [r["valueString"] for r in resources] == ["first / second", "other", "new code"]


def test_every_repetition_joins_by_line_within_a_segment_and_by_the_separator_across(
    tmp_path: Path,
) -> None:
    """``OBX-5(*)`` reads every repetition of one OBX as a line; continued OBX (same code and
    sub-ID) are still joined with the mapping's separator."""
    path = tmp_path / "pid.yaml"
    path.write_text(HL7_MAPPING.replace("{hl7: OBX-5}", '{hl7: "OBX-5(*)"}'), encoding="utf-8")
    message = (
        "MSH|^~\\&|RIO|RYJ|WM|WM|20261204||ORU^R01|1|P|2.5\r"
        + PID
        + "OBX|1|TX|X^^L|1|one~two||||||F\rOBX|2|TX|X^^L|1|three||||||F\r"
        "OBX|3|ST|Y^^L||~only the second~||||||F\r"
    )
    resources = [o.resource for o in map_input(load_mapping(path), message, {})]
    assert [r["valueString"] for r in resources] == ["one\ntwo / three", "only the second"]


def test_escape_sequences_of_a_text_answer_are_decoded_as_hl7_v2_defines_them(
    tmp_path: Path,
) -> None:
    """HL7 v2.5 section 2.7, as another vendor's TX result uses them: a line break (\\.br\\),
    highlighting (\\H\\ ... \\N\\, no plain-text form), the delimiters, UTF-8 bytes in
    hexadecimal (\\XC3A9\\ is é), a locally defined \\Z..\\ sequence (dropped) and one the
    standard does not define (kept as sent). python-hl7 alone gave a carriage return for
    \\.br\\, underscores for highlighting, 'Ã©' for the bytes and logged a traceback for \\Z."""
    answer = (
        "Singing \\H\\every\\N\\ week\\.br\\Caf\\XC3A9\\ after chapel \\T\\ a walk"
        "\\.sp2\\Bramble\\S\\dog\\Zx1\\ \\Q\\"
    )
    (resource,) = _hl7(tmp_path, PID + f"OBX|1|TX|X^^L||{answer}||||||F\r")
    assert resource["valueString"] == (
        "Singing every week\nCafé after chapel & a walk\n\nBramble^dog \\Q\\"
    )
