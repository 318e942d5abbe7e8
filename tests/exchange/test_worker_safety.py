"""The worker's guard rails: leases, partner quirks, subscriptions a client switched off, imports.

Each test names the failure it guards against: a slow worker whose lease ran out sending a row a
second time, a partner that ignores a search parameter (FHIR R4 search.html#errors), a partner
that takes creates but no updates, a documents-only partner and deletions, an old row put back in
the queue, Subscription.status owned by the server (R4 subscription.html, Backport IG STU 1.1
components.html), and an import whose next link points at another host.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest

from service.errors import FhirError
from service.exchange.channels import Refused, Retry
from service.exchange.channels.partner_api import _id_of
from service.exchange.importer import import_patient
from service.exchange.partner_client import Answer, Unreachable
from service.exchange.summary import SummaryItem
from service.exchange.worker import Worker
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import instant
from service.storage import Query
from tests.exchange.test_subscriptions import subscription
from tests.exchange.test_worker import (
    MRN,
    FakePartner,
    load_partners_of,
    make_worker,
    patient_with_goal,
    states,
)


def rows_of(fhir: FhirService) -> list[Any]:
    return fhir.read_only(lambda tx: tx.outbox.rows())


def update_goal(fhir: FhirService, goal_id: str, text: str) -> None:
    stored = fhir.read("Goal", goal_id).stored
    assert stored is not None
    assert stored.content is not None
    goal = json.loads(stored.content)
    goal["description"] = {"text": text}
    fhir.update("Goal", goal_id, goal)


# -- leases -----------------------------------------------------------------------------------


class LeaseThief(FakePartner):
    """While the first write is under way, the worker's lease runs out and another takes over."""

    def __init__(self, fhir: FhirService) -> None:
        super().__init__(load_partners_of(fhir)[0])
        self.fhir = fhir
        self.stolen = False

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        if method == "POST" and not self.stolen:
            self.stolen = True
            self.fhir.run(
                lambda tx: [
                    tx.outbox.save(replace(r, lease_owner="other-worker", lease_until_us=2**62))
                    for r in tx.outbox.rows(states=["inflight"])
                ]
            )
        return super().request(method, path, *args, **kwargs)


def test_a_worker_that_lost_its_lease_stops_its_group(fhir: FhirService) -> None:
    patient_with_goal(fhir, goals=2)
    thief = LeaseThief(fhir)
    worker = make_worker(fhir, thief)
    assert worker.run_once() == 3
    # the first row went out before the lease was lost; nothing after it was sent by this
    # worker, and the rows stay with the worker that holds them now
    assert [c[1] for c in thief.calls if c[0] == "POST"] == ["Patient"]
    assert {(r.state, r.lease_owner) for r in rows_of(fhir)} == {("inflight", "other-worker")}


def test_each_claim_has_its_own_lease_token(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    fhir.create(
        "Patient", {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "M2"}]}
    )
    worker = make_worker(fhir, FakePartner(load_partners_of(fhir)[0]))
    owners = set()
    for _ in range(2):
        worker.run_once()
        owners |= {r.lease_owner for r in rows_of(fhir) if r.state == "done"}
    assert len(owners) == 2
    assert all(o and o.startswith(worker.owner) for o in owners)


# -- partner quirks ---------------------------------------------------------------------------


class IgnoresSearchParameters(FakePartner):
    """A partner that answers a search with every resource of the type."""

    ignores_search_parameters = True


def test_searches_ask_for_strict_handling_and_check_each_match(fhir: FhirService) -> None:
    goals = patient_with_goal(fhir, goals=2)
    fake = IgnoresSearchParameters(load_partners_of(fhir)[0], conditional=False)
    worker = make_worker(fhir, fake)
    worker.drain()
    update_goal(fhir, goals[1], "Walk to the allotment again")
    worker.drain()
    searches = [c for c in fake.calls if c[0] == "GET" and c[1] != "metadata"]
    assert searches
    assert all(c[3].get("Prefer") == "handling=strict" for c in searches)
    second = next(k for k, r in fake.stored.items() if "urn:goals|G1" in r["_keys"])
    assert [c[1] for c in fake.calls if c[0] == "PUT"] == [f"Goal/{second}"]
    assert [r.state for r in rows_of(fhir)] == ["done"] * 4


class CreatesOnly(FakePartner):
    def _capability(self) -> dict[str, Any]:
        capability = super()._capability()
        for resource in capability["rest"][0]["resource"]:
            resource["interaction"] = [{"code": "create"}, {"code": "search-type"}]
        return capability


def test_a_partner_that_takes_no_updates_gets_a_clear_dead_row(fhir: FhirService) -> None:
    [goal] = patient_with_goal(fhir)
    fake = CreatesOnly(load_partners_of(fhir)[0], conditional=False)
    worker = make_worker(fhir, fake)
    worker.drain()
    worker.drain()  # a redelivery of the first version is not an update: nothing changes
    update_goal(fhir, goal, "Sleep through the night")
    worker.drain()
    last = rows_of(fhir)[-1]
    assert last.state == "dead"
    assert "accepts creates of Goal but no updates" in (last.last_error or "")
    assert not [c for c in fake.calls if c[0] == "PUT"]
    assert sum(1 for r in fake.stored.values() if r["resourceType"] == "Goal") == 1


class DocumentsOnly(FakePartner):
    def __init__(self, fhir: FhirService, updates: bool) -> None:
        super().__init__(load_partners_of(fhir)[0])
        self.updates = updates

    def _capability(self) -> dict[str, Any]:
        codes = ["create", "search-type"] + (["update"] if self.updates else [])
        document = {"type": "DocumentReference", "interaction": [{"code": c} for c in codes]}
        patient = {**super()._capability()["rest"][0]["resource"][0]}
        return {
            "resourceType": "CapabilityStatement",
            "rest": [{"mode": "server", "resource": [patient, document]}],
        }


@pytest.mark.parametrize("updates", [True, False])
def test_documents_only_partner_gets_a_new_summary_when_a_goal_is_deleted(
    fhir: FhirService, updates: bool
) -> None:
    goals = patient_with_goal(fhir, goals=2)
    fake = DocumentsOnly(fhir, updates)
    worker = Worker(
        fhir,
        load_partners_of(fhir),
        "http://hospital.example/fhir",
        lambda _partner: fake,
        summarise=lambda _p: ("Ada", summary_items(fhir)),
    )
    worker.drain()
    fhir.delete("Goal", goals[0])
    worker.drain()
    assert not [c for c in fake.calls if c[0] == "DELETE"]
    assert [(r.state, r.last_error) for r in rows_of(fhir)] == [("done", None)] * 4
    written = [c[2] for c in fake.calls if c[0] in ("POST", "PUT") and c[1].startswith("Doc")]
    last_text = [
        a for a in written[-1]["content"] if a["attachment"]["contentType"].startswith("text")
    ]
    text = base64.b64decode(last_text[0]["attachment"]["data"]).decode("utf-8")
    assert "Goal 1" in text
    assert "Goal 0" not in text
    identifiers = {d["identifier"][0]["value"] for d in written}
    # in place where the partner updates documents; one new document per change where it cannot
    assert len(identifiers) == (1 if updates else len(written))


def summary_items(fhir: FhirService) -> list[SummaryItem]:
    texts = []
    for row in rows_of(fhir):
        if row.res_type != "Goal":
            continue
        stored = fhir.read_only(lambda tx, id_=row.res_id: tx.resources.read("Goal", id_))
        if stored is not None and stored.content is not None and not stored.deleted:
            texts.append(json.loads(stored.content)["description"]["text"])
    return [SummaryItem(None, t, "goal", None, None, None) for t in sorted(set(texts))]


def test_an_old_row_put_back_in_the_queue_gets_several_attempts(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    fake = FakePartner(load_partners_of(fhir)[0])
    worker = make_worker(fhir, fake)
    four_days = 4 * 24 * 3600 * 1_000_000
    start = worker.clock() + four_days
    tick = {"now": start}
    worker.clock = lambda: tick["now"]
    outcomes = []
    for _attempt in range(6):
        fake.script = [Unreachable("connection refused")]
        worker.run_once()
        outcomes.append(states(fhir)[0][1])
        tick["now"] += 3600 * 1_000_000
    assert outcomes == ["pending"] * 4 + ["dead", "dead"]


# -- subscriptions: the status belongs to the server -------------------------------------------


def a_subscription(fhir: FhirService, **changes: Any) -> dict[str, Any]:
    patient = fhir.create("Patient", {"resourceType": "Patient"}).stored
    assert patient is not None
    resource = subscription(filters=(f"Goal?patient=Patient/{patient.id}",), **changes)
    resource.pop("id")
    return resource


@pytest.mark.parametrize("status", ["active", "error"])
def test_a_client_cannot_create_a_subscription_the_server_has_not_checked(
    fhir: FhirService, status: str
) -> None:
    with pytest.raises(FhirError) as caught:
        fhir.create("Subscription", a_subscription(fhir, status=status))
    assert caught.value.status == 422
    assert "Subscription.status" in caught.value.expression


def test_only_the_handshake_activates_and_a_client_may_keep_or_switch_off(
    fhir: FhirService,
) -> None:
    created = fhir.create("Subscription", a_subscription(fhir)).stored
    assert created is not None
    resource = json.loads(created.content or "{}")
    with pytest.raises(FhirError):  # the client cannot skip the handshake
        fhir.update("Subscription", created.id, {**resource, "status": "active"})
    # what the worker does after a successful handshake, as the server
    fhir.acting(Actor.server()).update("Subscription", created.id, {**resource, "status": "active"})
    active = json.loads(fhir.read("Subscription", created.id).stored.content or "{}")  # type: ignore[union-attr]
    # editing the reason keeps the status; changing the endpoint needs a new handshake
    fhir.update("Subscription", created.id, {**active, "reason": "For the care home"})
    moved = {**active["channel"], "endpoint": "https://elsewhere.example/hook"}
    with pytest.raises(FhirError):
        fhir.update("Subscription", created.id, {**active, "channel": moved})
    fhir.update("Subscription", created.id, {**active, "status": "off"})


def test_a_subscription_is_refused_past_its_end_and_notified_of_nothing_after_it(
    fhir: FhirService,
) -> None:
    """R4 Subscription.end: "The time for the server to turn the subscription off". One that
    ended in 2020 was activated and notified; one that ended a minute ago still was."""
    with pytest.raises(FhirError) as caught:
        fhir.create("Subscription", a_subscription(fhir, end="2020-01-01T00:00:00Z"))
    assert caught.value.status == 422
    assert "Subscription.end" in caught.value.expression
    feed = fhir.listeners[0]
    start = feed.clock()
    end = instant(start + 3600 * 1_000_000)
    resource = a_subscription(fhir, end=end)
    patient = resource["_criteria"]["extension"][0]["valueString"].split("=", 1)[1]
    created = fhir.create("Subscription", resource).stored
    assert created is not None
    active = {**json.loads(created.content or "{}"), "status": "active"}
    fhir.acting(Actor.server()).update("Subscription", created.id, active)

    def notified() -> int:
        return sum(1 for row in rows_of(fhir) if row.kind == "notification")

    goal = {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": "Walk to the chapel"},
        "subject": {"reference": patient},
    }
    fhir.create("Goal", goal)
    assert notified() == 1
    feed.clock = lambda: start + 2 * 3600 * 1_000_000  # an hour past its end
    fhir.create("Goal", goal)
    assert notified() == 1
    off = {**active, "status": "off"}  # a client may still switch an ended one off
    fhir.update("Subscription", created.id, off)


@pytest.mark.parametrize("header", ["Host: evil.example", "Content-Length: 5", "content-type: x"])
def test_subscription_headers_may_not_replace_the_notifications_own(
    fhir: FhirService, header: str
) -> None:
    resource = a_subscription(fhir)
    resource["channel"]["header"] = ["Authorization: Bearer abc", header]
    with pytest.raises(FhirError) as caught:
        fhir.create("Subscription", resource)
    assert caught.value.status == 422
    assert caught.value.expression == ("Subscription.channel.header[1]",)


def test_events_of_a_subscription_switched_off_are_set_aside_and_it_stays_off(
    fhir: FhirService,
) -> None:
    resource = a_subscription(fhir)
    created = fhir.create("Subscription", resource).stored
    assert created is not None
    content = json.loads(created.content or "{}")
    fhir.acting(Actor.server()).update("Subscription", created.id, {**content, "status": "active"})
    patient = content["_criteria"]["extension"][0]["valueString"].split("=", 1)[1]
    fhir.create(
        "Goal",
        {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Be home for the grandchildren"},
            "subject": {"reference": patient},
        },
    )
    current = json.loads(fhir.read("Subscription", created.id).stored.content or "{}")  # type: ignore[union-attr]
    fhir.update("Subscription", created.id, {**current, "status": "off"})
    worker = make_worker(fhir, FakePartner(load_partners_of(fhir)[0]))
    worker.drain()  # no HTTP is attempted: the endpoint does not exist
    sub_rows = [r for r in rows_of(fhir) if r.destination.startswith("subscription:")]
    assert [(r.kind, r.state) for r in sub_rows] == [
        ("handshake", "discarded"),
        ("notification", "discarded"),
    ]
    final = json.loads(fhir.read("Subscription", created.id).stored.content or "{}")  # type: ignore[union-attr]
    assert final["status"] == "off"


# -- import -----------------------------------------------------------------------------------


class Pages:
    """A partner's search answers, by (path, page)."""

    def __init__(self, fhir: FhirService, next_url: str) -> None:
        self.partner = load_partners_of(fhir)[0]
        self.next_url = next_url
        self.asked: list[str] = []

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        self.asked.append(path)
        if path == "Patient":
            patient = {
                "resourceType": "Patient",
                "id": "p1",
                "identifier": [{"system": MRN, "value": "M9"}],
            }
            return Answer(200, {}, {"resourceType": "Bundle", "entry": [{"resource": patient}]})
        if path == "Goal":
            goal = {
                "resourceType": "Goal",
                "id": "g1",
                "meta": {"source": "http://elsewhere.example/fhir/Goal/7"},
                "identifier": [{"system": "urn:goals", "value": "remote-1"}],
                "lifecycleStatus": "active",
                "description": {"text": "Keep painting"},
                "subject": {"reference": "Patient/p1"},
            }
            links = [{"relation": "next", "url": self.next_url}] if self.next_url else []
            return Answer(
                200, {}, {"resourceType": "Bundle", "link": links, "entry": [{"resource": goal}]}
            )
        return Answer(200, {}, {"resourceType": "Bundle", "entry": []})


def test_import_never_follows_a_next_link_to_another_host(fhir: FhirService) -> None:
    pages = Pages(fhir, "http://evil.example/fhir/Goal?page=2")
    with pytest.raises(Refused, match="another server"):
        import_patient(fhir, pages, MRN, "M9")
    assert not [p for p in pages.asked if "evil" in p]


def test_imported_resources_name_the_partner_as_their_source(fhir: FhirService) -> None:
    pages = Pages(fhir, "")
    import_patient(fhir, pages, MRN, "M9")
    [stored] = fhir.read_only(
        lambda tx: tx.resources.read_many(tx.searches.keys(Query("Goal", ()), 10))
    )
    source = json.loads(stored.content or "{}")["meta"]["source"]
    assert source == "http://gp.example/fhir/Goal/g1"
    # and nothing of it is queued back to the partner it came from
    assert not [r for r in rows_of(fhir) if r.res_type == "Goal"]


class TwoPatients:
    """A partner whose goal identifiers are unique per patient only (HAPI-style servers number
    them so), whose Goals carry a security label, and that may ignore the identifier search."""

    def __init__(self, fhir: FhirService, ignores_identifier: bool = False) -> None:
        self.partner = load_partners_of(fhir)[0]
        self.ignores_identifier = ignores_identifier

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        params = kwargs.get("params") or (args[2] if len(args) > 2 else {}) or {}
        if path == "Patient":
            wanted = "" if self.ignores_identifier else str(params.get("identifier", ""))
            found = [
                {
                    "resourceType": "Patient",
                    "id": f"r{n}",
                    "identifier": [{"system": MRN, "value": f"M{n}"}],
                }
                for n in (1, 2)
                if not wanted or wanted.endswith(f"|M{n}")
            ]
            entries = [{"resource": r} for r in found[:1]]
            return Answer(200, {}, {"resourceType": "Bundle", "entry": entries})
        if path == "Goal":
            owner = str(params.get("patient", "")).rsplit("/", 1)[-1]
            goal = {
                "resourceType": "Goal",
                "id": f"goal-{owner}",
                "meta": {
                    "security": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                            "code": "R",
                        }
                    ]
                },
                "identifier": [{"system": "urn:goals", "value": "1"}],
                "lifecycleStatus": "active",
                "description": {"text": f"The goal of {owner}"},
                "subject": {"reference": f"Patient/{owner}"},
            }
            return Answer(200, {}, {"resourceType": "Bundle", "entry": [{"resource": goal}]})
        return Answer(200, {}, {"resourceType": "Bundle", "entry": []})


def test_an_import_never_moves_a_goal_between_patients(fhir: FhirService) -> None:
    """A partner numbers goals per patient: both patients' first goal is urn:goals|1. Importing
    the second patient updated the first one's Goal into the second's record (subject and
    words), and each later import swapped it back: a conditional update on identifier alone."""
    for n in (1, 2):
        fhir.create(
            "Patient",
            {"resourceType": "Patient", "identifier": [{"system": MRN, "value": f"M{n}"}]},
        )
    partner = TwoPatients(fhir)
    first = import_patient(fhir, partner, MRN, "M1")
    second = import_patient(fhir, partner, MRN, "M2")
    assert (first.created, second.created, second.updated) == (1, 1, 0)
    goals = fhir.read_only(
        lambda tx: tx.resources.read_many(tx.searches.keys(Query("Goal", ()), 10))
    )
    said = sorted(json.loads(g.content or "{}")["description"]["text"] for g in goals)
    assert said == ["The goal of r1", "The goal of r2"]
    assert all(g.version == 1 for g in goals)
    # the partner's security label travels with the imported copy
    labels = [json.loads(g.content or "{}")["meta"].get("security") for g in goals]
    assert all(label and label[0]["code"] == "R" for label in labels)
    again = import_patient(fhir, partner, MRN, "M1")
    assert (again.created, again.updated, again.unchanged) == (0, 0, 1)


def test_an_import_refuses_a_patient_the_partner_did_not_match(fhir: FhirService) -> None:
    # a partner that ignores the identifier search answers with whoever it holds first
    with pytest.raises(Refused, match="M2"):
        import_patient(fhir, TwoPatients(fhir, ignores_identifier=True), MRN, "M2")


def test_no_heartbeat_after_the_subscriptions_end(fhir: FhirService) -> None:
    resource = a_subscription(fhir, heartbeat=60, end="2099-01-01T00:00:00Z")
    created = fhir.create("Subscription", resource).stored
    assert created is not None
    fhir.acting(Actor.server()).update(
        "Subscription", created.id, {**json.loads(created.content or "{}"), "status": "active"}
    )
    sent: list[str] = []
    worker = make_worker(fhir, FakePartner(load_partners_of(fhir)[0]))
    worker.rest_hook.post = lambda spec, bundle: sent.append(bundle["id"])  # type: ignore[method-assign]
    worker.rest_hook.last_contact[created.id] = -1e9
    worker.clock = lambda: 4_200_000_000 * 1_000_000  # 2103: past its end
    worker.heartbeats()
    assert sent == []


def test_one_heartbeat_per_period_across_worker_processes(fhir: FhirService) -> None:
    resource = a_subscription(fhir, heartbeat=60)
    created = fhir.create("Subscription", resource).stored
    assert created is not None
    fhir.acting(Actor.server()).update(
        "Subscription", created.id, {**json.loads(created.content or "{}"), "status": "active"}
    )
    sent: list[str] = []
    workers = [make_worker(fhir, FakePartner(load_partners_of(fhir)[0])) for _ in range(3)]
    tick = {"now": 1_900_000_000 * 1_000_000}
    for worker in workers:
        worker.clock = lambda: tick["now"]
        hook = worker.rest_hook
        hook.post = lambda spec, bundle: sent.append(bundle["id"])  # type: ignore[method-assign]
        hook.last_contact[created.id] = -1e9  # each thinks the subscriber has been quiet
    for worker in workers:
        worker.heartbeats()
    assert len(sent) == 1
    tick["now"] += 61 * 1_000_000
    for worker in workers:
        worker.rest_hook.last_contact[created.id] = -1e9
        worker.heartbeats()
    assert len(sent) == 2


class Minimal(FakePartner):
    """A partner that answers every write return=minimal: 200/201, no body, no Location."""

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        answer = super().request(method, path, *args, **kwargs)
        if method in ("POST", "PUT") and path != "metadata":
            return Answer(answer.status, {}, None, "")
        return answer


def test_a_write_answered_with_no_body_and_no_location_is_done(fhir: FhirService) -> None:
    """The partner stored the Goal and answered 200 with nothing else (its default
    return=minimal). The row was retried every few seconds for 72 hours, holding the
    patient's later changes behind it: a 2xx is success (RFC 9110 §15.3); the partner's id
    is found by identifier."""
    patient_with_goal(fhir)
    fake = Minimal(load_partners_of(fhir)[0])
    make_worker(fhir, fake).drain()
    assert [s for _, s, _ in states(fhir)] == ["done", "done"]
    assert len([r for r in fake.stored.values() if r["resourceType"] == "Goal"]) == 1


class MatchesAnything(FakePartner):
    """A partner that does not search by the conditional create's parameter: If-None-Exist
    matches whatever it holds first (200)."""

    def request(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        if method == "POST" and path == "Goal":
            held = {
                "resourceType": "Goal",
                "id": "someone-elses",
                "identifier": [{"system": "urn:other", "value": "x"}],
                "lifecycleStatus": "active",
                "description": {"text": "Another patient's goal"},
                "subject": {"reference": "Patient/other"},
            }
            return Answer(200, {}, held)
        return super().request(method, path, *args, **kwargs)


def test_a_conditional_create_answered_with_another_resource_is_not_taken_as_done(
    fhir: FhirService,
) -> None:
    """The partner ignored If-None-Exist's parameter and answered 200 with a resource it held;
    the row was marked done, and what we sent was never stored there (silent loss)."""
    patient_with_goal(fhir)
    fake = MatchesAnything(load_partners_of(fhir)[0])
    make_worker(fhir, fake).drain()
    goal_rows = [r for r in rows_of(fhir) if r.res_type == "Goal"]
    assert [r.state for r in goal_rows] == ["dead"]
    assert "does not carry it" in (goal_rows[0].last_error or "")


def test_an_answer_that_names_no_stored_resource_says_what_came_instead() -> None:
    """A partner behind a misconfigured proxy answers a create 200 with an HTML page: the row's
    reason said "no body, no Location", sending the operator to look for an empty answer."""
    html = Answer(200, {"content-type": "text/html"}, None, "<html>Sign in</html>")
    with pytest.raises(Retry, match=r"200 with a body that is not FHIR JSON \(text/html\)"):
        _id_of(html, "Goal")
    outcome = Answer(200, {}, {"resourceType": "OperationOutcome", "issue": []})
    with pytest.raises(Retry, match="200 with a OperationOutcome body and no Location"):
        _id_of(outcome, "Goal")
    with pytest.raises(Retry, match=r"no body, no Location"):
        _id_of(Answer(201, {}, None, ""), "Goal")
    assert _id_of(Answer(201, {"location": "http://gp/fhir/Goal/7/_history/1"}), "Goal") == "7"
