"""batch and transaction Bundles: https://hl7.org/fhir/R4/http.html#transaction.

A transaction is all-or-nothing in one store transaction. Entries are processed in the order
the specification gives (DELETE, POST, PUT/PATCH, GET); ``urn:uuid`` and other fullUrls are
resolved to the ids the server assigns, and conditional references such as
``Patient?identifier=system|value`` are resolved by search (none: 404, several: 412).
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

from service.errors import (
    BadRequest,
    Conflict,
    FhirError,
    Issue,
    MethodNotAllowed,
    NotFound,
    PreconditionFailed,
    describe_exception,
)
from service.fhir import router
from service.fhir.actor import Actor
from service.fhir.checking import check_id, check_type, parse_json_patch, without_resource
from service.fhir.interactions import FhirService
from service.fhir.model import (
    etag,
    instant,
    new_resource_id,
    parse_etag,
    parse_if_none_match,
    parse_instant,
    parse_json,
)
from service.fhir.references import rewrite_references, rewrite_strings
from service.fhir.results import Result, operation_outcome
from service.fhir.router import Match
from service.fhir.search_parser import parse_query_string
from service.fhir.session import Session
from service.storage import StoredResource
from service.validation.bundle_rules import full_url_issues

log = logging.getLogger("whatmatters.fhir")
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class EntryOp:
    """One Bundle entry, parsed."""

    index: int
    method: str
    type: str | None
    id: str | None
    version: str | None
    query: str | None
    resource: dict[str, Any] | None
    full_url: str | None
    if_match: int | None
    if_none_exist: str | None
    history: bool = False
    if_none_match: list[int] | None = None  # request.ifNoneMatch (an empty list: "*")
    if_modified_since: int | None = None  # request.ifModifiedSince, seconds since the epoch

    @property
    def expr(self) -> str:
        """The FHIRPath of this entry."""
        return f"Bundle.entry[{self.index}]"


def process_bundle(
    service: FhirService,
    actor: Actor,
    bundle: Any,
    base: str,
    prefer_return: str | None = None,
) -> Result:
    """Process a batch or transaction Bundle posted to the base URL, for ``actor``."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("Only a batch or transaction Bundle may be posted to the base URL")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise BadRequest(
            f"Bundle.type must be batch or transaction to be processed, not {kind!r}",
            expression=("Bundle.type",),
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise BadRequest("Bundle.entry must be a JSON array", expression=("Bundle.entry",))
    _check_entries(entries, whole=kind == "transaction")
    if kind == "transaction":

        def work(session: Session) -> list[Result | FhirError]:
            session.check(bundle, "Bundle")
            ops = [_parse_entry(i, e, base) for i, e in enumerate(entries)]
            return _transaction(session, ops, base)

        results = service.perform(actor, work)
    else:
        # In a batch each entry's resource stands or falls on its own, in its own response.
        shell = {**bundle, "entry": [without_resource(e) for e in entries]}
        if not entries:
            shell.pop("entry", None)
        with service.session(actor) as session:
            session.check(shell, "Bundle")
        results = _batch(service, actor, entries, base)
    response_entries = [_response_entry(result, base, prefer_return) for result in results]
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "type": f"{kind}-response",
        "meta": {"lastUpdated": instant(service.clock())},
    }
    if response_entries:
        body["entry"] = response_entries
    return Result(200, body=body)


def _check_entries(entries: list[Any], whole: bool) -> None:
    """The Bundle rules a transaction (``whole``) is refused whole for, before any entry runs:
    every entry carries its request (bdl-3), and no two entries share a fullUrl unless their
    versions differ (bdl-7), which would leave a reference to it naming either. In a batch
    each entry stands alone: only an entry that holds nothing but its resource is named here
    (the batch's own check would report it as an empty element)."""
    seen: dict[tuple[str, Any], int] = {}
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            continue  # the Bundle's own check names it
        if not whole:
            if set(entry) == {"resource"}:
                raise BadRequest(
                    f"bdl-3: Bundle.entry[{index}] needs a request (request.method and "
                    "request.url) in a batch",
                    expression=(f"Bundle.entry[{index}].request",),
                )
            continue
        if "request" not in entry:
            raise BadRequest(
                f"bdl-3: Bundle.entry[{index}] needs a request (request.method and request.url) "
                "in a batch or transaction",
                expression=(f"Bundle.entry[{index}].request",),
            )
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str):
            continue
        resource = entry.get("resource")
        meta = resource.get("meta") if isinstance(resource, dict) else None
        version = meta.get("versionId") if isinstance(meta, dict) else None
        key = (full_url, version if isinstance(version, str) else None)
        if key in seen:
            raise BadRequest(
                f"bdl-7: Bundle.entry[{seen[key]}] and Bundle.entry[{index}] have the same "
                f"fullUrl {full_url}; a fullUrl names one entry of a Bundle",
                expression=(f"Bundle.entry[{index}].fullUrl",),
            )
        seen[key] = index


def _batch(
    service: FhirService, actor: Actor, entries: list[Any], base: str
) -> list[Result | FhirError]:
    results: list[Result | FhirError] = []
    for index, entry in enumerate(entries):
        try:
            op = _parse_entry(index, entry, base)
        except FhirError as exc:
            results.append(exc)
            continue
        try:
            if op.method in ("GET", "HEAD"):
                with service.session(actor) as session:
                    results.append(_execute(session, op, {}, base))
            else:
                results.append(
                    service.perform(
                        actor,
                        lambda s, op=op: _execute(s, op, {}, base),  # type: ignore[misc]
                        retry=op.if_match is None,
                    )
                )
        except FhirError as exc:
            results.append(_at_entry(exc, op))
        except Exception as exc:  # noqa: BLE001 - one entry fails, logged without its message
            log.error("batch entry %d failed unexpectedly: %s", index, describe_exception(exc))
            results.append(
                _at_entry(FhirError("An unexpected error occurred processing this entry"), op)
            )
    return results


def _transaction(session: Session, ops: list[EntryOp], base: str) -> list[Result | FhirError]:
    mapping: dict[str, str] = {}
    targets: dict[tuple[str, str], int] = {}
    resolved: list[EntryOp] = []
    created: dict[tuple[str, str], str] = {}
    for op in ops:
        try:
            op = _resolve_identity(session, op, created)
        except FhirError as exc:
            raise _at_entry(exc, op) from exc
        resolved.append(op)
        writes = op.method in ("PUT", "PATCH", "DELETE") or (
            op.method == "POST" and not op.if_none_exist  # a matched conditional writes nothing
        )
        if writes and op.type and op.id:
            key = (op.type, op.id)
            if key in targets:
                raise BadRequest(
                    f"Bundle.entry[{targets[key]}] and Bundle.entry[{op.index}] both change "
                    f"{op.type}/{op.id}; a transaction may change a resource only once",
                    expression=(op.expr,),
                )
            targets[key] = op.index
        if op.full_url and op.type and op.id and op.method in ("POST", "PUT"):
            mapping[op.full_url] = f"{op.type}/{op.id}"
            if op.full_url.startswith(base + "/"):
                mapping[op.full_url[len(base) + 1 :]] = f"{op.type}/{op.id}"
    results: list[Result | FhirError | None] = [None] * len(resolved)
    for op in sorted(resolved, key=lambda o: (_ORDER[o.method], o.index)):
        try:
            results[op.index] = _execute(session, op, mapping, base, validated=True)
        except FhirError as exc:
            raise _at_entry(exc, op) from exc
    return [r for r in results if r is not None]


def _resolve_identity(
    session: Session, op: EntryOp, created: dict[tuple[str, str], str]
) -> EntryOp:
    """Fix the id each write entry will have, so references to it can be rewritten.

    ``created`` remembers the conditional creates of this transaction that matched nothing:
    a second entry with the same criteria resolves to the resource the first one creates.
    """
    assert op.type is not None or op.method in ("GET", "HEAD")
    if op.method == "POST" and op.type:
        if op.if_none_exist:
            key = (op.type, op.if_none_exist)
            if key in created:
                return replace(op, id=created[key])
            existing = session.match_one_or_none(op.type, op.if_none_exist, "If-None-Exist")
            if existing is not None:
                return replace(op, id=existing.id, method="POST")
            created[key] = new_resource_id()
            return replace(op, id=created[key], if_none_exist=None)
        return replace(op, id=new_resource_id(), if_none_exist=None)
    if op.method in ("PUT", "PATCH", "DELETE") and op.type and op.id is None and op.query:
        match = session.match_one_or_none(op.type, op.query, f"The conditional {op.method}")
        if match is not None:
            return replace(op, id=match.id)
        if op.method == "PUT":
            body_id = (op.resource or {}).get("id")
            if isinstance(body_id, str):
                check_id(body_id)
                existing = session.tx.resources.read(op.type, body_id)
                if existing is not None and not existing.deleted:
                    raise Conflict(
                        f"No {op.type} matches {op.query!r}, but {op.type}/{body_id} exists "
                        "and does not match them"
                    )
                return replace(op, id=body_id)
            return replace(op, id=new_resource_id())
        if op.method == "PATCH":
            raise NotFound(f"No {op.type} matches the criteria of the conditional patch")
    return op


def _execute(
    session: Session,
    op: EntryOp,
    mapping: dict[str, str],
    base: str,
    validated: bool = False,
) -> Result:
    """Carry out one entry. ``validated``: the transaction checked the whole Bundle already
    (rewriting references to the ids the server gave cannot make a resource invalid)."""
    if op.method in ("GET", "HEAD"):
        return _read_entry(session, op, base)
    assert op.type is not None
    if op.method == "DELETE":
        if op.id is None:
            return session.conditional_delete(op.type, op.query or "")
        return session.delete(op.type, op.id, op.if_match)
    if op.method == "PATCH":
        operations = _patch_operations(op)
        if op.id is None:
            raise NotFound(f"No {op.type} matches the criteria of the conditional patch")
        return session.patch(op.type, op.id, operations, op.if_match)
    resource = _rewrite(op.resource or {}, mapping)
    _check_placeholders(resource)
    resource = resolve_conditional_references(session, resource)
    if not validated:
        session.check(resource, op.type)
    if op.method == "POST":
        if op.if_none_exist:
            return session.create(op.type, resource, op.if_none_exist, checked=True)
        return session.create(op.type, resource, new_id=op.id, checked=True)
    if op.id is None:
        query = op.query or ""
        return session.conditional_update(op.type, query, resource, op.if_match, checked=True)
    if resource.get("id") is None and op.query is not None:
        resource = {**resource, "id": op.id}
    if resource.get("id") != op.id:
        raise BadRequest(
            f"The resource id {resource.get('id')!r} does not match the id {op.id!r} in the "
            "entry URL",
            expression=("resource.id",),
        )
    return session.update(
        op.type, op.id, resource, op.if_match, checked=True, if_none_match=op.if_none_match
    )


def _read_entry(session: Session, op: EntryOp, base: str) -> Result:
    if op.type is None:
        raise BadRequest("Only reads, searches and history of a resource type are allowed here")
    if op.history:
        params = parse_query_string(op.query or "")
        return session.history(op.type, op.id, params, base)
    if op.id is None:
        params = parse_query_string(op.query or "")
        return session.search_type(op.type, params, base)
    if op.version is not None:
        return session.vread(op.type, op.id, op.version)
    # a conditional read (http.html#cread) as the same headers make one: 304 when unchanged
    return session.read(op.type, op.id, op.if_none_match, op.if_modified_since)


def _parse_entry(index: int, entry: Any, base: str) -> EntryOp:
    """One entry's request, classified by the router (``BUNDLE_ROUTES``: reads, searches,
    history and the writes of one type or resource); errors name the entry."""
    where = f"Bundle.entry[{index}]"
    request = entry.get("request") if isinstance(entry, dict) else None
    if not isinstance(request, dict) or "method" not in request or "url" not in request:
        raise BadRequest(
            f"{where} needs request.method and request.url", expression=(f"{where}.request",)
        )
    method = request["method"]
    if method not in _ORDER:
        raise BadRequest(f"{where}: unknown method {method!r}", expression=(f"{where}.request",))
    url: str = request["url"]
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    path, _, query = url.partition("?")
    segments = [unquote(s) for s in path.strip("/").split("/") if s]
    if segments[:1] == ["metadata"]:
        raise BadRequest(
            f"{where}: the CapabilityStatement is not read inside a batch or transaction; "
            "GET [base]/metadata reads it",
            expression=(f"{where}.request.url",),
        )
    resource = entry.get("resource")
    full_url = entry.get("fullUrl")
    restful = isinstance(full_url, str) and full_url.startswith(("http:", "https:"))
    # a RESTful fullUrl that names another resource than the entry's would have references
    # to it rewritten to the wrong one
    wrong = (
        full_url_issues(full_url, resource, where) if restful and isinstance(resource, dict) else []
    )
    if wrong:
        raise BadRequest(wrong[0].diagnostics, expression=wrong[0].expression)
    try:
        if_match = parse_etag(request["ifMatch"]) if "ifMatch" in request else None
    except BadRequest as exc:
        raise BadRequest(exc.diagnostics, expression=(f"{where}.request.ifMatch",)) from exc
    none_match = request.get("ifNoneMatch")
    since = request.get("ifModifiedSince")
    if since is not None:
        try:
            since = parse_instant(since, "request.ifModifiedSince") // 1_000_000
        except BadRequest as exc:
            raise BadRequest(
                exc.diagnostics, expression=(f"{where}.request.ifModifiedSince",)
            ) from exc
    op = EntryOp(
        index=index,
        method=method,
        type=segments[0] if segments else None,
        id=None,
        version=None,
        query=query or None,
        resource=resource,
        full_url=full_url,
        if_match=if_match,
        if_none_exist=request.get("ifNoneExist"),
        if_none_match=parse_if_none_match(none_match) if isinstance(none_match, str) else None,
        if_modified_since=since,
    )
    try:
        if op.type is None:
            if method != "GET":
                raise BadRequest("request.url must name a resource type")
            return op  # answered, when carried out, as nothing a Bundle entry may ask for
        check_type(op.type)
        found = _route_entry(method, segments, url, op.type)
        if "id" in found.params:
            check_id(found.params["id"])
            op.id = found.params["id"]
        op.version = found.params.get("vid")
        op.history = found.interaction in ("history-instance", "history-type")
    except FhirError as exc:
        raise _at_entry(exc, op) from exc
    if method in ("POST", "PUT"):
        if not isinstance(resource, dict):
            raise BadRequest(f"{where} needs a resource", expression=(f"{where}.resource",))
        if resource.get("resourceType") != op.type:
            raise BadRequest(
                f"{where}: the resource is a {resource.get('resourceType')!r} but the URL "
                f"names {op.type!r}",
                expression=(f"{where}.resource",),
            )
        if method == "PUT" and op.id is None and op.query is None:
            raise BadRequest(f"{where}: PUT needs Type/id or Type?criteria")
        if method == "POST" and op.query:
            raise BadRequest(f"{where}: POST creates at the type URL, e.g. {op.type!r}")
    if method in ("DELETE", "PATCH") and op.id is None and op.query is None:
        raise BadRequest(f"{where}: {method} needs Type/id or Type?criteria")
    return op


def _route_entry(method: str, segments: list[str], url: str, type_: str) -> Match:
    """The route of an entry's request (the caller names the entry in the error): a URL no
    entry route fits is not understood; a method its URL does not take is refused."""
    try:
        return router.match(method, segments, router.BUNDLE_ROUTES)
    except MethodNotAllowed as exc:
        if method == "POST":
            raise BadRequest(f"POST creates at the type URL, e.g. {type_!r}") from exc
        raise BadRequest(f"{method} is not allowed on {url!r}") from exc
    except NotFound as exc:
        raise BadRequest(f"request.url {url!r} is not understood") from exc


def _patch_operations(op: EntryOp) -> Any:
    resource = op.resource if isinstance(op.resource, dict) else {}
    if resource.get("resourceType") != "Binary" or resource.get("contentType") not in (
        "application/json-patch+json",
    ):
        raise BadRequest(
            "A PATCH entry carries its JSON Patch as a Binary resource with contentType "
            "application/json-patch+json",
            expression=("resource",),
        )
    data = resource.get("data", "")
    if not isinstance(data, str):
        raise BadRequest(
            "Binary.data is the JSON Patch in base64, a string", expression=("resource.data",)
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadRequest("Binary.data is not valid base64", expression=("resource.data",)) from exc
    return parse_json_patch(parse_json(raw, "The JSON Patch"))


def _rewrite(value: Any, mapping: dict[str, str]) -> Any:
    """Replace references to entries' fullUrls with the ids the server gave them."""
    if not mapping:
        return value

    def rewrite(key: str | None, text: str) -> str:
        if key == "div":
            for old, new in mapping.items():
                if old.startswith("urn:"):
                    text = text.replace(f'"{old}"', f'"{new}"')
            return text
        return mapping.get(text, text)

    return rewrite_strings(value, rewrite)


def _check_placeholders(resource: Any) -> None:
    """Refuse a ``urn:uuid:`` or ``urn:oid:`` reference left after the entries' fullUrls were
    replaced: it names no entry of the Bundle, and stored as it is it would lead nowhere
    (bundle.html#references; HAPI FHIR refuses it too)."""
    left: list[str] = []

    def look(text: str) -> str:
        if text.startswith(("urn:uuid:", "urn:oid:")):
            left.append(text)
        return text

    rewrite_references(resource, look)
    if left:
        raise BadRequest(
            f"The reference {left[0]!r} names no entry of the Bundle (a urn:uuid or urn:oid "
            "reference stands for the fullUrl of an entry of the same transaction)",
            expression=("resource",),
        )


def resolve_conditional_references(
    session: Session, value: Any, cache: dict[str, str] | None = None
) -> Any:
    """Replace references like ``Patient?identifier=s|v`` with the one resource they match.

    ``cache`` (criteria -> reference) lets a long ingest that names the same patient in many
    records resolve each criteria once.
    """

    def resolve(item: str) -> str:
        if "?" not in item:
            return item
        if cache is not None and item in cache:
            return cache[item]
        type_ = item.split("?", 1)[0]
        check_type(type_)
        match = session.match_one_or_none(type_, item, "The conditional reference")
        if match is None:
            raise NotFound(
                f"The conditional reference {item!r} matches no resource",
            )
        resolved = f"{match.type}/{match.id}"
        if cache is not None:
            cache[item] = resolved
        return resolved

    return rewrite_references(value, resolve)


def _at_entry(exc: FhirError, op: EntryOp) -> FhirError:
    """Re-state an error so it says which entry failed."""
    issues = [
        Issue(
            i.severity,
            i.code,
            f"{op.expr}: {i.diagnostics}",
            tuple(_prefix(e, op) for e in i.expression) or (op.expr,),
        )
        for i in exc.outcome_issues()
    ]
    clone = type(exc)(f"{op.expr}: {exc.diagnostics}", issues=issues, headers=exc.headers)
    return clone


def _prefix(expression: str, op: EntryOp) -> str:
    if expression.startswith("Bundle."):
        return expression
    if op.type and expression.startswith(op.type):
        return f"{op.expr}.resource{expression[len(op.type) :]}"
    return f"{op.expr}.{expression}"


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


def _response_entry(
    result: Result | FhirError, base: str, prefer_return: str | None
) -> dict[str, Any]:
    if isinstance(result, FhirError):
        return {
            "response": {
                "status": _status(result.status),
                "outcome": operation_outcome(result.outcome_issues()),
            }
        }
    response: dict[str, Any] = {"status": _status(result.status)}
    entry: dict[str, Any] = {}
    stored: StoredResource | None = result.stored
    if stored is not None:
        response["etag"] = etag(stored.version)
        response["lastModified"] = instant(stored.last_updated_us)
        if not stored.deleted:
            entry["fullUrl"] = f"{base}/{stored.type}/{stored.id}"
        if result.location or (result.status in (200, 201) and stored.content is not None):
            response["location"] = f"{stored.type}/{stored.id}/_history/{stored.version}"
        if stored.content is not None and prefer_return != "minimal" and result.status != 304:
            entry["resource"] = parse_json(stored.content)
    elif result.body is not None and prefer_return != "minimal":
        entry["resource"] = result.body
    elif result.text is not None and prefer_return != "minimal":
        entry["resource"] = parse_json(result.text)
    if prefer_return == "OperationOutcome":
        response["outcome"] = operation_outcome(
            [Issue("information", "informational", f"{_status(result.status)}")]
        )
    entry["response"] = response
    return entry


__all__ = ["PreconditionFailed", "process_bundle"]
