"""The two what-matters operations over the FHIR core.

- ``$record-what-matters`` (``POST /fhir/Patient/{id}/$record-what-matters``, or
  ``POST /fhir/Patient/$record-what-matters`` with ``patient-identifier``)
- ``$what-matters`` (``GET /fhir/Patient/{id}/$what-matters[?history=true][&since=instant]``):
  every source gathered into one item per thing said (``items.py``)

Both are described by OperationDefinitions in ``profiles/``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from service.errors import (
    FhirError,
    Forbidden,
    Issue,
    NotFound,
    PreconditionFailed,
    Unprocessable,
)
from service.fhir.access import owner_of
from service.fhir.actor import Actor
from service.fhir.bundles import process_bundle
from service.fhir.interactions import FhirService
from service.fhir.model import instant, now_us, parse_instant, parse_json
from service.fhir.results import Result
from service.fhir.session import Session
from service.priorities.codes import (
    LOINC,
    PCO_CONCEPTS,
    PRIORITIES_CODE,
    STATEMENT_CODES,
    STATEMENT_PROFILES,
)
from service.priorities.conversation import Conversation, parse_conversation
from service.priorities.items import Item, gather, plain_reference, reference_of
from service.priorities.merged import Change, compare, merged_list
from service.priorities.record import (
    build_transaction,
    goal_status_updates,
    item_identifier,
    list_entries,
    list_identifier,
    ranking_order,
    token,
)
from service.storage import StoredResource

ATTEMPTS = 3  # a List updated by two conversations at once: the loser reads it again


class WhatMatters:
    """Record conversations and serve merged, ranked priorities."""

    def __init__(self, fhir: FhirService, clock: Callable[[], int] = now_us) -> None:
        self.fhir = fhir
        self.clock = clock

    # -- $record-what-matters ---------------------------------------------------------------

    def record(self, actor: Actor, patient_id: str | None, body: Any, base: str) -> Result:
        """Record one conversation in one transaction; 422 naming the input on any problem."""
        conversation = parse_conversation(body)
        with self.fhir.session(actor) as session:
            patient_id = self.patient_id(session, patient_id, conversation)
            _check_stored_references(session, conversation, patient_id)
        for attempt in range(ATTEMPTS):
            with self.fhir.session(actor) as session:
                current = self._current_list(session, patient_id, conversation, base)
                found = self._stored_items(session, conversation, patient_id, base)
            now = instant(self.clock())
            updates = goal_status_updates(conversation, found, (conversation.recorded or now)[:10])
            unchanged = None if updates else self._unchanged(conversation, found, current, base)
            if unchanged is not None:
                return unchanged
            known = {key: f"{r['resourceType']}/{r['id']}" for key, r in found.items()}
            bundle, origins = build_transaction(
                conversation, patient_id, now, current, known, updates
            )
            try:
                # the Bundle holds the recorder's Provenance: no other is added
                recorder = actor.supplying_provenance()
                return process_bundle(self.fhir, recorder, bundle, base, "representation")
            except PreconditionFailed:
                if attempt == ATTEMPTS - 1:
                    raise
            except FhirError as error:
                if error.status not in (400, 422):
                    raise
                raise _named_after_input(error, origins) from error
        raise AssertionError("unreachable")  # pragma: no cover

    def _stored_items(
        self, session: Session, conversation: Conversation, patient_id: str, base: str
    ) -> dict[str, dict[str, Any]]:
        """The statements and goals of the conversation that are stored already, by key."""
        found: dict[str, dict[str, Any]] = {}
        for item in conversation.items:
            identifier = item_identifier(item, patient_id, conversation.setting)
            type_ = "Observation" if item.kind == "statement" else "Goal"
            # only the patient's own: a resource of another patient's record under the same
            # identifier is not this one (and must never be updated into this record)
            criteria = [("identifier", token(identifier)), ("patient", f"Patient/{patient_id}")]
            matches = self._search(session, type_, criteria, base)
            if len(matches) == 1:
                found[item.key] = matches[0]
        return found

    def _unchanged(
        self,
        conversation: Conversation,
        found: dict[str, dict[str, Any]],
        current: dict[str, Any] | None,
        base: str,
    ) -> Result | None:
        """The answer, when every item exists already and the ranking would not change.

        Recording the same conversation again then writes nothing: no new List version and
        no new Provenance (a retry after a lost response is harmless).
        """
        if current is None or len(found) != len(conversation.items):
            return None
        refs = {key: f"{r['resourceType']}/{r['id']}" for key, r in found.items()}
        if ranking_order(conversation, refs, current) != list_entries(current):
            return None
        entries = [
            {
                "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
                "resource": r,
                "response": {
                    "status": "200 OK",
                    "location": f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}",
                    "etag": f'W/"{r["meta"]["versionId"]}"',
                    "lastModified": r["meta"]["lastUpdated"],
                },
            }
            for r in [*found.values(), current]
        ]
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "transaction-response",
            "meta": {"lastUpdated": instant(self.clock())},
            "entry": entries,
        }
        return Result(200, body=bundle)

    def patient_id(
        self, session: Session, patient_id: str | None, conversation: Conversation
    ) -> str:
        """The id of the patient: from the URL, or found by ``patient-identifier``."""
        identifier = conversation.patient_identifier
        if patient_id is not None:
            session.read("Patient", patient_id)  # 404 or 410 when there is no such patient
            if identifier is not None:
                # both the URL and the input name a patient: they must be the same one, or
                # whose conversation it is cannot be told
                named = self._patient_by_identifier(session, identifier)
                if named != patient_id:
                    raise Unprocessable(
                        f"'patient-identifier' names another patient than Patient/{patient_id} "
                        "of the URL",
                        expression=("Parameters.parameter",),
                    )
            return patient_id
        if identifier is None:
            raise Unprocessable(
                "Say whose conversation this is: POST to Patient/{id}/$record-what-matters, "
                "or give 'patient-identifier'",
                expression=("Parameters",),
            )
        return self._patient_by_identifier(session, identifier)

    def patient_by_identifier(self, actor: Actor, identifier: dict[str, Any]) -> str:
        """The id of the one Patient with ``identifier``: 404 for none, 422 for several."""
        with self.fhir.session(actor) as session:
            return self._patient_by_identifier(session, identifier)

    def _patient_by_identifier(self, session: Session, identifier: dict[str, Any]) -> str:
        found = self._search(session, "Patient", [("identifier", token(identifier))], "")
        shown = f"{identifier.get('system', '')}|{identifier['value']}"
        if not found:
            raise NotFound(f"No Patient has the identifier {shown}; create the Patient first")
        if len(found) > 1:
            raise Unprocessable(
                f"{len(found)} Patients have the identifier {shown}; it must name one patient",
                expression=("Parameters.parameter",),
            )
        return str(found[0]["id"])

    def _current_list(
        self, session: Session, patient_id: str, conversation: Conversation, base: str
    ) -> dict[str, Any] | None:
        identifier = list_identifier(patient_id, conversation.setting)
        criteria = [("identifier", token(identifier)), ("subject", f"Patient/{patient_id}")]
        found = self._search(session, "List", criteria, base)
        return found[0] if found else None

    # -- $what-matters --------------------------------------------------------------------

    def what_matters(
        self, actor: Actor, patient_id: str, history: bool, base: str, since: int | None = None
    ) -> Result:
        """The patient's merged priorities: a Bundle of the merged List and what it names.

        With ``since`` (microseconds), each entry of the merged List is marked new or changed
        since then, and items gone since then are added, marked removed.
        """
        with self.fhir.session(actor) as session:
            return self._what_matters(session, patient_id, history, base, since)

    def _what_matters(
        self, session: Session, patient_id: str, history: bool, base: str, since: int | None
    ) -> Result:
        patient = session.read("Patient", patient_id).stored
        assert patient is not None
        lists, resources, provenances = self._sources(session, patient_id, base)
        items = gather(lists, resources, provenances, self.fhir.instance_id)
        marks: dict[int, Change] = {}
        removed: list[Item] = []
        if since is not None:
            earlier = self._as_at(session, patient_id, since, lists + resources, base)
            marks, removed = compare(gather(*earlier, [], self.fhir.instance_id), items)
        now = instant(self.clock())
        merged = merged_list(
            patient_id, items, lists, marks, removed, instant(since) if since else None, now
        )
        entries = [_entry(base, merged)]
        shown: set[str] = set()
        for item in items:
            for resource in [item.resource, *(goal.resource for goal in item.goals)]:
                entries.append(_entry(base, resource))
                shown.add(reference_of(resource))
        for gone in removed:
            for resource in [gone.resource, *(goal.resource for goal in gone.goals)]:
                entries.append(_entry(base, resource, versioned=True))
        for source in lists:
            entries.append(_entry(base, source))
        recorded = {
            record.reference
            for item in items
            for each in [item, *item.goals]
            for record in each.records
        }
        for provenance in provenances:
            targets = {plain_reference(t.get("reference")) for t in provenance.get("target", [])}
            if targets & recorded:
                entries.append(_entry(base, provenance))
        if history:
            for source in lists:
                entries += self._list_history(session, source, base)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": now,
            "entry": entries,
        }
        return Result(200, body=bundle)

    def patient_resource(self, session: Session, patient_id: str) -> dict[str, Any]:
        """The Patient's current JSON (404 or 410 when there is none)."""
        stored = session.read("Patient", patient_id).stored
        assert stored is not None
        patient: dict[str, Any] = parse_json(stored.content or "{}")
        return patient

    def merged_bundle(self, session: Session, patient_id: str, base: str) -> dict[str, Any]:
        """The ``$what-matters`` Bundle, in a session already open (``$summary``)."""
        body = self._what_matters(session, patient_id, False, base, None).body
        assert body is not None
        return body

    def sources(
        self, session: Session, patient_id: str, base: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The current Priorities Lists, the candidate Observations and Goals, and the
        Provenances that target them (what ``$what-matters`` gathers)."""
        return self._sources(session, patient_id, base)

    def _sources(
        self, session: Session, patient_id: str, base: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """The current Priorities Lists, the candidate Observations and Goals, and the
        Provenances that target them."""
        patient = f"Patient/{patient_id}"
        lists = self._search(
            session,
            "List",
            [("subject", patient), ("code", f"{LOINC}|{PRIORITIES_CODE}"), ("status", "current")],
            base,
        )
        found: dict[str, dict[str, Any]] = {}
        revinclude = ("_revinclude", "Provenance:target")
        for type_, criterion in (
            ("Observation", ("code", ",".join(f"{LOINC}|{c}" for c in STATEMENT_CODES))),
            ("Observation", ("category", f"{PCO_CONCEPTS}|what-matters")),
            ("Observation", ("_profile", ",".join(STATEMENT_PROFILES))),
            ("Goal", None),
        ):
            params = [("patient", patient), revinclude]
            if criterion is not None:
                params.append(criterion)
            for resource in self._search(session, type_, params, base, keep_includes=True):
                found.setdefault(reference_of(resource), resource)
        resources = [r for r in found.values() if r.get("resourceType") != "Provenance"]
        provenances = [r for r in found.values() if r.get("resourceType") == "Provenance"]
        return lists, resources, provenances

    def _as_at(
        self,
        session: Session,
        patient_id: str,
        since: int,
        current: list[dict[str, Any]],
        base: str,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The patient's Priorities Lists and Observations/Goals as they were at ``since``,
        from version history: (lists, resources)."""
        subject = f"Patient/{patient_id}"
        changed: set[str] = set()
        for type_ in ("List", "Observation", "Goal"):
            changed |= self._changed_since(session, type_, since)
        kept = []
        for resource in current:
            ref = reference_of(resource)
            if _micros(resource) <= since and ref not in changed:
                kept.append(resource)
            else:
                changed.add(ref)
        for ref in sorted(changed):
            type_, id_ = ref.split("/", 1)
            earlier = self._version_at(session, type_, id_, since)
            if (
                earlier is not None
                and plain_reference((earlier.get("subject") or {}).get("reference")) == subject
            ):
                kept.append(earlier)
        lists = [
            r
            for r in kept
            if r.get("resourceType") == "List"
            and r.get("status") == "current"
            and (LOINC, PRIORITIES_CODE)
            in {(c.get("system"), c.get("code")) for c in (r.get("code") or {}).get("coding", [])}
        ]
        return lists, [r for r in kept if r.get("resourceType") != "List"]

    def _changed_since(self, session: Session, type_: str, since: int) -> set[str]:
        """``Type/id`` of every resource of the type written or deleted after ``since``."""
        params = [("_since", instant(since + 1)), ("_count", "1000")]
        try:
            versions = self._versions(session, type_, None, params)
        except Forbidden:
            # a patient-context token may not read type history: the changes of the resources
            # that are still there are found from their own history; deletions stay unseen
            return set()
        return {f"{version.type}/{version.id}" for version in versions}

    def _version_at(
        self, session: Session, type_: str, id_: str, since: int
    ) -> dict[str, Any] | None:
        """The version of a resource current at ``since``; None if it did not exist then."""
        try:
            versions = self._versions(session, type_, id_, [("_count", "1000")])
        except NotFound:
            return None
        best: tuple[int, dict[str, Any] | None] | None = None
        for version in versions:
            resource = None if version.deleted else parse_json(version.content or "{}")
            # when it was written, as the history Bundle tells it (to the millisecond)
            when = _micros(resource) if resource is not None else _at(version.last_updated_us)
            if when <= since and (best is None or when > best[0]):
                best = (when, resource)
        return best[1] if best else None

    def _list_history(
        self, session: Session, source: dict[str, Any], base: str
    ) -> list[dict[str, Any]]:
        page = session.history_page("List", str(source["id"]), [("_count", "1000")])
        earlier = []
        for version in page.versions:
            if version.deleted:
                continue
            resource = parse_json(version.content or "{}")
            if resource.get("meta", {}).get("versionId") == source.get("meta", {}).get("versionId"):
                continue
            earlier.append(_entry(base, resource, versioned=True))
        return earlier

    def _versions(
        self,
        session: Session,
        type_: str,
        id_: str | None,
        params: list[tuple[str, str]],
    ) -> list[StoredResource]:
        """Every version of a paged history, page by page through its own cursor."""
        found: list[StoredResource] = []
        asked: list[tuple[str, str]] | None = params
        while asked is not None and len(found) <= 20000:
            page = session.history_page(type_, id_, asked)
            found += page.versions
            asked = page.next_params
        return found

    def _search(
        self,
        session: Session,
        type_: str,
        params: list[tuple[str, str]],
        base: str,
        keep_includes: bool = False,
    ) -> list[dict[str, Any]]:
        """Every match of a search (and, with ``keep_includes``, what it includes), page by
        page through the search's own cursor."""
        found: list[dict[str, Any]] = []
        asked: list[tuple[str, str]] | None = [*params, ("_count", "1000")]
        while asked is not None and len(found) <= 20000:
            page = session.search(type_, asked, strict=True, base=base or "urn:local")
            shown = page.matches + (page.included if keep_includes else [])
            found += [parse_json(stored.content or "{}") for stored in shown]
            asked = page.next_params
        return found


def _named_after_input(error: FhirError, origins: dict[int, str]) -> Unprocessable:
    """The same problems, each also naming the input parameter the resource came from."""
    issues = []
    for issue in error.outcome_issues():
        where = list(issue.expression)
        for expression in issue.expression:
            if expression.startswith("Bundle.entry["):
                index = int(expression[len("Bundle.entry[") :].split("]", 1)[0])
                origin = origins.get(index)
                if origin is not None:
                    where.insert(0, origin)
                break
        issues.append(Issue(issue.severity, issue.code, issue.diagnostics, tuple(where)))
    lead = next((i for i in issues if i.severity in ("error", "fatal")), None)
    return Unprocessable(
        "What would be recorded does not meet the WMTY profiles: "
        + (lead.diagnostics if lead else error.diagnostics),
        issues=issues,
    )


def _at(moment_us: int) -> int:
    """A moment as an instant says it (FHIR instants here carry milliseconds)."""
    return parse_instant(instant(moment_us), "")


def _micros(resource: dict[str, Any]) -> int:
    updated = (resource.get("meta") or {}).get("lastUpdated")
    return parse_instant(str(updated), "meta.lastUpdated") if updated else 0


def _entry(base: str, resource: dict[str, Any], versioned: bool = False) -> dict[str, Any]:
    if "id" not in resource:  # the merged List is a view: it has no id, nothing to read back
        return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource}
    url = f"{base}/{resource['resourceType']}/{resource['id']}"
    if versioned:  # an earlier version: its own URL, so it is never taken for the current one
        url += f"/_history/{resource['meta']['versionId']}"
    return {"fullUrl": url, "resource": resource}


def _check_stored_references(session: Session, conversation: Conversation, patient_id: str) -> None:
    """422 unless every stored Goal or Observation the input names (a ranking item, a goal's
    'addresses') is one of this patient's: the patient's List must not rank, nor a goal
    address, another patient's record or nothing at all. The answer is the same whether the
    resource is another patient's, deleted or absent, so nothing shows of what the token may
    not read."""
    keys = {item.key for item in conversation.items}
    named = [(ref, where) for ref, where in conversation.ranking or [] if ref not in keys]
    named += [
        (ref, where)
        for item in conversation.items
        for ref, where in item.addresses
        if ref not in keys
    ]
    issues = []
    for ref, where in named:
        type_, _, id_ = ref.partition("/")
        try:
            stored = session.read(type_, id_).stored
        except FhirError as exc:
            if exc.status not in (400, 403, 404, 410):
                raise
            stored = None
        content = parse_json(stored.content) if stored and stored.content else None
        if not isinstance(content, dict) or owner_of(type_, content) != patient_id:
            issues.append(
                Issue(
                    "error",
                    "invalid",
                    f"{ref} is not a stored {type_} of Patient/{patient_id}",
                    (where,),
                )
            )
    if issues:
        raise Unprocessable(
            "The $record-what-matters input cannot be recorded: " + issues[0].diagnostics,
            issues=issues,
        )
