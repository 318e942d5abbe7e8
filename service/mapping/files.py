"""Read mapping files: YAML with the line of every element, checked against ``schema.json``
with jsonschema and then linted, so every problem names ``file:line path``.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).with_name("schema.json")
_SOURCES = (
    "const",
    "hl7",
    "column",
    "path",
    "fhirpath",
    "var",
    "template",
    "translate",
    "reference",
    "first",
)
_TEMPLATE_NAME = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class MappingError(ValueError):
    """A mapping file or an input cannot be used; the message says where."""


@dataclass
class MappingFile:
    """A loaded, checked mapping file."""

    path: Path
    content: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The mapping's name (``$ingest?mapping=NAME``)."""
        return str(self.content["mapping"])

    def where(self, path: str) -> str:
        """``file:line path`` for an element path such as ``rules[0].fields.status``."""
        probe = path
        while probe and probe not in self.lines:
            probe = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
        line = self.lines.get(probe, 1)
        return f"{self.path.name}:{line} {path}".rstrip()


@cache
def schema() -> dict[str, Any]:
    """The JSON Schema of mapping files."""
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    return loaded


def _to_python(node: yaml.Node, path: str, lines: dict[str, int], line: int = 0) -> Any:
    # an element's line is its key's line (a block value starts on the line after)
    lines[path] = line or node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            child = f"{path}.{key}" if path else key
            result[key] = _to_python(value_node, child, lines, key_node.start_mark.line + 1)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_to_python(item, f"{path}[{i}]", lines) for i, item in enumerate(node.value)]
    return yaml.SafeLoader("").construct_object(node)


def read_yaml(path: Path) -> tuple[Any, dict[str, int]]:
    """Read a YAML (or JSON) file and the line of each element path; MappingError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingError(f"{path.name}:1 cannot be read: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise MappingError(f"{path.name}:{line} is not valid YAML: {exc}") from exc
    if node is None:
        raise MappingError(f"{path.name}:1 is empty")
    lines: dict[str, int] = {}
    return _to_python(node, "", lines), lines


def schema_problems(
    schema_: dict[str, Any],
    located: MappingFile,
    message: Callable[[jsonschema.ValidationError], str] | None = None,
) -> list[str]:
    """The first JSON Schema errors of a file's content, each with its file, line and path."""
    validator = jsonschema.Draft202012Validator(schema_)
    errors = sorted(validator.iter_errors(located.content), key=lambda e: list(e.absolute_path))
    say = message or _message
    return [f"{located.where(_path(e.absolute_path))}: {say(e)}" for e in errors[:10]]


def load_mapping(path: Path) -> MappingFile:
    """Read, schema-check and lint one mapping file."""
    content, lines = read_yaml(path)
    mapping = MappingFile(path, content if isinstance(content, dict) else {}, lines)
    if not isinstance(content, dict):
        raise MappingError(f"{path.name}:1 must be a mapping of keys to values")
    shown = schema_problems(schema(), mapping)
    if shown:
        raise MappingError("\n".join(shown))
    problems = lint(mapping)
    if problems:
        raise MappingError("\n".join(problems))
    return mapping


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _message(error: jsonschema.ValidationError) -> str:
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        given = [k for k in _SOURCES if k in error.instance]
        if len(given) != 1:
            return (
                f"a value needs exactly one source ({', '.join(_SOURCES)}); "
                f"it has {', '.join(given) or 'none'}"
            )
    if error.validator == "additionalProperties":
        return str(error.message).replace("Additional properties are not allowed", "unknown key")
    if error.validator == "pattern" and list(error.path)[-1:] == ["path"]:
        return (
            f"{error.instance!r} is not a path: names and numbered indexes only, such as "
            "answers[0].text (a path reads one value; [*] and other wildcards are not read)"
        )
    if error.validator == "pattern" and list(error.path)[-1:] == ["hl7"]:
        return (
            f"{error.instance!r} is not an HL7 v2 path: SEGMENT-field, the segment in capitals, "
            "then an optional (repetition), .component and .subcomponent: PID-3.1, OBX-5(*), "
            "PID-3(2).1, PID-3(4=NHS).1"
        )
    return str(error.message)


def _values(content: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every value definition in the file, with its path."""
    found: list[tuple[str, dict[str, Any]]] = []

    def walk(value: dict[str, Any], path: str) -> None:
        found.append((path, value))
        if isinstance(value.get("from"), dict):
            walk(value["from"], f"{path}.from")
        for number, choice in enumerate(value.get("first") or []):
            if isinstance(choice, dict):
                walk(choice, f"{path}.first[{number}]")
        reference = value.get("reference")
        if isinstance(reference, dict) and isinstance(reference.get("value"), dict):
            walk(reference["value"], f"{path}.reference.value")

    for name, value in content.get("variables", {}).items():
        walk(value, f"variables.{name}")
    rules = [(f"rules[{i}]", rule) for i, rule in enumerate(content.get("rules", []))]
    ranking = content.get("ranking")
    if ranking is not None:
        for key in ("rank", "ranked", "key"):
            if key in ranking:
                walk(ranking[key], f"ranking.{key}")
        rules.append(("ranking.list", ranking["list"]))
    for rule_path, rule in rules:
        walk(rule["identifier"]["value"], f"{rule_path}.identifier.value")
        for target, value in rule["fields"].items():
            walk(value, f"{rule_path}.fields.{target}")
    return found


def lint(mapping: MappingFile) -> list[str]:
    """What the schema cannot say: names that resolve, sources that fit the input format."""
    content = mapping.content
    problems: list[str] = []
    fmt = content["source"]["format"]
    variables = content.get("variables", {})
    codemaps = content.get("codemaps", {})
    fits = {
        "hl7": fmt == "hl7v2",
        "column": fmt == "csv",
        "path": fmt in ("json", "questionnaire-response"),
        "fhirpath": fmt == "questionnaire-response",
    }
    zone = content["source"].get("timezone")
    if zone is not None:
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            problems.append(f"{mapping.where('source.timezone')}: unknown time zone {zone!r}")
    if fmt == "hl7v2" and not content["source"].get("record"):
        problems.append(
            f"{mapping.where('source')}: an hl7v2 source needs 'record', the segment that "
            "makes one record (e.g. OBX)"
        )
    formats = content["source"].get("date_formats") or []
    for index, text in enumerate(formats if isinstance(formats, list) else [formats]):
        problems += _date_format_problem(mapping, f"source.date_formats[{index}]", text)
    problems += _variable_cycles(mapping, variables)
    for path, value in _values(content):
        given = value.get("format")
        for text in given if isinstance(given, list) else [given]:
            if isinstance(text, str):
                problems += _date_format_problem(mapping, f"{path}.format", text)
        for kind, ok in fits.items():
            if kind in value and not ok:
                problems.append(f"{mapping.where(path)}: '{kind}' cannot read a {fmt} input")
        if "var" in value and value["var"] not in variables:
            problems.append(f"{mapping.where(path)}: no variable {value['var']!r}")
        if "translate" in value and value["translate"] not in codemaps:
            problems.append(f"{mapping.where(path)}: no codemap {value['translate']!r}")
        if "template" in value:
            for name in _TEMPLATE_NAME.findall(value["template"]):
                if name not in variables:
                    problems.append(
                        f"{mapping.where(path)}: the template names {{{name}}}, which is not "
                        "a variable"
                    )
    ids = [rule["id"] for rule in content["rules"]]
    problems += _reference_problems(mapping, ids)
    for index, rule_id in enumerate(ids):
        if ids.index(rule_id) != index:
            problems.append(f"{mapping.where(f'rules[{index}].id')}: rule id {rule_id!r} twice")
    for index, rule in enumerate(content["rules"]):
        if rule.get("extract") == "sdc" and fmt != "questionnaire-response":
            problems.append(
                f"{mapping.where(f'rules[{index}].extract')}: SDC extraction reads a "
                "QuestionnaireResponse"
            )
    for index, test in enumerate(content.get("tests", [])):
        if ("expect" in test) == ("error" in test):
            problems.append(
                f"{mapping.where(f'tests[{index}]')}: a test has either 'expect' or 'error'"
            )
    return problems


def _date_format_problem(mapping: MappingFile, path: str, text: str) -> list[str]:
    """A strptime format that cannot read any date (a bad directive such as %i, or one used
    twice, such as %m for the minutes after %m for the month), found before any input is."""
    try:
        datetime.strptime("", text)
    except ValueError as exc:
        if "does not match format" in str(exc):
            return []  # a usable format: only the empty text failed it
        problem = str(exc)
    except re.error as exc:
        problem = f"a directive is used twice ({exc.msg})"
    return [f"{mapping.where(path)}: {text!r} is not a date format this reader can use: {problem}"]


def _variable_cycles(mapping: MappingFile, variables: dict[str, Any]) -> list[str]:
    """A variable whose value needs itself, directly or through others (it would read as
    empty whenever its sources are, and the error would blame whatever uses it)."""

    def needs(value: Any) -> set[str]:
        found: set[str] = set()
        if isinstance(value, dict):
            if isinstance(value.get("var"), str):
                found.add(value["var"])
            if isinstance(value.get("template"), str):
                found.update(_TEMPLATE_NAME.findall(value["template"]))
            for item in value.values():
                found |= needs(item)
        elif isinstance(value, list):
            for item in value:
                found |= needs(item)
        return found

    graph = {name: needs(value) & set(variables) for name, value in variables.items()}
    problems = []
    for name in variables:
        seen: set[str] = set()
        frontier = set(graph[name])
        while frontier:
            current = frontier.pop()
            if current == name:
                problems.append(
                    f"{mapping.where(f'variables.{name}')}: the variable {name!r} needs itself "
                    "(through var or template)"
                )
                break
            if current not in seen:
                seen.add(current)
                frontier |= graph.get(current, set())
    return problems


def _reference_problems(mapping: MappingFile, ids: list[str]) -> list[str]:
    """References by rule id name an earlier rule; ``once`` and ranking need HL7 v2."""
    content = mapping.content
    problems = []
    hl7 = content["source"]["format"] == "hl7v2"
    for path, value in _values(content):
        reference = value.get("reference")
        if not isinstance(reference, dict) or "rule" not in reference:
            continue
        match = re.match(r"rules\[(\d+)\]", path)
        earlier = ids[: int(match.group(1))] if match else ids
        if reference["rule"] not in earlier:
            problems.append(
                f"{mapping.where(f'{path}.reference.rule')}: {reference['rule']!r} is not the id "
                f"of an earlier rule ({', '.join(earlier) or 'there is none'})"
            )
    for index, rule in enumerate(content["rules"]):
        if "once" in rule and not hl7:
            problems.append(
                f"{mapping.where(f'rules[{index}].once')}: 'once' needs an hl7v2 source"
            )
    ranking = content.get("ranking")
    if ranking is not None:
        if not hl7:
            problems.append(f"{mapping.where('ranking')}: ranking reads HL7 v2 messages")
        if ranking["rule"] not in ids:
            problems.append(f"{mapping.where('ranking.rule')}: no rule {ranking['rule']!r}")
    return problems


def load_folder(folder: Path) -> dict[str, MappingFile]:
    """Every ``*.yaml`` mapping of a folder, by name; a broken file stops with its location."""
    found: dict[str, MappingFile] = {}
    if not folder.exists():
        return found
    for path in sorted(folder.glob("*.yaml")):
        mapping = load_mapping(path)
        if mapping.name in found:
            raise MappingError(
                f"{path.name}:1 mapping {mapping.name!r} is also {found[mapping.name].path.name}"
            )
        found[mapping.name] = mapping
    return found


@dataclass(frozen=True)
class Element:
    """What the target-path check needs of one FHIR element definition."""

    max: str  # "1", "*", or "0"
    types: tuple[str, ...]  # FHIR type codes; several for a choice element (value[x])
    content_reference: str | None = None  # "#Questionnaire.item" for recursive elements


# The child elements of an element path ("Observation", "Reference", "Observation.component"),
# or None if there is no such path: passed in by a layer that holds the R4 definitions.
ElementChildren = Callable[[str], dict[str, Element] | None]

_TARGET_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_STRING_TYPES = frozenset(
    [
        "string",
        "code",
        "uri",
        "url",
        "canonical",
        "id",
        "markdown",
        "oid",
        "uuid",
        "base64Binary",
        "date",
        "dateTime",
        "instant",
        "time",
        "xhtml",
    ]
)
_INTEGER_TYPES = frozenset({"integer", "positiveInt", "unsignedInt"})


def check_targets(mapping: MappingFile, children: ElementChildren) -> list[str]:
    """Every field's target path checked against the definitions of its rule's resource type:
    element names (with choice types such as valueString), indexes only on repeating
    elements, and the JSON type of constants; each problem at the field's line, with a "did
    you mean" for a near miss."""
    problems = []
    rules = [(f"rules[{i}]", rule) for i, rule in enumerate(mapping.content.get("rules", []))]
    ranking = mapping.content.get("ranking")
    if isinstance(ranking, dict) and isinstance(ranking.get("list"), dict):
        rules.append(("ranking.list", ranking["list"]))
    for rule_path, rule in rules:
        for target, definition in rule.get("fields", {}).items():
            problem = _target_problem(str(rule["resource"]), target, definition, children)
            if problem:
                problems.append(f"{mapping.where(f'{rule_path}.fields.{target}')}: {problem}")
        template = rule.get("template")
        for key, value in (template if isinstance(template, dict) else {}).items():
            # the fixed template is checked as its fields are: element names and constants
            for target, leaf in _leaves(str(key), value):
                problem = _target_problem(str(rule["resource"]), target, {"const": leaf}, children)
                if problem:
                    problems.append(f"{mapping.where(f'{rule_path}.template.{key}')}: {problem}")
                    break
    return problems


def _leaves(path: str, value: Any) -> list[tuple[str, Any]]:
    """The leaf values of a template element, each with its target path (``a[0].b``)."""
    if isinstance(value, dict) and value:
        return [leaf for key, item in value.items() for leaf in _leaves(f"{path}.{key}", item)]
    if isinstance(value, list) and value:
        return [leaf for i, item in enumerate(value) for leaf in _leaves(f"{path}[{i}]", item)]
    return [(path, value)]


def _target_problem(
    resource: str, target: str, definition: dict[str, Any], children: ElementChildren
) -> str | None:
    parts: list[str | int] = [
        name if name else int(index) for name, index in _TARGET_PART.findall(target)
    ]
    context = resource
    element: Element | None = None
    type_: str = resource
    walked = resource
    for position, part in enumerate(parts):
        following = parts[position + 1] if position + 1 < len(parts) else None
        if isinstance(part, int):
            continue
        kids = children(context)
        if not kids:
            return f"{walked} is a {type_}, which has no elements such as {part!r}"
        found = _child(kids, part)
        if found is None:
            names = _names(kids)
            near = difflib.get_close_matches(part, names, n=1, cutoff=0.6)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            kind = "" if walked == resource else f" (a {type_})"
            return f"{walked}{kind} has no element {part!r}{hint}"
        element, type_ = found
        walked = f"{walked}.{part}"
        repeats = element.max not in ("0", "1")
        if isinstance(following, int) and not repeats:
            return f"{walked} does not repeat (at most 1), so it takes no index [{following}]"
        if following is not None and not isinstance(following, int) and repeats:
            return f"{walked} repeats: name one, e.g. {part}[0]"
        if element.content_reference:
            context = element.content_reference.lstrip("#").split("#")[-1]
        elif type_ in ("BackboneElement", "Element"):
            context = f"{context}.{part}"  # an element defined inline, under its parent's path
        else:
            context = type_
    if element is not None and "const" in definition:
        indexed = isinstance(parts[-1], int)
        repeats = element.max not in ("0", "1")
        return _const_problem(definition["const"], type_, repeats and not indexed, walked)
    last = parts[-1] if parts else None
    unindexed = element is not None and element.max not in ("0", "1") and isinstance(last, str)
    if unindexed and _one_value(definition):
        return f"{walked} repeats: a value goes into one of them, e.g. {last}[0]"
    return None


def _one_value(definition: dict[str, Any]) -> bool:
    """Whether a value definition always gives one value, never a list (a ``path`` or a
    ``const`` may give a list)."""
    if "const" in definition or "path" in definition:
        return False
    choices = definition.get("first")
    if isinstance(choices, list):
        return all(isinstance(c, dict) and _one_value(c) for c in choices)
    return True


def _child(kids: dict[str, Element], name: str) -> tuple[Element, str] | None:
    if name in kids:
        element = kids[name]
        return element, (element.types[0] if element.types else "BackboneElement")
    for key, element in kids.items():
        if key.endswith("[x]") and name.startswith(key[:-3]):
            wanted = name[len(key) - 3 :]
            for type_ in element.types:
                if type_[:1].upper() + type_[1:] == wanted:
                    return element, type_
    return None


def _names(kids: dict[str, Element]) -> list[str]:
    names = []
    for key, element in kids.items():
        if key.endswith("[x]"):
            names += [key[:-3] + t[:1].upper() + t[1:] for t in element.types]
        else:
            names.append(key)
    return names


def _const_problem(value: Any, type_: str, many: bool, walked: str) -> str | None:
    if many:
        ok = isinstance(value, list)
        expected = "a list"
    elif type_ in _STRING_TYPES:
        ok, expected = isinstance(value, str), "text"
    elif type_ == "boolean":
        ok, expected = isinstance(value, bool), "true or false"
    elif type_ in _INTEGER_TYPES:
        ok = isinstance(value, int) and not isinstance(value, bool)
        expected = "a whole number"
    elif type_ == "decimal":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        expected = "a number"
    else:
        ok, expected = isinstance(value, dict), f"an object (a {type_})"
    if ok:
        return None
    kind = f"{type_} list" if many else type_
    return f"{walked} is a {kind}; the constant {value!r} is not {expected}"
