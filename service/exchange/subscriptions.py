"""Topic-based Subscriptions for R4, after the Subscriptions R5 Backport IG (STU 1.1).

Pure functions, no I/O: read a client's Subscription into a ``SubscriptionSpec``, check its
endpoint, and decide whether a change fires the ``what-matters-changed`` topic and reaches a
subscription. The notification Bundles are built in ``notifications.py``.

The IG pages these functions follow (STU 1.1, https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/):

- components.html: topic by canonical URL in ``Subscription.criteria``, filters and payload
  settings in backport extensions;
- StructureDefinition-backport-subscription.html: the R4 Subscription profile
  (``channel.payload`` 1..1 with the ``backport-payload-content`` extension 1..1);
- channels.html#rest-hook and workflow.html: the ``requested`` -> handshake -> ``active`` flow
  (the statuses a client and this server may set).
"""

from __future__ import annotations

import copy
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from service.errors import FhirError
from service.fhir.model import parse_instant
from service.priorities.codes import (
    LOINC,
    PCO_CONCEPTS,
    PRIORITIES_CODE,
    STATEMENT_CODE,
    TREATMENT_PREFERENCE_CODE,
)
from service.validation.profiles import CANONICAL_BASE

IG = "http://hl7.org/fhir/uv/subscriptions-backport"
TOPIC_URL = CANONICAL_BASE + "/SubscriptionTopic/what-matters-changed"

# Extensions of the IG (https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/artifacts.html).
FILTER_CRITERIA_URL = IG + "/StructureDefinition/backport-filter-criteria"
HEARTBEAT_PERIOD_URL = IG + "/StructureDefinition/backport-heartbeat-period"
TIMEOUT_URL = IG + "/StructureDefinition/backport-timeout"
PAYLOAD_CONTENT_URL = IG + "/StructureDefinition/backport-payload-content"
MAX_COUNT_URL = IG + "/StructureDefinition/backport-max-count"

SUBSCRIPTION_PROFILE = IG + "/StructureDefinition/backport-subscription"
STATUS_PROFILE = IG + "/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = IG + "/StructureDefinition/backport-subscription-notification-r4"
# In STU 1.1 the R4 ``type`` parameter is a bare valueCode (bound to the R4B value set
# subscription-notification-type), so this system is never written into a Parameters.
NOTIFICATION_TYPE_SYSTEM = IG + "/CodeSystem/backport-notification-type"

WHAT_MATTERS_CATEGORY = "what-matters"
WMTY_QUESTIONNAIRE = CANONICAL_BASE + "/Questionnaire/wmty"

TOPIC_RESOURCE_TYPES = ("Observation", "Goal", "List", "QuestionnaireResponse")
SUBSCRIPTION_STATUSES = ("requested", "active", "error", "off")
CONTENT_CODES = ("empty", "id-only", "full-resource")
NOTIFICATION_TYPES = ("handshake", "heartbeat", "event-notification", "query-status")
PAYLOAD_MIME_TYPES = ("application/fhir+json", "application/json")
DEFAULT_PAYLOAD_MIME = "application/fhir+json"
DEFAULT_TIMEOUT_SECONDS = 30
SUPPORTED_FILTER = "patient"

CONTENT_EXPRESSION = f"Subscription.channel.payload.extension('{PAYLOAD_CONTENT_URL}')"
HEARTBEAT_EXPRESSION = f"Subscription.channel.extension('{HEARTBEAT_PERIOD_URL}')"
TIMEOUT_EXPRESSION = f"Subscription.channel.extension('{TIMEOUT_URL}')"
FILTER_EXPRESSION = f"Subscription.criteria.extension('{FILTER_CRITERIA_URL}')"

_ID = r"[A-Za-z0-9\-.]{1,64}"
_PATIENT_TAIL = re.compile(rf"(?:^|/)Patient/({_ID})(?:/_history/{_ID})?\Z")
_BARE_ID = re.compile(_ID)
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\r\n]*")
# headers the notification itself defines (RFC 9110 sections 7.2, 8.3, 8.6; RFC 9112 section 6):
# a subscriber may add its own (Authorization, an API key), never replace these
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "upgrade",
        "te",
        "trailer",
        "expect",
        "proxy-authorization",
        "proxy-connection",
    }
)

Filter = tuple[str | None, str, str]


class SubscriptionInvalid(ValueError):
    """A Subscription this server cannot accept, with the FHIRPath of the offending element."""

    def __init__(self, message: str, expression: str) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression


@dataclass(frozen=True)
class SubscriptionSpec:
    """What the server needs of one rest-hook Subscription to the what-matters-changed topic."""

    id: str | None
    topic: str
    status: str
    endpoint: str
    headers: tuple[str, ...] = ()
    payload_mime: str = DEFAULT_PAYLOAD_MIME
    content: str = "id-only"
    heartbeat_seconds: int | None = None
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    filters: tuple[Filter, ...] = ()
    end: str | None = None


# --- Subscription --------------------------------------------------------------------------


def ended(spec: SubscriptionSpec, now: int) -> bool:
    """Whether the Subscription's ``end`` has passed at ``now`` (microseconds): it gets
    nothing after it (R4 Subscription.end, "the time for the server to turn it off")."""
    if spec.end is None:
        return False
    try:
        return parse_instant(spec.end, "Subscription.end") <= now
    except FhirError:  # not an instant: the Subscription's own check names it
        return False


def parse_subscription(resource: dict[str, Any]) -> SubscriptionSpec:
    """Read a backport-subscription (R4) into a spec, or raise ``SubscriptionInvalid``.

    Profile: https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-subscription.html
    (criteria is the topic canonical; ``_criteria`` carries backport-filter-criteria;
    ``_payload`` carries backport-payload-content 1..1; ``channel.extension`` carries
    backport-heartbeat-period and backport-timeout, both unsignedInt).
    """
    if not isinstance(resource, dict) or resource.get("resourceType") != "Subscription":
        raise SubscriptionInvalid("the resource is not a Subscription", "Subscription")
    criteria = resource.get("criteria")
    if criteria != TOPIC_URL:
        raise SubscriptionInvalid(
            f"Subscription.criteria must be the canonical URL of a supported topic; this server "
            f"supports only {TOPIC_URL} (got {criteria!r})",
            "Subscription.criteria",
        )
    status = resource.get("status", "requested")
    if status not in SUBSCRIPTION_STATUSES:
        raise SubscriptionInvalid(
            f"Subscription.status must be one of {', '.join(SUBSCRIPTION_STATUSES)} "
            f"(got {status!r})",
            "Subscription.status",
        )
    end = resource.get("end")
    if end is not None and not isinstance(end, str):
        raise SubscriptionInvalid("Subscription.end must be an instant", "Subscription.end")
    subscription_id = resource.get("id")
    channel = resource.get("channel")
    if not isinstance(channel, dict):
        raise SubscriptionInvalid("Subscription.channel is required", "Subscription.channel")
    return SubscriptionSpec(
        id=subscription_id if isinstance(subscription_id, str) else None,
        topic=criteria,
        status=status,
        endpoint=_endpoint(channel),
        headers=_headers(channel),
        payload_mime=_payload_mime(channel),
        content=_content(channel),
        heartbeat_seconds=_seconds(channel, HEARTBEAT_PERIOD_URL, HEARTBEAT_EXPRESSION),
        timeout_seconds=_seconds(channel, TIMEOUT_URL, TIMEOUT_EXPRESSION)
        or DEFAULT_TIMEOUT_SECONDS,
        filters=_filters(resource),
        end=end,
    )


def _endpoint(channel: dict[str, Any]) -> str:
    """Return the rest-hook endpoint: an absolute http or https URL."""
    if channel.get("type") != "rest-hook":
        raise SubscriptionInvalid(
            f"Subscription.channel.type must be rest-hook (got {channel.get('type')!r})",
            "Subscription.channel.type",
        )
    endpoint = channel.get("endpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise SubscriptionInvalid(
            "a rest-hook Subscription needs channel.endpoint", "Subscription.channel.endpoint"
        )
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", endpoint):
        raise SubscriptionInvalid(
            "Subscription.channel.endpoint must be an absolute http or https URL "
            f"(got {endpoint!r})",
            "Subscription.channel.endpoint",
        )
    return endpoint


def endpoint_refusal(endpoint: str, allowed: Sequence[str]) -> str | None:
    """Why this server will not send notifications to ``endpoint``, or None when it will.

    An endpoint is ``https`` on a public host, or names a host listed in ``allowed`` (a host
    name, an address or a CIDR range), which is then also the only way to ``http``. Loopback,
    link-local, private and other non-public addresses (and ``localhost`` names) are refused
    unless listed, so a Subscription cannot make this server call into its own network.
    """
    parts = urlsplit(endpoint)
    host = endpoint_host(endpoint)
    if "%" in host:
        # the HTTP client decodes %31%32%37.0.0.1 to 127.0.0.1, which no check here would see
        return (
            f"Subscription.channel.endpoint names the host {host!r} with percent-encoded "
            "characters; write the host name or address as it is"
        )
    if _listed(host, allowed):
        return None
    if parts.scheme != "https":
        return (
            f"Subscription.channel.endpoint must be an https URL (host {host!r} is not on "
            "WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW)"
        )
    address = _address(host)
    # single-label names (and numeric forms such as 2130706433) are the local network's
    inside = address is None and (
        "." not in host or host.endswith((".localhost", ".local", ".internal"))
    )
    if inside or (address is not None and not address.is_global):
        return (
            f"Subscription.channel.endpoint names {host!r}, a loopback, link-local or private "
            "host; it must be listed in WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW"
        )
    return None


def endpoint_host(endpoint: str) -> str:
    """The host an endpoint URL names, as the checks compare it (lower case, no final dot)."""
    return (urlsplit(endpoint).hostname or "").lower().rstrip(".")


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, in any form the system resolver also reads as one:
    dotted quads, and the inet_aton shorthands (``127.1``, octal ``0177.0.0.1``, hex
    ``0x7f.1``, one number ``2130706433``) that name the same addresses."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return _inet_aton(host)


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_ATON_PART.fullmatch(p) for p in parts):
        return None
    numbers = []
    for part in parts:
        if part[:2].lower() == "0x":
            numbers.append(int(part[2:] or "0", 16))
        elif part.startswith("0") and len(part) > 1:
            numbers.append(int(part[1:], 8))
        else:
            numbers.append(int(part, 10))
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value) if value < 2**32 else None


# one part of an inet_aton address: hexadecimal, octal or decimal digits, nothing else
_ATON_PART = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def address_refusal(host: str, addresses: Sequence[str], allowed: Sequence[str]) -> str | None:
    """Why notifications may not go to ``host`` now that it resolves to ``addresses``, or
    None: a public name that resolves to a loopback, link-local or private address (a name
    made for that, or rebound) is refused as the address itself would be, unless listed."""
    if "%" in host:
        return f"{host!r} has percent-encoded characters, which the HTTP client would decode"
    if _listed(host, allowed):
        return None
    for text in addresses:
        address = _address(text.split("%", 1)[0])
        if address is not None and not address.is_global and not _listed(str(address), allowed):
            return (
                f"{host!r} resolves to {address}, a loopback, link-local or private address; "
                "it must be listed in WHATMATTERS_SUBSCRIPTION_ENDPOINT_ALLOW"
            )
    return None


def _listed(host: str, allowed: Sequence[str]) -> bool:
    address = _address(host)
    for entry in allowed:
        entry = entry.strip().lower().rstrip(".")
        if entry == host:
            return True
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                continue
        elif address is not None and _address(entry) == address:
            return True
    return False


def readable_types(spec: SubscriptionSpec) -> tuple[str, ...]:
    """The resource types a subscription's notifications may carry: the types its filters
    name, else every type of the topic."""
    named = tuple(dict.fromkeys(kind for kind, _, _ in spec.filters if kind is not None))
    return named or TOPIC_RESOURCE_TYPES


def _headers(channel: dict[str, Any]) -> tuple[str, ...]:
    """Return the ``channel.header`` values, each ``Name: value`` on one line."""
    headers = channel.get("header", []) or []
    if not isinstance(headers, list):
        headers = [headers]
    for index, header in enumerate(headers):
        if not isinstance(header, str) or not _HEADER.fullmatch(header):
            raise SubscriptionInvalid(
                "each Subscription.channel.header must be one HTTP header line 'Name: value'",
                f"Subscription.channel.header[{index}]",
            )
        name = header.split(":", 1)[0].strip().lower()
        if name in RESERVED_HEADERS:
            raise SubscriptionInvalid(
                f"Subscription.channel.header may not set {name!r}: this server writes it for "
                "each notification",
                f"Subscription.channel.header[{index}]",
            )
    return tuple(headers)


def _payload_mime(channel: dict[str, Any]) -> str:
    """Return the payload MIME type (FHIR JSON when only ``_payload`` is given)."""
    mime = channel.get("payload")
    if mime is None:
        return DEFAULT_PAYLOAD_MIME
    base = mime.split(";", 1)[0].strip().lower() if isinstance(mime, str) else None
    if base not in PAYLOAD_MIME_TYPES:
        raise SubscriptionInvalid(
            f"Subscription.channel.payload must be {' or '.join(PAYLOAD_MIME_TYPES)} "
            f"(got {mime!r})",
            "Subscription.channel.payload",
        )
    return str(mime)


def _content(channel: dict[str, Any]) -> str:
    """Return the backport-payload-content code, which the profile requires (1..1)."""
    primitive = channel.get("_payload")
    extensions = _extensions(primitive, PAYLOAD_CONTENT_URL)
    if not extensions:
        raise SubscriptionInvalid(
            "Subscription.channel.payload needs the backport-payload-content extension "
            "(empty | id-only | full-resource): the backport-subscription profile requires it",
            CONTENT_EXPRESSION,
        )
    if len(extensions) > 1:
        raise SubscriptionInvalid("backport-payload-content may appear once", CONTENT_EXPRESSION)
    code = extensions[0].get("valueCode")
    if code not in CONTENT_CODES:
        raise SubscriptionInvalid(
            f"backport-payload-content must be one of {', '.join(CONTENT_CODES)} (got {code!r})",
            CONTENT_EXPRESSION,
        )
    return str(code)


def _seconds(channel: dict[str, Any], url: str, expression: str) -> int | None:
    """Return a positive ``valueUnsignedInt`` channel extension in seconds, or None if absent."""
    extensions = _extensions(channel, url)
    if not extensions:
        return None
    name = url.rsplit("/", 1)[-1]
    if len(extensions) > 1:
        raise SubscriptionInvalid(f"{name} may appear once", expression)
    value = extensions[0].get("valueUnsignedInt")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SubscriptionInvalid(
            f"{name} must be a positive whole number of seconds in valueUnsignedInt "
            f"(got {value!r})",
            expression,
        )
    return value


def _filters(resource: dict[str, Any]) -> tuple[Filter, ...]:
    """Return the filters of every backport-filter-criteria on ``Subscription.criteria``."""
    found: list[Filter] = []
    for index, extension in enumerate(_extensions(resource.get("_criteria"), FILTER_CRITERIA_URL)):
        found.extend(parse_filter(extension.get("valueString"), f"{FILTER_EXPRESSION}[{index}]"))
    return tuple(found)


def parse_filter(text: object, expression: str = FILTER_EXPRESSION) -> tuple[Filter, ...]:
    """Parse ``[Type?]patient=Patient/123[&...]`` into ``(type | None, parameter, value)`` filters.

    Format: https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-filter-criteria.html
    (search-style, parts joined by ``&`` are ANDed, a comma inside a value is an OR); the value is
    normalised to ``Patient/<id>``.
    """
    if not isinstance(text, str) or not text.strip():
        raise SubscriptionInvalid("backport-filter-criteria needs a valueString", expression)
    resource_type: str | None = None
    query = text.strip()
    if "?" in query:
        prefix, query = query.split("?", 1)
        if prefix:
            if prefix not in TOPIC_RESOURCE_TYPES:
                raise SubscriptionInvalid(
                    f"filter resource type {prefix!r} is not one of the topic's resource types "
                    f"({', '.join(TOPIC_RESOURCE_TYPES)})",
                    expression,
                )
            resource_type = prefix
    parts = [part for part in query.split("&") if part]
    if not parts:
        raise SubscriptionInvalid(f"filter {text!r} has no search parameter", expression)
    found: list[Filter] = []
    for part in parts:
        name, equals, raw = part.partition("=")
        name = unquote(name)
        if name != SUPPORTED_FILTER:
            raise SubscriptionInvalid(
                f"filter parameter {name!r} is not supported; the what-matters-changed topic "
                f"can be filtered by {SUPPORTED_FILTER!r} only",
                expression,
            )
        values = [_patient_value(unquote(item)) for item in raw.split(",")] if equals else []
        if not values or None in values:
            raise SubscriptionInvalid(
                f"filter {part!r} needs a patient reference such as patient=Patient/123",
                expression,
            )
        found.append((resource_type, name, ",".join(str(value) for value in values)))
    return tuple(found)


def _patient_value(value: str) -> str | None:
    """Return ``Patient/<id>`` for a patient search value (id, relative or absolute URL)."""
    value = value.strip()
    if _BARE_ID.fullmatch(value):
        return f"Patient/{value}"
    return _patient_from_reference(value)


def _extensions(element: object, url: str) -> list[dict[str, Any]]:
    """Return the extensions of ``element`` with ``url``."""
    if not isinstance(element, dict):
        return []
    return [
        extension
        for extension in element.get("extension", []) or []
        if isinstance(extension, dict) and extension.get("url") == url
    ]


def with_status(resource: dict[str, Any], status: str, error: str | None = None) -> dict[str, Any]:
    """Return a copy of a Subscription with a new ``status`` and ``error`` (cleared when None).

    Statuses: https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/channels.html#rest-hook
    (``requested`` until the handshake succeeds, then ``active``; ``error`` on failure).
    """
    if status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"unknown Subscription.status {status!r}")
    updated = copy.deepcopy(resource)
    updated["status"] = status
    if error:
        updated["error"] = error
    else:
        updated.pop("error", None)
    return updated


# --- Topic -----------------------------------------------------------------------------------


def topic_event(resource_type: str, resource: dict[str, Any] | None) -> bool:
    """Return whether a create, update or delete of this resource fires what-matters-changed.

    For a deletion ``resource`` is the last stored content, or None: then only a Goal fires.
    """
    if resource_type == "Goal":
        return True
    if not isinstance(resource, dict):
        return False
    if resource_type == "Observation":
        return _has_coding(
            resource.get("code"), LOINC, STATEMENT_CODE, TREATMENT_PREFERENCE_CODE
        ) or any(
            _has_coding(category, PCO_CONCEPTS, WHAT_MATTERS_CATEGORY)
            for category in _list(resource.get("category"))
        )
    if resource_type == "List":
        return _has_coding(resource.get("code"), LOINC, PRIORITIES_CODE)
    if resource_type == "QuestionnaireResponse":
        questionnaire = resource.get("questionnaire")
        return (
            isinstance(questionnaire, str) and questionnaire.split("|", 1)[0] == WMTY_QUESTIONNAIRE
        )
    return False


def _has_coding(concept: object, system: str, *codes: str) -> bool:
    """Return whether a CodeableConcept has a coding of ``system`` with one of ``codes``."""
    if not isinstance(concept, dict):
        return False
    return any(
        isinstance(coding, dict) and coding.get("system") == system and coding.get("code") in codes
        for coding in _list(concept.get("coding"))
    )


def _list(value: object) -> list[Any]:
    """Return ``value`` as a list (FHIR JSON arrays, tolerating a missing one)."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def patient_reference(resource_type: str, resource: dict[str, Any] | None) -> str | None:
    """Return ``Patient/<id>`` from the resource's subject when it references a Patient."""
    if resource_type not in TOPIC_RESOURCE_TYPES or not isinstance(resource, dict):
        return None
    subject = resource.get("subject")
    if not isinstance(subject, dict):
        return None
    reference = subject.get("reference")
    if not isinstance(reference, str):
        return None
    return _patient_from_reference(reference)


def _patient_from_reference(reference: str) -> str | None:
    """Return ``Patient/<id>`` for a relative, versioned or absolute Patient reference."""
    if reference.startswith(("#", "urn:")):
        return None
    path = urlsplit(reference).path if "://" in reference else reference
    match = _PATIENT_TAIL.search(path)
    if match is None or ("://" not in reference and not path.startswith("Patient/")):
        return None
    return f"Patient/{match.group(1)}"


def matches(spec: SubscriptionSpec, resource_type: str, patient: str | None) -> bool:
    """Return whether an event on ``resource_type`` of ``patient`` passes the spec's filters.

    Filters are ANDed (https://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-subscription.html,
    filterCriteria comment); a filter naming a type applies to that type only, and when some
    filter names a type the event's type must be one of those named. No filter: every event.
    """
    named = {kind for kind, _, _ in spec.filters if kind is not None}
    if named and resource_type not in named:
        return False
    for kind, parameter, value in spec.filters:
        if kind is not None and kind != resource_type:
            continue
        if parameter != SUPPORTED_FILTER or patient is None or patient not in value.split(","):
            return False
    return True
