"""SMART's permissions are separate (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-
context.html#scopes-for-requesting-fhir-resources): a token granted update (.u) or delete (.d)
on its patient's Goals, or SMART v1 .write (create, update and delete), may change them without
leave to read or search them; it may still change nothing of another patient's, and learns
nothing of it (no 412 for a version it could not read: 403 first)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.support import caller, sign, text_of


def _token(world: dict[str, Any], scope: str) -> str:
    return sign(world["keys"][0], scope=scope, patient="pA")


def _current(world: dict[str, Any], patient: str) -> dict[str, Any]:
    admin = caller(world, sign(world["keys"][0], scope="system/*.cruds"))
    found: dict[str, Any] = admin.get(f"/fhir/Goal/{world[patient]['goal']}").get_json()
    return found


@pytest.mark.parametrize("scope", ["patient/Goal.u", "patient/Goal.write", "patient/*.cud"])
def test_update_without_read_changes_the_patients_own_goal(
    world: dict[str, Any], scope: str
) -> None:
    goal = _current(world, "pA")
    goal["lifecycleStatus"] = "completed"
    goal.pop("meta")
    response = caller(world, _token(world, scope)).put(f"/fhir/Goal/{goal['id']}", goal)
    assert response.status_code == 200, text_of(response)
    assert _current(world, "pA")["lifecycleStatus"] == "completed"


@pytest.mark.parametrize("scope", ["patient/Goal.d", "patient/Goal.write"])
def test_delete_without_read_removes_the_patients_own_goal(
    world: dict[str, Any], scope: str
) -> None:
    goal_id = world["pA"]["goal"]
    response = caller(world, _token(world, scope)).delete(f"/fhir/Goal/{goal_id}")
    assert response.status_code == 204, text_of(response)
    admin = caller(world, sign(world["keys"][0], scope="system/*.cruds"))
    assert admin.get(f"/fhir/Goal/{goal_id}").status_code == 410


def test_patch_without_read_changes_the_patients_own_goal(world: dict[str, Any]) -> None:
    client = world["client"]
    patch = [{"op": "replace", "path": "/lifecycleStatus", "value": "on-hold"}]
    response = client.patch(
        f"/fhir/Goal/{world['pA']['goal']}",
        json=patch,
        headers={
            "Authorization": f"Bearer {_token(world, 'patient/Goal.u')}",
            "Content-Type": "application/json-patch+json",
        },
    )
    assert response.status_code == 200, text_of(response)
    assert _current(world, "pA")["lifecycleStatus"] == "on-hold"


def test_another_patients_goal_stays_out_of_reach_and_unseen(world: dict[str, Any]) -> None:
    theirs = _current(world, "pB")
    token = _token(world, "patient/Goal.ud")
    client = world["client"]
    changed = {**theirs, "lifecycleStatus": "cancelled"}
    changed.pop("meta")
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    answers = [
        client.put(f"/fhir/Goal/{theirs['id']}", json=changed, headers=auth),
        # a wrong version would be 412 for a goal the token could see: here 403 comes first
        client.put(
            f"/fhir/Goal/{theirs['id']}", json=changed, headers={**auth, "If-Match": 'W/"99"'}
        ),
        client.delete(f"/fhir/Goal/{theirs['id']}", headers=auth),
        client.patch(
            f"/fhir/Goal/{theirs['id']}",
            json=[{"op": "test", "path": "/lifecycleStatus", "value": "x"}],
            headers={**auth, "Content-Type": "application/json-patch+json"},
        ),
    ]
    assert [a.status_code for a in answers] == [403, 403, 403, 403]
    for answer in answers:
        assert theirs["description"]["text"] not in text_of(answer)
    assert _current(world, "pB") == theirs


def test_read_alone_still_cannot_update(world: dict[str, Any]) -> None:
    goal = _current(world, "pA")
    goal.pop("meta")
    goal["lifecycleStatus"] = "completed"
    response = caller(world, _token(world, "patient/Goal.rs")).put(f"/fhir/Goal/{goal['id']}", goal)
    assert response.status_code == 403
    assert "update" in text_of(response)


def test_a_conditional_update_searches_so_it_needs_search_too(world: dict[str, Any]) -> None:
    goal = _current(world, "pA")
    goal.pop("meta")
    goal.pop("id")
    response = caller(world, _token(world, "patient/Goal.cu")).put(
        "/fhir/Goal?lifecycle-status=active", goal
    )
    assert response.status_code == 403
    assert "search" in text_of(response)
