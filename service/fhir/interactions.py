"""The FHIR R4 RESTful interactions, without I/O: https://hl7.org/fhir/R4/http.html.

``FhirService`` receives its collaborators (a Store and a validator) and returns ``Result``
objects; the API layer turns them into HTTP responses. Every write runs in one store
transaction; a write that loses a race without ``If-Match`` is retried, one with ``If-Match``
gets 412.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar
from urllib.parse import urlencode

import jsonpatch

from service.config import NHS_NUMBER_SYSTEM
from service.errors import (
    BadRequest,
    Conflict,
    FhirError,
    Forbidden,
    Gone,
    InvalidResource,
    Issue,
    MethodNotAllowed,
    NotFound,
    NotSupported,
    PreconditionFailed,
    Unprocessable,
)
from service.fhir.access import (
    OWNER_ELEMENT,
    GuardedTransaction,
    confined,
    current_access,
    narrowed,
    owner_of,
    provenance_for,
    stamp_subscriber,
)
from service.fhir.conformance import CONFORMANCE_TYPES, ConformanceResources
from service.fhir.model import (
    SUPPORTED_TYPES,
    dump_json,
    instant,
    now_us,
    parse_instant,
    parse_json,
    same_content,
    with_meta,
)
from service.fhir.results import Result, operation_outcome
from service.fhir.search import (
    DEFAULT_MAX_CHAIN_DEPTH,
    SearchParser,
    escape_value,
    parse_conditional,
)
from service.fhir.searching import search_type
from service.fhir.searchparams import SearchParameters
from service.fhir.subsetting import subset
from service.storage import (
    HistoryQuery,
    IndexRows,
    Query,
    Store,
    StoredResource,
    Transaction,
    VersionConflict,
)
from service.validation.definitions import Definitions
from service.validation.structure import is_valid_id

T = TypeVar("T")
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits that fit a 64-bit integer
WRITE_RETRIES = 5


@dataclass(frozen=True)
class Change:
    """A resource version just written, seen by listeners inside the writing transaction."""

    type: str
    id: str
    version: int
    content: dict[str, Any] | None  # None for a deletion
    previous: dict[str, Any] | None = None  # the deleted content, for a deletion


class ChangeListener(Protocol):
    """Reacts to each write in its transaction (the exchange outbox); may refuse it."""

    def changed(self, tx: Transaction, change: Change) -> None:
        """Add what belongs with the change (outbox rows), or raise a FhirError."""


class Validator(Protocol):
    """Checks a resource and returns every problem found."""

    def validate(self, resource: Any, expected_type: str | None = None) -> list[Issue]:
        """Return the base R4 issues of ``resource``; errors make it unacceptable (400)."""

    def validate_profiles(
        self,
        resource: Any,
        profile: str | None = None,
        resolve: Callable[[str, str], dict[str, Any] | None] | None = None,
    ) -> list[Issue]:
        """Return the extension and profile issues of ``resource`` (errors: 422); ``resolve``
        finds the conformance resources it names (a QuestionnaireResponse's Questionnaire)."""

    def supported_profiles(self, type_: str) -> list[str]:
        """The profiles of ``type_`` the validator knows."""


def check_type(type_: str) -> None:
    """Refuse resource types this server does not store (404 not-supported; 405 for the
    read-only conformance resources of the profiles folder)."""
    if type_ in CONFORMANCE_TYPES:
        raise MethodNotAllowed(
            f"{type_} resources come from the profiles folder and are read-only here: "
            "read and search them"
        )
    if type_ not in SUPPORTED_TYPES:
        raise NotSupported(
            f"Resource type {type_!r} is not supported here; this server stores "
            + ", ".join(SUPPORTED_TYPES),
        )


def check_id(id_: str) -> None:
    """Refuse ids that are not valid FHIR ids."""
    if not is_valid_id(id_):
        raise BadRequest(f"{id_!r} is not a valid FHIR id (1-64 of A-Z a-z 0-9 - .)")


# the record of an access, and provenance itself, get no Provenance of their own
NO_PROVENANCE_TYPES = frozenset({"Provenance", "AuditEvent"})
_PROVENANCE_SUPPLIED: ContextVar[bool] = ContextVar(
    "whatmatters_provenance_supplied", default=False
)
# the transaction the running request has open, so a look-up made while validating inside it
# (a Questionnaire, in a transaction Bundle) reads through it instead of opening a second one
_OPEN_TX: ContextVar[Transaction | None] = ContextVar("whatmatters_open_tx", default=None)


class FhirService:
    """The FHIR interactions over one Store, checked by one Validator."""

    def __init__(
        self,
        store: Store,
        validator: Validator,
        search_params: SearchParameters,
        definitions: Definitions,
        *,
        thorough: Validator | None = None,
        default_page_size: int = 50,
        max_page_size: int = 1000,
        clock: Callable[[], int] = now_us,
        return_warnings: bool = True,
        conformance: ConformanceResources | None = None,
        unique_identifier_systems: Sequence[str] = (NHS_NUMBER_SYSTEM,),
        max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH,
    ) -> None:
        self.store = store
        self.max_chain_depth = max_chain_depth
        self.validator = validator
        self.search_params = search_params
        self.definitions = definitions
        # $validate also runs the snapshot invariants, which writes do not (yet) pay for
        self.thorough = thorough or validator
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.clock = clock
        self.return_warnings = return_warnings
        self.conformance = conformance
        self.unique_identifier_systems = frozenset(unique_identifier_systems)
        # the exchange outbox listens here, so every write path (REST, Bundles, operations,
        # ingest) queues its deliveries in the same transaction
        self.listeners: list[ChangeListener] = []

    # -- transactions -------------------------------------------------------------------------

    def run(self, work: Callable[[Transaction], T], *, retry: bool = True) -> T:
        """Run ``work`` in one write transaction, retrying if it lost a race to another writer."""
        attempts = WRITE_RETRIES if retry else 1
        for attempt in range(attempts):
            try:
                with self.store.transaction(write=True) as tx, self._opened(tx) as guarded:
                    return work(guarded)
            except VersionConflict as exc:
                if attempt < attempts - 1:
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))  # jitter, then try again
                    continue
                if retry:
                    raise Conflict(
                        "The resource was changed by another request at the same time; "
                        "retry the request"
                    ) from exc
                raise PreconditionFailed(
                    "The resource was changed by another request (version conflict)"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _within(self, tx: Transaction | None, work: Callable[[Transaction], T]) -> T:
        return work(tx) if tx is not None else self.read_only(work)

    def read_only(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work`` in a read transaction."""
        with self.store.transaction(write=False) as tx, self._opened(tx) as guarded:
            return work(guarded)

    @contextlib.contextmanager
    def _opened(self, tx: Transaction) -> Iterator[Transaction]:
        """The transaction as the request's token may use it, known as the open one meanwhile."""
        guarded = self._guarded(tx)
        token = _OPEN_TX.set(guarded)
        try:
            yield guarded
        finally:
            _OPEN_TX.reset(token)

    def find_canonical(self, type_: str, canonical: str) -> dict[str, Any] | None:
        """The stored resource of ``type_`` with this canonical URL (``url|version``), if any."""
        if type_ not in SUPPORTED_TYPES:
            return None
        url, _, version = canonical.partition("|")
        criteria = urlencode([("url", url)] + ([("version", version)] if version else []))

        def work(tx: Transaction) -> dict[str, Any] | None:
            query = parse_conditional(SearchParser(self.search_params), type_, criteria)
            found = tx.read_many(tx.search_keys(query, 1))
            return parse_json(found[0].content or "{}") if found else None

        try:
            open_tx = _OPEN_TX.get()
            return work(open_tx) if open_tx is not None else self.read_only(work)
        except FhirError:
            return None  # a URL the search cannot take names nothing stored here

    def _guarded(self, tx: Transaction) -> Transaction:
        """The transaction as the running request's access token may use it (access.py)."""
        access = current_access()
        if access is None:
            return tx
        guarded: Transaction = GuardedTransaction(tx, access, self.search_params.references)
        return guarded

    @functools.cached_property
    def instance_id(self) -> str:
        """The identifier of this installation (made once with its database)."""
        return self.store.instance_id()

    # -- instance level -----------------------------------------------------------------------

    def read(
        self,
        type_: str,
        id_: str,
        if_none_match: Sequence[int] | None = None,
        if_modified_since: int | None = None,
    ) -> Result:
        """read and conditional read: https://hl7.org/fhir/R4/http.html#read, #cread.

        ``if_none_match`` holds the versions the client has (an empty list stands for "*");
        ``if_modified_since`` is a time in seconds since the epoch. 304 when nothing changed.
        """
        if type_ in CONFORMANCE_TYPES and self.conformance is not None:
            check_id(id_)
            return self.conformance.read(type_, id_)
        check_type(type_)
        check_id(id_)
        result = self.read_only(lambda tx: self.read_in(tx, type_, id_))
        stored = result.stored
        assert stored is not None
        if if_none_match is not None:
            if not if_none_match or stored.version in if_none_match:
                return Result(304, stored=stored)
        elif if_modified_since is not None and stored.last_updated_us // 1_000_000 <= (
            if_modified_since
        ):
            return Result(304, stored=stored)
        return result

    def read_in(self, tx: Transaction, type_: str, id_: str) -> Result:
        """read within an open transaction."""
        current = tx.read(type_, id_)
        if current is None:
            raise NotFound(f"{type_}/{id_} is not known")
        if current.deleted:
            raise Gone(f"{type_}/{id_} was deleted", headers=_version_headers(current))
        return Result(200, stored=current)

    def shape(self, result: Result, params: Sequence[tuple[str, str]]) -> Result:
        """Apply _summary / _elements to a read or vread (search.html#summary)."""
        summary: str | None = None
        elements: tuple[str, ...] | None = None
        for name, value in params:
            if name == "_summary":
                if value not in ("true", "text", "data", "false"):
                    raise BadRequest("_summary on a read must be true, text, data or false")
                summary = None if value == "false" else value
            elif name == "_elements":
                elements = tuple(e.strip() for e in value.split(",") if e.strip())
        if (summary is None and elements is None) or result.stored is None:
            return result
        resource = subset(
            self.definitions, parse_json(result.stored.content or "{}"), summary, elements
        )
        return Result(result.status, stored=result.stored, text=dump_json(resource))

    def vread(self, type_: str, id_: str, version: str) -> Result:
        """vread: https://hl7.org/fhir/R4/http.html#vread."""
        check_type(type_)
        check_id(id_)
        return self.read_only(lambda tx: self.vread_in(tx, type_, id_, version))

    def vread_in(self, tx: Transaction, type_: str, id_: str, version: str) -> Result:
        """vread within an open transaction."""
        if not _DIGITS.fullmatch(version):
            raise NotFound(f"{type_}/{id_} has no version {version!r}")
        found = tx.vread(type_, id_, int(version))
        if found is None:
            if tx.read(type_, id_) is None:
                raise NotFound(f"{type_}/{id_} is not known")
            raise NotFound(f"{type_}/{id_} has no version {version}")
        if found.deleted:
            raise Gone(f"Version {version} of {type_}/{id_} is a deletion")
        return Result(200, stored=found)

    def create(self, type_: str, resource: Any, if_none_exist: str | None = None) -> Result:
        """create and conditional create: https://hl7.org/fhir/R4/http.html#create."""
        check_type(type_)
        warnings = self.check_resource(resource, type_)
        # Indexed before the transaction: the rows do not depend on the server-owned meta, and
        # work done here does not hold the database's write lock.
        index = self.search_params.index(resource)
        result = self.run(
            lambda tx: self.create_in(tx, type_, resource, if_none_exist, index=index)
        )
        return replace(result, issues=warnings)

    def create_in(
        self,
        tx: Transaction,
        type_: str,
        resource: dict[str, Any],
        if_none_exist: str | None = None,
        new_id: str | None = None,
        index: IndexRows | None = None,
    ) -> Result:
        """create within an open transaction."""
        if if_none_exist is not None:
            existing = self.match_one_or_none(tx, type_, if_none_exist, "If-None-Exist")
            if existing is not None:
                return Result(200, stored=existing, location=True)
        id_ = new_id or str(uuid.uuid4())
        stored = self._write(tx, type_, id_, resource, None, "POST", index)
        return Result(201, stored=stored, location=True)

    def update(self, type_: str, id_: str, resource: Any, if_match: int | None = None) -> Result:
        """update and update-as-create: https://hl7.org/fhir/R4/http.html#update."""
        check_type(type_)
        check_id(id_)
        warnings = self.check_resource(resource, type_)
        body_id = resource.get("id")
        if body_id is None:
            raise BadRequest(
                f"The resource has no id; an update must carry the id {id_!r} of the URL",
                expression=(f"{type_}.id",),
            )
        if body_id != id_:
            raise BadRequest(
                f"The resource id {body_id!r} does not match the id {id_!r} in the URL",
                expression=(f"{type_}.id",),
            )
        index = self.search_params.index(resource)
        result = self.run(
            lambda tx: self.update_in(tx, type_, id_, resource, if_match, index=index),
            retry=if_match is None,
        )
        return replace(result, issues=warnings)

    def update_in(
        self,
        tx: Transaction,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        if_match: int | None = None,
        method: str = "PUT",
        index: IndexRows | None = None,
    ) -> Result:
        """update within an open transaction."""
        tx.lock(f"{type_}/{id_}")  # writers of one resource queue instead of conflicting
        current = tx.read(type_, id_)
        _check_if_match(current, type_, id_, if_match)
        stored = self._write(tx, type_, id_, resource, current, method, index)
        created = current is None or current.deleted
        return Result(201 if created else 200, stored=stored, location=created)

    def conditional_update(
        self, type_: str, criteria: str, resource: Any, if_match: int | None = None
    ) -> Result:
        """conditional update: https://hl7.org/fhir/R4/http.html#cond-update."""
        check_type(type_)
        warnings = self.check_resource(resource, type_)
        result = self.run(
            lambda tx: self.conditional_update_in(tx, type_, criteria, resource, if_match),
            retry=if_match is None,
        )
        return replace(result, issues=warnings)

    def conditional_update_in(
        self,
        tx: Transaction,
        type_: str,
        criteria: str,
        resource: dict[str, Any],
        if_match: int | None = None,
    ) -> Result:
        """conditional update within an open transaction."""
        match = self.match_one_or_none(tx, type_, criteria, "The conditional update")
        body_id = resource.get("id")
        if match is None:
            if body_id is not None:
                check_id(body_id)
                existing = tx.read(type_, body_id)
                if existing is not None and not existing.deleted:
                    raise Conflict(
                        f"No resource matches the criteria, but {type_}/{body_id} exists and "
                        "does not match them"
                    )
                return self.update_in(tx, type_, body_id, resource, if_match)
            return self.create_in(tx, type_, resource)
        if body_id is not None and body_id != match.id:
            raise BadRequest(
                f"The resource id {body_id!r} differs from the id {match.id!r} of the "
                "resource the criteria matched",
                expression=(f"{type_}.id",),
            )
        return self.update_in(tx, type_, match.id, resource, if_match)

    def patch(self, type_: str, id_: str, patch_body: Any, if_match: int | None = None) -> Result:
        """patch with JSON Patch: https://hl7.org/fhir/R4/http.html#patch."""
        check_type(type_)
        check_id(id_)
        operations = parse_json_patch(patch_body)
        return self.run(
            lambda tx: self.patch_in(tx, type_, id_, operations, if_match),
            retry=if_match is None,
        )

    def conditional_patch(
        self, type_: str, criteria: str, patch_body: Any, if_match: int | None = None
    ) -> Result:
        """conditional patch: the criteria must match exactly one resource."""
        check_type(type_)
        operations = parse_json_patch(patch_body)

        def work(tx: Transaction) -> Result:
            match = self.match_one_or_none(tx, type_, criteria, "The conditional patch")
            if match is None:
                raise NotFound(f"No {type_} matches the criteria of the conditional patch")
            return self.patch_in(tx, type_, match.id, operations, if_match)

        return self.run(work, retry=if_match is None)

    def patch_in(
        self,
        tx: Transaction,
        type_: str,
        id_: str,
        operations: jsonpatch.JsonPatch,
        if_match: int | None = None,
    ) -> Result:
        """patch within an open transaction."""
        tx.lock(f"{type_}/{id_}")
        current = tx.read(type_, id_)
        if current is None:
            raise NotFound(f"{type_}/{id_} is not known")
        if current.deleted:
            raise Gone(f"{type_}/{id_} was deleted")
        _check_if_match(current, type_, id_, if_match)
        original = parse_json(current.content or "{}")
        try:
            patched = operations.apply(original)
        except jsonpatch.JsonPatchTestFailed as exc:
            raise PreconditionFailed(f"A JSON Patch test operation failed: {exc}") from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Unprocessable(f"The JSON Patch cannot be applied: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise Unprocessable(f"The JSON Patch cannot be applied: {exc}") from exc
        if not isinstance(patched, dict) or patched.get("id") != id_:
            raise Unprocessable("A patch must not change or remove the resource id")
        if patched.get("resourceType") != type_:
            raise Unprocessable("A patch must not change the resourceType")
        self.check_resource(patched, type_)
        stored = self._write(tx, type_, id_, patched, current, "PATCH")
        return Result(200, stored=stored)

    def delete(self, type_: str, id_: str, if_match: int | None = None) -> Result:
        """delete (logical, history kept): https://hl7.org/fhir/R4/http.html#delete."""
        check_type(type_)
        check_id(id_)
        return self.run(lambda tx: self.delete_in(tx, type_, id_, if_match), retry=if_match is None)

    def delete_in(
        self, tx: Transaction, type_: str, id_: str, if_match: int | None = None
    ) -> Result:
        """delete within an open transaction; deleting what is absent or deleted is a no-op."""
        tx.lock(f"{type_}/{id_}")
        current = tx.read(type_, id_)
        _check_if_match(current, type_, id_, if_match)
        if current is None or current.deleted:
            return Result(204, stored=current)
        marker = StoredResource(
            type=type_,
            id=id_,
            version=current.version + 1,
            last_updated_us=self._tick(current),
            deleted=True,
            content=None,
            method="DELETE",
        )
        tx.put(marker, current.version)
        self._notify(
            tx, Change(type_, id_, marker.version, None, parse_json(current.content or "{}"))
        )
        self._provenance(tx, marker, "DELETE")
        return Result(204, stored=marker)

    def conditional_delete(self, type_: str, criteria: str) -> Result:
        """conditional delete: https://hl7.org/fhir/R4/http.html#3.1.0.7.1 (single match)."""
        check_type(type_)
        return self.run(lambda tx: self.conditional_delete_in(tx, type_, criteria))

    def conditional_delete_in(self, tx: Transaction, type_: str, criteria: str) -> Result:
        """conditional delete within an open transaction."""
        match = self.match_one_or_none(tx, type_, criteria, "The conditional delete")
        if match is None:
            return Result(204)
        return self.delete_in(tx, type_, match.id)

    # -- type and system level ----------------------------------------------------------------

    def search_type(
        self,
        type_: str,
        params: Sequence[tuple[str, str]],
        base: str,
        *,
        strict: bool = False,
        tx: Transaction | None = None,
    ) -> Result:
        """search: https://hl7.org/fhir/R4/search.html."""
        if type_ in CONFORMANCE_TYPES and self.conformance is not None:
            return self.conformance.search(type_, params, base)
        check_type(type_)
        access = current_access()
        if access is not None:
            params = narrowed(access, type_, params)
        return search_type(self, type_, params, base, strict=strict, tx=tx)

    def history(
        self,
        type_: str | None,
        id_: str | None,
        params: Sequence[tuple[str, str]],
        base: str,
        tx: Transaction | None = None,
    ) -> Result:
        """history (instance, type, system): https://hl7.org/fhir/R4/http.html#history."""
        if type_ is not None:
            check_type(type_)
        if id_ is not None:
            check_id(id_)
        count = self.default_page_size
        since: int | None = None
        before: int | None = None
        kept: list[tuple[str, str]] = []
        for name, value in params:
            if name == "_count":
                try:
                    count = min(max(int(value), 0), self.max_page_size)
                except ValueError as exc:
                    raise BadRequest(f"_count must be a whole number, not {value!r}") from exc
                kept.append((name, str(count)))
            elif name == "_since":
                since = parse_instant(value, "_since")
                kept.append((name, value))
            elif name == "_page":
                if not _DIGITS.fullmatch(value):
                    raise BadRequest("_page must come from a link of an earlier page")
                before = int(value)
            elif name not in ("_format", "_pretty"):
                raise BadRequest(f"The history parameter {name!r} is not supported")

        def work(t: Transaction) -> list[StoredResource]:
            if id_ is not None and type_ is not None and t.read(type_, id_) is None:
                raise NotFound(f"{type_}/{id_} is not known")
            query = HistoryQuery(type_, id_, since, before, count + 1)
            return t.history(query)

        versions = self._within(tx, work)
        page = versions[:count]
        path = "/".join(p for p in (base, type_, id_, "_history") if p)
        links = [{"relation": "self", "url": _with_params(path, kept, before)}]
        if len(versions) > count and page:
            links.append({"relation": "next", "url": _with_params(path, kept, page[-1].seq)})
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": instant(self.clock())},
            "type": "history",
            "link": links,
        }
        entries = [_history_entry(base, item) for item in page]
        if entries:
            bundle["entry"] = entries
        return Result(200, body=bundle)

    # -- operations -----------------------------------------------------------------------------

    def validate_operation(
        self,
        type_: str,
        body: Any,
        id_: str | None = None,
        url_profiles: Sequence[str] = (),
    ) -> Result:
        """$validate: https://hl7.org/fhir/R4/resource-operation-validate.html.

        The answer is an OperationOutcome (200) listing every issue, or one information issue
        when there is none. ``mode`` create, update and delete are honoured. Profiles asked for
        in the URL (``?profile=``) or in the Parameters are checked; one this server does not
        know is an error, never skipped. Bundles (of any type) are validated too, each entry's
        resource with the profiles it claims.
        """
        if type_ != "Bundle":
            check_type(type_)
        resource, profile, mode = _validate_input(body)
        asked = list(dict.fromkeys([*url_profiles, *([profile] if profile else [])]))
        issues: list[Issue] = []
        if mode == "delete":
            if id_ is None:
                raise BadRequest("mode=delete needs the resource's id in the URL")
            check_id(id_)
            self.read(type_, id_)  # 404 or 410 if there is nothing to delete
            issues.append(Issue("information", "informational", f"{type_}/{id_} can be deleted"))
            return Result(200, body=operation_outcome(issues))
        if resource is None:
            if id_ is None:
                raise BadRequest(
                    "$validate needs a resource, as the body or a 'resource' parameter"
                )
            check_id(id_)
            stored = self.read(type_, id_).stored
            assert stored is not None
            resource = parse_json(stored.content or "{}")
        issues += self.thorough.validate(resource, type_)
        if isinstance(resource, dict) and resource.get("resourceType") == type_:
            issues += self._profile_issues(
                self.thorough, resource, type_, asked[0] if asked else None
            )
            for one in asked[1:]:
                issues += [
                    i
                    for i in self.thorough.validate_profiles(resource, one, self.find_canonical)
                    if i not in issues
                ]
        if mode == "update" or (id_ is not None and isinstance(resource, dict)):
            body_id = resource.get("id") if isinstance(resource, dict) else None
            if id_ is not None and body_id != id_:
                issues.append(
                    Issue(
                        "error",
                        "invalid",
                        f"An update of {type_}/{id_} needs a resource with id {id_!r}",
                        (f"{type_}.id",),
                    )
                )
        if not issues:
            issues.append(Issue("information", "informational", "No issues were found"))
        return Result(200, body=operation_outcome(issues))

    # -- maintenance ----------------------------------------------------------------------------

    def reindex(
        self,
        batch_size: int = 500,
        restart: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Rebuild the search index of every current resource, in short batches.

        Each batch is one transaction that also records how far the job got, so an interrupted
        reindex resumes where it stopped; readers are never blocked for longer than a batch.
        Returns how many resources were reindexed in all.
        """
        job = "reindex"
        total = self.read_only(lambda tx: sum(tx.count(Query(t)) for t in SUPPORTED_TYPES))
        state = self.read_only(lambda tx: tx.progress(job))
        if restart or state is None:
            last: tuple[str, str] | None = None
            done = 0
        else:
            last, done = state

        def batch(tx: Transaction) -> tuple[tuple[str, str] | None, int]:
            keys = tx.current_keys(last, batch_size)
            for type_, id_ in keys:
                tx.lock(f"{type_}/{id_}")  # the same lock a writer of this resource takes
                current = tx.read(type_, id_)
                if current is None or current.deleted or current.content is None:
                    continue
                tx.replace_index(type_, id_, self.search_params.index(parse_json(current.content)))
            new_last = keys[-1] if keys else None
            tx.set_progress(job, new_last, done + len(keys) if keys else None)
            return new_last, len(keys)

        while True:
            last, count = self.run(batch)
            done += count
            if progress is not None:
                progress(done, max(total, done))
            if last is None:
                return done

    # -- helpers shared with bundles ----------------------------------------------------------

    def check_resource(self, resource: Any, type_: str) -> tuple[Issue, ...]:
        """Raise for a resource that may not be stored; return its warnings.

        Base R4 problems give 400 (InvalidResource); a profile the resource claims or that
        configuration requires for its type, when not met, gives 422 (Unprocessable).
        """
        issues = self.validator.validate(resource, type_)
        self._refuse_errors(issues, InvalidResource, f"The {type_} is not valid FHIR R4")
        issues += self.profile_issues(resource, type_)
        self._refuse_errors(issues, Unprocessable, f"The {type_} does not meet its profile")
        if not self.return_warnings:
            return ()
        return tuple(i for i in issues if i.severity == "warning")

    def _refuse_errors(self, issues: list[Issue], error: type[FhirError], lead: str) -> None:
        errors = [i for i in issues if i.severity in ("error", "fatal")]
        if errors:
            raise error(
                f"{lead}: {errors[0].diagnostics}"
                + (f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""),
                issues=issues if self.return_warnings else errors,
            )

    def profile_issues(self, resource: dict[str, Any], type_: str) -> list[Issue]:
        """Profile issues of a resource, or of each resource a Bundle carries."""
        return self._profile_issues(self.validator, resource, type_)

    def _profile_issues(
        self,
        validator: Validator,
        resource: dict[str, Any],
        type_: str,
        profile: str | None = None,
    ) -> list[Issue]:
        find = self.find_canonical
        if type_ != "Bundle" or not isinstance(resource.get("entry"), list):
            return validator.validate_profiles(resource, profile, find)
        entries = resource["entry"]
        shell = {**resource, "entry": [without_resource(e) for e in entries]}
        issues = validator.validate_profiles(shell, profile, find)
        for index, entry in enumerate(entries):
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(inner, dict) or not isinstance(inner.get("resourceType"), str):
                continue
            prefix = f"Bundle.entry[{index}].resource"
            kind = inner["resourceType"]
            for issue in validator.validate_profiles(inner, None, find):
                moved = tuple(
                    prefix + e[len(kind) :] if e == kind or e.startswith(kind + ".") else e
                    for e in issue.expression
                )
                issues.append(replace(issue, expression=moved or (prefix,)))
        return issues

    def match_one_or_none(
        self, tx: Transaction, type_: str, criteria: str, what: str
    ) -> StoredResource | None:
        """Resolve conditional criteria: None for no match, 412 for several.

        With a patient-context token the criteria are narrowed to the patient's compartment,
        so a conditional write cannot tell whether another patient holds a match."""
        access = current_access()
        if access is not None:
            extra = narrowed(access, type_, [])
            if extra:
                criteria = f"{criteria}&{urlencode(extra)}" if criteria else urlencode(extra)
        parser = SearchParser(self.search_params, max_depth=self.max_chain_depth)
        query = parse_conditional(parser, type_, criteria)
        if access is not None:
            query = confined(access, query)
        tx.lock(f"{type_}?{_lock_key(query)}")
        found = tx.read_many(tx.search_keys(query, 2))
        if len(found) > 1:
            raise PreconditionFailed(
                f"{what} criteria {criteria!r} match more than one {type_}; "
                "make them more selective"
            )
        return found[0] if found else None

    def create_many_in(
        self, tx: Transaction, items: Sequence[tuple[str, dict[str, Any], dict[str, str]]]
    ) -> list[Result]:
        """Create many new resources unless the same one exists (bulk ingest).

        Each item is (type, resource, identifier). A resource is already there when a current
        resource of its type holds the same identifier (whose system names the source feed) and
        is about the same patient, in the store or earlier in ``items``; it is not written
        again (200). A row of one patient's never stands in for, or reveals, another's. One
        look-up query and a few multi-row inserts per call; one lock per identifier system
        serialises concurrent ingests of the same feed.
        """
        results: list[Result] = []
        wanted: dict[str, list[tuple[str, str]]] = {}
        for type_, _, identifier in items:
            wanted.setdefault(type_, []).append((identifier["system"], identifier["value"]))
        raw = tx.raw if isinstance(tx, GuardedTransaction) else tx
        existing: dict[tuple[str, str, str], str] = {}
        for type_, pairs in wanted.items():
            for system in sorted({system for system, _ in pairs}):
                tx.lock(f"{type_}?identifier={system}|")
            for (system, value), id_ in raw.find_tokens(type_, "identifier", pairs).items():
                existing[(type_, system, value)] = id_
        pending: dict[tuple[str, str, str, str | None], Result] = {}
        batch: list[tuple[StoredResource, IndexRows]] = []
        changes: list[Change] = []
        for type_, resource, identifier in items:
            # a Patient's identifier names the Patient itself: it is about nobody else
            owner = None if type_ == "Patient" else owner_of(type_, resource)
            key = (type_, identifier["system"], identifier["value"], owner)
            if key in pending:
                results.append(replace(pending[key], status=200))
                continue
            held = self._held_by(raw, key, existing.get(key[:3]))
            if held is not None:
                results.append(Result(200, stored=tx.read(type_, held), location=True))
                continue
            stored, content = self._version(type_, str(uuid.uuid4()), resource, None, "POST")
            batch.append((stored, self.search_params.index(content)))
            changes.append(Change(type_, stored.id, 1, content))
            pending[key] = Result(201, stored=stored, location=True)
            results.append(pending[key])
        tx.insert_new(batch)
        for change in changes:
            self._check_unique_identifiers(tx, change.type, change.id, change.content)
            self._notify(tx, change)
        return results

    def _held_by(
        self, raw: Transaction, key: tuple[str, str, str, str | None], candidate: str | None
    ) -> str | None:
        """The current resource of ``key``'s type holding its identifier about its patient.

        ``candidate`` is one resource holding the identifier (about anyone); only when it is
        another patient's is the store asked again, for the patient's own."""
        if candidate is None:
            return None
        type_, system, value, owner = key
        if type_ == "Patient":
            return candidate
        found = raw.read(type_, candidate)
        content = json.loads(found.content) if found and found.content else None
        if content is not None and owner_of(type_, content) == owner:
            return candidate
        element = OWNER_ELEMENT.get(type_)
        if element is None:
            return None
        about = f"Patient/{owner}" if owner else ""
        criteria = f"identifier={escape_value(system)}|{escape_value(value)}&" + (
            f"{element}={about}" if owner else f"{element}:missing=true"
        )
        query = parse_conditional(SearchParser(self.search_params), type_, criteria)
        for found_type, found_id in raw.search_keys(query, 1):
            return found_id if found_type == type_ else None
        return None

    def _check_unique_identifiers(
        self,
        tx: Transaction,
        type_: str,
        id_: str,
        content: dict[str, Any] | None,
        replaced: StoredResource | None = None,
    ) -> None:
        """Refuse (409) a Patient version that shares an identifier of a unique system (the
        NHS number) with another current Patient.

        Called after the version is stored, so the access guard has already refused what the
        token may not write (the answer cannot tell a patient token whose number is in use).
        A lock per identifier, held to commit, makes concurrent writers of one number take
        turns, and each then sees what the one before committed. ``replaced`` is the version
        this one follows (None for a create).
        """
        if type_ != "Patient" or not isinstance(content, dict):
            return
        held: dict[tuple[str, str], int] = {}
        identifiers = content.get("identifier")
        for index, identifier in enumerate(identifiers if isinstance(identifiers, list) else []):
            system = identifier.get("system") if isinstance(identifier, dict) else None
            value = identifier.get("value") if isinstance(identifier, dict) else None
            if system in self.unique_identifier_systems and isinstance(value, str):
                held.setdefault((system, value), index)
        if not held:
            return
        raw = tx.raw if isinstance(tx, GuardedTransaction) else tx
        if isinstance(tx, GuardedTransaction):
            self._keep_patients_own_numbers(tx, held, replaced)
        parser = SearchParser(self.search_params)
        for (system, value), index in sorted(held.items()):
            criteria = f"identifier={escape_value(system)}|{escape_value(value)}"
            raw.lock(f"Patient?{criteria}")
            query = parse_conditional(parser, "Patient", criteria)
            if any(key != ("Patient", id_) for key in raw.search_keys(query, 2)):
                raise Conflict(
                    f"Another Patient already has the identifier {system}|{value}; "
                    f"no two Patients may share an identifier of {system}",
                    expression=(f"Patient.identifier[{index}]",),
                )

    def _keep_patients_own_numbers(
        self,
        tx: GuardedTransaction,
        held: dict[tuple[str, str], int],
        replaced: StoredResource | None,
    ) -> None:
        """Refuse (403) a patient-context token that gives its Patient a number of a unique
        system the Patient did not have: it could claim a number nobody holds yet (and have
        later data for it filed under itself) or learn from a 409 that someone holds it."""
        access = tx.access
        if access.patient is None or any(g.context != "patient" for g in access.grants):
            return
        # the version this write replaces, as the write already holds it: no read-back
        before = json.loads(replaced.content) if replaced and replaced.content else {}
        had = {
            (str(identifier.get("system")), str(identifier.get("value")))
            for identifier in before.get("identifier") or []
            if isinstance(identifier, dict)
        }
        for (system, value), index in sorted(held.items()):
            if (system, value) not in had:
                raise Forbidden(
                    f"A patient's own token may not add or change an identifier of {system}; "
                    "the organisation that registers the patient sets it",
                    expression=(f"Patient.identifier[{index}]",),
                )

    def _notify(self, tx: Transaction, change: Change) -> None:
        # listeners (the outbox) work for the service, not for the request's token
        raw = tx.raw if isinstance(tx, GuardedTransaction) else tx
        for listener in self.listeners:
            listener.changed(raw, change)

    def _tick(self, current: StoredResource | None) -> int:
        moment = self.clock()
        if current is not None and moment <= current.last_updated_us:
            moment = current.last_updated_us + 1000  # keep lastUpdated increasing per resource
        return moment

    def _version(
        self,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        current: StoredResource | None,
        method: str,
    ) -> tuple[StoredResource, dict[str, Any]]:
        """The next version of a resource, with the server-owned meta, and its content."""
        version = current.version + 1 if current is not None else 1
        moment = self._tick(current)
        content = with_meta(resource, id_, version, moment)
        stored = StoredResource(
            type=type_,
            id=id_,
            version=version,
            last_updated_us=moment,
            deleted=False,
            content=dump_json(content),
            method=method,
        )
        return stored, content

    def _write(
        self,
        tx: Transaction,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        current: StoredResource | None,
        method: str,
        index: IndexRows | None = None,
    ) -> StoredResource:
        if type_ == "Subscription":
            resource = stamp_subscriber(resource)
        stored, content = self._version(type_, id_, resource, current, method)
        if _unchanged(current, resource):
            # an update that changes nothing is no new version and queues nothing (as HAPI
            # answers one: the current version, not incremented); this also ends any echo of
            # a resource between two servers. It needs the same right as a write.
            assert current is not None
            if isinstance(tx, GuardedTransaction):
                tx.check_put(stored, current.version)
            return current
        tx.put(
            stored,
            current.version if current is not None else None,
            index if index is not None else self.search_params.index(content),
        )
        self._check_unique_identifiers(tx, type_, id_, content, current)
        self._notify(tx, Change(type_, id_, stored.version, content))
        self._provenance(tx, stored, "CREATE" if current is None else "UPDATE")
        return stored

    @contextlib.contextmanager
    def provenance_supplied(self) -> Iterator[None]:
        """Writes in the block bring their own Provenance ($record-what-matters names the
        clinician who recorded the conversation): no other is added."""
        token = _PROVENANCE_SUPPLIED.set(True)
        try:
            yield
        finally:
            _PROVENANCE_SUPPLIED.reset(token)

    def _provenance(self, tx: Transaction, stored: StoredResource, activity: str) -> None:
        """Add the Provenance of a write made with an access token, in its transaction."""
        access = current_access()
        if access is None or stored.type in NO_PROVENANCE_TYPES or _PROVENANCE_SUPPLIED.get():
            return
        raw = tx.raw if isinstance(tx, GuardedTransaction) else tx
        target = f"{stored.type}/{stored.id}/_history/{stored.version}"
        provenance = provenance_for(access, target, activity, instant(stored.last_updated_us))
        # written for the service, whatever the token may write itself
        self._write(raw, "Provenance", str(uuid.uuid4()), provenance, None, "POST")


def _unchanged(current: StoredResource | None, resource: dict[str, Any]) -> bool:
    """Whether ``resource`` is the current version again (meta's server-owned parts aside)."""
    if current is None or current.deleted or current.content is None:
        return False
    return same_content(json.loads(current.content), resource)


def without_resource(entry: Any) -> Any:
    """A Bundle entry without its resource (the shell the Bundle itself is checked with)."""
    if isinstance(entry, dict) and "resource" in entry:
        return {k: v for k, v in entry.items() if k != "resource"}
    return entry


def _validate_input(body: Any) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """Split a $validate body into the resource, the profile and the mode asked for."""
    if not isinstance(body, dict):
        raise BadRequest("The $validate body must be a resource or a Parameters resource")
    if body.get("resourceType") != "Parameters":
        return body, None, None
    parameters = body.get("parameter", [])
    if not isinstance(parameters, list):
        raise BadRequest(
            "Parameters.parameter must be an array", expression=("Parameters.parameter",)
        )
    resource: dict[str, Any] | None = None
    profile: str | None = None
    mode: str | None = None
    for index, parameter in enumerate(parameters):
        where = (f"Parameters.parameter[{index}]",)
        if not isinstance(parameter, dict):
            raise BadRequest("Each parameter must be an object", expression=where)
        name = parameter.get("name")
        if name == "resource":
            if not isinstance(parameter.get("resource"), dict):
                raise BadRequest("The 'resource' parameter needs a resource", expression=where)
            resource = parameter["resource"]
        elif name == "profile":
            value = parameter.get("valueUri", parameter.get("valueCanonical"))
            if not isinstance(value, str):
                raise BadRequest("The 'profile' parameter needs a valueUri", expression=where)
            profile = value
        elif name == "mode":
            value = parameter.get("valueCode")
            if value not in ("create", "update", "delete"):
                raise BadRequest("mode must be create, update or delete", expression=where)
            mode = value
    return resource, profile, mode


def _version_headers(stored: StoredResource) -> dict[str, str]:
    return {"ETag": f'W/"{stored.version}"'}


def _check_if_match(
    current: StoredResource | None, type_: str, id_: str, if_match: int | None
) -> None:
    if if_match is None:
        return
    if current is None:
        raise PreconditionFailed(
            f"If-Match names version {if_match}, but {type_}/{id_} does not exist"
        )
    if current.version != if_match:
        raise PreconditionFailed(
            f"If-Match names version {if_match}, but the current version of {type_}/{id_} "
            f"is {current.version}"
        )


def parse_json_patch(body: Any) -> jsonpatch.JsonPatch:
    if not isinstance(body, list):
        raise BadRequest("A JSON Patch document must be a JSON array of operations")
    for index, op in enumerate(body):
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise BadRequest(f"JSON Patch operation {index} needs 'op' and 'path'")
        if op["op"] not in ("add", "remove", "replace", "move", "copy", "test"):
            raise BadRequest(f"JSON Patch operation {index} has an unknown op {op['op']!r}")
    try:
        return jsonpatch.JsonPatch(body)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
        raise BadRequest(f"The JSON Patch document is not valid: {exc}") from exc


def _lock_key(query: Query) -> str:
    # Criteria print the same whatever order the client wrote them in.
    return "&".join(sorted(repr(c) for c in query.criteria))


def _history_entry(base: str, item: StoredResource) -> dict[str, Any]:
    url = f"{item.type}/{item.id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if item.deleted:
        entry["request"] = {"method": "DELETE", "url": url}
        entry["response"] = {
            "status": "204 No Content",
            "etag": f'W/"{item.version}"',
            "lastModified": instant(item.last_updated_us),
        }
        return entry
    entry["resource"] = parse_json(item.content or "{}")
    created = item.version == 1 or item.method == "POST"
    entry["request"] = {
        "method": item.method if item.method in ("POST", "PUT", "PATCH") else "PUT",
        "url": item.type if item.method == "POST" else url,
    }
    entry["response"] = {
        "status": "201 Created" if created else "200 OK",
        "etag": f'W/"{item.version}"',
        "lastModified": instant(item.last_updated_us),
    }
    return entry


def _with_params(path: str, params: Sequence[tuple[str, str]], page: int | None) -> str:
    items = list(params)
    if page is not None:
        items.append(("_page", str(page)))
    return path + ("?" + urlencode(items) if items else "")


__all__ = ["FhirError", "FhirService", "Result"]
