"""Resource-level helpers of the FHIR core: supported types, JSON, meta, time and ETags."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from service.errors import BadRequest

FHIR_VERSION = "4.0.1"
SUPPORTED_TYPES: tuple[str, ...] = (
    "Goal",
    "List",
    "Observation",
    "Patient",
    "Provenance",
    "Questionnaire",
    "QuestionnaireResponse",
    # rest-hook subscriptions to what-matters-changed (Subscriptions R5 Backport IG for R4)
    "Subscription",
    # the record of every access (SMART mode), queried by administrators
    "AuditEvent",
)
MAX_JSON_DEPTH = 100
# a JSON escape of a UTF-16 surrogate (RFC 8259 section 7): paired, it spells one character;
# alone, it is no character and has no UTF-8 form
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_ETAG = re.compile(r'^(?:W/)?"([0-9]+)"$')


class _DuplicateKeys(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKeys(key)
        result[key] = value
    return result


class FhirDecimal(Decimal):
    """A JSON number with a fraction or exponent, keeping the text it was written as.

    FHIR decimals carry their precision in their digits (72.50 is not 72.5); floats would lose
    it, so numbers are read as decimals and written back exactly as they came.
    """

    text: str

    def __new__(cls, text: str) -> FhirDecimal:
        number = super().__new__(cls, text)
        number.text = text
        return number


class _DecimalMarker:
    """Writes decimals as marked strings; the marker is made on the first decimal met."""

    def __init__(self) -> None:
        self.marker: str | None = None

    def __call__(self, value: Any) -> str:
        if not isinstance(value, Decimal):
            raise TypeError(f"{type(value).__name__} is not JSON serialisable")
        if self.marker is None:
            self.marker = secrets.token_hex(8) + ":"
        text = getattr(value, "text", None) or str(value)
        return f"\u0000{self.marker}{text}\u0000"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes | str, what: str = "The request body") -> Any:
    """Parse JSON strictly: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded depth."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(
                f"{what} is not valid UTF-8 (byte {exc.start}): FHIR JSON is UTF-8"
            ) from exc
    else:
        text = body
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise BadRequest(f"{what} is empty")
    try:
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=FhirDecimal,
        )
    except _DuplicateKeys as exc:
        raise BadRequest(f"{what} repeats the JSON property {exc.args[0]!r}") from exc
    except RecursionError as exc:
        raise BadRequest(f"{what} is nested too deeply") from exc
    except ValueError as exc:
        raise BadRequest(f"{what} is not valid JSON: {exc}") from exc
    if _depth(value) > MAX_JSON_DEPTH:
        raise BadRequest(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    if _SURROGATE_ESCAPE.search(text):  # rare: only then is every string looked at
        _refuse_lone_surrogates(value, what)
    return value


def _refuse_lone_surrogates(value: Any, what: str) -> None:
    """400 at the first string (or property name) holding a lone surrogate: it is no Unicode
    character (RFC 8259 section 8.2) and cannot be stored or sent as UTF-8."""
    root = value.get("resourceType") if isinstance(value, dict) else None
    stack: list[tuple[Any, str]] = [(value, root if isinstance(root, str) else "")]
    while stack:
        item, path = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if _lone_surrogate(key):
                    _surrogate_error(what, path or "$")
                stack.append((child, f"{path}.{key}" if path else key))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{n}]") for n, child in enumerate(item))
        elif isinstance(item, str) and _lone_surrogate(item):
            _surrogate_error(what, path or "$")


def _lone_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _surrogate_error(what: str, path: str) -> None:
    raise BadRequest(
        f"{what} holds a lone UTF-16 surrogate escape (\\uD800-\\uDFFF without its pair) "
        f"at {path}: it is no Unicode character and FHIR JSON is UTF-8",
        expression=(path,),
    )


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def dump_json(value: Any, indent: int | None = None) -> str:
    """Serialise without escaping (the patient's words stay as sent), decimals as written."""
    separators = (",", ":") if indent is None else (",", ": ")
    # Decimals are written as marked strings, then unquoted. The marker is new for every call,
    # so no string in the value (a search parameter echoed in an error, say) can look like one.
    decimals = _DecimalMarker()
    text = json.dumps(
        value, ensure_ascii=False, separators=separators, indent=indent, default=decimals
    )
    if decimals.marker is None:
        return text
    token = re.compile(r'"\\u0000' + decimals.marker + r'([-+.0-9eE]+)\\u0000"')
    return token.sub(r"\1", text)


def new_resource_id() -> str:
    """A new resource id: a UUID of RFC 9562 version 7, the time in milliseconds in its first
    48 bits and 74 random bits after it.

    Ids made one after another sort one after another, so a new resource's rows go in at the
    end of each table's and index's B-tree rather than at random places in it: on SQLite that
    halved the cost of storing an AuditEvent and cut its commit to a fifth (random version 4
    ids dirtied a page of every index for each row). The id still says nothing a client
    could not read in ``meta.lastUpdated``, and cannot be guessed from another id."""
    millis = time.time_ns() // 1_000_000
    rand = secrets.randbits(74)
    value = (millis & (1 << 48) - 1) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62
    return str(uuid.UUID(int=value | rand & ((1 << 62) - 1)))


def now_us() -> int:
    """The current time in whole milliseconds, expressed in microseconds since the epoch."""
    micros = int(datetime.now(UTC).timestamp() * 1_000_000)
    return micros - micros % 1000


def instant(micros: int) -> str:
    """Format a time as a FHIR instant with milliseconds and an explicit UTC offset."""
    moment = datetime.fromtimestamp(micros / 1_000_000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def http_date(micros: int) -> str:
    """Format a time as an HTTP-date for Last-Modified."""
    return format_datetime(datetime.fromtimestamp(micros / 1_000_000, UTC), usegmt=True)


def parse_instant(value: str, what: str) -> int:
    """Parse a FHIR instant or dateTime (with a time zone) into microseconds since the epoch."""
    text = value.strip().replace("Z", "+00:00").replace(" ", "+")
    try:
        if len(text) == 4:
            moment = datetime(int(text), 1, 1, tzinfo=UTC)
        elif len(text) == 7:
            moment = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"{what} must be a FHIR instant, not {value!r}") from exc
    if moment.tzinfo is None:
        if len(text) == 10:
            moment = moment.replace(tzinfo=UTC)
        else:
            raise BadRequest(f"{what} needs a time zone: {value!r}")
    return int(moment.timestamp() * 1_000_000)


def etag(version: int) -> str:
    """The weak ETag of a version: https://hl7.org/fhir/R4/http.html#versioning."""
    return f'W/"{version}"'


ANY_VERSION = -1  # If-Match: * (no ETag names it: W/"0" is a version that never exists)


def parse_etag(value: str) -> int:
    """Read the version from an If-Match value such as W/"3"; ``*`` (RFC 9110 §13.1.1: any
    current representation) reads as ANY_VERSION."""
    if value.strip() == "*":
        return ANY_VERSION
    match = _ETAG.match(value.strip())
    if match is None:
        raise BadRequest(f'If-Match must be an ETag such as W/"3" or *, not {value!r}')
    return int(match.group(1))


def parse_if_none_match(value: str) -> list[int]:
    """The versions an If-None-Match value names (W/"3", "3", several with commas); an empty
    list stands for "*". An ETag that is not one of ours never matches (version -1)."""
    versions: list[int] = []
    for part in value.split(","):
        part = part.strip()
        if part == "*":
            return []
        try:
            versions.append(parse_etag(part))
        except BadRequest:
            continue
    return versions if versions else [-1]


# Each installation is known in exchanges by a UUID made once with its database. It is
# published in the CapabilityStatement (implementation.extension) and stamped on what the
# installation originates (meta.tag), so no partner ever sends a resource back to where it began,
# whatever URLs name the two sides.
INSTANCE_EXTENSION = "http://whatmatters.example/fhir/StructureDefinition/instance-identifier"
ORIGIN_TAG_SYSTEM = "http://whatmatters.example/fhir/CodeSystem/origin-instance"


def instance_uri(instance_id: str) -> str:
    """The URI naming an installation (its meta.source prefix, its CapabilityStatement id)."""
    return f"urn:uuid:{instance_id}"


def origin_of(resource: dict[str, Any]) -> str | None:
    """The instance id a resource carries in its origin tag, if any."""
    for tag in (resource.get("meta") or {}).get("tag") or []:
        if isinstance(tag, dict) and tag.get("system") == ORIGIN_TAG_SYSTEM:
            code = tag.get("code")
            return code if isinstance(code, str) else None
    return None


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two versions hold the same resource, ignoring the server-owned meta
    (versionId, lastUpdated) and meta.source, as a no-op update is judged."""
    return _without_volatile_meta(a) == _without_volatile_meta(b)


def _without_volatile_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated", "source")
    }
    out = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    if meta:
        out["meta"] = meta
    return out


def with_meta(resource: dict[str, Any], id_: str, version: int, micros: int) -> dict[str, Any]:
    """Return the resource with the server-owned id, meta.versionId and meta.lastUpdated."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(micros)
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": id_, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out
