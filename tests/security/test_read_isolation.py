"""Reads that cannot depend on what the token may not read (chains, _has, _include, totals,
saved searches, chain depth).

Specs: R4 search.html (chaining, reverse chaining, _include, paging), SMART App Launch 2.x
scopes. Each test does an attack on patient B's data with a token that may not read it, checks
the attack would have worked for a token that may (so the test can fail), and asserts the
answer with the restricted token does not depend on B's data.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.security.support import B_WORDS, caller, sign, text_of, token_for

B_BIRTH = "1950-05-01"
B_NHS = "9000000017"


def _admin(world: dict[str, Any]) -> Any:
    return caller(world, token_for(world, "system"))


def _patient_a(world: dict[str, Any]) -> Any:
    return caller(world, token_for(world, "patient-A"))


def _scoped(world: dict[str, Any], scope: str) -> Any:
    return caller(world, sign(world["keys"][0], scope=scope))


def _observation(subject: str, text: str, **references: list[str]) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "note"},
        "subject": {"reference": subject},
        "valueString": text,
    }
    for element, targets in references.items():
        body[element] = [{"reference": t} for t in targets]
    return body


@pytest.fixture
def pointing(world: dict[str, Any]) -> dict[str, Any]:
    """A's Observation points at B (performer, derivedFrom); B's Observations point at A (one
    performed by A, so in A's compartment too; one derived from A's); B has a birth date.
    Everything written by a system client."""
    admin = _admin(world)
    patient_b = admin.get("/fhir/Patient/pB").get_json()
    patient_b["birthDate"] = B_BIRTH
    assert admin.put("/fhir/Patient/pB", patient_b).status_code == 200
    b_observation = world["pB"]["observation"]
    mine = admin.post(
        "/fhir/Observation",
        _observation(
            "Patient/pA",
            "A's own note",
            performer=["Patient/pB"],
            derivedFrom=[f"Observation/{b_observation}"],
        ),
    )
    assert mine.status_code == 201, text_of(mine)
    ghost = admin.post(
        "/fhir/Observation",
        _observation("Patient/pA", "A's other note", performer=["Patient/nobody"]),
    )
    assert ghost.status_code == 201, text_of(ghost)
    theirs = admin.post(
        "/fhir/Observation", _observation("Patient/pB", B_WORDS, performer=["Patient/pA"])
    )
    assert theirs.status_code == 201, text_of(theirs)
    derived = admin.post(
        "/fhir/Observation",
        _observation("Patient/pB", B_WORDS, derivedFrom=[f"Observation/{mine.get_json()['id']}"]),
    )
    assert derived.status_code == 201, text_of(derived)
    return {
        "derived": derived.get_json()["id"],
        "mine": mine.get_json()["id"],
        "ghost": ghost.get_json()["id"],
        "theirs": theirs.get_json()["id"],
    }


def _count(who: Any, url: str) -> int:
    response = who.get(url)
    assert response.status_code == 200, text_of(response)
    total: int = response.get_json()["total"]
    return total


# -- finding 2: chains and _has read through the guard ----------------------------------------

B_GUESSES = [
    "/fhir/Observation?performer:Patient.name=Bryn&_summary=count",
    f"/fhir/Observation?performer:Patient.identifier=https://fhir.nhs.uk/Id/nhs-number|{B_NHS}"
    "&_summary=count",
    f"/fhir/Observation?performer:Patient.birthdate={B_BIRTH}&_summary=count",
    "/fhir/Observation?derived-from:Observation.value-string:contains=secret&_summary=count",
    "/fhir/Patient?_has:Observation:performer:value-string:contains=secret&_summary=count",
    "/fhir/Observation?performer:Patient.name=Bryn&_total=accurate",
]


@pytest.mark.parametrize("url", B_GUESSES)
def test_chains_and_has_cannot_guess_b_through_a_patient_token(
    world: dict[str, Any], pointing: dict[str, Any], url: str
) -> None:
    # the guess is right: a token that may read B's data finds the match
    assert _count(_admin(world), url) >= 1
    answer = _patient_a(world).get(url)
    assert answer.status_code == 200, text_of(answer)
    assert answer.get_json()["total"] == 0
    assert B_WORDS not in text_of(answer)
    # a wrong guess answers the same as the right one
    wrong = url.replace("Bryn", "Zzyzx").replace("secret", "zzyzx").replace(B_NHS, "9000000025")
    wrong = wrong.replace(B_BIRTH, "1901-01-01")
    assert _count(_patient_a(world), wrong) == 0


def test_a_chain_over_a_patients_own_data_still_works(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    a = _patient_a(world)
    assert _count(a, "/fhir/Observation?subject:Patient.name=Jones&_summary=count") >= 2
    has = "/fhir/Patient?_has:Observation:subject:value-string:contains=own&_summary=count"
    assert _count(a, has) == 1


# -- finding 7: type scopes bypassed through chains ----------------------------------------------


@pytest.mark.parametrize(
    ("scope", "url", "parameter"),
    [
        (
            "user/Goal.rs",
            f"/fhir/Goal?patient:Patient.birthdate={B_BIRTH}&_summary=count",
            "patient",
        ),
        (
            "user/Goal.rs",
            "/fhir/Goal?_has:Observation:focus:value-string:contains=secret&_summary=count",
            "_has:Observation:focus",
        ),
        (
            "user/Patient.rs",
            "/fhir/Patient?_has:Observation:performer:value-string:contains=secret&_summary=count",
            "_has:Observation:performer",
        ),
    ],
)
def test_a_chain_into_a_type_the_token_cannot_search_is_403(
    world: dict[str, Any], pointing: dict[str, Any], scope: str, url: str, parameter: str
) -> None:
    narrow = _scoped(world, scope)
    searched = url.split("?")[0].rsplit("/", 1)[1]
    chained = "Patient" if searched == "Goal" and parameter == "patient" else "Observation"
    # the same answer as searching the chained type directly
    assert narrow.get(f"/fhir/{chained}?_summary=count").status_code == 403
    answer = narrow.get(url)
    assert answer.status_code == 403, text_of(answer)
    issue = answer.get_json()["issue"][0]
    assert issue["code"] == "forbidden"
    assert issue["expression"] == [parameter]
    # the refusal is the same whether the guess is right or wrong
    assert narrow.get(url.replace(B_BIRTH, "1901-01-01").replace("secret", "zz")).status_code == (
        403
    )


# -- finding 11: _include as an oracle -----------------------------------------------------------


def test_include_of_an_unreadable_target_is_left_out_whether_it_exists_or_not(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    a = _patient_a(world)
    shown = {}
    for key in ("mine", "ghost"):
        response = a.get(f"/fhir/Observation?_id={pointing[key]}&_include=Observation:performer")
        assert response.status_code == 200, text_of(response)
        bundle = response.get_json()
        shown[key] = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in bundle["entry"]]
        assert "Bryn" not in text_of(response)
    assert shown["mine"] == shown["ghost"] == [("match", "Observation")]
    # the admin sees that B's Patient is there to be included
    admin = _admin(world).get(
        f"/fhir/Observation?_id={pointing['mine']}&_include=Observation:performer"
    )
    assert [e["resource"]["id"] for e in admin.get_json()["entry"]][1:] == ["pB"]


def test_a_patients_own_searches_work_when_their_resources_point_at_b(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    a = _patient_a(world)
    response = a.get(
        "/fhir/Observation?patient=Patient/pA&_include=Observation:performer"
        "&_include=Observation:derived-from&_revinclude=Provenance:target&_total=accurate"
    )
    assert response.status_code == 200, text_of(response)
    bundle = response.get_json()
    assert B_WORDS not in text_of(response)
    matches = [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert bundle["total"] == len(matches)
    url = f"/fhir/Observation?_id={pointing['mine']}&_revinclude=Observation:derived-from"
    assert pointing["derived"] in text_of(_admin(world).get(url))
    revinclude = a.get(url)
    assert revinclude.status_code == 200
    assert [e["resource"]["id"] for e in revinclude.get_json()["entry"]] == [pointing["mine"]]


def test_include_of_a_type_outside_the_scopes_is_left_out(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    goals_only = _scoped(world, "user/Goal.rs")
    response = goals_only.get("/fhir/Goal?_include=Goal:patient&_revinclude=Provenance:target")
    assert response.status_code == 200, text_of(response)
    types = {e["resource"]["resourceType"] for e in response.get_json()["entry"]}
    assert types == {"Goal"}


def test_totals_count_only_what_the_token_may_read(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    a = _patient_a(world)
    admin = _admin(world)
    for type_ in ("Observation", "Goal", "List", "Provenance", "Patient"):
        count = _count(a, f"/fhir/{type_}?_summary=count")
        accurate = a.get(f"/fhir/{type_}?_total=accurate&_count=1000").get_json()
        assert count == accurate["total"] == len(accurate.get("entry", []))
        assert count < _count(admin, f"/fhir/{type_}?_summary=count")


# -- finding 8: saved searches belong to their token and type ------------------------------------


def _next_token(response: Any) -> str:
    links = {link["relation"]: link["url"] for link in response.get_json()["link"]}
    return parse_qs(urlsplit(links["next"]).query)["_page_token"][0]


def test_a_page_token_works_only_for_its_token_and_type(
    world: dict[str, Any], pointing: dict[str, Any]
) -> None:
    a = _patient_a(world)
    first = a.get("/fhir/Observation?_count=1&_total=accurate")
    assert first.status_code == 200
    page_token = _next_token(first)
    own = a.get(f"/fhir/Observation?_page_token={page_token}&_offset=1&_count=1")
    assert own.status_code == 200
    for who in ("patient-B", "user", "system"):
        other = caller(world, token_for(world, who)).get(
            f"/fhir/Observation?_page_token={page_token}&_offset=1&_count=1&_total=accurate"
        )
        assert other.status_code == 404, (who, text_of(other))
        assert other.get_json()["issue"][0]["expression"] == ["_page_token"]
    other_type = a.get(f"/fhir/Goal?_page_token={page_token}&_offset=0&_total=accurate")
    assert other_type.status_code == 404
    assert "total" not in other_type.get_json()


# -- finding 9: deep chains are 400, never 500 ---------------------------------------------------

DEEP = [
    ("subject:Patient.link:Patient.link:Patient.link:Patient.name", "x"),
    (
        "_has:Observation:subject:_has:Observation:subject:_has:Observation:subject:"
        "_has:Observation:subject:code",
        "x",
    ),
]


@pytest.mark.parametrize(("name", "value"), DEEP)
@pytest.mark.parametrize("kind", ["system", "patient-A"])
def test_a_chain_deeper_than_the_limit_is_400_naming_the_parameter(
    world: dict[str, Any], name: str, value: str, kind: str
) -> None:
    type_ = "Observation" if name.startswith("subject") else "Patient"
    response = caller(world, token_for(world, kind)).get(f"/fhir/{type_}?{name}={value}")
    assert response.status_code == 400, text_of(response)
    issue = response.get_json()["issue"][0]
    assert issue["expression"] == [name]
    assert "at most 3" in issue["diagnostics"]


@pytest.mark.parametrize(
    "url",
    [
        "/fhir/Observation?subject:Patient.link:Patient.link:Patient.name=Jones",
        "/fhir/Patient?_has:Observation:subject:_has:Observation:derived-from:"
        "_has:Goal:addresses:lifecycle-status=active",
        "/fhir/Goal?patient:Patient._has:Observation:subject:derived-from:Observation.code=x",
    ],
)
@pytest.mark.parametrize("kind", ["system", "patient-A"])
def test_chains_at_the_limit_are_answered(world: dict[str, Any], url: str, kind: str) -> None:
    response = caller(world, token_for(world, kind)).get(url)
    assert response.status_code == 200, text_of(response)


def test_a_patient_token_finds_nothing_in_another_patients_compartment(
    world: dict[str, Any],
) -> None:
    """GET /fhir/Patient/pB/Observation with patient A's token: the compartment search is the
    type's search narrowed to pB, and A's token narrows it to pA as well, so nothing of B's
    (not even a count) comes back; A's own compartment works."""
    a = caller(world, token_for(world, "patient-A"))
    for type_ in ("Observation", "Goal", "List"):
        other = a.get(f"/fhir/Patient/pB/{type_}")
        assert other.status_code in (200, 403)
        assert B_WORDS not in text_of(other)
        if other.status_code == 200:
            assert other.get_json().get("entry") is None
            assert a.get(f"/fhir/Patient/pB/{type_}?_summary=count").get_json()["total"] == 0
    own = a.get("/fhir/Patient/pA/Goal")
    assert own.status_code == 200
    assert own.get_json()["entry"]


def test_another_servers_patient_of_the_same_id_is_not_the_tokens_patient(
    world: dict[str, Any],
) -> None:
    # another EHR's Patient/pA is somebody else (references.html §2.3.0): what it says about
    # them is not in this server's Patient/pA compartment
    foreign = _admin(world).post(
        "/fhir/Observation",
        _observation("http://other-ehr.example/fhir/Patient/pA", "Another EHR's patient"),
    )
    assert foreign.status_code == 201, text_of(foreign)
    ident = foreign.get_json()["id"]
    patient_a = _patient_a(world)
    assert patient_a.get(f"/fhir/Observation/{ident}").status_code == 403
    found = patient_a.get("/fhir/Observation?_count=100")
    assert found.status_code == 200, text_of(found)
    assert ident not in {e["resource"]["id"] for e in found.get_json().get("entry", [])}
    assert "Another EHR's patient" not in text_of(patient_a.get("/fhir/Patient/pA/Observation"))
