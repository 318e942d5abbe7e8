"""Apply a mapping file to records: each matching rule makes one resource.

Every error names the mapping file, line and rule path, and the input position:
``oru.yaml:22 rules[0].fields.status <- message 3, segment OBX|4: value 'X' not in map``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NoReturn
from zoneinfo import ZoneInfo

from fhirpathpy import evaluate as evaluate_fhirpath

from service.mapping.files import MappingError, MappingFile
from service.mapping.sources import Record, hl7_field

_HL7_PATH = re.compile(r"([A-Z][A-Z0-9]{2})-(\d+)(?:\.(\d+))?(?:\.(\d+))?")
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_TEMPLATE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_HL7_DTM = re.compile(
    r"(\d{4})(\d{2})?(\d{2})?(?:(\d{2})(\d{2})?(\d{2})?(?:\.(\d{1,4}))?)?([+-]\d{4})?"
)
_ISO_DATETIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)(Z|[+-]\d{2}:?\d{2})?"
)
_DATE = re.compile(r"\d{4}(-\d{2}(-\d{2})?)?")
_UNMAPPED_EQUIVALENCE = frozenset({"unmatched", "disjoint"})


@dataclass
class Output:
    """A resource a rule made from a record."""

    resource: dict[str, Any]
    identifier: dict[str, str]
    rule: str  # rules[0]
    where: str  # file:line rules[0]
    position: str


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
        zone = self.content["source"].get("timezone")
        self.zone = ZoneInfo(zone) if zone else None

    def map_record(self, record: Record) -> list[Output]:
        """The resources of one record; MappingError for an unmatched or unmappable record."""
        outputs = []
        self._variables: dict[str, Any] = {}
        self._record = record
        matched = False
        for index, rule in enumerate(self.content["rules"]):
            rule_path = f"rules[{index}]"
            condition = rule.get("when")
            if condition is not None and not self._holds(condition, f"{rule_path}.when"):
                continue
            matched = True
            outputs.append(self._apply(rule, rule_path))
        if not matched and self.content.get("unmatched", "error") == "error":
            raise MappingError(
                f"{self.mapping.where('rules')} <- {record.position}: the record matches no "
                "rule (set 'unmatched: skip' to skip such records)"
            )
        return outputs

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
        for target, definition in rule["fields"].items():
            path = f"{rule_path}.fields.{target}"
            value = self._value(definition, path)
            if value is None:
                continue
            try:
                _set(resource, target, value)
            except (ValueError, TypeError) as exc:
                self._fail(path, f"cannot set {target}: {exc}")
        return Output(
            resource,
            identifier,
            rule_path,
            self.mapping.where(rule_path),
            self._record.position,
        )

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
        if value in (None, ""):
            if definition.get("required"):
                self._fail(path, "a required value is missing")
            return None
        normalise = definition.get("normalise")
        if normalise is not None and isinstance(value, str):
            value = _normalise(value, normalise)
        if "type" in definition:
            value = self._typed(value, definition["type"], path)
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
            return _get(record.values, definition["path"])
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
            return None if code is None else self._translate(definition["translate"], code, path)
        if "reference" in definition:
            target = definition["reference"]
            value = self._value(target["value"], f"{path}.reference.value")
            if value is None:
                return None
            escaped = str(value).replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,")
            return {"reference": f"{target['type']}?identifier={target['system']}|{escaped}"}
        return None  # pragma: no cover - the schema requires one source

    def _hl7(self, spec: str, path: str) -> str | None:
        record = self._record
        match = _HL7_PATH.fullmatch(spec)
        if match is None or record.message is None:
            self._fail(path, f"{spec!r} is not an HL7 v2 path such as OBX-5.1")
        name, field_no, component, sub = match.groups()
        segment = record.segment if str(record.segment[0]) == name else None
        if segment is None:
            try:
                segment = record.message.segment(name)
            except KeyError:
                return None
        raw = hl7_field(segment, int(field_no), int(component or 0), int(sub or 0))
        return str(record.message.unescape(raw)) if raw else None

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

    def _translate(self, name: str, code: Any, path: str) -> Any:
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
        self._fail(path, f"value {str(code)!r} not in map {name!r} ({codemap['source']})")
        return None  # pragma: no cover

    def _typed(self, value: Any, kind: str, path: str) -> Any:
        text = str(value)
        try:
            if kind == "integer":
                return int(text)
            if kind == "decimal":
                return Decimal(text)
            if kind == "boolean":
                lowered = text.strip().lower()
                if lowered in ("true", "yes", "y", "1"):
                    return True
                if lowered in ("false", "no", "n", "0"):
                    return False
                raise ValueError(text)
        except (ValueError, InvalidOperation):
            self._fail(path, f"value {text!r} is not a {kind}")
        if kind == "date":
            return self._date(text, path)
        if kind == "dateTime":
            return self._date_time(text, path)
        return text

    def _date(self, text: str, path: str) -> str:
        if _DATE.fullmatch(text):
            return text
        match = _HL7_DTM.fullmatch(text)
        if match is None:
            self._fail(path, f"value {text!r} is not a date")
        year, month, day = match.group(1), match.group(2), match.group(3)
        return "-".join(p for p in (year, month, day) if p)

    def _date_time(self, text: str, path: str) -> str:
        iso = _ISO_DATETIME.fullmatch(text)
        if iso is not None:
            day, clock, offset = iso.groups()
            if len(clock) == 5:
                clock += ":00"
            if offset is None:
                return self._localise(f"{day}T{clock}", path, text)
            if offset != "Z" and ":" not in offset:
                offset = offset[:3] + ":" + offset[3:]
            return f"{day}T{clock}{offset}"
        if _DATE.fullmatch(text):
            return text
        match = _HL7_DTM.fullmatch(text)
        if match is None:
            self._fail(path, f"value {text!r} is not a date-time")
        year, month, day, hour, minute, second, fraction, offset = match.groups()
        if hour is None:
            return "-".join(p for p in (year, month, day) if p)
        if month is None or day is None:
            self._fail(path, f"value {text!r} has a time but no full date")
        clock = f"{hour}:{minute or '00'}:{second or '00'}" + (f".{fraction}" if fraction else "")
        local = f"{year}-{month}-{day}T{clock}"
        if offset is None:
            return self._localise(local, path, text)
        return f"{local}{offset[:3]}:{offset[3:]}"

    def _localise(self, local: str, path: str, text: str) -> str:
        if self.zone is None:
            self._fail(
                path,
                f"value {text!r} has a time but no time zone offset, and the mapping sets no "
                "source.timezone (there is no silent UTC)",
            )
        moment = datetime.fromisoformat(local).replace(tzinfo=self.zone)
        return moment.isoformat()

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

    def _fail(self, path: str, message: str) -> NoReturn:
        raise MappingError(f"{self.mapping.where(path)} <- {self._record.position}: {message}")


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


def _get(value: Any, path: str) -> Any:
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
