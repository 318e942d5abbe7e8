"""The outbox worker without HTTP: a fake partner answers, the store is in memory.

Retry rules follow the issue and RFC 9110 (Retry-After: seconds or an HTTP date, section
10.2.3); writes at the partner follow FHIR R4 http.html#ccreate and #cond-update.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from service.exchange.channels import Refused, Retry, check
from service.exchange.channels.partner_api import capability_of
from service.exchange.partner_client import Answer, Unreachable
from service.exchange.partners import Partner, PartnerConfigError, load_partners
from service.exchange.queue import Backoff
from service.exchange.worker import Worker
from service.fhir.interactions import FhirService
from service.storage import Query
from tests.exchange.conftest import MRN


class FakePartner:
    """A partner FHIR server scripted by the test: answers by (method, path prefix)."""

    ignores_search_parameters = False  # some servers answer a search with every resource

    def __init__(self, partner: Partner, conditional: bool = True) -> None:
        self.partner = partner
        self.calls: list[tuple[str, str, Any, dict[str, str], dict[str, str]]] = []
        self.script: list[Answer | Exception] = []
        self.conditional = conditional
        self.stored: dict[str, dict[str, Any]] = {}

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Answer:
        self.calls.append((method, path, body, headers or {}, params or {}))
        if path == "metadata":
            return Answer(200, {}, self._capability())
        if self.script and method != "GET":
            scripted = self.script.pop(0)
            if isinstance(scripted, Exception):
                raise scripted
            return scripted
        if method == "GET":
            type_ = path
            wanted = (params or {}).get("identifier")
            found = [
                r
                for r in self.stored.values()
                if r["resourceType"] == type_
                and (self.ignores_search_parameters or wanted in r["_keys"])
            ]
            entries = [{"resource": r, "search": {"mode": "match"}} for r in found]
            return Answer(
                200, {}, {"resourceType": "Bundle", "type": "searchset", "entry": entries}
            )
        type_ = path.split("?")[0].split("/")[0]
        in_place = method == "PUT" and path.count("/") == 1  # an update of a known id
        id_ = path.split("/")[1] if in_place else f"{type_.lower()}-{len(self.stored) + 1}"
        keys = [f"{i['system']}|{i['value']}" for i in body.get("identifier", [])]
        self.stored[id_] = {**body, "id": id_, "_keys": keys}
        if in_place:
            return Answer(200, {}, {**body, "id": id_})
        return Answer(201, {"location": f"{type_}/{id_}/_history/1"}, {**body, "id": id_})

    def _capability(self) -> dict[str, Any]:
        resource = {
            "interaction": [{"code": "create"}, {"code": "update"}, {"code": "search-type"}],
            "conditionalCreate": self.conditional,
            "conditionalUpdate": self.conditional,
        }
        types = ("Patient", "Goal", "Observation", "List", "Provenance")
        return {
            "resourceType": "CapabilityStatement",
            "rest": [{"mode": "server", "resource": [{"type": t, **resource} for t in types]}],
        }


def make_worker(fhir: FhirService, fake: FakePartner) -> Worker:
    return Worker(
        fhir,
        load_partners_of(fhir),
        "http://hospital.example/fhir",
        lambda _partner: fake,
        backoff=Backoff(base_seconds=1, cap_seconds=8),
    )


def load_partners_of(fhir: FhirService) -> tuple[Partner, ...]:
    feed = fhir.listeners[0]
    partners: tuple[Partner, ...] = feed.partners  # type: ignore[attr-defined]
    return partners


def patient_with_goal(fhir: FhirService, goals: int = 1) -> list[str]:
    patient = fhir.create(
        "Patient", {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "M1"}]}
    ).stored
    assert patient is not None
    ids = []
    for number in range(goals):
        goal = {
            "resourceType": "Goal",
            "identifier": [{"system": "urn:goals", "value": f"G{number}"}],
            "lifecycleStatus": "active",
            "description": {"text": f"Goal {number}"},
            "subject": {"reference": f"Patient/{patient.id}"},
        }
        stored = fhir.create("Goal", goal).stored
        assert stored is not None
        ids.append(stored.id)
    return ids


def states(fhir: FhirService) -> list[tuple[str, str, int]]:
    rows = fhir.read_only(lambda tx: tx.outbox.rows())
    return [(r.res_type, r.state, r.attempts) for r in rows]


def test_writes_concerning_a_partner_queue_rows_in_their_transaction(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    other = fhir.create("Patient", {"resourceType": "Patient"}).stored  # no MRN: not for the GP
    assert other is not None
    assert states(fhir) == [("Patient", "pending", 0), ("Goal", "pending", 0)]


def test_delivery_uses_conditional_create_and_rewrites_the_patient(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    fake = FakePartner(load_partners_of(fhir)[0])
    worker = make_worker(fhir, fake)
    assert worker.drain() == 2
    posts = [c for c in fake.calls if c[0] == "POST"]
    assert [c[3].get("If-None-Exist") for c in posts] == [
        f"identifier={MRN.replace(':', '%3A')}%7CM1",
        "identifier=urn%3Agoals%7CG0",
    ]
    goal = posts[1][2]
    assert goal["subject"] == {"reference": "Patient/patient-1"}
    # the source names this instance (its published identifier), whatever URL partners use
    assert goal["meta"]["source"].startswith(f"urn:uuid:{fhir.instance_id}#Goal/")
    assert "id" not in goal
    assert states(fhir) == [("Patient", "done", 1), ("Goal", "done", 1)]


@pytest.mark.parametrize("conditional", [True, False])
def test_a_partners_patient_is_found_or_created_never_overwritten(
    fhir: FhirService, conditional: bool
) -> None:
    """A partner already held the patient (its own MRN, address, GP, birth date). Our second
    version of the Patient went as PUT Patient?identifier=..., a full replacement
    (http.html#update): the partner's record lost everything we do not hold. The partner's
    Patient is the partner's: each version is sent as a create-if-absent."""
    patient_with_goal(fhir)
    fake = FakePartner(load_partners_of(fhir)[0], conditional=conditional)
    worker = make_worker(fhir, fake)
    worker.drain()
    stored = fhir.read_only(
        lambda tx: tx.resources.read_many(tx.searches.keys(Query("Patient", ()), 10))
    )[0]
    changed = {**json.loads(stored.content or "{}"), "telecom": [{"system": "phone", "value": "1"}]}
    fhir.update("Patient", stored.id, changed)
    fake.calls.clear()
    worker.drain()
    patient_calls = [(c[0], c[1]) for c in fake.calls if c[1].startswith("Patient")]
    # with conditional create: a create-if-absent; without: found (by search, or as known
    # from the first delivery), never written again
    if conditional:
        assert patient_calls == [("POST", "Patient")]
    else:
        assert [m for m, _ in patient_calls if m != "GET"] == []
    assert all(c[0] != "PUT" for c in fake.calls)


def test_a_security_label_travels_with_what_is_sent(fhir: FhirService) -> None:
    # security-labels.html: a restricted record (v3-Confidentiality R) must stay restricted at
    # the partner; the label was dropped with the rest of meta
    [goal_id] = patient_with_goal(fhir)
    stored = fhir.read("Goal", goal_id).stored
    assert stored is not None
    label = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
    goal = json.loads(stored.content or "{}")
    goal["meta"] = {"security": [label]}
    fhir.update("Goal", goal_id, goal)
    fake = FakePartner(load_partners_of(fhir)[0])
    make_worker(fhir, fake).drain()
    sent = [c[2] for c in fake.calls if c[1].startswith("Goal") and c[0] in ("POST", "PUT")]
    assert sent
    assert all(body["meta"]["security"] == [label] for body in sent)


def test_without_conditional_create_the_worker_searches_first(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    fake = FakePartner(load_partners_of(fhir)[0], conditional=False)
    make_worker(fhir, fake).drain()
    methods = [(c[0], c[1]) for c in fake.calls if c[1] != "metadata"]
    assert ("GET", "Goal") in methods
    assert methods.index(("GET", "Goal")) < methods.index(("POST", "Goal"))
    assert all("If-None-Exist" not in c[3] for c in fake.calls)


def test_server_errors_back_off_and_hold_the_rest_of_the_group(fhir: FhirService) -> None:
    patient_with_goal(fhir, goals=2)
    fake = FakePartner(load_partners_of(fhir)[0])
    fake.script = [Answer(503, {"retry-after": "120"}, {"resourceType": "OperationOutcome"})]
    worker = make_worker(fhir, fake)
    before = worker.clock()
    assert worker.run_once() == 3
    rows = fhir.read_only(lambda tx: tx.outbox.rows())
    assert [(r.state, r.attempts) for r in rows] == [("pending", 1), ("pending", 0), ("pending", 0)]
    assert rows[0].last_status == 503
    assert rows[0].next_attempt_us - before >= 120 * 1_000_000  # Retry-After wins
    assert worker.run_once() == 0  # the group waits for its head


def test_refusals_park_the_row_with_the_partners_outcome_and_let_the_group_go_on(
    fhir: FhirService,
) -> None:
    patient_with_goal(fhir, goals=2)
    fake = FakePartner(load_partners_of(fhir)[0])
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "Goal.target missing"}
        ],
    }
    fake.script = [
        Answer(201, {}, {"resourceType": "Patient", "id": "p9"}),
        Answer(422, {}, outcome),
    ]
    make_worker(fhir, fake).drain()
    rows = fhir.read_only(lambda tx: tx.outbox.rows())
    assert [r.state for r in rows] == ["done", "dead", "done"]
    assert rows[1].last_status == 422
    assert json.loads(rows[1].last_error or "") == outcome  # the partner's words, as they came


def test_unreachable_partner_is_retried(fhir: FhirService) -> None:
    patient_with_goal(fhir)
    fake = FakePartner(load_partners_of(fhir)[0])
    fake.script = [Unreachable("connection refused")]
    worker = make_worker(fhir, fake)
    worker.run_once()
    assert states(fhir)[0] == ("Patient", "pending", 1)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retried_statuses(status: int) -> None:
    with pytest.raises(Retry):
        check(Answer(status, {}, None, "busy"), "create Goal")


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 412, 422])
def test_refused_statuses(status: int) -> None:
    with pytest.raises(Refused) as refused:
        check(Answer(status, {}, {"resourceType": "OperationOutcome"}), "create Goal")
    assert refused.value.status == status
    assert "OperationOutcome" in str(refused.value)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert Answer(429, {"retry-after": "7"}).retry_after() == 7.0
    date = Answer(503, {"retry-after": "Wed, 21 Oct 2015 07:28:30 GMT"})
    assert date.retry_after(now=1445412500.0) == 10.0
    assert Answer(503, {"retry-after": "soon"}).retry_after() is None
    assert Answer(503, {}).retry_after() is None


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(base_seconds=1, cap_seconds=30, max_retry_after=600)
    rng = random.Random(3)
    for attempts, ceiling in [(1, 1), (2, 2), (3, 4), (5, 16), (6, 30), (20, 30)]:
        for _ in range(20):
            assert ceiling / 2 <= backoff.delay(attempts, None, rng) <= ceiling
    assert backoff.delay(1, 90, rng) == 90
    assert backoff.delay(1, 86_400, rng) == 600  # a partner cannot park us for a day


def test_capability_flags() -> None:
    capability = capability_of(
        {
            "resourceType": "CapabilityStatement",
            "rest": [
                {
                    "mode": "server",
                    "resource": [
                        {"type": "Goal", "interaction": [{"code": "read"}]},
                        {
                            "type": "DocumentReference",
                            "interaction": [{"code": "create"}],
                            "conditionalCreate": True,
                        },
                    ],
                }
            ],
        }
    )
    assert not capability.writes("Goal")
    assert capability.writes("DocumentReference")
    assert capability.flag("DocumentReference", "conditionalCreate")
    assert not capability.flag("DocumentReference", "conditionalUpdate")
    assert not capability.writes("Observation")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("partners:\n  - name: gp\n", "partners.yaml:2 partners[0]: 'base_url' is a required"),
        (
            "partners:\n  - name: gp\n    base_url: ftp://gp\n",
            "partners.yaml:3 partners[0].base_url",
        ),
        (
            "partners:\n  - name: gp\n    base_url: http://gp\n    auth:\n      type: magic\n",
            "partners.yaml:4 partners[0].auth: auth.type must be one of none, bearer, "
            "smart-backend-services, not 'magic'",
        ),
        (
            "partners:\n  - name: gp\n    base_url: http://gp\n    auth:\n      type: bearer\n",
            "auth of type bearer: needs exactly one of token, token_env",
        ),
        (
            "partners:\n  - name: gp\n    base_url: http://gp\n    auth:\n"
            "      type: smart-backend-services\n      client_id: c\n",
            "auth of type smart-backend-services: 'token_url' is a required property",
        ),
        (
            "partners:\n  - name: a\n    base_url: http://a\n  - name: a\n    base_url: http://b\n",
            "partners.yaml:4 partners[1].name: the name 'a' is used twice",
        ),
        (
            "partners:\n  - name: gp\n    base_url: http://gp:80/fhir\n"
            "  - name: gp-again\n    base_url: http://GP/fhir/\n",
            "partners.yaml:5 partners[1].base_url: http://GP/fhir/ is the server partner 'gp' "
            "already names",
        ),
        ("partners: [\n", "partners.yaml:2 is not valid YAML"),
        ("- just a list\n", "must hold a mapping with the key partners"),
        (
            "partners:\n  - name: gp\n    base_url: http://gp\n    auth:\n"
            "      type: bearer\n      token_env: WM_NO_SUCH_VARIABLE\n",
            "the variable WM_NO_SUCH_VARIABLE is not set",
        ),
        (
            "partners:\n  - name: gp\n    base_url: http://gp\n    auth:\n"
            "      type: smart-backend-services\n      client_id: c\n"
            "      token_url: https://auth/token\n      private_key_file: nope.pem\n"
            "      algorithm: RS384\n",
            "private_key_file: no file",
        ),
    ],
)
def test_partners_file_errors_name_file_line_and_path(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "partners.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PartnerConfigError) as error:
        load_partners(path)
    assert message in str(error.value)


def test_partners_file_in_json_is_read(tmp_path: Path) -> None:
    path = tmp_path / "partners.json"
    path.write_text(
        json.dumps(
            {
                "partners": [
                    {
                        "name": "gp",
                        "base_url": "http://gp.example/fhir/",
                        "auth": {"type": "bearer", "token": "t0k3n"},
                        "send": {"types": ["Goal"], "profiles": ["http://p"]},
                        "receive": {"types": ["Goal"]},
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    [partner] = load_partners(path)
    assert partner.base_url == "http://gp.example/fhir"
    assert partner.auth.token == "t0k3n"  # noqa: S105 - a test value
    assert partner.sends("Goal", {"meta": {"profile": ["http://p"]}})
    assert not partner.sends("Goal", {"meta": {"profile": ["http://other"]}})
    assert not partner.sends("Observation", {})
