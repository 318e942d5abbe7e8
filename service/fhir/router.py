"""The one FHIR route table: which interaction a request is, and who handles it.

A request under the FHIR base URL, as the HTTP layer hands it over (``FhirRequest``), is matched
against ``ROUTES``: the HTTP method and the path relative to the base (``Patient/p1/_history/2``)
give a ``Match``, that is the ``Route`` (the restful-interaction code, its level, the handler's
name) and the path's parameters (``type``, ``id``, ``vid``). Everything that asks "what kind of
request is this?" asks here: the Flask view that dispatches to the handlers, the entries of a
batch or transaction Bundle (``BUNDLE_ROUTES``), the AuditEvent and the metrics, and the
CapabilityStatement, which lists what routes.

Matching follows the HTTP layer's rules (and the Werkzeug rules this table replaced): a literal
segment wins over a parameter at the same place; a route that fits the path but not the method
gives way to the next one that fits both; when none fits both, 405 with ``Allow``, and when no
route fits the path at all, 404. ``HEAD`` is a ``GET`` without the body. No framework here.

May import: ``service.errors`` and ``service.validation`` (for canonical URLs), nothing that
speaks HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import IO, Any

from service.errors import MethodNotAllowed, NotFound
from service.validation.profiles import CANONICAL_BASE


class Headers(Mapping[str, str]):
    """Request headers looked up without regard to case (the first value of a repeated name)."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, tuple[str, str]] = {}
        for name, value in items:
            self._items.setdefault(name.lower(), (name, value))

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()][1]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items.values())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self.items())!r})"


@dataclass(frozen=True)
class FhirRequest:
    """One request to the FHIR API, as plain data.

    ``path`` is relative to the FHIR base, without a leading slash (``""`` is the base itself,
    where transactions are posted). ``query`` holds the query string's (name, value) pairs in
    order, repeats kept; ``query_string`` is the same text as sent, for conditional criteria.
    ``body`` is the request body (None for methods that carry none); an input too large to hold
    in memory (``$ingest``) comes as ``stream`` instead, read by its handler.
    """

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    headers: Headers = field(default_factory=Headers)
    body: bytes | None = None
    query_string: str = ""
    stream: IO[bytes] | None = None

    def args(self, name: str) -> list[str]:
        """Every value of one query parameter, in order."""
        return [value for key, value in self.query if key == name]


# The levels of CapabilityStatement.rest: what a route acts on
SYSTEM, TYPE, INSTANCE = "system", "type", "instance"
# the order in which R4 lists TypeRestfulInteraction and SystemRestfulInteraction codes
TYPE_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS = ("transaction", "batch", "search-system", "history-system")


@dataclass(frozen=True)
class Route:
    """One route: the methods and path pattern it answers, and what it is.

    ``pattern`` is relative to the FHIR base; ``{type}``, ``{id}`` and ``{vid}`` stand for one
    path segment each, anything else is literal. ``interaction`` is the FHIR restful-interaction
    code (``operation`` for a ``$name`` operation, named by ``operation``; ``transaction`` for
    the base POST, which is a batch when the Bundle says so). ``handler`` names the function
    that carries it out. ``definition`` is the OperationDefinition a CapabilityStatement points
    to (an operation without one is routed but not listed). ``in_bundle``: the route may also be
    the request of a batch or transaction entry.
    """

    methods: tuple[str, ...]
    pattern: str
    interaction: str
    level: str
    handler: str
    operation: str | None = None
    definition: str | None = None
    in_bundle: bool = False

    @cached_property
    def segments(self) -> tuple[str, ...]:
        """The pattern's segments (none for the base); read for every route of every request,
        so split once."""
        return tuple(self.pattern.split("/")) if self.pattern else ()

    @property
    def resource_type(self) -> str | None:
        """The one resource type this route is for, or None when it is for any (``{type}``)
        or for none (system level)."""
        first = self.segments[0] if self.segments else ""
        return None if self.level == SYSTEM or first.startswith("{") else first

    def parse(self, segments: Sequence[str]) -> dict[str, str] | None:
        """The parameters of a path, split in segments, or None when it does not fit."""
        if len(segments) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for part, value in zip(self.segments, segments, strict=True):
            if part.startswith("{"):
                if not value:
                    return None
                if part == "{member}" and not value[:1].isupper():
                    return None  # a compartment's member type, never _history or $operation
                params[part[1:-1]] = value
            elif part != value:
                return None
        return params

    @cached_property
    def precedence(self) -> tuple[int, ...]:
        """Literal segments before parameters, from the left (smaller is tried first)."""
        return tuple(1 if part.startswith("{") else 0 for part in self.segments)


@dataclass(frozen=True)
class Match:
    """A request's route and the values its path gives the pattern's parameters."""

    route: Route
    params: Mapping[str, str]

    @property
    def interaction(self) -> str:
        """The route's restful-interaction code (``transaction`` for any Bundle; see
        ``interaction_of`` for a batch)."""
        return self.route.interaction


_VALIDATE = "http://hl7.org/fhir/OperationDefinition/Resource-validate"
_BACKPORT_STATUS = (
    "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status"
)
_EVALUATE_MEASURE = "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"
_OURS = f"{CANONICAL_BASE}/OperationDefinition"
_CORE_OPS = "http://hl7.org/fhir/OperationDefinition/"
# FHIR Bulk Data Access IG v2 (https://hl7.org/fhir/uv/bulkdata/export.html)
_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
_IPS_SUMMARY = "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"
_GET, _POST = ("GET",), ("POST",)

ROUTES: tuple[Route, ...] = (
    # system level: the base URL
    Route(_GET, "metadata", "capabilities", SYSTEM, "capabilities"),
    Route(_POST, "", "transaction", SYSTEM, "transaction"),
    Route(_GET, "_history", "history-system", SYSTEM, "history_system"),
    Route(_POST, "$ingest", "operation", SYSTEM, "ingest", "ingest"),
    Route(("GET", "POST"), "$export", "operation", SYSTEM, "export", "export", f"{_BULK}/export"),
    # type level: [base]/[type]
    Route(_GET, "{type}", "search-type", TYPE, "search_type", in_bundle=True),
    Route(("GET", "POST"), "{type}/_search", "search-type", TYPE, "search_type"),
    Route(_POST, "{type}", "create", TYPE, "create", in_bundle=True),
    Route(("PUT",), "{type}", "update", TYPE, "conditional_update", in_bundle=True),
    Route(("PATCH",), "{type}", "patch", TYPE, "conditional_patch", in_bundle=True),
    Route(("DELETE",), "{type}", "delete", TYPE, "conditional_delete", in_bundle=True),
    Route(_GET, "{type}/_history", "history-type", TYPE, "history_type", in_bundle=True),
    Route(_POST, "{type}/$validate", "operation", TYPE, "validate", "validate", _VALIDATE),
    # instance level: [base]/[type]/[id]
    Route(_GET, "{type}/{id}", "read", INSTANCE, "read", in_bundle=True),
    Route(("PUT",), "{type}/{id}", "update", INSTANCE, "update", in_bundle=True),
    Route(("PATCH",), "{type}/{id}", "patch", INSTANCE, "patch", in_bundle=True),
    Route(("DELETE",), "{type}/{id}", "delete", INSTANCE, "delete", in_bundle=True),
    Route(
        _GET,
        "{type}/{id}/_history",
        "history-instance",
        INSTANCE,
        "history_instance",
        in_bundle=True,
    ),
    Route(_GET, "{type}/{id}/_history/{vid}", "vread", INSTANCE, "vread", in_bundle=True),
    Route(_POST, "{type}/{id}/$validate", "operation", INSTANCE, "validate", "validate", _VALIDATE),
    # operations of one resource type
    Route(
        _POST,
        "Patient/$record-what-matters",
        "operation",
        TYPE,
        "record_what_matters",
        "record-what-matters",
        f"{_OURS}/record-what-matters",
    ),
    Route(
        _POST,
        "Patient/{id}/$record-what-matters",
        "operation",
        INSTANCE,
        "record_what_matters",
        "record-what-matters",
        f"{_OURS}/record-what-matters",
    ),
    Route(
        ("GET", "POST"),
        "Patient/{id}/$what-matters",
        "operation",
        INSTANCE,
        "what_matters",
        "what-matters",
        f"{_OURS}/what-matters",
    ),
    # terminology over the value sets and code systems held (service.fhir.terminology_ops)
    *(
        Route(("GET", "POST"), path, "operation", level, "terminology", name, _CORE_OPS + op)
        for path, level, name, op in (
            ("ValueSet/$expand", TYPE, "expand", "ValueSet-expand"),
            ("ValueSet/{id}/$expand", INSTANCE, "expand", "ValueSet-expand"),
            ("ValueSet/$validate-code", TYPE, "validate-code", "ValueSet-validate-code"),
            ("ValueSet/{id}/$validate-code", INSTANCE, "validate-code", "ValueSet-validate-code"),
            ("CodeSystem/$lookup", TYPE, "lookup", "CodeSystem-lookup"),
        )
    ),
    Route(
        _GET,
        "Patient/$summary",
        "operation",
        TYPE,
        "summary_by_identifier",
        "summary",
        _IPS_SUMMARY,
    ),
    Route(_GET, "Patient/{id}/$summary", "operation", INSTANCE, "summary", "summary", _IPS_SUMMARY),
    # the patient compartment (http.html#vsearch): [base]/Patient/[id]/[type]
    Route(_GET, "Patient/{id}/{member}", "search-type", INSTANCE, "search_compartment"),
    Route(
        ("GET", "POST"),
        "Patient/$export",
        "operation",
        TYPE,
        "export",
        "export",
        f"{_BULK}/patient-export",
    ),
    # Group is not a type this server stores: routed to say so (and not listed)
    Route(_GET, "Group/{id}/$export", "operation", INSTANCE, "export", "export"),
    Route(
        ("GET", "POST"),
        "Measure/{id}/$evaluate-measure",
        "operation",
        INSTANCE,
        "evaluate_measure",
        "evaluate-measure",
        _EVALUATE_MEASURE,
    ),
    Route(
        ("GET", "POST"),
        "Subscription/{id}/$status",
        "operation",
        INSTANCE,
        "subscription_status",
        "status",
        _BACKPORT_STATUS,
    ),
)

# what a batch or transaction entry may ask for (its request.method and request.url)
BUNDLE_ROUTES: tuple[Route, ...] = tuple(route for route in ROUTES if route.in_bundle)


def split_path(path: str) -> list[str]:
    """The segments of a path relative to the base (none for the base itself)."""
    return path.split("/") if path else []


def _by_length(routes: Sequence[Route]) -> dict[int, tuple[Route, ...]]:
    """Routes by their number of segments, each list in the order they are tried."""
    ordered = sorted(routes, key=lambda route: route.precedence)  # stable: table order kept
    lengths = {len(route.segments) for route in routes}
    return {n: tuple(r for r in ordered if len(r.segments) == n) for n in lengths}


# the two tables every request and Bundle entry is matched against, ready to be tried
_TRIED = {id(ROUTES): _by_length(ROUTES), id(BUNDLE_ROUTES): _by_length(BUNDLE_ROUTES)}


def _fitting(
    segments: Sequence[str], routes: Sequence[Route]
) -> list[tuple[Route, dict[str, str]]]:
    tried = _TRIED.get(id(routes)) or _by_length(routes)
    candidates = tried.get(len(segments), ())
    found = [(route, route.parse(segments)) for route in candidates]
    return [(route, params) for route, params in found if params is not None]


def _allow(methods: Iterable[str]) -> list[str]:
    listed = set(methods)
    if "GET" in listed:
        listed.add("HEAD")
    return sorted(listed | {"OPTIONS"})


def allowed_methods(path: str | Sequence[str], routes: Sequence[Route] = ROUTES) -> list[str]:
    """The methods some route answers at ``path`` (with HEAD and OPTIONS), or [] for none."""
    segments = split_path(path) if isinstance(path, str) else path
    found = _fitting(segments, routes)
    return _allow(m for route, _ in found for m in route.methods) if found else []


def match(
    method: str,
    path: str | Sequence[str],
    routes: Sequence[Route] = ROUTES,
    *,
    shown: str | None = None,
) -> Match:
    """The route of ``method`` on ``path`` (relative to the base, or already split in
    segments). Raise NotFound when no route fits the path, MethodNotAllowed (with ``Allow``)
    when some do but not with this method; their messages name ``shown`` (the path as the
    client sent it) when given."""
    segments = split_path(path) if isinstance(path, str) else list(path)
    wanted = "GET" if method == "HEAD" else method
    found = _fitting(segments, routes)
    for route, params in found:
        if wanted in route.methods:
            return Match(route, params)
    where = shown if shown is not None else "/".join(segments)
    if not found:
        raise NotFound(f"There is nothing at {where}")
    allow = _allow(m for route, _ in found for m in route.methods)
    raise MethodNotAllowed(
        f"{method} is not allowed on {where}", headers={"Allow": ", ".join(allow)}
    )


def interaction_of(found: Match | None, bundle: Any = None) -> str:
    """The restful-interaction code of a matched request (``operation`` for none): a Bundle
    posted to the base is a ``batch`` when its type says so, else a ``transaction``."""
    if found is None:
        return "operation"
    if found.route.interaction == "transaction":
        kind = bundle.get("type") if isinstance(bundle, dict) else bundle
        return "batch" if kind == "batch" else "transaction"
    return found.route.interaction


def type_interactions(resource_type: str | None = None) -> list[str]:
    """The type- and instance-level interactions routed for a resource type (for any type,
    when None), in the order R4 lists them."""
    routed = {
        route.interaction
        for route in ROUTES
        if route.level != SYSTEM and route.resource_type in (None, resource_type)
    }
    return [code for code in TYPE_INTERACTIONS if code in routed]


def system_interactions() -> list[str]:
    """The system-level interactions routed, in the order R4 lists them (a base POST is both
    a transaction and a batch)."""
    routed = {route.interaction for route in ROUTES if route.level == SYSTEM}
    if "transaction" in routed:
        routed.add("batch")
    return [code for code in SYSTEM_INTERACTIONS if code in routed]


def operations(resource_type: str | None, own: bool = False) -> list[tuple[str, str]]:
    """The (name, definition) of each operation routed for a resource type (the system-level
    ones for None) that has an OperationDefinition, generic ones first, each once; ``own``:
    only those routed for this type by name (not the ones of every type)."""
    listed: dict[str, str] = {}
    generic = [] if own else [r for r in ROUTES if r.resource_type is None]
    specific = [r for r in ROUTES if r.resource_type is not None]
    for route in (*generic, *specific):
        if route.operation is None or route.definition is None:
            continue
        if resource_type is None:
            if route.level != SYSTEM:
                continue
        elif route.level == SYSTEM or route.resource_type not in (None, resource_type):
            continue
        listed.setdefault(route.operation, route.definition)
    return list(listed.items())
