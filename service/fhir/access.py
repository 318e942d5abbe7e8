"""Who may do what: SMART on FHIR scopes, the patient compartment, and the one place they are
enforced (every transaction the FHIR core opens for a request).

Scopes follow SMART App Launch 2.x (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
``patient/Goal.rs``, ``user/*.cruds``, ``system/Observation.read`` (v1 ``read`` is ``rs``, v1
``write`` is ``cud``, ``*`` is all). A ``patient/`` grant counts only inside the compartment of
the token's ``patient`` (R4 CompartmentDefinition patient,
https://hl7.org/fhir/R4/compartmentdefinition-patient.html); ``user/`` and ``system/`` grants
reach every patient. The access of a request travels with its ``Actor`` (actor.py); with none
(the embedded ``none`` mode, the CLI, the outbox worker) nothing is restricted. The guard that
enforces it on a transaction is guard.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from service.errors import Forbidden
from service.storage import (
    Criterion,
    HasCriterion,
    IdCriterion,
    Match,
    ParamCriterion,
    Query,
    ReferenceMatch,
    ReferenceRow,
)

PERMISSIONS = "cruds"
V1_PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)$")

# R4 CompartmentDefinition patient: the parameters that put a resource in a patient's compartment
COMPARTMENT_PARAMS: dict[str, tuple[str, ...]] = {
    "Goal": ("patient",),
    "List": ("subject", "source"),
    "Observation": ("subject", "performer"),
    "QuestionnaireResponse": ("subject", "author"),
    "Provenance": ("patient",),
    "Patient": ("link",),
}
# the parameter a patient-restricted search is narrowed with (a subset of the compartment)
SEARCH_NARROWING = {
    "Goal": "patient",
    "List": "patient",
    "Observation": "patient",
    "QuestionnaireResponse": "patient",
    "Provenance": "patient",
    "Patient": "_id",
}
ADMINISTRATIVE_TYPES = frozenset({"AuditEvent"})
# definitional resources no patient owns: a patient/ grant may read them
SHARED_TYPES = frozenset({"Questionnaire"})


@dataclass(frozen=True)
class Grant:
    """One scope: a context (patient, user, system), a type or ``*``, and permissions."""

    context: str
    type: str
    permissions: frozenset[str]

    def covers(self, type_: str, permission: str) -> bool:
        """Whether the grant allows ``permission`` (one of c r u d s) on ``type_``."""
        return (self.type in ("*", type_)) and permission in self.permissions


def parse_scopes(text: str) -> tuple[Grant, ...]:
    """The resource grants in a space-separated scope string; other scopes are ignored.

    A v2 scope with a query (``patient/Observation.rs?category=...``) narrows what it grants;
    this service cannot honour the narrowing yet, so such a scope grants nothing rather than
    more than it says.
    """
    grants = []
    # RFC 6749 section 3.3: tokens are separated by spaces (%x20) and hold no other whitespace;
    # a token with a tab or a no-break space in it is no scope at all, never two
    for scope in text.split(" "):
        match = _SCOPE.fullmatch(scope)
        if match is None:
            continue
        context, type_, perms = match.groups()
        if perms in V1_PERMISSIONS:
            letters = V1_PERMISSIONS[perms]
        elif perms and all(p in PERMISSIONS for p in perms) and _in_order(perms):
            letters = perms
        else:
            continue
        grants.append(Grant(context, type_, frozenset(letters)))
    return tuple(grants)


def _in_order(perms: str) -> bool:
    positions = [PERMISSIONS.index(p) for p in perms]
    return positions == sorted(set(positions))


@dataclass(frozen=True)
class Access:
    """What the request's token allows: its grants, launch patient, and who it is."""

    grants: tuple[Grant, ...]
    patient: str | None = None
    subject: str | None = None
    client_id: str | None = None
    scopes: str = ""
    issuer: str | None = None
    fhir_user: str | None = None  # the fhirUser claim: the user's own FHIR resource URL

    def reach(self, type_: str, permission: str) -> str | None:
        """Whose data ``permission`` on ``type_`` reaches: None for every patient's, else the
        launch patient's id. Raise Forbidden when no scope allows it at all."""
        if type_ in ADMINISTRATIVE_TYPES:
            # the audit trail is read by administrators (system/ scopes) and never rewritten
            if permission in "rs" and any(
                g.context == "system" and g.covers(type_, permission) for g in self.grants
            ):
                return None
            raise Forbidden(
                f"{type_} is the audit trail: a system/{type_}.rs (or system/*) scope reads it; "
                "nobody writes it but this server"
            )
        if any(g.context != "patient" and g.covers(type_, permission) for g in self.grants):
            return None
        if self.patient and any(
            g.context == "patient" and g.covers(type_, permission) for g in self.grants
        ):
            return self.patient
        raise Forbidden(_denied(type_, permission, self.patient))

    def allows(self, type_: str, permission: str) -> bool:
        """Whether any scope allows ``permission`` on ``type_`` (for some patient)."""
        try:
            self.reach(type_, permission)
        except Forbidden:
            return False
        return True


def _denied(type_: str, permission: str, patient: str | None) -> str:
    names = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
    where = f" (patient context {patient})" if patient else ""
    return f"The access token's scopes do not allow {names[permission]} on {type_}{where}"


# -- the compartment -----------------------------------------------------------------------------

# the reference rows of the named parameters of a resource (SearchParameters.references)
References = Callable[[dict[str, Any], Sequence[str]], list[ReferenceRow]]


def patients_of(
    type_: str, content: dict[str, Any], references: References, read: Callable[[str, str], Any]
) -> set[str]:
    """The patients whose compartment holds the resource (R4 CompartmentDefinition patient).

    A Provenance also belongs to the patients of the resources it is about (one level), so a
    patient sees the provenance of their own goals.
    """
    found: set[str] = set()
    if type_ == "Subscription":  # a patient's own Subscription (see stamp_subscriber)
        creator = subscriber_access(content)
        return {creator.patient} if creator is not None and creator.patient else found
    if type_ == "Patient" and isinstance(content.get("id"), str):
        found.add(content["id"])
    params = COMPARTMENT_PARAMS.get(type_, ())
    # only the compartment's parameters are evaluated, not the whole search index
    rows = references(content, (*params, "target") if type_ == "Provenance" else params)
    for row in rows:
        if row.target_type == "Patient" and row.target_id and row.param in params:
            found.add(row.target_id)
    if type_ == "Provenance":
        for row in rows:
            if (
                row.param == "target"
                and row.target_type not in (None, "Patient", "Provenance")
                and row.target_id
            ):
                target = read(row.target_type, row.target_id)
                if isinstance(target, dict):
                    found |= patients_of(row.target_type, target, references, read)
    return found


def require_population_write(access: Access | None, operation: str) -> None:
    """Refuse ``operation`` (a bulk write whose input names its own patients, such as
    ``$ingest``) unless the request's token holds a user/ or system/ write scope."""
    if access is None:
        return
    if not any(g.context != "patient" and "c" in g.permissions for g in access.grants):
        raise Forbidden(
            f"{operation} writes for whichever patients its input names; it needs a user/ or "
            "system/ scope that allows create (a patient/ scope is not enough)"
        )


# -- subscriptions: a Subscription carries its creator's access ------------------------------

# a server-owned extension on each Subscription written with a token: the scopes, launch
# patient and client of whoever wrote it; notifications carry only what that access may read
SUBSCRIBER_ACCESS_URL = "http://whatmatters.example/fhir/StructureDefinition/subscriber-access"


def stamp_subscriber(resource: dict[str, Any], access: Access | None) -> dict[str, Any]:
    """The Subscription as a request with ``access`` writes it: whatever access a client
    claimed in it replaced by the request's own (unchanged when no token acts, e.g. the
    server's own status changes)."""
    if access is None:
        return resource
    kept = [
        e
        for e in resource.get("extension") or []
        if not (isinstance(e, dict) and e.get("url") == SUBSCRIBER_ACCESS_URL)
    ]
    parts: list[dict[str, Any]] = [{"url": "scope", "valueString": access.scopes or "-"}]
    if access.patient:
        parts.append({"url": "patient", "valueString": access.patient})
    if access.client_id:
        parts.append({"url": "client", "valueString": access.client_id})
    stamped = {k: v for k, v in resource.items() if k != "extension"}
    stamped["extension"] = [*kept, {"url": SUBSCRIBER_ACCESS_URL, "extension": parts}]
    return stamped


def subscriber_access(resource: dict[str, Any]) -> Access | None:
    """The access a Subscription was written with, or None when it was written without a
    token (the embedded ``none`` mode: nothing is restricted)."""
    for extension in resource.get("extension") or []:
        if isinstance(extension, dict) and extension.get("url") == SUBSCRIBER_ACCESS_URL:
            parts = {
                p.get("url"): p.get("valueString")
                for p in extension.get("extension") or []
                if isinstance(p, dict) and isinstance(p.get("valueString"), str)
            }
            scopes = parts.get("scope") or ""
            return Access(
                grants=parse_scopes(scopes),
                patient=parts.get("patient"),
                client_id=parts.get("client"),
                scopes=scopes,
            )
    return None


def require_reads(access: Access | None, types: Sequence[str], what: str) -> None:
    """Refuse ``what`` unless ``access`` (None: unrestricted) may read every one of ``types``."""
    if access is None:
        return
    missing = [t for t in types if not access.allows(t, "r")]
    if missing:
        raise Forbidden(
            f"{what} needs read access to {', '.join(missing)}: the access token's scopes do "
            "not allow reading what it would be sent"
        )


# -- ownership: what a patient-context token may write ----------------------------------------

# the element naming the patient a resource is about (the compartment's subject parameter);
# the other ways into the compartment (performer, author, source, ...) make nobody its owner
OWNER_ELEMENT = {
    "Goal": "subject",
    "List": "subject",
    "Observation": "subject",
    "QuestionnaireResponse": "subject",
}
MAX_PROVENANCE_DEPTH = 3  # a Provenance of a Provenance of ... is followed this far


def ownership_problem(
    type_: str,
    resource: dict[str, Any],
    patient: str,
    read: Callable[[str, str], dict[str, Any] | None],
    depth: int = 0,
) -> tuple[str, str] | None:
    """Why ``resource`` is not ``patient``'s own, as (FHIRPath of the element, reason), or
    None when it is: its subject is that Patient, it is that Patient, or (a Provenance) every
    target is that Patient or one of that patient's own resources.

    Only local references count: a reference to another server's Patient names somebody else.
    """
    if type_ == "Patient":
        if resource.get("id") != patient:
            return "Patient.id", f"a Patient other than Patient/{patient} is not theirs to write"
        return None
    if type_ == "Provenance":
        return _provenance_problem(resource, patient, read, depth)
    if type_ == "Subscription":
        # a patient's Subscription is the one written with that patient's token
        creator = subscriber_access(resource)
        if creator is None or creator.patient != patient:
            return "Subscription", f"a Subscription not made for Patient/{patient} is not theirs"
        return None
    element = OWNER_ELEMENT.get(type_)
    if element is None:
        return type_, f"a {type_} belongs to no patient"
    where = f"{type_}.{element}"
    if owner_of(type_, resource) != patient:
        return where, f"{where} must be Patient/{patient}"
    return None


def other_patient_named(
    type_: str, resource: dict[str, Any], patient: str, references: References
) -> tuple[str, str] | None:
    """Where ``resource`` names a Patient other than ``patient`` by a parameter of the patient
    compartment (R4 CompartmentDefinition patient: Observation.performer, List.source,
    QuestionnaireResponse.author, Patient.link), as (FHIRPath of the parameter, reason), or
    None. Written with ``patient``'s token, such a resource would appear in the other
    patient's record."""
    params = COMPARTMENT_PARAMS.get(type_, ())
    for row in references(resource, params):
        if row.param in params and row.target_type == "Patient" and row.target_id != patient:
            where = f"{type_}.{row.param}"
            return where, (
                f"{where} names Patient/{row.target_id}: a resource written for Patient/"
                f"{patient} may not place itself in another patient's record"
            )
    return None


def owner_of(type_: str, resource: dict[str, Any]) -> str | None:
    """The id of the Patient a resource is about (its subject, or itself), or None."""
    if type_ == "Patient":
        id_ = resource.get("id")
        return id_ if isinstance(id_, str) else None
    element = OWNER_ELEMENT.get(type_)
    return _local_patient(resource.get(element)) if element else None


def _provenance_problem(
    resource: dict[str, Any],
    patient: str,
    read: Callable[[str, str], dict[str, Any] | None],
    depth: int,
) -> tuple[str, str] | None:
    targets = resource.get("target")
    if not isinstance(targets, list) or not targets:
        return "Provenance.target", "a Provenance must name what it is about"
    for index, target in enumerate(targets):
        where = f"Provenance.target[{index}]"
        local = _local_reference(target)
        if local is None:
            return where, f"{where} must be a local reference to one of the patient's resources"
        target_type, target_id = local
        if target_type == "Patient":
            if target_id != patient:
                return where, f"{where} must be Patient/{patient} or one of their resources"
            continue
        found = read(target_type, target_id) if depth < MAX_PROVENANCE_DEPTH else None
        if found is None or ownership_problem(target_type, found, patient, read, depth + 1):
            # the same answer whether the target is missing or somebody else's
            return where, f"{where} must be Patient/{patient} or one of their resources"
    return None


def _local_reference(value: Any) -> tuple[str, str] | None:
    """(type, id) of a local literal reference (``Type/id`` or ``Type/id/_history/n``)."""
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        return None
    pieces = value["reference"].split("/_history/", 1)[0].split("/")
    if len(pieces) != 2 or "://" in value["reference"] or not all(pieces):
        return None
    return pieces[0], pieces[1]


def _local_patient(value: Any) -> str | None:
    local = _local_reference(value)
    return local[1] if local is not None and local[0] == "Patient" else None


def narrowed(
    access: Access, type_: str, params: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The search's parameters, narrowed to the launch patient where only a patient/ grant
    allows the search (the store then never even counts another patient's resources)."""
    patient = access.reach(type_, "s")
    if patient is None or type_ in SHARED_TYPES:
        return list(params)
    narrowing = SEARCH_NARROWING.get(type_)
    if narrowing is None:
        raise Forbidden(
            f"{type_} is not in a patient's compartment; a patient/ scope cannot search it"
        )
    value = patient if narrowing == "_id" else f"Patient/{patient}"
    return [*params, (narrowing, value)]


def confined(access: Access, query: Query) -> Query:
    """The query with every chained and reverse-chained (_has) criterion evaluated only over
    resources the access may search: the chained type must be searchable (else Forbidden, as a
    search of that type is), and a patient/ grant narrows it to the launch patient. So no
    answer, count or total depends on what the token cannot read."""
    return replace(query, criteria=_confine_all(access, query.criteria))


def _confine_all(access: Access, criteria: Sequence[Criterion]) -> tuple[Criterion, ...]:
    return tuple(_confine(access, criterion) for criterion in criteria)


def _confine(access: Access, criterion: Criterion) -> Criterion:
    if isinstance(criterion, HasCriterion):
        name = f"_has:{criterion.source_type}:{criterion.param}"
        inner = _confine_all(access, criterion.criteria)
        narrowing = _narrowing(access, criterion.source_type, name)
        return replace(criterion, criteria=(*inner, *narrowing))
    if not isinstance(criterion, ParamCriterion) or criterion.kind != "reference":
        return criterion
    matches: list[Match] = []
    refused: Forbidden | None = None
    for match in criterion.matches:
        if not isinstance(match, ReferenceMatch) or not match.chain:
            matches.append(match)
            continue
        try:
            narrowing = _narrowing(access, match.types[0], criterion.param)
        except Forbidden as exc:
            # a chain without a type modifier tries every target type; unreadable ones drop out
            refused = exc
            continue
        chain = (*_confine_all(access, match.chain), *narrowing)
        matches.append(replace(match, chain=chain))
    if not matches:
        assert refused is not None
        raise refused
    return replace(criterion, matches=tuple(matches))


def _narrowing(access: Access, type_: str, name: str) -> tuple[Criterion, ...]:
    """The criteria that keep a chained search of ``type_`` inside what the access may read."""
    try:
        patient = access.reach(type_, "s")
    except Forbidden as exc:
        raise Forbidden(
            f"{name} searches {type_}, which the access token's scopes do not allow searching",
            expression=(name,),
        ) from exc
    if patient is None or type_ in SHARED_TYPES:
        return ()
    narrowing = SEARCH_NARROWING.get(type_)
    if narrowing is None:
        raise Forbidden(
            f"{name} searches {type_}, which is not in a patient's compartment; a patient/ "
            "scope cannot search it",
            expression=(name,),
        )
    if narrowing == "_id":
        return (IdCriterion((patient,)),)
    target = ReferenceMatch(target_type="Patient", target_id=patient)
    return (ParamCriterion("reference", narrowing, (target,)),)


PROVENANCE_ACTIVITY = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def agent_reference(access: Access) -> dict[str, Any]:
    """Who acts, as a FHIR Reference: the fhirUser, else the token's subject at its issuer,
    else the client."""
    if access.fhir_user:
        return {"reference": access.fhir_user}
    if access.subject:
        return {
            "identifier": {
                "system": access.issuer or "urn:whatmatters:token",
                "value": access.subject,
            },
            "display": access.subject,
        }
    return {"display": access.client_id or "unknown client"}


def provenance_for(access: Access, target: str, activity: str, recorded: str) -> dict[str, Any]:
    """The Provenance of one write made with ``access`` (R4 provenance.html): the version
    written, when, the data operation, the author (the token's user) and the client app."""
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author"}]},
            "who": agent_reference(access),
        }
    ]
    if access.client_id:
        agents.append(
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "enterer"}]},
                "who": {"display": f"client {access.client_id}"},
            }
        )
    return {
        "resourceType": "Provenance",
        "target": [{"reference": target}],
        "recorded": recorded,
        "activity": {"coding": [{"system": PROVENANCE_ACTIVITY, "code": activity}]},
        "agent": agents,
    }


def provenance_index_values(made: dict[str, Any]) -> list[tuple[str, Any, str | None]] | None:
    """What each R4 Provenance search parameter finds in a Provenance of the shape
    ``provenance_for`` makes, as (parameter code, value, required target type), for
    ``SearchParameters.index_values``; None for any other shape (index it the general way).
    Every write with a token adds one, so its rows are made without running the parameters'
    expressions (tests/fhir/test_audit_index.py compares the rows both ways)."""
    if not _PROVENANCE_KEYS.issuperset(made) or not _SERVER_META.issuperset(made.get("meta", {})):
        return None
    values: list[tuple[str, Any, str | None]] = [("recorded", made.get("recorded"), None)]
    for target in made.get("target", []):
        values.extend((("target", target, None), ("patient", target, "Patient")))
    for agent in made.get("agent", []):
        if not isinstance(agent, dict) or not _PROVENANCE_AGENT_KEYS.issuperset(agent):
            return None
        values.extend((("agent", agent.get("who"), None), ("agent-type", agent.get("type"), None)))
    return [(code, value, target) for code, value, target in values if value is not None]


# what provenance_for writes, and so all that provenance_index_values reads
_PROVENANCE_KEYS = frozenset(
    {"resourceType", "id", "meta", "target", "recorded", "activity", "agent"}
)
_PROVENANCE_AGENT_KEYS = frozenset({"type", "who"})
_SERVER_META = frozenset({"versionId", "lastUpdated"})
