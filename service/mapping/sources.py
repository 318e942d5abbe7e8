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
import re
from collections.abc import Iterable, Iterator, Sequence
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
    segments: list[Any] = field(default_factory=list)  # hl7v2: the segment and its continuations
    notes: list[Any] = field(default_factory=list)  # hl7v2: the NTE segments that follow them
    index: int = 0  # hl7v2: where the record's segment is in its message

    def nearest(self, name: str) -> Any:
        """hl7v2: the segment ``name`` of the record's group (the nearest one before the
        record's segment, so each OBX reads its own OBR), else the message's first; or None."""
        if self.message is None:
            return None
        for position in range(self.index - 1, -1, -1):
            if str(self.message[position][0]) == name:
                return self.message[position]
        for segment in self.message:
            if str(segment[0]) == name:
                return segment
        return None


def read_records(
    fmt: str,
    data: bytes | str | Iterable[str],
    record: str | None = None,
    delimiter: str = ",",
    questionnaires: dict[str, dict[str, Any]] | None = None,
    continuation: bool = False,
) -> Iterator[Record]:
    """The records of an input; raises MappingError with the position of what cannot be read."""
    if fmt == "csv":
        yield from _csv(_lines(data), delimiter)
    elif fmt == "json":
        yield from _json(_text(data), record)
    elif fmt == "hl7v2":
        yield from _hl7(_hl7_text_of(data), record or "OBX", continuation)
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
        source["format"],
        data,
        source.get("record"),
        source.get("delimiter", ","),
        questionnaires,
        "continuation" in source,
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


# HL7 table 0211 (MSH-18, alternate character sets) as Python codecs: a message's bytes are
# read in the character set its header declares when they are not UTF-8
_HL7_CHARSETS = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859-{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
}


def _hl7_text_of(data: bytes | str | Iterable[str]) -> str:
    """An HL7 v2 input as text: UTF-8, else the character set MSH-18 names (table 0211)."""
    if not isinstance(data, bytes):
        return _text(data)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        header = data.split(b"\r", 1)[0].split(b"\n", 1)[0]
        separator = header[3:4] if header.startswith(b"MSH") else b"|"
        fields = header.split(separator) if separator else []
        declared = fields[17].decode("ascii", "replace").strip() if len(fields) > 17 else ""
        codec = _HL7_CHARSETS.get(declared.split("~", 1)[0].upper())
        if codec is None or codec in ("utf-8", "ascii"):
            named = f" (MSH-18 says {declared!r})" if declared else ""
            raise MappingError(f"input byte {exc.start}: not UTF-8{named}") from exc
        return data.decode(codec)


def _lines(data: bytes | str | Iterable[str]) -> Iterable[str]:
    if isinstance(data, bytes):
        # bytes that are not UTF-8 are kept as lone surrogates, so the row and column that
        # holds them can be named (``_undecodable``), not the start of the input
        return io.StringIO(data.decode("utf-8-sig", errors="surrogateescape"), newline="")
    if isinstance(data, str):
        return io.StringIO(data, newline="")
    return data


_UNDECODABLE = re.compile("[\udc80-\udcff]")


def _undecodable(row: dict[str, str | None], first: int) -> None:
    """Refuse a row holding bytes the input's character set does not define (UTF-8, or the
    Content-Type's charset), naming its column: the reader kept them as lone surrogates."""
    for column, value in row.items():
        if value and _UNDECODABLE.search(value):
            raise MappingError(f"row {first}, column {column!r}: not UTF-8")


def _csv(lines: Iterable[str], delimiter: str) -> Iterator[Record]:
    # "row N" is the line a record starts on (a quoted cell may hold line breaks)
    # strict: a quoted cell left open must not swallow the rows after it as one cell's text
    reader = csv.DictReader(lines, delimiter=delimiter, strict=True)
    first = 1
    try:
        header = reader.fieldnames or []  # reads the header, so line_num counts from it
        if any(_UNDECODABLE.search(name) for name in header):
            raise MappingError("row 1 (the header): not UTF-8")
        while True:
            first = reader.line_num + 1
            try:
                row = next(reader)
            except StopIteration:
                return
            if None in row:
                raise MappingError(
                    f"row {first}: more cells than the header has columns{delimiter_hint(header)}"
                )
            _undecodable(row, first)
            if not any(value and value.strip() for value in row.values()):
                continue  # a row of empty cells (,,,,) that spreadsheets leave at the end
            if None in row.values():
                # which cell is missing cannot be told: no value is guessed into a column
                cells = sum(value is not None for value in row.values())
                raise MappingError(
                    f"row {first}: {cells} cells where the header has {len(row)} columns"
                )
            yield Record(f"row {first}", dict(row))
    except csv.Error as exc:
        if str(exc) == "unexpected end of data":
            raise MappingError(f"row {first}: a quoted cell is never closed") from exc
        raise MappingError(f"row {first}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise MappingError(f"row {first}: not UTF-8") from exc


def delimiter_hint(header: Sequence[str]) -> str:
    """When a CSV header reads as one column holding ';', a tab or '|', the file is likely
    separated by that character: the setting that reads it, for an error message."""
    if len(header) != 1:
        return ""
    for separator, shown in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
        if separator in header[0]:
            return f" (one column: if the file is separated by {shown}, set source.delimiter)"
    return ""


def csv_header(data: bytes | str, delimiter: str = ",") -> list[str]:
    """The column names of a CSV input."""
    first = next(csv.reader(io.StringIO(_text(data)), delimiter=delimiter), [])
    return list(first)


def _json(text: str, record: str | None = None) -> Iterator[Record]:
    """JSON records: an array of objects, an object whose ``record`` path (``submissions``,
    ``data.items``) holds that array, a single object (one record), or one object per line."""
    stripped = text.lstrip()
    whole: Any = None
    if stripped.startswith(("[", "{")):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError as exc:
            if stripped.startswith("[") or record is not None:
                raise MappingError(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from exc
            whole = None  # one object per line: read below, line by line
    if record is not None:
        found = whole
        for step in record.split("."):
            if not isinstance(found, dict) or step not in found:
                raise MappingError(
                    f"the input has no {record!r} array (source.record): its top level holds "
                    + (", ".join(map(repr, whole)) if isinstance(whole, dict) else "no object")
                )
            found = found[step]
        if not isinstance(found, list):
            raise MappingError(f"{record!r} (source.record) is not an array of records")
        whole = found
    if isinstance(whole, dict):
        yield Record("record 1", whole)
        return
    if isinstance(whole, list):
        for index, item in enumerate(whole, start=1):
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


_BATCH_SEGMENTS = frozenset({"FHS", "BHS", "BTS", "FTS"})


def _hl7(text: str, record: str, continuation: bool = False) -> Iterator[Record]:
    # MLLP framing (VT ... FS CR) is common in files captured from an interface engine
    unframed = text.replace("\x0b", "").replace("\x1c", "")
    normalised = unframed.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
    while "\r\r" in normalised:
        normalised = normalised.replace("\r\r", "\r")
    # a batch file (HL7 v2.5.1 2.10.3: FHS, BHS ... BTS, FTS) is the messages it wraps
    segments = normalised.split("\r")
    if segments[0][:3] in _BATCH_SEGMENTS:
        normalised = "\r".join(s for s in segments if s[:3] not in _BATCH_SEGMENTS)
    if not normalised:
        return
    if not normalised.startswith("MSH") or len(normalised) < 4:
        raise MappingError("message 1: an HL7 v2 message starts with an MSH segment")
    header = "MSH" + normalised[3]  # MSH-1, the field separator, is whatever follows MSH
    chunks = [c for c in normalised.split("\r" + header) if c.strip()]
    for number, chunk in enumerate(chunks, start=1):
        chunk = chunk if number == 1 else header + chunk
        try:
            message = hl7.parse(chunk.strip("\r"))
        except Exception as exc:
            raise MappingError(f"message {number}: not HL7 v2 ER7 ({exc})") from exc
        count = 0
        groups = _groups(list(message), record, continuation)
        for index, segments, notes in groups:
            count += 1
            segment = segments[0]
            set_id = hl7_field(segment, 1) or str(count)
            yield Record(
                f"message {number}, segment {record}|{set_id}",
                {},
                message=message,
                segment=segment,
                segments=segments,
                notes=notes,
                index=index,
            )
        if count == 0:
            raise MappingError(
                f"message {number}: it has no {record} segment, so nothing in it can be mapped"
            )


def _groups(
    segments: list[Any], record: str, continuation: bool
) -> list[tuple[int, list[Any], list[Any]]]:
    """The record segments of a message with their continuations and following NTEs.

    With ``continuation``, an OBX with the same observation id (OBX-3.1) and a non-empty
    sub-ID (OBX-4) as the one before continues it, as TX results split over lines do.
    """
    groups: list[tuple[int, list[Any], list[Any]]] = []
    current: tuple[int, list[Any], list[Any]] | None = None
    for index, segment in enumerate(segments):
        name = str(segment[0])
        if name == record:
            if continuation and current is not None and _continues(current[1][-1], segment):
                current[1].append(segment)
                continue
            current = (index, [segment], [])
            groups.append(current)
        elif name == "NTE" and current is not None:
            current[2].append(segment)
        else:
            current = None  # notes after another segment are that segment's
    return groups


def _continues(previous: Any, segment: Any) -> bool:
    sub_id = hl7_field(segment, 4)
    return bool(sub_id) and (hl7_field(previous, 3, 1), hl7_field(previous, 4)) == (
        hl7_field(segment, 3, 1),
        sub_id,
    )


def hl7_field(
    segment: Any,
    field_no: int,
    component: int = 0,
    sub: int = 0,
    repetition: int | tuple[int, int, str] = 1,
) -> str:
    """A field, component or subcomponent of a segment, or ''.

    ``repetition`` is the field repetition (1, the first, by default), or a condition
    ``(component, subcomponent, value)`` choosing the first repetition where it holds, as in
    "the PID-3 whose component 4 is NHS". Without a component the whole repetition comes back
    as ER7 (``Walking my dog^x``).
    """
    try:
        value: Any = segment[field_no]
    except IndexError:
        return ""
    if isinstance(value, hl7.Field) and len(value) and isinstance(value[0], hl7.Repetition):
        repetitions = list(value)
    else:
        repetitions = [value]
    if isinstance(repetition, tuple):
        on_component, on_sub, wanted = repetition
        # a component without a subcomponent named also matches on its first subcomponent:
        # an assigning authority sent as a hierarchic designator (NHS&2.16.840.1.113883.2.1.4.1&ISO)
        # is the NHS one (HL7 v2.5.1 2.A.33, HD)
        chosen = [
            r
            for r in repetitions
            if _part(r, on_component, on_sub) == wanted
            or (not on_sub and _part(r, on_component, 1) == wanted)
        ]
        if not chosen:
            return ""
        value = chosen[0]
    elif repetition > len(repetitions):
        return ""
    else:
        value = repetitions[repetition - 1]
    found = _part(value, component, sub)
    # HL7 v2.5 2.5.3: "" (two double quotes) is the null value (delete what is held), never
    # text: it reads as absent
    return "" if found == '""' else found


def hl7_repetitions(segment: Any, field_no: int) -> int:
    """How many repetitions a field of a segment has (0 when the segment ends before it)."""
    try:
        value: Any = segment[field_no]
    except IndexError:
        return 0
    if isinstance(value, hl7.Field) and len(value) and isinstance(value[0], hl7.Repetition):
        return len(value)
    return 1


# HL7 v2.5 section 2.7 (escape sequences in text): formatting commands become plain text's
# line breaks and spaces, highlighting has no plain-text form
_FORMATTING = {".br": "\n", ".sp": "\n", ".ce": "\n", ".fi": "", ".nf": "", ".sk": " "}
_INDENTS = (".in", ".ti")


def hl7_text(message: Any, raw: str) -> str:
    """The text an HL7 v2 value carries, its escape sequences decoded: the delimiters (\\F\\,
    \\S\\, \\T\\, \\R\\, \\E\\), formatting (\\.br\\ a line break, \\.sp2\\ two, \\.sk3\\ three
    spaces), highlighting (\\H\\, \\N\\: dropped), hexadecimal data (\\XC3A9\\: the bytes, read
    as UTF-8 like the message) and locally defined \\Z...\\ sequences (dropped: they mean
    nothing outside the sender). A sequence the standard does not define is kept as sent."""
    esc: str = message.esc
    if esc not in raw:
        return raw
    delimiters: dict[str, str] = {
        "F": message.separators[1],
        "R": message.separators[2],
        "S": message.separators[3],
        "T": message.separators[4],
        "E": esc,
        "H": "",
        "N": "",
    }

    def decode(match: re.Match[str]) -> str:
        value = match.group(1)
        if value in delimiters:
            return delimiters[value]
        command, count = value[:3], value[3:]
        if command in _FORMATTING and (count == "" or count.isdigit()):
            return _FORMATTING[command] * int(count or 1)
        if command in _INDENTS and (count == "" or count.lstrip("+-").isdigit()):
            return ""  # an indent of the sender's layout: no plain-text form
        if value[:1] == "X" and len(value) % 2 == 1:
            try:
                data = bytes.fromhex(value[1:])
            except ValueError:
                return match.group(0)
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                return data.decode("latin-1")
        if value[:1] == "Z":
            return ""
        return match.group(0)

    pattern = re.escape(esc) + "([^" + re.escape(esc) + "]+)" + re.escape(esc)
    return re.sub(pattern, decode, raw)


def _part(value: Any, component: int, sub: int) -> str:
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
            question = questions.get(str(item.get("linkId")), {})
            if answers and len(answers) > 1 and question and not question.get("repeats"):
                # the Questionnaire allows one answer (R4 questionnaireresponse.html, the
                # item's repeats): which one the patient meant cannot be told, none is dropped
                raise MappingError(
                    f"{where}.answer: {len(answers)} answers to item "
                    f"{item.get('linkId')!r}, whose question in the Questionnaire does not repeat"
                )
            if answers:
                yield Record(
                    f"item {item.get('linkId')} ({where})",
                    item,
                    resource=resource,
                    question=question,
                )
            yield from walk(item.get("item", []), where)

    yield from walk(resource.get("item", []), "QuestionnaireResponse")


def _questions(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in items:
        found[str(item.get("linkId"))] = item
        found.update(_questions(item.get("item", [])))
    return found
