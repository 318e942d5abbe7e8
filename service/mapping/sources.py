"""Read inputs as a stream of records, each with the position people use to find it.

HL7 v2 (python-hl7): one record per segment named by the mapping's ``record`` (``OBX``), with
its message's other segments in reach (``PID-3.1``); position ``message 3, segment OBX|4``.
CSV: one record per row (``row 12``). JSON: one record per object of an array, or per line of
NDJSON (``record 5``). QuestionnaireResponse: one record per answered item (``item
what-matters``), with the Questionnaire item it answers.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hl7

from service.mapping.files import MappingError, MappingFile


@dataclass
class Record:
    """One unit of input the rules map."""

    position: str
    values: dict[str, Any]  # csv: the row; json: the object; questionnaire: the item
    message: Any = None  # hl7v2: the parsed message
    segment: Any = None  # hl7v2: the record's own segment
    resource: dict[str, Any] | None = None  # questionnaire-response: the whole resource
    question: dict[str, Any] = field(default_factory=dict)  # the Questionnaire item answered


def read_records(
    fmt: str,
    data: bytes | str | Iterable[str],
    record: str | None = None,
    delimiter: str = ",",
    questionnaires: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Record]:
    """The records of an input; raises MappingError with the position of what cannot be read."""
    if fmt == "csv":
        yield from _csv(_lines(data), delimiter)
    elif fmt == "json":
        yield from _json(_text(data))
    elif fmt == "hl7v2":
        yield from _hl7(_text(data), record or "OBX")
    elif fmt == "questionnaire-response":
        yield from _questionnaire_response(_text(data), questionnaires or {})
    else:  # pragma: no cover - the schema allows only the four
        raise MappingError(f"unknown input format {fmt!r}")


def mapping_records(
    mapping: MappingFile,
    data: bytes | str | Iterable[str],
    questionnaires: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Record]:
    """The records of an input, read the way the mapping's ``source`` says."""
    source = mapping.content["source"]
    return read_records(
        source["format"], data, source.get("record"), source.get("delimiter", ","), questionnaires
    )


def _text(data: bytes | str | Iterable[str]) -> str:
    if isinstance(data, bytes):
        try:
            return data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise MappingError(f"input byte {exc.start}: not UTF-8") from exc
    if isinstance(data, str):
        return data
    return "".join(data)


def _lines(data: bytes | str | Iterable[str]) -> Iterable[str]:
    if isinstance(data, bytes | str):
        return io.StringIO(_text(data), newline="")
    return data


def _csv(lines: Iterable[str], delimiter: str) -> Iterator[Record]:
    reader = csv.DictReader(lines, delimiter=delimiter)
    try:
        for row in reader:
            if None in row:
                raise MappingError(f"row {reader.line_num}: more cells than the header has columns")
            yield Record(f"row {reader.line_num}", dict(row))
    except csv.Error as exc:
        raise MappingError(f"row {reader.line_num}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MappingError(f"row {reader.line_num + 1}: not UTF-8") from exc


def csv_header(data: bytes | str, delimiter: str = ",") -> list[str]:
    """The column names of a CSV input."""
    first = next(csv.reader(io.StringIO(_text(data)), delimiter=delimiter), [])
    return list(first)


def _json(text: str) -> Iterator[Record]:
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise MappingError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
        for index, item in enumerate(items, start=1):
            if not isinstance(item, dict):
                raise MappingError(f"record {index}: not a JSON object")
            yield Record(f"record {index}", item)
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MappingError(f"line {number} column {exc.colno}: {exc.msg}") from exc
        if not isinstance(item, dict):
            raise MappingError(f"line {number}: not a JSON object")
        yield Record(f"line {number}", item)


def _hl7(text: str, record: str) -> Iterator[Record]:
    # MLLP framing (VT ... FS CR) is common in files captured from an interface engine
    unframed = text.replace("\x0b", "").replace("\x1c", "")
    normalised = unframed.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    while "\r\r" in normalised:
        normalised = normalised.replace("\r\r", "\r")
    if not normalised:
        return
    if not normalised.startswith("MSH|"):
        raise MappingError("message 1: an HL7 v2 message starts with an MSH segment")
    chunks = [c for c in normalised.split("\rMSH|") if c.strip()]
    for number, chunk in enumerate(chunks, start=1):
        chunk = chunk if number == 1 else "MSH|" + chunk
        try:
            message = hl7.parse(chunk.strip("\r"))
        except Exception as exc:
            raise MappingError(f"message {number}: not HL7 v2 ER7 ({exc})") from exc
        count = 0
        for segment in message:
            if str(segment[0]) != record:
                continue
            count += 1
            set_id = hl7_field(segment, 1) or str(count)
            yield Record(
                f"message {number}, segment {record}|{set_id}",
                {},
                message=message,
                segment=segment,
            )
        if count == 0:
            raise MappingError(
                f"message {number}: it has no {record} segment, so nothing in it can be mapped"
            )


def hl7_field(segment: Any, field_no: int, component: int = 0, sub: int = 0) -> str:
    """A field (its first repetition), component or subcomponent of a segment, or ''.

    Without a component the whole field comes back as ER7 (``Walking my dog^x``).
    """
    try:
        value: Any = segment[field_no]
    except IndexError:
        return ""
    if isinstance(value, hl7.Field) and len(value) and isinstance(value[0], hl7.Repetition):
        value = value[0]
    for index in (component, sub):
        if not index:
            break
        if isinstance(value, str):
            value = value if index == 1 else ""
            continue
        try:
            value = value[index - 1]
        except IndexError:
            return ""
    return str(value)


def _questionnaire_response(
    text: str, questionnaires: dict[str, dict[str, Any]]
) -> Iterator[Record]:
    try:
        resource = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MappingError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
    if not isinstance(resource, dict) or resource.get("resourceType") != "QuestionnaireResponse":
        raise MappingError("the input is not a QuestionnaireResponse")
    canonical = str(resource.get("questionnaire", "")).split("|", 1)[0]
    questionnaire = questionnaires.get(canonical, {})
    questions = _questions(questionnaire.get("item", []))

    def walk(items: Any, path: str) -> Iterator[Record]:
        if not isinstance(items, list):
            raise MappingError(f"{path}.item: must be a list of items")
        for index, item in enumerate(items):
            where = f"{path}.item[{index}]"
            if not isinstance(item, dict):
                raise MappingError(f"{where}: an item must be an object")
            answers = item.get("answer")
            if answers is not None and not isinstance(answers, list):
                raise MappingError(f"{where}.answer: must be a list of answers")
            if answers:
                yield Record(
                    f"item {item.get('linkId')} ({where})",
                    item,
                    resource=resource,
                    question=questions.get(str(item.get("linkId")), {}),
                )
            yield from walk(item.get("item", []), where)

    yield from walk(resource.get("item", []), "QuestionnaireResponse")


def _questions(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in items:
        found[str(item.get("linkId"))] = item
        found.update(_questions(item.get("item", [])))
    return found
