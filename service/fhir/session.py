"""One session of the FHIR core: every RESTful interaction, written once, in one transaction
for one ``Actor``: https://hl7.org/fhir/R4/http.html.

A ``Session`` is opened by ``FhirService.session`` (reads) or ``FhirService.perform`` (writes,
retried when they lose a race). Its transaction is opened on first use, so a write validates
its resource before it holds the store's write lock; with an access token the transaction is
the guarded one (guard.py). The write pipeline is writes.py, the checks checking.py, search
search_executor.py.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol
from urllib.parse import urlencode

import jsonpatch

from service.errors import (
    BadRequest,
    Conflict,
    FhirError,
    Gone,
    Issue,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from service.fhir import checking, writes
from service.fhir.access import confined, narrowed
from service.fhir.actor import Actor
from service.fhir.checking import Validator, check_id, check_type, parse_json_patch
from service.fhir.conformance_resources import CONFORMANCE_TYPES, ConformanceResources
from service.fhir.guard import GuardedTransaction, read_to_change
from service.fhir.history import (
    HistoryPage,
    history_bundle,
    history_page,
    parse_history_params,
)
from service.fhir.model import SUPPORTED_TYPES, dump_json, new_resource_id, parse_json
from service.fhir.results import Result
from service.fhir.search_executor import SearchPage, search, searchset
from service.fhir.search_index import SearchParameters
from service.fhir.search_parser import SearchParser, parse_conditional
from service.fhir.subsetting import subset
from service.fhir.writes import ChangeListener, check_if_match, check_if_none_match
from service.storage import (
    HistoryQuery,
    IndexRows,
    Query,
    Store,
    StoredResource,
    Transaction,
)
from service.validation.definitions import Definitions

_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits that fit a 64-bit integer
Key = tuple[str, str]


class SessionHost(Protocol):
    """What a session needs from the FHIR service (``FhirService`` is one)."""

    store: Store
    validator: Validator
    thorough: Validator
    search_params: SearchParameters
    definitions: Definitions
    default_page_size: int
    max_page_size: int
    max_chain_depth: int
    clock: Callable[[], int]
    return_warnings: bool
    conformance: ConformanceResources | None
    unique_identifier_systems: frozenset[str]
    listeners: list[ChangeListener]


class Session:
    """The FHIR interactions of one actor, in one store transaction."""

    def __init__(self, fhir: SessionHost, actor: Actor, write: bool) -> None:
        self.fhir = fhir
        self.actor = actor
        self.write = write
        self._open: contextlib.ExitStack | None = None
        self._tx: Transaction | None = None

    # -- the transaction ------------------------------------------------------------------------

    @property
    def tx(self) -> Transaction:
        """The session's transaction (opened on first use), as the actor's access may use it."""
        if self._tx is None:
            stack = contextlib.ExitStack()
            raw = stack.enter_context(self.fhir.store.transaction(write=self.write))
            self._open = stack
            access = self.actor.access
            self._tx = (
                raw
                if access is None
                else GuardedTransaction(
                    raw, access, self.fhir.search_params.references, self.actor.touched
                )
            )
        return self._tx

    def close(
        self,
        kind: type[BaseException] | None = None,
        error: BaseException | None = None,
        trace: TracebackType | None = None,
    ) -> None:
        """End the transaction: commit, or roll back when ``error`` ends the session."""
        stack, self._open, self._tx = self._open, None, None
        if stack is not None:
            stack.__exit__(kind, error, trace)

    def keep_search(self, key: str, keys: list[Key], moment: int) -> None:
        """Keep a search's ordered matches under ``key`` (its own write transaction in a
        read session, which then reads on in a new one)."""
        if self.write:
            self.tx.searches.save(key, keys, moment)
            return
        self.close()
        with self.fhir.store.transaction(write=True) as tx:
            tx.searches.save(key, keys, moment)

    # -- checks -----------------------------------------------------------------------------------

    def check(self, resource: Any, type_: str) -> tuple[Issue, ...]:
        """Raise for a resource that may not be stored (400, 422); return its warnings."""
        fhir = self.fhir
        return checking.check_resource(
            fhir.validator, resource, type_, self.find_canonical, fhir.return_warnings
        )

    def find_canonical(self, type_: str, canonical: str) -> dict[str, Any] | None:
        """The stored resource of ``type_`` with this canonical URL (``url|version``), if any."""
        if type_ not in SUPPORTED_TYPES:
            return None
        url, _, version = canonical.partition("|")
        criteria = urlencode([("url", url)] + ([("version", version)] if version else []))
        try:
            query = parse_conditional(SearchParser(self.fhir.search_params), type_, criteria)
            found = self.tx.resources.read_many(self.tx.searches.keys(query, 1))
        except FhirError:
            return None  # a URL the search cannot take names nothing stored here
        return parse_json(found[0].content or "{}") if found else None

    def validate_operation(
        self, type_: str, body: Any, id_: str | None = None, url_profiles: Sequence[str] = ()
    ) -> Result:
        """$validate: https://hl7.org/fhir/R4/resource-operation-validate.html."""
        return checking.validate_operation(
            self.fhir.thorough, self.read, self.find_canonical, type_, body, id_, url_profiles
        )

    def match_one_or_none(self, type_: str, criteria: str, what: str) -> StoredResource | None:
        """Resolve conditional criteria: None for no match, 412 for several.

        With a patient-context token the criteria are narrowed to the patient's compartment,
        so a conditional write cannot tell whether another patient holds a match."""
        access = self.actor.access
        if access is not None:
            extra = narrowed(access, type_, [])
            if extra:
                criteria = f"{criteria}&{urlencode(extra)}" if criteria else urlencode(extra)
        parser = SearchParser(self.fhir.search_params, max_depth=self.fhir.max_chain_depth)
        query = parse_conditional(parser, type_, criteria)
        if access is not None:
            query = confined(access, query)
        tx = self.tx
        tx.locks.hold(f"{type_}?{_lock_key(query)}")
        found = tx.resources.read_many(tx.searches.keys(query, 2))
        if len(found) > 1:
            raise PreconditionFailed(
                f"{what} criteria {criteria!r} match more than one {type_}; "
                "make them more selective"
            )
        return found[0] if found else None

    # -- instance level -------------------------------------------------------------------------

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
        if type_ in CONFORMANCE_TYPES and self.fhir.conformance is not None:
            check_id(id_)
            return self.fhir.conformance.read(type_, id_)
        check_type(type_)
        check_id(id_)
        stored = self.tx.resources.read(type_, id_)
        if stored is None:
            raise NotFound(f"{type_}/{id_} is not known")
        if stored.deleted:
            raise Gone(f"{type_}/{id_} was deleted", headers={"ETag": f'W/"{stored.version}"'})
        if if_none_match is not None:
            if not if_none_match or stored.version in if_none_match:
                return Result(304, stored=stored)
        elif if_modified_since is not None and stored.last_updated_us // 1_000_000 <= (
            if_modified_since
        ):
            return Result(304, stored=stored)
        return Result(200, stored=stored)

    def vread(self, type_: str, id_: str, version: str) -> Result:
        """vread: https://hl7.org/fhir/R4/http.html#vread."""
        check_type(type_)
        check_id(id_)
        if not _DIGITS.fullmatch(version):
            raise NotFound(f"{type_}/{id_} has no version {version!r}")
        found = self.tx.resources.vread(type_, id_, int(version))
        if found is None:
            if self.tx.resources.read(type_, id_) is None:
                raise NotFound(f"{type_}/{id_} is not known")
            raise NotFound(f"{type_}/{id_} has no version {version}")
        if found.deleted:
            raise Gone(f"Version {version} of {type_}/{id_} is a deletion")
        return Result(200, stored=found)

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
            self.fhir.definitions, parse_json(result.stored.content or "{}"), summary, elements
        )
        return Result(result.status, stored=result.stored, text=dump_json(resource))

    def create(
        self,
        type_: str,
        resource: Any,
        if_none_exist: str | None = None,
        *,
        new_id: str | None = None,
        checked: bool = False,
    ) -> Result:
        """create and conditional create: https://hl7.org/fhir/R4/http.html#create.

        ``checked``: the caller has validated the resource already (a transaction Bundle).
        ``new_id``: the id to give it (a Bundle entry's PUT-as-create)."""
        warnings: tuple[Issue, ...] = ()
        index = None
        if not checked:
            check_type(type_)
            warnings = self.check(resource, type_)
            # indexed before the transaction holds the write lock: the rows do not depend on
            # the server-owned meta
            index = self.fhir.search_params.index(resource)
        if if_none_exist is not None:
            existing = self.match_one_or_none(type_, if_none_exist, "If-None-Exist")
            if existing is not None:
                return Result(200, stored=existing, location=True, issues=warnings)
        id_ = new_id or new_resource_id()
        stored = self._write(type_, id_, resource, None, "POST", index)
        return Result(201, stored=stored, location=True, issues=warnings)

    def update(
        self,
        type_: str,
        id_: str,
        resource: Any,
        if_match: int | None = None,
        *,
        checked: bool = False,
        if_none_match: list[int] | None = None,
    ) -> Result:
        """update and update-as-create: https://hl7.org/fhir/R4/http.html#update;
        ``if_none_match`` as ``read`` takes it (412 when it holds: ``check_if_none_match``)."""
        warnings: tuple[Issue, ...] = ()
        index = None
        if not checked:
            check_type(type_)
            check_id(id_)
            warnings = self.check(resource, type_)
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
            index = self.fhir.search_params.index(resource)
        tx = self.tx
        tx.locks.hold(f"{type_}/{id_}")  # writers of one resource queue instead of conflicting
        current = read_to_change(tx, type_, id_, "u")
        check_if_match(current, type_, id_, if_match)
        check_if_none_match(current, type_, id_, if_none_match)
        stored = self._write(type_, id_, resource, current, "PUT", index)
        created = current is None or current.deleted
        return Result(201 if created else 200, stored=stored, location=created, issues=warnings)

    def conditional_update(
        self,
        type_: str,
        criteria: str,
        resource: Any,
        if_match: int | None = None,
        *,
        checked: bool = False,
    ) -> Result:
        """conditional update: https://hl7.org/fhir/R4/http.html#cond-update."""
        warnings: tuple[Issue, ...] = ()
        if not checked:
            check_type(type_)
            warnings = self.check(resource, type_)
        match = self.match_one_or_none(type_, criteria, "The conditional update")
        body_id = resource.get("id")
        if match is None:
            if body_id is not None:
                check_id(body_id)
                existing = self.tx.resources.read(type_, body_id)
                if existing is not None and not existing.deleted:
                    raise Conflict(
                        f"No resource matches the criteria, but {type_}/{body_id} exists and "
                        "does not match them"
                    )
                result = self.update(type_, body_id, resource, if_match, checked=True)
            else:
                result = self.create(type_, resource, checked=True)
        else:
            if body_id is not None and body_id != match.id:
                raise BadRequest(
                    f"The resource id {body_id!r} differs from the id {match.id!r} of the "
                    "resource the criteria matched",
                    expression=(f"{type_}.id",),
                )
            result = self.update(type_, match.id, resource, if_match, checked=True)
        result.issues = warnings
        return result

    def patch(self, type_: str, id_: str, patch: Any, if_match: int | None = None) -> Result:
        """patch with JSON Patch (a document, or one parsed already):
        https://hl7.org/fhir/R4/http.html#patch."""
        check_type(type_)
        check_id(id_)
        operations = patch if isinstance(patch, jsonpatch.JsonPatch) else parse_json_patch(patch)
        tx = self.tx
        tx.locks.hold(f"{type_}/{id_}")
        current = read_to_change(tx, type_, id_, "u")
        if current is None:
            raise NotFound(f"{type_}/{id_} is not known")
        if current.deleted:
            raise Gone(f"{type_}/{id_} was deleted")
        check_if_match(current, type_, id_, if_match)
        original = parse_json(current.content or "{}")
        try:
            patched = operations.apply(original)
        except jsonpatch.JsonPatchTestFailed as exc:
            # the patch cannot be applied to this version (RFC 5789 section 2.2; If-Match is
            # the precondition that answers 412)
            raise Unprocessable(
                "A JSON Patch test operation failed: the value at its path is not the value "
                "it tests; nothing was changed"
            ) from exc
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Unprocessable(f"The JSON Patch cannot be applied: {exc}") from exc
        except (TypeError, ValueError, KeyError, IndexError) as exc:
            raise Unprocessable(f"The JSON Patch cannot be applied: {exc}") from exc
        if not isinstance(patched, dict) or patched.get("id") != id_:
            raise Unprocessable("A patch must not change or remove the resource id")
        if patched.get("resourceType") != type_:
            raise Unprocessable("A patch must not change the resourceType")
        self.check(patched, type_)
        stored = self._write(type_, id_, patched, current, "PATCH")
        return Result(200, stored=stored)

    def conditional_patch(
        self, type_: str, criteria: str, patch: Any, if_match: int | None = None
    ) -> Result:
        """conditional patch: the criteria must match exactly one resource."""
        check_type(type_)
        operations = patch if isinstance(patch, jsonpatch.JsonPatch) else parse_json_patch(patch)
        match = self.match_one_or_none(type_, criteria, "The conditional patch")
        if match is None:
            raise NotFound(f"No {type_} matches the criteria of the conditional patch")
        return self.patch(type_, match.id, operations, if_match)

    def delete(self, type_: str, id_: str, if_match: int | None = None) -> Result:
        """delete (logical, history kept): https://hl7.org/fhir/R4/http.html#delete; deleting
        what is absent or deleted already is a no-op."""
        check_type(type_)
        check_id(id_)
        tx = self.tx
        tx.locks.hold(f"{type_}/{id_}")
        current = read_to_change(tx, type_, id_, "d")
        check_if_match(current, type_, id_, if_match)
        if current is None or current.deleted:
            return Result(204, stored=current)
        return writes.delete(self.fhir, self.actor, tx, current)

    def conditional_delete(self, type_: str, criteria: str) -> Result:
        """conditional delete: https://hl7.org/fhir/R4/http.html#3.1.0.7.1 (single match)."""
        check_type(type_)
        match = self.match_one_or_none(type_, criteria, "The conditional delete")
        if match is None:
            return Result(204)
        return self.delete(type_, match.id)

    def create_many(
        self, items: Sequence[tuple[str, dict[str, Any], dict[str, str]]]
    ) -> list[Result]:
        """Create many resources unless the same one exists (bulk ingest; writes.create_many)."""
        return writes.create_many(self.fhir, self.actor, self.tx, items)

    def _write(
        self,
        type_: str,
        id_: str,
        resource: dict[str, Any],
        current: StoredResource | None,
        method: str,
        index: IndexRows | None = None,
    ) -> StoredResource:
        return writes.write(
            self.fhir, self.actor, self.tx, type_, id_, resource, current, method, index
        )

    # -- type and system level --------------------------------------------------------------------

    def search(
        self,
        type_: str,
        params: Sequence[tuple[str, str]],
        *,
        strict: bool = False,
        base: str = "",
    ) -> SearchPage:
        """search: https://hl7.org/fhir/R4/search.html, as a typed page (search_executor.py)."""
        check_type(type_)
        return search(
            self.fhir,
            self.actor.access,
            lambda: self.tx,
            self.keep_search,
            type_,
            params,
            strict=strict,
            base=base,
        )

    def search_type(
        self, type_: str, params: Sequence[tuple[str, str]], base: str, *, strict: bool = False
    ) -> Result:
        """search, answered as a searchset Bundle (the conformance resources' own too)."""
        if type_ in CONFORMANCE_TYPES and self.fhir.conformance is not None:
            return self.fhir.conformance.search(type_, params, base)
        page = self.search(type_, params, strict=strict, base=base)
        return searchset(self.fhir, page, base)

    def history(
        self,
        type_: str | None,
        id_: str | None,
        params: Sequence[tuple[str, str]],
        base: str,
    ) -> Result:
        """history, answered as a history Bundle."""
        page = self.history_page(type_, id_, params)
        return history_bundle(self.fhir.clock, base, page, self._recreated(page.versions))

    def _recreated(self, versions: Sequence[StoredResource]) -> set[tuple[str, str, int]]:
        """The versions of a page that created their resource again after it was deleted (an
        update as create: ``201 Created`` in the history, as it was answered)."""
        on_page = {(v.type, v.id, v.version): v.deleted for v in versions}
        found = set()
        for v in versions:
            if v.deleted or v.version == 1 or v.method != "PUT":
                continue
            before = on_page.get((v.type, v.id, v.version - 1))
            if before is None:
                previous = self.tx.resources.vread(v.type, v.id, v.version - 1)
                before = previous is not None and previous.deleted
            if before:
                found.add((v.type, v.id, v.version))
        return found

    def history_page(
        self, type_: str | None, id_: str | None, params: Sequence[tuple[str, str]]
    ) -> HistoryPage:
        """history (instance, type, system): https://hl7.org/fhir/R4/http.html#history, as a
        typed page."""
        if type_ is not None:
            check_type(type_)
        if id_ is not None:
            check_id(id_)
        count, since, before, kept = parse_history_params(params, self.fhir)
        tx = self.tx
        if id_ is not None and type_ is not None and tx.resources.read(type_, id_) is None:
            raise NotFound(f"{type_}/{id_} is not known")
        versions = tx.resources.history(HistoryQuery(type_, id_, since, before, count + 1))
        return history_page(versions, type_, id_, count, kept, before)


def _lock_key(query: Query) -> str:
    # Criteria print the same whatever order the client wrote them in.
    return "&".join(sorted(repr(c) for c in query.criteria))
