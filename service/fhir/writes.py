"""The write pipeline every interaction shares: version, index, store, check unique
identifiers, tell the listeners, add the Provenance.

The functions work in one open transaction for one ``Actor`` (actor.py). The transaction is
the guarded one when the actor has an access token (guard.py); what the service writes for
itself (the Provenance, the outbox rows of the listeners) goes through the raw one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from service.errors import Conflict, Forbidden, PreconditionFailed
from service.fhir.access import (
    OWNER_ELEMENT,
    owner_of,
    provenance_for,
    provenance_index_values,
    stamp_subscriber,
)
from service.fhir.actor import Actor
from service.fhir.guard import GuardedTransaction
from service.fhir.model import (
    ANY_VERSION,
    dump_json,
    instant,
    new_resource_id,
    parse_json,
    same_content,
    with_meta,
)
from service.fhir.results import Result
from service.fhir.search_index import SearchParameters
from service.fhir.search_parser import SearchParser, escape_value, parse_conditional
from service.storage import IndexRows, StoredResource, Transaction

# the record of an access, and provenance itself, get no Provenance of their own
NO_PROVENANCE_TYPES = frozenset({"Provenance", "AuditEvent"})


@dataclass(frozen=True)
class Change:
    """A resource version just written, seen by listeners inside the writing transaction."""

    type: str
    id: str
    version: int
    content: dict[str, Any] | None  # None for a deletion
    previous: dict[str, Any] | None = None  # the deleted content, for a deletion
    actor: Actor = field(default_factory=Actor.system)  # who wrote it


class ChangeListener(Protocol):
    """Reacts to each write in its transaction (the exchange outbox); may refuse it."""

    def changed(self, tx: Transaction, change: Change) -> None:
        """Add what belongs with the change (outbox rows), or raise a FhirError."""


class WriteHost(Protocol):
    """What the pipeline needs from the FHIR service (``FhirService`` is one)."""

    search_params: SearchParameters
    clock: Callable[[], int]
    listeners: list[ChangeListener]
    unique_identifier_systems: frozenset[str]


def raw_of(tx: Transaction) -> Transaction:
    """The transaction without its guard: for what the service does on its own account."""
    return tx.raw if isinstance(tx, GuardedTransaction) else tx


def tick(host: WriteHost, current: StoredResource | None) -> int:
    """The lastUpdated of the next version, kept increasing per resource."""
    moment = host.clock()
    if current is not None and moment <= current.last_updated_us:
        moment = current.last_updated_us + 1000
    return moment


def next_version(
    host: WriteHost,
    type_: str,
    id_: str,
    resource: dict[str, Any],
    current: StoredResource | None,
    method: str,
) -> tuple[StoredResource, dict[str, Any]]:
    """The next version of a resource, with the server-owned meta, and its content."""
    version = current.version + 1 if current is not None else 1
    moment = tick(host, current)
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


def write(
    host: WriteHost,
    actor: Actor,
    tx: Transaction,
    type_: str,
    id_: str,
    resource: dict[str, Any],
    current: StoredResource | None,
    method: str,
    index: IndexRows | None = None,
) -> StoredResource:
    """Store the next version of a resource (none when nothing changed) with all it brings."""
    if type_ == "Subscription":
        resource = stamp_subscriber(resource, actor.access)
    stored, content = next_version(host, type_, id_, resource, current, method)
    if _unchanged(current, resource):
        # an update that changes nothing is no new version and queues nothing (as HAPI
        # answers one: the current version, not incremented); this also ends any echo of
        # a resource between two servers. It needs the same right as a write.
        assert current is not None
        if isinstance(tx, GuardedTransaction):
            tx.resources.check_put(stored, current.version)
        return current
    tx.resources.put(
        stored,
        current.version if current is not None else None,
        index if index is not None else host.search_params.index(content),
    )
    check_unique_identifiers(host, tx, type_, id_, content, current)
    notify(host, tx, Change(type_, id_, stored.version, content, actor=actor))
    provenance(host, actor, tx, stored, "CREATE" if current is None else "UPDATE")
    return stored


def delete(host: WriteHost, actor: Actor, tx: Transaction, current: StoredResource) -> Result:
    """Store the deletion of the current version ``current``."""
    marker = StoredResource(
        type=current.type,
        id=current.id,
        version=current.version + 1,
        last_updated_us=tick(host, current),
        deleted=True,
        content=None,
        method="DELETE",
    )
    tx.resources.put(marker, current.version)
    previous = parse_json(current.content or "{}")
    notify(host, tx, Change(current.type, current.id, marker.version, None, previous, actor))
    provenance(host, actor, tx, marker, "DELETE")
    return Result(204, stored=marker)


def notify(host: WriteHost, tx: Transaction, change: Change) -> None:
    """Tell the listeners; they work for the service, not for the request's token."""
    raw = raw_of(tx)
    for listener in host.listeners:
        listener.changed(raw, change)


def provenance(
    host: WriteHost, actor: Actor, tx: Transaction, stored: StoredResource, activity: str
) -> None:
    """Add the Provenance of a write made with an access token, in its transaction."""
    access = actor.access
    if access is None or stored.type in NO_PROVENANCE_TYPES or actor.provenance_supplied:
        return
    target = f"{stored.type}/{stored.id}/_history/{stored.version}"
    made = provenance_for(access, target, activity, instant(stored.last_updated_us))
    params = host.search_params
    values = provenance_index_values(made) if params.only_core("Provenance") else None
    index = None if values is None else params.index_values("Provenance", values)
    # written for the service, whatever the token may write itself
    write(host, actor, raw_of(tx), "Provenance", new_resource_id(), made, None, "POST", index)


def check_if_match(
    current: StoredResource | None, type_: str, id_: str, if_match: int | None
) -> None:
    """412 unless ``if_match`` (when given) names the current version, or is ``*`` and the
    resource exists."""
    if if_match is None:
        return
    if if_match == ANY_VERSION:
        if current is None or current.deleted:
            raise PreconditionFailed(f"If-Match is *, but {type_}/{id_} does not exist")
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


def check_if_none_match(
    current: StoredResource | None, type_: str, id_: str, versions: list[int] | None
) -> None:
    """412 when If-None-Match (when given) holds for a write: "*" and the resource exists, or
    the current version is one it names (RFC 9110 section 13.1.2: an update meant as "create
    only if absent" must not overwrite)."""
    if versions is None or current is None or current.deleted:
        return
    if not versions:
        raise PreconditionFailed(
            f"If-None-Match is *, but {type_}/{id_} exists (version {current.version})"
        )
    if current.version in versions:
        raise PreconditionFailed(
            f"If-None-Match names version {current.version}, the current version of {type_}/{id_}"
        )


def _unchanged(current: StoredResource | None, resource: dict[str, Any]) -> bool:
    """Whether ``resource`` is the current version again (meta's server-owned parts aside)."""
    if current is None or current.deleted or current.content is None:
        return False
    return same_content(json.loads(current.content), resource)


# -- bulk create (ingest) ------------------------------------------------------------------------


def create_many(
    host: WriteHost,
    actor: Actor,
    tx: Transaction,
    items: Sequence[tuple[str, dict[str, Any], dict[str, str]]],
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
    raw = raw_of(tx)
    existing: dict[tuple[str, str, str], str] = {}
    for type_, pairs in wanted.items():
        for system in sorted({system for system, _ in pairs}):
            tx.locks.hold(f"{type_}?identifier={system}|")
        for (system, value), id_ in raw.index.find_tokens(type_, "identifier", pairs).items():
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
        held = _held_by(host, raw, key, existing.get(key[:3]))
        if held is not None:
            results.append(Result(200, stored=tx.resources.read(type_, held), location=True))
            continue
        stored, content = next_version(host, type_, new_resource_id(), resource, None, "POST")
        batch.append((stored, host.search_params.index(content)))
        changes.append(Change(type_, stored.id, 1, content, actor=actor))
        pending[key] = Result(201, stored=stored, location=True)
        results.append(pending[key])
    tx.resources.insert_new(batch)
    for change in changes:
        check_unique_identifiers(host, tx, change.type, change.id, change.content)
        notify(host, tx, change)
    return results


def _held_by(
    host: WriteHost,
    raw: Transaction,
    key: tuple[str, str, str, str | None],
    candidate: str | None,
) -> str | None:
    """The current resource of ``key``'s type holding its identifier about its patient.

    ``candidate`` is one resource holding the identifier (about anyone); only when it is
    another patient's is the store asked again, for the patient's own."""
    if candidate is None:
        return None
    type_, system, value, owner = key
    if type_ == "Patient":
        return candidate
    found = raw.resources.read(type_, candidate)
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
    query = parse_conditional(SearchParser(host.search_params), type_, criteria)
    for found_type, found_id in raw.searches.keys(query, 1):
        return found_id if found_type == type_ else None
    return None


# -- identifiers no two Patients may share ------------------------------------------------------


def check_unique_identifiers(
    host: WriteHost,
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
        if system in host.unique_identifier_systems and isinstance(value, str):
            held.setdefault((system, value), index)
    if not held:
        return
    raw = raw_of(tx)
    if isinstance(tx, GuardedTransaction):
        _keep_patients_own_numbers(tx, held, replaced)
    parser = SearchParser(host.search_params)
    for (system, value), index in sorted(held.items()):
        criteria = f"identifier={escape_value(system)}|{escape_value(value)}"
        raw.locks.hold(f"Patient?{criteria}")
        query = parse_conditional(parser, "Patient", criteria)
        if any(key != ("Patient", id_) for key in raw.searches.keys(query, 2)):
            raise Conflict(
                f"Another Patient already has the identifier {system}|{value}; "
                f"no two Patients may share an identifier of {system}",
                expression=(f"Patient.identifier[{index}]",),
            )


def _keep_patients_own_numbers(
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
