"""``whatmatters map check`` checks every target path against the R4 definitions of its rule's
resource type, at the field's line, with a suggestion for a near miss."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import whatmatters

pytestmark = pytest.mark.slow  # every test runs the whatmatters command in a new process

SHIPPED = Path(__file__).resolve().parents[2] / "mappings"


def _with_fields(tmp_path: Path, fields: str) -> tuple[Path, dict[str, int]]:
    """The shipped survey mapping with extra fields in its rule; the line of each."""
    text = (SHIPPED / "survey-csv.yaml").read_text(encoding="utf-8").split("\ntests:")[0]
    anchor = "      effectiveDateTime:"
    assert anchor in text
    text = text.replace(anchor, fields + anchor, 1)
    path = tmp_path / "survey-csv.yaml"
    path.write_text(text + "\n", encoding="utf-8")
    lines = {
        line.strip().split(":")[0]: number
        for number, line in enumerate(text.splitlines(), start=1)
        if line.startswith("      ") and not line.startswith("       ")
    }
    return path, lines


def test_misspelt_paths_fail_at_their_line_with_a_suggestion(tmp_path: Path) -> None:
    path, lines = _with_fields(
        tmp_path,
        "      valueStrng: {column: what_matters}\n"
        "      performer[0].dispaly: {column: recorded_by}\n",
    )
    result = whatmatters("map", "check", str(path))
    assert result.returncode == 1
    assert (
        f"survey-csv.yaml:{lines['valueStrng']} rules[0].fields.valueStrng: Observation has no "
        "element 'valueStrng'; did you mean 'valueString'?"
    ) in result.stdout
    assert (
        f"survey-csv.yaml:{lines['performer[0].dispaly']} rules[0].fields.performer[0].dispaly: "
        "Observation.performer (a Reference) has no element 'dispaly'; did you mean 'display'?"
    ) in result.stdout


def test_indexes_and_constants_must_fit_the_definitions(tmp_path: Path) -> None:
    path, lines = _with_fields(
        tmp_path,
        "      subject[0].display: {const: Mrs Hughes}\n"
        "      note.text: {const: said at home}\n"
        "      issued: {const: 2026}\n"
        "      valueBoolean: {const: 'yes'}\n",
    )
    result = whatmatters("map", "check", str(path))
    assert result.returncode == 1
    out = result.stdout
    assert f":{lines['subject[0].display']} " in out
    assert "does not repeat" in out
    assert f":{lines['note.text']} " in out
    assert "Observation.note repeats" in out
    assert f":{lines['issued']} rules[0].fields.issued: Observation.issued is a instant" in out
    assert f":{lines['valueBoolean']} " in out
    assert "is not true or false" in out


def test_a_single_value_into_a_repeating_element_is_named(tmp_path: Path) -> None:
    """An outside mapping author wrote ``name[0].given: {hl7: PID-5.2}`` (given repeats, and
    is the last element named): map check said "valid", and every record then failed at run
    time ("must be a JSON array"). The same here with a note from a column."""
    path, lines = _with_fields(tmp_path, "      note: {column: setting}\n")
    result = whatmatters("map", "check", str(path))
    assert result.returncode == 1
    assert f":{lines['note']} rules[0].fields.note: " in result.stdout
    assert "Observation.note repeats: a value goes into one of them, e.g. note[0]" in result.stdout


def test_choice_types_nested_types_and_backbone_elements_are_known(tmp_path: Path) -> None:
    path, _ = _with_fields(
        tmp_path,
        "      component[0].code.coding[0].code: {const: '1'}\n"
        "      component[0].valueQuantity.value: {const: 1.5}\n"
        "      note[0].authorString: {const: Nurse}\n"
        "      interpretation: {const: [{text: normal}]}\n",
    )
    result = whatmatters("map", "check", str(path))
    assert result.returncode == 0, result.stdout


def test_the_shipped_mappings_pass_the_check() -> None:
    result = whatmatters("map", "check", *[str(p) for p in sorted(SHIPPED.glob("*.yaml"))])
    assert result.returncode == 0, result.stdout
