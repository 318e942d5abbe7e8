"""The one place access is enforced: a Transaction wrapper whose resources let through only
what an ``Access`` (access.py) allows, noting each resource they let by for the request's
AuditEvent.

Every transaction a session opens for an actor with an access token is wrapped in it. Only
``tx.resources`` is guarded: every resource leaves the store and enters it there. The other
parts (index, searches, outbox, counters, jobs, locks) hand out keys, counts and the service's
own bookkeeping, never a resource, and are the raw transaction's.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from service.errors import Forbidden
from service.fhir.access import (
    SHARED_TYPES,
    Access,
    References,
    other_patient_named,
    ownership_problem,
    patients_of,
)
from service.storage import (
    Counters,
    HistoryQuery,
    Index,
    IndexRows,
    Jobs,
    Key,
    Locks,
    Outbox,
    Query,
    Resources,
    Searches,
    StoredResource,
    Transaction,
    Window,
)

MAX_TOUCHED = 200


def touch(touched: list[tuple[str, str]], type_: str, id_: str) -> None:
    """Note that the request read or wrote ``type_/id_`` (first ones first, at most 200)."""
    if len(touched) < MAX_TOUCHED and (type_, id_) not in touched:
        touched.append((type_, id_))


class GuardedTransaction:
    """A Transaction whose resources let through only what the request's access allows."""

    def __init__(
        self,
        tx: Transaction,
        access: Access,
        references: References,
        touched: list[tuple[str, str]] | None = None,
    ) -> None:
        self.raw = tx
        self.access = access
        self.touched = touched if touched is not None else []
        self.resources = GuardedResources(tx.resources, access, references, self.touched)

    @property
    def index(self) -> Index:
        """The raw index: keys only; what they name is read through ``resources``."""
        return self.raw.index

    @property
    def searches(self) -> Searches:
        """The raw searches: keys and counts of queries the session has confined."""
        return self.raw.searches

    @property
    def outbox(self) -> Outbox:
        """The raw outbox."""
        return self.raw.outbox

    @property
    def counters(self) -> Counters:
        """The raw counters."""
        return self.raw.counters

    @property
    def jobs(self) -> Jobs:
        """The raw job progress."""
        return self.raw.jobs

    @property
    def locks(self) -> Locks:
        """The raw locks."""
        return self.raw.locks


class GuardedResources:
    """Resources that let through only what the request's access allows.

    Every resource leaving the store (read, vread, read_many, history) and every version going
    in (put, insert_new) is checked: its type against the scopes, and, for a patient-context
    grant, its compartment against the launch patient. Anything else raises Forbidden, so no
    door (search, _include, chains, history, Bundles, operations) can reach around it.
    """

    def __init__(
        self,
        raw: Resources,
        access: Access,
        references: References,
        touched: list[tuple[str, str]],
    ) -> None:
        self.raw = raw
        self.access = access
        self._references = references
        self.touched = touched

    # -- reading -------------------------------------------------------------------------------

    def read(self, type_: str, id_: str) -> StoredResource | None:
        """Return the current version, if the access may see it."""
        return self._seen(self.raw.read(type_, id_))

    def vread(self, type_: str, id_: str, version: int) -> StoredResource | None:
        """Return one version, if the access may see it."""
        return self._seen(self.raw.vread(type_, id_, version))

    def read_many(self, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
        """Return current versions, each checked."""
        return [r for r in (self._seen(s) for s in self.raw.read_many(keys)) if r is not None]

    def read_visible(self, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
        """Return the current versions the access may see, leaving the others out silently
        (_include and _revinclude: whether an unreadable target exists must not show)."""
        visible = []
        for stored in self.raw.read_many(keys):
            try:
                seen = self._seen(stored)
            except Forbidden:
                continue
            if seen is not None:
                visible.append(seen)
        return visible

    def matching(
        self, query: Query, limit: int, window: Window
    ) -> tuple[list[StoredResource], bool]:
        """Return a page of a search's matches, each checked (the search was confined to the
        access already; this is the store's door all the same)."""
        found, more = self.raw.matching(query, limit, window)
        return [r for r in (self._seen(s) for s in found) if r is not None], more

    def current_keys(self, after: Key | None, limit: int) -> list[Key]:
        """Return current keys (keys only: what they name is read through the guard)."""
        return self.raw.current_keys(after, limit)

    def history(self, query: HistoryQuery) -> list[StoredResource]:
        """Return versions, each checked; a patient-context token sees only instance history."""
        reach = self._reach_any(query.type or "*", ("r", "s"))
        if reach is not None and query.id is None:
            raise Forbidden(
                "History of a whole type or of the system is not open to a patient-context "
                "token; ask for one resource's history"
            )
        return [r for r in (self._seen(s) for s in self.raw.history(query)) if r is not None]

    def read_to_change(self, type_: str, id_: str, permission: str) -> StoredResource | None:
        """The current version, for a request that means to update ("u") or delete ("d")
        it: given if the access may make that change to it, whether or not it may read it
        (SMART's permissions are separate: patient/Goal.u updates without .r)."""
        return self._seen(self.raw.read(type_, id_), (permission,))

    def _seen(
        self, stored: StoredResource | None, permissions: Sequence[str] = ("r", "s")
    ) -> StoredResource | None:
        if stored is None:
            return None
        touch(self.touched, stored.type, stored.id)
        reach = self._reach_any(stored.type, permissions)
        if reach is None:
            return stored
        if stored.content is None:  # a deletion: whose it was is in the version before
            before = self.raw.vread(stored.type, stored.id, stored.version - 1)
            if before is not None and before.content is not None:
                self._check_compartment(stored.type, before.content, reach)
            return stored
        self._check_compartment(stored.type, stored.content, reach)
        return stored

    # -- writing -------------------------------------------------------------------------------

    def put(
        self, resource: StoredResource, replaces: int | None, index: IndexRows | None = None
    ) -> None:
        """Store a new version, if the access may write it (and the version it replaces)."""
        self.check_put(resource, replaces)
        self.raw.put(resource, replaces, index)

    def check_put(self, resource: StoredResource, replaces: int | None) -> None:
        """Raise unless the access may store this version: ``put`` checks the same, and an
        update that changes nothing (so stores nothing) needs the same right."""
        permission = "d" if resource.deleted else "c" if replaces is None else "u"
        touch(self.touched, resource.type, resource.id)
        reach = self.access.reach(resource.type, permission)
        if reach is not None:
            if replaces is not None:
                before = self.raw.vread(resource.type, resource.id, replaces)
                if before is not None and before.content is not None:
                    verb = "delete" if resource.deleted else "update"
                    self._check_owner(resource.type, before.content, reach, verb)
            if resource.content is not None:
                self._check_owner(resource.type, resource.content, reach, "write")

    def insert_new(self, items: Sequence[tuple[StoredResource, IndexRows]]) -> None:
        """Store many first versions, each checked."""
        for stored, _ in items:
            touch(self.touched, stored.type, stored.id)
            reach = self.access.reach(stored.type, "c")
            if reach is not None and stored.content is not None:
                self._check_owner(stored.type, stored.content, reach, "write")
        self.raw.insert_new(items)

    # -- helpers -------------------------------------------------------------------------------

    def _reach_any(self, type_: str, permissions: Sequence[str]) -> str | None:
        problem: Forbidden | None = None
        reaches: list[str | None] = []
        for permission in permissions:
            try:
                reaches.append(self.access.reach(type_, permission))
            except Forbidden as exc:
                problem = exc
        if not reaches:
            assert problem is not None
            raise problem
        return None if None in reaches else reaches[0]

    def _check_compartment(self, type_: str, content: str, patient: str) -> None:
        if type_ in SHARED_TYPES:
            return
        resource = json.loads(content)
        if patient not in patients_of(type_, resource, self._references, self._read_json):
            # the message names no resource: it may be one the request did not name itself
            raise Forbidden(
                f"A {type_} outside the compartment of Patient/{patient}, the patient this "
                "access token is for, was asked for; nothing of it is returned"
            )

    def _check_owner(self, type_: str, content: str, patient: str, verb: str) -> None:
        if type_ in SHARED_TYPES:
            return
        resource = json.loads(content)
        problem = ownership_problem(type_, resource, patient, self._read_json)
        if problem is None:
            problem = other_patient_named(type_, resource, patient, self._references)
        if problem is not None:
            where, why = problem
            raise Forbidden(
                f"A patient-context access token may {verb} only Patient/{patient}'s own "
                f"resources: {why}",
                expression=(where,),
            )

    def _read_json(self, type_: str, id_: str) -> dict[str, Any] | None:
        stored = self.raw.read(type_, id_)
        if stored is None or stored.content is None:
            return None
        loaded: dict[str, Any] = json.loads(stored.content)
        return loaded


def read_to_change(tx: Transaction, type_: str, id_: str, permission: str) -> StoredResource | None:
    """The current version of a resource the request means to update ("u") or delete ("d"),
    checked for that change rather than for reading (``GuardedResources.read_to_change``)."""
    if isinstance(tx.resources, GuardedResources):
        return tx.resources.read_to_change(type_, id_, permission)
    return tx.resources.read(type_, id_)


def read_visible(tx: Transaction, keys: Sequence[tuple[str, str]]) -> list[StoredResource]:
    """The current versions of ``keys`` the transaction's access may see; the rest left out."""
    if isinstance(tx.resources, GuardedResources):
        return tx.resources.read_visible(keys)
    return tx.resources.read_many(keys)
