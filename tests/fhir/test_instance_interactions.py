"""create, read, vread, update, delete and history on the FHIR core, as the RESTful API
specifies them: https://hl7.org/fhir/R4/http.html. Each test cites the section it checks."""

from __future__ import annotations

import pytest

from service.errors import BadRequest, Gone, NotFound, PreconditionFailed
from tests.builders import BASE, goal, patient
from tests.direct import Direct
from tests.fhir.conftest import body

# -- create: http.html#create -------------------------------------------------------------------


def test_create_assigns_the_id_and_version_1_and_says_where_it_is(fhir: Direct) -> None:
    """ "The server assigns a new id and version" and returns 201 with a Location."""
    created = fhir.create("Patient", patient(id="chosen-by-client"))
    assert created.status == 201
    assert created.location
    stored = created.stored
    assert stored is not None
    assert stored.id != "chosen-by-client"  # "the server SHALL ignore" an id in a create
    assert stored.version == 1
    resource = body(created)
    assert resource["id"] == stored.id
    assert resource["meta"]["versionId"] == "1"
    assert resource["meta"]["lastUpdated"].endswith("Z")
    assert resource["name"] == patient()["name"]


def test_create_of_an_invalid_resource_is_refused_and_writes_nothing(fhir: Direct) -> None:
    """A resource that fails validation is rejected (400/422) and nothing is stored."""
    with pytest.raises(BadRequest) as refused:
        fhir.create("Patient", patient(gender="sometimes"))
    assert any("Patient.gender" in issue.expression for issue in refused.value.outcome_issues())
    history = body(fhir.history("Patient", None, [], BASE))
    assert "entry" not in history


# -- read: http.html#read -----------------------------------------------------------------------


def test_read_returns_the_current_version(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    read = fhir.read("Patient", "p1")
    assert read.status == 200
    assert body(read)["gender"] == "male"
    assert body(read)["meta"]["versionId"] == "2"


def test_read_of_an_unknown_resource_is_not_found(fhir: Direct) -> None:
    """ "Unknown resources and deleted resources are treated differently on a read: a GET for a
    deleted resource returns a 410 status code, whereas a GET for an unknown resource returns
    404"."""
    with pytest.raises(NotFound) as missing:
        fhir.read("Patient", "nobody")
    assert missing.value.status == 404


def test_read_of_a_deleted_resource_is_gone(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.delete("Patient", "p1")
    with pytest.raises(Gone) as gone:
        fhir.read("Patient", "p1")
    assert gone.value.status == 410


def test_conditional_read_answers_304_when_the_client_has_the_current_version(
    fhir: Direct,
) -> None:
    """http.html#cread: If-None-Match with the current version gives 304 Not Modified."""
    fhir.update("Patient", "p1", patient(id="p1"))
    assert fhir.read("Patient", "p1", if_none_match=[1]).status == 304
    fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    assert fhir.read("Patient", "p1", if_none_match=[1]).status == 200


# -- vread: http.html#vread ---------------------------------------------------------------------


def test_vread_returns_each_version_as_it_was_written(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1", gender="female"))
    fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    first = fhir.vread("Patient", "p1", "1")
    second = fhir.vread("Patient", "p1", "2")
    assert (body(first)["gender"], body(first)["meta"]["versionId"]) == ("female", "1")
    assert (body(second)["gender"], body(second)["meta"]["versionId"]) == ("male", "2")


@pytest.mark.parametrize("version", ["3", "0", "x", "-1"])
def test_vread_of_a_version_that_never_existed_is_not_found(fhir: Direct, version: str) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    with pytest.raises(NotFound):
        fhir.vread("Patient", "p1", version)


def test_vread_of_the_deletion_is_gone_and_earlier_versions_stay_readable(
    fhir: Direct,
) -> None:
    """http.html#delete: deleted resources keep their history; the deletion itself has no
    content to return."""
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.delete("Patient", "p1")
    with pytest.raises(Gone):
        fhir.vread("Patient", "p1", "2")
    assert body(fhir.vread("Patient", "p1", "1"))["id"] == "p1"


# -- update: http.html#update -------------------------------------------------------------------


def test_update_of_a_new_id_creates_it_with_201(fhir: Direct) -> None:
    """Update as create: "the server SHALL return 201" when it created the resource."""
    created = fhir.update("Patient", "p1", patient(id="p1"))
    assert (created.status, created.location) == (201, True)
    assert created.stored is not None
    assert created.stored.version == 1


def test_update_of_an_existing_resource_makes_the_next_version(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    updated = fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    assert updated.status == 200
    assert updated.stored is not None
    assert updated.stored.version == 2


@pytest.mark.parametrize("sent_id", [None, "p2"])
def test_update_whose_body_id_is_missing_or_different_is_400(
    fhir: Direct, sent_id: str | None
) -> None:
    """ "If no id element is provided, or the id disagrees with the id in the URL, the server
    SHALL respond with an HTTP 400 error code"."""
    resource = patient() if sent_id is None else patient(id=sent_id)
    with pytest.raises(BadRequest) as refused:
        fhir.update("Patient", "p1", resource)
    assert refused.value.status == 400
    assert ("Patient.id",) in [issue.expression for issue in refused.value.outcome_issues()]
    with pytest.raises(NotFound):
        fhir.read("Patient", "p1")


def test_update_after_delete_brings_the_resource_back_as_the_next_version(
    fhir: Direct,
) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.delete("Patient", "p1")
    again = fhir.update("Patient", "p1", patient(id="p1"))
    assert again.status == 201
    assert again.stored is not None
    assert again.stored.version == 3


# -- version-aware updates: http.html#concurrency -----------------------------------------------


def test_update_with_the_current_version_in_if_match_succeeds(fhir: Direct) -> None:
    fhir.update("Goal", "g1", goal(id="g1"))
    updated = fhir.update("Goal", "g1", goal(id="g1", lifecycleStatus="completed"), if_match=1)
    assert updated.stored is not None
    assert updated.stored.version == 2


def test_update_with_a_stale_version_is_412_and_changes_nothing(fhir: Direct) -> None:
    """ "If the version id given in the If-Match header does not match, the server returns a
    412 Precondition Failed status code instead of updating the resource"."""
    fhir.update("Goal", "g1", goal(id="g1"))
    fhir.update("Goal", "g1", goal(id="g1", lifecycleStatus="accepted"))
    with pytest.raises(PreconditionFailed) as stale:
        fhir.update("Goal", "g1", goal(id="g1", lifecycleStatus="completed"), if_match=1)
    assert stale.value.status == 412
    current = body(fhir.read("Goal", "g1"))
    assert (current["meta"]["versionId"], current["lifecycleStatus"]) == ("2", "accepted")


def test_delete_with_a_stale_version_is_412_and_deletes_nothing(fhir: Direct) -> None:
    fhir.update("Goal", "g1", goal(id="g1"))
    fhir.update("Goal", "g1", goal(id="g1", lifecycleStatus="accepted"))
    with pytest.raises(PreconditionFailed):
        fhir.delete("Goal", "g1", if_match=1)
    assert fhir.read("Goal", "g1").status == 200


# -- delete: http.html#delete -------------------------------------------------------------------


def test_delete_is_204_and_keeps_the_history(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    deleted = fhir.delete("Patient", "p1")
    assert deleted.status == 204
    assert deleted.stored is not None
    assert deleted.stored.deleted
    assert deleted.stored.version == 2
    entries = body(fhir.history("Patient", "p1", [], BASE))["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT"]


def test_delete_of_an_unknown_or_deleted_resource_is_204_and_writes_nothing(
    fhir: Direct,
) -> None:
    """ "Upon successful deletion, or if the resource does not exist at all, the server should
    return ... 204 No Content"; deleting again makes no new version."""
    assert fhir.delete("Patient", "nobody").status == 204
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.delete("Patient", "p1")
    assert fhir.delete("Patient", "p1").status == 204
    assert len(body(fhir.history("Patient", "p1", [], BASE))["entry"]) == 2


# -- history: http.html#history -----------------------------------------------------------------


def test_instance_history_lists_every_version_newest_first(fhir: Direct) -> None:
    """ "The return content is a Bundle with type set to history containing the specified
    version history, sorted with oldest versions last, and including deleted resources"."""
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Patient", "p1", patient(id="p1", gender="male"))
    fhir.delete("Patient", "p1")
    bundle = body(fhir.history("Patient", "p1", [], BASE))
    assert (bundle["resourceType"], bundle["type"]) == ("Bundle", "history")
    entries = bundle["entry"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert [e["response"]["status"] for e in entries] == [
        "204 No Content",
        "200 OK",
        "201 Created",
    ]
    assert "resource" not in entries[0]  # a deletion carries no resource
    assert entries[2]["resource"]["meta"]["versionId"] == "1"


def test_type_history_holds_only_that_type(fhir: Direct) -> None:
    fhir.update("Patient", "p1", patient(id="p1"))
    fhir.update("Goal", "g1", goal(id="g1"))
    entries = body(fhir.history("Goal", None, [], BASE))["entry"]
    assert [e["fullUrl"] for e in entries] == [f"{BASE}/Goal/g1"]


def test_history_pages_with_count_and_a_next_link(fhir: Direct) -> None:
    for gender in ("female", "male", "other"):
        fhir.update("Patient", "p1", patient(id="p1", gender=gender))
    first = body(fhir.history("Patient", "p1", [("_count", "2")], BASE))
    assert [e["response"]["etag"] for e in first["entry"]] == ['W/"3"', 'W/"2"']
    following = [link["url"] for link in first["link"] if link["relation"] == "next"]
    assert len(following) == 1
    page = [tuple(part.split("=", 1)) for part in following[0].split("?", 1)[1].split("&") if part]
    second = body(fhir.history("Patient", "p1", page, BASE))
    assert [e["response"]["etag"] for e in second["entry"]] == ['W/"1"']
    assert not [link for link in second["link"] if link["relation"] == "next"]


def test_history_of_an_unknown_resource_is_not_found(fhir: Direct) -> None:
    with pytest.raises(NotFound):
        fhir.history("Patient", "nobody", [], BASE)


def test_history_refuses_a_parameter_it_does_not_support(fhir: Direct) -> None:
    """http.html#history names _count, _since and _at; one the server does not support is
    an error rather than silently ignored."""
    with pytest.raises(BadRequest):
        fhir.history("Patient", None, [("_at", "2024")], BASE)
