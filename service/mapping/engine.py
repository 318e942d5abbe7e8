"""Apply a mapping file to records: each matching rule makes one resource.

Every error names the mapping file, line and rule path, and the input position:
``oru.yaml:22 rules[0].fields.status <- message 3, segment OBX|4: value 'X' not in map``.

``Mapper`` runs the rules (conditions, sources, variables, templates, translations, references
between rules, a message's ranked list); it reads dates with ``source_dates.py``, translates
codes with ``codemaps.py``, writes target paths with ``resource_paths.py`` and extracts SDC
Observations with ``sdc.py``.
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from fhirpathpy import evaluate as evaluate_fhirpath

from service.mapping.codemaps import UNMAPPED_EQUIVALENCE, resolve_codemap
from service.mapping.files import MappingError, MappingFile
from service.mapping.resource_paths import set_at, value_at
from service.mapping.sdc import sdc_observation
from service.mapping.source_dates import DateReader, date_formats
from service.mapping.sources import (
    Record,
    delimiter_hint,
    hl7_field,
    hl7_repetitions,
    hl7_text,
)

_HL7_PATH = re.compile(
    r"([A-Z][A-Z0-9]{2})-(\d+)(?:\((?:(\d+)|(\*)|(\d+)(?:\.(\d+))?=([^)]*))\))?(?:\.(\d+))?(?:\.(\d+))?"
)
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EACH_CHOICE = object()  # a ``first`` whose choices are tried one after the other


@dataclass
class Output:
    """A resource a rule made from a record."""

    resource: dict[str, Any]
    identifier: dict[str, str]
    rule: str  # rules[0]
    where: str  # file:line rules[0]
    position: str
    corrects: bool = False  # the record corrects what an earlier input made
    fields: dict[str, str] = field(default_factory=dict)  # target path -> file:line
    rule_id: str = ""

    @property
    def criteria(self) -> str:
        """The conditional reference that finds this resource by its identifier."""
        return conditional_reference(
            self.resource["resourceType"], self.identifier["system"], self.identifier["value"]
        )


@dataclass
class Mapped:
    """What one record (or, after a message, its ranking) mapped to, or why it could not."""

    position: str
    outputs: list[Output]
    error: MappingError | None = None
    record: bool = True  # False for the ranked list made after a message's records
    ranks: bool = False  # the record ranks another (it makes the list, later)


def conditional_reference(type_: str, system: str, value: str) -> str:
    """``Patient?identifier=system|value``, with the search escapes the value needs."""
    escaped = str(value).replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,")
    return f"{type_}?identifier={system}|{escaped}"


class _Failure(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Mapper:
    """Map records with one mapping file."""

    def __init__(
        self, mapping: MappingFile, conceptmaps: dict[str, dict[str, Any]] | None = None
    ) -> None:
        self.mapping = mapping
        self.content = mapping.content
        self.codemaps = {
            name: resolve_codemap(definition, conceptmaps or {})
            for name, definition in self.content.get("codemaps", {}).items()
        }
        source = self.content["source"]
        zone = source.get("timezone")
        self.zone = ZoneInfo(zone) if zone else None
        self.date_formats = date_formats(source.get("date_formats"))
        self.clock_change = str(source.get("clock_change", "error"))
        continuation = source.get("continuation")
        self.separator = None if continuation is None else str(continuation.get("separator", " "))
        self._variables: dict[str, Any] = {}
        self._record = Record("", {})
        self._message: Any = object()
        self._made: dict[str, Output] = {}  # rule id -> what it made in this record or message
        self._keyed: dict[str, Output] = {}  # the ranked rule's outputs by record key
        self._ranks: list[tuple[int, str, Record]] = []
        self._current: dict[str, Output] = {}
        self._lines: dict[str, dict[str, str]] = {}

    def mapped(self, records: Iterable[Record]) -> Iterator[Mapped]:
        """Each record's resources or located error; after each message, its ranked list.

        A MappingError from reading the input itself propagates (nothing after it is read).
        """
        for record in records:
            if record.message is None or record.message is not self._message:
                yield from self._finish_message()
                self._message = record.message
            yield self._map_safely(record)
        yield from self._finish_message()

    def _map_safely(self, record: Record) -> Mapped:
        try:
            outputs = self.map_record(record)
            ranks = any(ranked is record for _, _, ranked in self._ranks)
            return Mapped(record.position, outputs, ranks=ranks)
        except MappingError as exc:
            return Mapped(record.position, [], exc)
        except Exception as exc:  # noqa: BLE001 - any input must give a located error, never a crash
            return Mapped(
                record.position,
                [],
                MappingError(
                    f"{self.mapping.where('rules')} <- {record.position}: the record cannot be "
                    f"mapped ({type(exc).__name__}: {exc})"
                ),
            )

    def map_record(self, record: Record) -> list[Output]:
        """The resources of one record; MappingError for an unmatched or unmappable record."""
        if record.message is None or record.message is not self._message:
            self._made = {}
            self._keyed = {}
            self._ranks = []
            self._message = record.message
        outputs = []
        self._variables = {}
        self._record = record
        ranking = self.content.get("ranking")
        if ranking is not None and self._holds(ranking["when"], "ranking.when"):
            self._note_rank(ranking)
            return []
        matched = False
        self._current = {}  # what this record's earlier rules made
        for index, rule in enumerate(self.content["rules"]):
            rule_path = f"rules[{index}]"
            condition = rule.get("when")
            if condition is not None and not self._holds(condition, f"{rule_path}.when"):
                continue
            matched = True
            if rule.get("once") == "message" and rule["id"] in self._made:
                continue
            output = self._apply(rule, rule_path)
            outputs.append(output)
            self._current[output.rule_id] = output
            if ranking is not None and rule["id"] == ranking["rule"]:
                key = self._value(ranking.get("key", {"hl7": "OBX-4"}), "ranking.key")
                if key not in (None, ""):
                    self._keyed[str(key)] = output
        # only now, so a failed record leaves nothing behind for the next to refer to
        self._made.update(self._current)
        if not matched and self.content.get("unmatched", "error") == "error":
            raise MappingError(
                f"{self.mapping.where('rules')} <- {record.position}: the record matches no "
                "rule (set 'unmatched: skip' to skip such records)"
            )
        return outputs

    # -- ranking --------------------------------------------------------------------------

    def _note_rank(self, ranking: dict[str, Any]) -> None:
        rank = self._value(dict(ranking["rank"], type="integer", required=True), "ranking.rank")
        ranked = self._value(dict(ranking["ranked"], required=True), "ranking.ranked")
        if rank < 1:
            self._fail("ranking.rank", f"rank {rank} is not a rank (1 is the most important)")
        self._ranks.append((int(rank), str(ranked), self._record))

    def _finish_message(self) -> Iterator[Mapped]:
        """The ranked list of the message whose records were just mapped."""
        ranks, self._ranks = self._ranks, []
        if not ranks:
            return
        record = ranks[0][2]
        position = f"{record.position.split(', segment')[0]}, ranks"
        try:
            yield Mapped(position, [self._ranked_list(ranks)], record=False)
        except MappingError as exc:
            yield Mapped(position, [], exc, record=False)

    def _ranked_list(self, ranks: list[tuple[int, str, Record]]) -> Output:
        ranking = self.content["ranking"]
        self._record = ranks[0][2]
        self._variables = {}
        output = self._apply(ranking["list"], "ranking.list")
        entries = []
        seen: dict[int, str] = {}
        rows = []
        for rank, key, record in sorted(ranks, key=lambda r: r[0]):
            self._record = record
            ranked = self._keyed.get(key)
            if ranked is None:
                known = ", ".join(sorted(self._keyed)) or "none"
                self._fail(
                    "ranking.ranked",
                    f"it ranks {key!r}, which no record of the message "
                    f"made into a {ranking['rule']!r} (those are: {known})",
                )
            if rank in seen:
                self._fail(
                    "ranking.rank", f"rank {rank} is given to both {seen[rank]!r} and {key!r}"
                )
            seen[rank] = key
            entries.append({"item": {"reference": ranked.criteria}})
            words = ranked.resource.get("valueString") or ranked.identifier["value"]
            rows.append(f"<li>{html.escape(str(words))}</li>")
        output.resource["entry"] = entries
        output.resource.setdefault(
            "text",
            {
                "status": "generated",
                "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ol>{"".join(rows)}</ol></div>',
            },
        )
        return output

    # -- rules ----------------------------------------------------------------------------

    def _apply(self, rule: dict[str, Any], rule_path: str) -> Output:
        resource: dict[str, Any] = {"resourceType": rule["resource"]}
        if rule.get("extract") == "sdc":
            resource.update(
                sdc_observation(
                    self._record, lambda message: self._fail(f"{rule_path}.extract", message)
                )
            )
        resource.update(copy.deepcopy(rule.get("template", {})))
        resource["resourceType"] = rule["resource"]
        if rule.get("profile"):
            resource["meta"] = {"profile": [rule["profile"]]}
        value_path = f"{rule_path}.identifier.value"
        value = self._value(rule["identifier"]["value"], value_path)
        if value in (None, ""):
            self._fail(value_path, "the rule's identifier has no value for this record")
        identifier = {"system": rule["identifier"]["system"], "value": str(value)}
        resource["identifier"] = [identifier, *resource.get("identifier", [])]
        fields = self._field_lines(rule, rule_path)
        for target, definition in rule["fields"].items():
            path = f"{rule_path}.fields.{target}"
            value = self._value(definition, path)
            if value is None:
                continue
            try:
                set_at(resource, target, value)
            except (ValueError, TypeError) as exc:
                self._fail(path, f"cannot set {target}: {exc}")
        corrects = rule.get("corrects")
        return Output(
            resource,
            identifier,
            rule_path,
            self.mapping.where(rule_path),
            self._record.position,
            corrects is not None and self._holds(corrects, f"{rule_path}.corrects"),
            fields,
            str(rule.get("id", "")),
        )

    def _field_lines(self, rule: dict[str, Any], rule_path: str) -> dict[str, str]:
        """``file:line path`` of each field of a rule (worked out once per rule)."""
        lines = self._lines.get(rule_path)
        if lines is None:
            lines = {
                target: self.mapping.where(f"{rule_path}.fields.{target}")
                for target in rule["fields"]
            }
            self._lines[rule_path] = lines
        return lines

    # -- values ---------------------------------------------------------------------------

    def _value(self, definition: dict[str, Any], path: str) -> Any:
        condition = definition.get("when")
        if condition is not None and not self._holds(condition, f"{path}.when"):
            return None
        value = self._source(definition, path)
        if value in (None, "") and "default" in definition:
            value = definition["default"]
        origin = _origin(definition)
        if value in (None, ""):
            if definition.get("required"):
                self._fail(path, "a required value is missing", origin)
            return None
        normalise = definition.get("normalise")
        if normalise is not None and isinstance(value, str):
            value = _normalise(value, normalise)
        if "type" in definition:
            value = self._typed(value, definition, path, origin)
        return value

    def _source(self, definition: dict[str, Any], path: str) -> Any:
        record = self._record
        if "const" in definition:
            return copy.deepcopy(definition["const"])
        if "hl7" in definition:
            return self._hl7(definition["hl7"], path)
        if "column" in definition:
            column = definition["column"]
            if column not in record.values:
                header = ", ".join(record.values) or "(none)"
                hint = delimiter_hint(list(record.values))
                self._fail(path, f"unknown column {column!r}; the header has: {header}{hint}")
            return record.values[column]
        if "path" in definition:
            return value_at(record.values, definition["path"])
        if "fhirpath" in definition:
            try:
                found = evaluate_fhirpath(record.resource or {}, definition["fhirpath"], {})
            except Exception as exc:  # noqa: BLE001 - fhirpathpy raises bare Exceptions
                self._fail(path, f"the FHIRPath cannot be evaluated: {exc}")
            return found[0] if found else None
        if "var" in definition:
            return self._variable(definition["var"])
        if "template" in definition:
            return self._template(definition["template"], path)
        if "translate" in definition:
            code = self._value(definition["from"], f"{path}.from")
            if code is None:
                return None
            return self._translate(definition["translate"], code, path, _origin(definition))
        if "reference" in definition:
            return self._reference(definition["reference"], path)
        if "first" in definition:
            merged = self._first_by_repetition(definition["first"], path)
            if merged is not _EACH_CHOICE:
                return merged
            for number, choice in enumerate(definition["first"]):
                found = self._value(choice, f"{path}.first[{number}]")
                if found not in (None, ""):
                    return found
            return None
        return None  # pragma: no cover - the schema requires one source

    def _reference(self, target: dict[str, Any], path: str) -> dict[str, str] | None:
        if "rule" in target:
            made = self._current.get(str(target["rule"])) or self._made.get(str(target["rule"]))
            if made is None:
                self._fail(
                    f"{path}.reference.rule",
                    f"rule {target['rule']!r} made nothing from this record or message before "
                    "this rule",
                )
            return {"reference": made.criteria}
        value = self._value(target["value"], f"{path}.reference.value")
        if value is None:
            return None
        return {"reference": conditional_reference(target["type"], target["system"], value)}

    def _hl7_read(self, spec: str, path: str) -> tuple[str, list[list[str]]]:
        """The segment an HL7 path names and, for each segment it reads (this record's, its
        continued OBX lines, its notes, or the nearest one named), the value of each
        repetition the path names ('' where it has nothing)."""
        record = self._record
        match = _HL7_PATH.fullmatch(spec)
        if match is None or record.message is None:
            self._fail(path, f"{spec!r} is not an HL7 v2 path such as OBX-5.1 or PID-3(2).1")
        name, field_text, index, every, on_component, on_sub, equals, component, sub = (
            match.groups()
        )
        field_no = int(field_text)
        repetitions: list[int | tuple[int, int, str]] = [int(index or 1)]
        if on_component is not None:
            repetitions = [(int(on_component), int(on_sub or 0), equals)]
        own = record.segments or [record.segment]
        if str(own[0][0]) == name:
            segments = own if field_no == 5 and self.separator is not None else own[:1]
        elif name == "NTE":
            segments = record.notes  # the notes on this record's segment
        else:
            segments = [record.nearest(name)]
        read = []
        for segment in segments:
            if segment is None:
                continue
            if every:  # (*): every repetition of the field, one line each
                repetitions = list(range(1, hl7_repetitions(segment, field_no) + 1))
            read.append(
                [
                    hl7_field(segment, field_no, int(component or 0), int(sub or 0), repetition)
                    for repetition in repetitions
                ]
            )
        return name, read

    def _hl7(self, spec: str, path: str) -> str | None:
        name, read = self._hl7_read(spec, path)
        message = self._record.message
        values = [
            "\n".join(hl7_text(message, p) for p in parts if p) for parts in read if any(parts)
        ]
        if not values:
            return None
        return ("\n" if name == "NTE" else self.separator or " ").join(values)

    def _first_by_repetition(self, choices: list[Any], path: str) -> Any:
        """``first`` over every repetition of one field (``OBX-5(*).9``, then ``OBX-5(*).2``):
        chosen repetition by repetition, so each coded answer gives its own words (its
        original text, else its text) and none is dropped because another repetition had the
        first choice. ``_EACH_CHOICE`` when the choices are not all such paths of one field."""
        fields = set()
        for choice in choices:
            spec = choice.get("hl7") if isinstance(choice, dict) else None
            if not isinstance(spec, str) or "(*)" not in spec or set(choice) - {"hl7", "when"}:
                return _EACH_CHOICE
            fields.add(spec.split("(", 1)[0])
        if len(fields) != 1:
            return _EACH_CHOICE
        columns = []
        for number, choice in enumerate(choices):
            condition = choice.get("when")
            if condition is not None and not self._holds(condition, f"{path}.first[{number}].when"):
                continue
            parts = self._hl7_repetitions(choice["hl7"], f"{path}.first[{number}]")
            if parts is None:
                return _EACH_CHOICE
            columns.append(parts)
        longest = max((len(c) for c in columns), default=0)
        chosen = [next((c[i] for c in columns if i < len(c) and c[i]), "") for i in range(longest)]
        text = "\n".join(hl7_text(self._record.message, p) for p in chosen if p)
        return text or None

    def _hl7_repetitions(self, spec: str, path: str) -> list[str] | None:
        """Each repetition of an ``(*)`` path, in order ('' where it has nothing), or None
        when the path reads several segments (continued OBX lines, notes)."""
        name, read = self._hl7_read(spec, path)
        if name == "NTE" or len(read) > 1:
            return None
        return read[0] if read else []

    def _variable(self, name: str) -> Any:
        if name not in self._variables:
            self._variables[name] = None  # a variable that refers to itself reads as empty
            self._variables[name] = self._value(
                self.content["variables"][name], f"variables.{name}"
            )
        return self._variables[name]

    def _template(self, template: str, path: str) -> str | None:
        missing = []

        def fill(match: re.Match[str]) -> str:
            value = self._variable(match.group(1))
            if value is None:
                missing.append(match.group(1))
                return ""
            return str(value)

        text = _TEMPLATE.sub(fill, template)
        return None if missing else text

    def _translate(self, name: str, code: Any, path: str, origin: str | None) -> Any:
        codemap = self.codemaps[name]
        target = codemap["map"].get(str(code))
        if isinstance(target, dict):
            target = None if target.get("equivalence") in UNMAPPED_EQUIVALENCE else target["code"]
        if target is not None:
            return target
        unmapped = codemap.get("unmapped", "error")
        if unmapped == "keep":
            return code
        if isinstance(unmapped, dict):
            return unmapped["fixed"]
        self._fail(path, f"value {str(code)!r} not in map {name!r} ({codemap['source']})", origin)

    def _typed(self, value: Any, definition: dict[str, Any], path: str, origin: str | None) -> Any:
        kind = definition["type"]
        text = str(value)
        try:
            if kind == "integer":
                number = int(text)
                if abs(number) > 2**31 - 1:  # FHIR integer is 32-bit
                    raise ValueError(text)
                return number
            if kind == "decimal":
                decimal = Decimal(text)
                if not decimal.is_finite():
                    raise ValueError(text)
                return decimal
            if kind == "boolean":
                lowered = text.strip().lower()
                if lowered in ("true", "yes", "y", "1"):
                    return True
                if lowered in ("false", "no", "n", "0"):
                    return False
                raise ValueError(text)
        except (ValueError, InvalidOperation):
            self._fail(
                path, f"value {text!r} is not a{'n' if kind[0] == 'i' else ''} {kind}", origin
            )
        if kind in ("date", "dateTime"):
            reader = DateReader(
                date_formats(definition.get("format")) + self.date_formats,
                self.zone,
                str(definition.get("clock_change", self.clock_change)),
                lambda message: self._fail(path, message, origin),
            )
            return reader.read(text, kind)
        return text

    # -- conditions -----------------------------------------------------------------------

    def _holds(self, condition: dict[str, Any], path: str) -> bool:
        source = {k: v for k, v in condition.items() if k in ("hl7", "column", "path", "var")}
        value = self._source(source, path) if source else None
        if "exists" in condition:
            return (value not in (None, "")) == bool(condition["exists"])
        if "equals" in condition:
            return value is not None and str(value) == str(condition["equals"])
        if "in" in condition:
            return value is not None and str(value) in {str(v) for v in condition["in"]}
        return value not in (None, "")

    def _fail(self, path: str, message: str, origin: str | None = None) -> NoReturn:
        position = self._record.position + (f", {origin}" if origin else "")
        raise MappingError(f"{self.mapping.where(path)} <- {position}: {message}")


def _origin(definition: dict[str, Any]) -> str | None:
    """Where in the input a value comes from, for error messages."""
    if "column" in definition:
        return f"column {definition['column']!r}"
    if "hl7" in definition:
        return f"field {definition['hl7']}"
    if "path" in definition:
        return f"path {definition['path']}"
    if isinstance(definition.get("from"), dict):
        return _origin(definition["from"])
    return None


def _normalise(value: str, how: str) -> str:
    """Only when a mapping asks: the patient's words are otherwise never changed."""
    if how == "trim":
        return value.strip()
    if how == "upper":
        return value.upper()
    if how == "lower":
        return value.lower()
    return " ".join(value.split())
