"""Apply a mapping file to records: each matching rule makes one resource.

Every error names the mapping file, line and rule path, and the input position:
``oru.yaml:22 rules[0].fields.status <- message 3, segment OBX|4: value 'X' not in map``.
"""

from __future__ import annotations

import copy
import html
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from fhirpathpy import evaluate as evaluate_fhirpath

from service.mapping.files import MappingError, MappingFile
from service.mapping.sources import Record, hl7_field

_HL7_PATH = re.compile(
    r"([A-Z][A-Z0-9]{2})-(\d+)(?:\((?:(\d+)|(\d+)(?:\.(\d+))?=([^)]*))\))?(?:\.(\d+))?(?:\.(\d+))?"
)
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HL7_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?)?([+-]\d{4})?"
)
_ISO_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?"
)
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
_CLOCK_DIRECTIVES = re.compile(r"%[HIMSfpXc]")
_UNMAPPED_EQUIVALENCE = frozenset({"unmatched", "disjoint"})


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
        self.date_formats = _formats(source.get("date_formats"))
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
            resource.update(self._sdc(rule_path))
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
                _set(resource, target, value)
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

    def _sdc(self, rule_path: str) -> dict[str, Any]:
        """SDC observation-based extraction of one answered item (build.fhir.org/ig/HL7/sdc)."""
        record = self._record
        response = record.resource or {}
        codes = record.question.get("code") or []
        if not codes:
            self._fail(
                f"{rule_path}.extract",
                f"the Questionnaire item {record.values.get('linkId')!r} has no code to extract",
            )
        observation: dict[str, Any] = {
            "status": "final",
            "code": {
                "coding": [
                    {k: c[k] for k in ("system", "code", "display") if k in c} for c in codes
                ]
            },
        }
        for key, target in (("subject", "subject"), ("encounter", "encounter")):
            if key in response:
                observation[target] = response[key]
        if "authored" in response:
            observation["effectiveDateTime"] = response["authored"]
        if "author" in response:
            observation["performer"] = [response["author"]]
        if response.get("id"):
            observation["derivedFrom"] = [{"reference": f"QuestionnaireResponse/{response['id']}"}]
        answer = (record.values.get("answer") or [{}])[0]
        if not isinstance(answer, dict):
            self._fail(f"{rule_path}.extract", "the item's answer is not an object")
        for key, value in answer.items():
            if key.startswith("value"):
                kind = key[5:]
                if kind == "Coding":
                    observation["valueCodeableConcept"] = {"coding": [value]}
                elif kind in ("String", "Boolean", "Integer", "DateTime", "Time", "Quantity"):
                    observation[key] = value
                elif kind == "Date":
                    observation["valueDateTime"] = value
                else:
                    observation["valueString"] = str(value)
        return observation

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
                self._fail(path, f"unknown column {column!r}; the header has: {header}")
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

    def _hl7(self, spec: str, path: str) -> str | None:
        record = self._record
        match = _HL7_PATH.fullmatch(spec)
        if match is None or record.message is None:
            self._fail(path, f"{spec!r} is not an HL7 v2 path such as OBX-5.1 or PID-3(2).1")
        name, field_text, index, on_component, on_sub, equals, component, sub = match.groups()
        field_no = int(field_text)
        repetition: int | tuple[int, int, str] = int(index or 1)
        if on_component is not None:
            repetition = (int(on_component), int(on_sub or 0), equals)
        own = record.segments or [record.segment]
        if str(own[0][0]) == name:
            segments = own if field_no == 5 and self.separator is not None else own[:1]
        elif name == "NTE":
            segments = record.notes  # the notes on this record's segment
        else:
            segments = [record.nearest(name)]
        values = []
        for segment in segments:
            if segment is None:
                continue
            raw = hl7_field(segment, field_no, int(component or 0), int(sub or 0), repetition)
            if raw:
                values.append(str(record.message.unescape(raw)))
        if not values:
            return None
        return ("\n" if name == "NTE" else self.separator or " ").join(values)

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
            target = None if target.get("equivalence") in _UNMAPPED_EQUIVALENCE else target["code"]
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
            return _Dates(self, definition, path, origin).read(text, kind)
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


class _Dates:
    """Read one date or date-time: the mapping's strptime formats in order, then ISO 8601 and
    HL7 v2 DTM; every impossible date is an error at its location, never an exception."""

    def __init__(
        self, mapper: Mapper, definition: dict[str, Any], path: str, origin: str | None
    ) -> None:
        self.mapper = mapper
        self.formats = _formats(definition.get("format")) + mapper.date_formats
        self.policy = str(definition.get("clock_change", mapper.clock_change))
        self.path = path
        self.origin = origin

    def fail(self, message: str) -> NoReturn:
        self.mapper._fail(self.path, message, self.origin)

    def read(self, text: str, kind: str) -> str:
        stripped = text.strip()
        for fmt in self.formats:
            try:
                parsed = datetime.strptime(stripped, fmt)
            except ValueError:
                continue
            if kind == "date":
                return parsed.date().isoformat()
            if parsed.tzinfo is not None:
                return parsed.isoformat()
            if not _CLOCK_DIRECTIVES.search(fmt):
                return parsed.date().isoformat()
            return self.localise(parsed, text)
        iso = _ISO_DATETIME.fullmatch(stripped)
        if iso is not None:
            day, clock, offset = iso.groups()
            moment = self.real(f"{day}T{clock}", text)
            if kind == "date":
                return moment.date().isoformat()
            if offset is None:
                return self.localise(moment, text)
            clock = clock if len(clock) > 5 else clock + ":00"
            return f"{day}T{clock}{self.offset(offset, text)}"
        if _DATE.fullmatch(stripped):
            parts = [int(p) for p in stripped.split("-")]
            self.real_date(parts, text)
            return stripped
        match = _HL7_DTM.fullmatch(stripped)
        if match is None:
            expected = f" (expected one of: {', '.join(self.formats)})" if self.formats else ""
            self.fail(
                f"value {text!r} is not a {'date' if kind == 'date' else 'date-time'}{expected}"
            )
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        parts = [int(p) for p in (year, month, day) if p]
        self.real_date(parts, text)
        if kind == "date" or hour is None:
            return "-".join(p for p in (year, month, day) if p)
        if month is None or day is None:
            self.fail(f"value {text!r} has a time but no full date")
        clock = f"{hour}:{minute or '00'}:{second or '00'}" + (f".{fraction}" if fraction else "")
        local = f"{year}-{month}-{day}T{clock}"
        moment = self.real(local, text)
        if offset is None:
            return self.localise(moment, text)
        return f"{local}{self.offset(offset, text)}"

    def real_date(self, parts: list[int], text: str) -> None:
        try:
            date(parts[0], *[*parts[1:], 1, 1][:2])
        except ValueError as exc:
            self.fail(f"value {text!r} is not a real date ({exc})")

    def real(self, local: str, text: str) -> datetime:
        try:
            return datetime.fromisoformat(local)
        except ValueError as exc:
            self.fail(f"value {text!r} is not a real date and time ({exc})")

    def offset(self, offset: str, text: str) -> str:
        if offset == "Z":
            return offset
        digits = offset[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 14 or minutes > 59 or (hours == 14 and minutes):
            self.fail(f"value {text!r} has no real time zone offset ({offset})")
        return f"{offset[0]}{digits[:2]}:{digits[2:]}"

    def localise(self, naive: datetime, text: str) -> str:
        zone = self.mapper.zone
        if zone is None:
            self.fail(
                f"value {text!r} has a time but no time zone offset, and the mapping sets no "
                "source.timezone (there is no silent UTC)"
            )
        first = naive.replace(tzinfo=zone, fold=0)
        second = naive.replace(tzinfo=zone, fold=1)
        if first.utcoffset() == second.utcoffset():
            return first.isoformat()
        gap = first.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive
        if self.policy not in ("earlier", "later"):
            what = "does not exist" if gap else "happens twice"
            self.fail(
                f"value {text!r} {what} in {zone.key} (the clocks change then); say which "
                "instant is meant with clock_change: earlier or later"
            )
        earlier, later = sorted((first, second), key=lambda moment: moment.astimezone(UTC))
        return (earlier if self.policy == "earlier" else later).isoformat()


def _formats(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(value)] if isinstance(value, str) else [str(v) for v in value]


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


def resolve_codemap(
    definition: dict[str, Any], conceptmaps: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A codemap as source, target and map: inline, or from a ConceptMap resource.

    ConceptMap semantics (https://hl7.org/fhir/R4/conceptmap.html): each element's first target
    whose equivalence is not ``unmatched`` or ``disjoint`` is the translation.
    """
    url = definition.get("conceptmap")
    if url is None:
        return definition
    concept_map = conceptmaps.get(str(url))
    if concept_map is None:
        raise MappingError(f"no ConceptMap {url} in the profiles folder")
    groups = concept_map.get("group", [])
    mapped: dict[str, Any] = {}
    for group in groups:
        for element in group.get("element", []):
            for target in element.get("target", []):
                equivalence = target.get("equivalence", "equivalent")
                if "code" in target and equivalence not in _UNMAPPED_EQUIVALENCE:
                    mapped.setdefault(
                        str(element["code"]),
                        {"code": target["code"], "equivalence": equivalence},
                    )
    first = groups[0] if groups else {}
    return {
        "source": first.get("source", concept_map.get("sourceUri", url)),
        "target": first.get("target", concept_map.get("targetUri", "")),
        "map": mapped,
        "unmapped": definition.get("unmapped", "error"),
    }


def _normalise(value: str, how: str) -> str:
    """Only when a mapping asks: the patient's words are otherwise never changed."""
    if how == "trim":
        return value.strip()
    if how == "upper":
        return value.upper()
    if how == "lower":
        return value.lower()
    return " ".join(value.split())


def value_at(value: Any, path: str) -> Any:
    """The value at a ``code.coding[0].code``-style path, or None."""
    current = value
    for name, index in _PATH_PART.findall(path):
        if name:
            current = current.get(name) if isinstance(current, dict) else None
        else:
            position = int(index)
            current = (
                current[position] if isinstance(current, list) and position < len(current) else None
            )
        if current is None:
            return None
    return current


def _set(resource: dict[str, Any], path: str, value: Any) -> None:
    """Set ``code.coding[0].code``-style paths, creating objects and arrays as needed."""
    parts: list[str | int] = [
        name if name else int(index) for name, index in _PATH_PART.findall(path)
    ]
    current: Any = resource
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        following = None if last else parts[position + 1]
        if isinstance(part, str):
            if not isinstance(current, dict):
                raise ValueError(f"{part!r} is inside something that is not an object")
            if last:
                current[part] = value
            else:
                current = current.setdefault(part, [] if isinstance(following, int) else {})
        else:
            if not isinstance(current, list):
                raise ValueError(f"[{part}] is on something that is not an array")
            while len(current) <= part:
                current.append({})
            if last:
                current[part] = value
            else:
                current = current[part]
