"""The AuditEvent of every request and the Provenance of every write with a token are indexed
from their fixed shapes (audit.audit_index_values, access.provenance_index_values) rather than
by running each R4 search parameter's expression: the rows must be the ones the expressions
give, for any request, token, outcome and write the API can see."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from service.fhir.access import Access, parse_scopes, provenance_for, provenance_index_values
from service.fhir.audit import ACTIONS, RequestSeen, audit_event, audit_index_values
from service.fhir.model import with_meta
from service.fhir.search_index import SearchParameters
from service.storage import INDEX_KINDS, IndexRows
from service.validation.definitions import Definitions

_IDS = st.from_regex(r"[A-Za-z0-9\-.]{1,64}", fullmatch=True)
_TEXT = st.text(min_size=0, max_size=40)
_TYPES = st.sampled_from(["Patient", "Goal", "Observation", "List", "Provenance", "Group"])
_FHIR_USERS = st.one_of(
    st.none(),
    st.builds(lambda t, i: f"{t}/{i}", st.sampled_from(["Patient", "Practitioner"]), _IDS),
    st.just("https://ehr.example.org/fhir/Practitioner/abc"),
)
_ACCESS = st.one_of(
    st.none(),
    st.builds(
        Access,
        grants=st.just(parse_scopes("patient/*.cruds")),
        patient=st.one_of(st.none(), _IDS),
        subject=st.one_of(st.none(), _TEXT),
        client_id=st.one_of(st.none(), _TEXT),
        scopes=st.just("patient/*.cruds"),
        issuer=st.one_of(st.none(), st.just("https://auth.example.org")),
        fhir_user=_FHIR_USERS,
    ),
)
_SEEN = st.builds(
    RequestSeen,
    interaction=st.one_of(st.sampled_from(sorted(ACTIONS)), _TEXT),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    path=_TEXT.map(lambda tail: "/fhir/" + tail),
    query=st.one_of(st.just(""), _TEXT),
    status=st.sampled_from([200, 201, 204, 304, 400, 401, 403, 404, 409, 412, 422, 500, 503]),
    # an address as long as a forwarded list can make it: past the index's 1,000 characters
    address=st.one_of(st.none(), st.just("127.0.0.1"), st.just("::1"), st.just("1." * 600)),
)


def _params() -> SearchParameters:
    """The R4 search parameters, compiled as the service compiles them."""
    return SearchParameters.shared(Definitions.shared().search_parameters)


def _rows(rows: IndexRows) -> dict[str, list[Any]]:
    return {kind.rows: sorted(map(repr, getattr(rows, kind.rows))) for kind in INDEX_KINDS.values()}


def _stored(event: dict[str, Any]) -> dict[str, Any]:
    # what store_events indexes: the event with the server's id and meta
    return with_meta(event, "e1", 1, 1_796_637_600_123_456)


@settings(max_examples=300, deadline=None)
@given(
    seen=_SEEN,
    access=_ACCESS,
    entities=st.lists(st.tuples(_TYPES, _IDS), max_size=4),
    recorded=st.sampled_from(
        ["2026-12-07T10:00:00Z", "2026-12-07T10:00:00.123+01:00", "2026-12-07T10:00:00.123Z"]
    ),
)
def test_the_fixed_shape_gives_the_rows_the_expressions_give(
    seen: RequestSeen,
    access: Access | None,
    entities: list[tuple[str, str]],
    recorded: str,
) -> None:
    params = _params()
    event = _stored(audit_event(seen, access, entities, recorded, "What Matters FHIR service"))
    values = audit_index_values(event)
    assert values is not None
    assert _rows(params.index_values("AuditEvent", values)) == _rows(params.index(event))


def test_the_rows_are_the_ones_a_search_needs() -> None:
    access = Access(
        grants=parse_scopes("patient/*.rs"),
        patient="p1",
        client_id="app",
        fhir_user="Practitioner/dr",
    )
    seen = RequestSeen("read", "GET", "/fhir/Goal/g1", "", 200, "10.0.0.7")
    event = _stored(audit_event(seen, access, [("Goal", "g1")], "2026-12-07T10:00:00Z", "x"))
    values = audit_index_values(event)
    assert values is not None
    rows = _params().index_values("AuditEvent", values)
    references = {(r.param, r.target_type, r.target_id) for r in rows.references}
    assert ("patient", "Patient", "p1") in references
    assert ("entity", "Goal", "g1") in references
    assert ("agent", "Practitioner", "dr") in references
    assert ("patient", "Goal", "g1") not in references  # patient= names Patients only
    tokens = {(r.param, r.code) for r in rows.tokens}
    assert {("subtype", "read"), ("action", "R"), ("outcome", "0")} <= tokens
    assert [(r.param, r.exact) for r in rows.strings] == [("address", "10.0.0.7")]


def test_any_other_shape_is_indexed_the_general_way() -> None:
    seen = RequestSeen("read", "GET", "/fhir/Goal/g1", "", 200, None)
    event = _stored(audit_event(seen, None, [], "2026-12-07T10:00:00Z", "x"))
    assert audit_index_values(event) is not None
    # an element the fixed shape does not have: its parameter's expression must run
    assert audit_index_values({**event, "purposeOfEvent": [{"text": "care"}]}) is None
    tagged = {**event, "meta": {**event["meta"], "tag": [{"code": "t"}]}}
    assert audit_index_values(tagged) is None
    named = {**event, "agent": [{**event["agent"][0], "name": "Dr Who"}]}
    assert audit_index_values(named) is None
    site = {**event, "source": {**event["source"], "site": "ward 3"}}
    assert audit_index_values(site) is None
    entity = {**event, "entity": [{"what": {"reference": "Goal/g1"}, "name": "the goal"}]}
    assert audit_index_values(entity) is None


def test_a_searchparameter_of_the_profiles_folder_turns_the_fixed_shape_off() -> None:
    core = Definitions.shared().search_parameters
    assert SearchParameters(core).only_core("AuditEvent")
    extra = {
        "resourceType": "SearchParameter",
        "url": "https://whatmatters.example.org/SearchParameter/audit-outcome-desc",
        "code": "outcome-desc",
        "type": "string",
        "base": ["AuditEvent"],
        "expression": "AuditEvent.outcomeDesc",
    }
    widened = SearchParameters([*core, extra])
    assert not widened.only_core("AuditEvent")
    assert widened.only_core("Goal")


@settings(max_examples=200, deadline=None)
@given(
    access=_ACCESS.filter(lambda access: access is not None),
    type_=_TYPES,
    id_=_IDS,
    activity=st.sampled_from(["CREATE", "UPDATE", "DELETE"]),
)
def test_a_provenance_gives_the_rows_the_expressions_give(
    access: Access, type_: str, id_: str, activity: str
) -> None:
    params = _params()
    made = provenance_for(access, f"{type_}/{id_}/_history/3", activity, "2026-12-07T10:00:00Z")
    values = provenance_index_values(made)
    assert values is not None
    stored = with_meta(made, "p1", 1, 1_796_637_600_123_456)
    assert _rows(params.index_values("Provenance", values)) == _rows(params.index(stored))


def test_a_provenance_of_another_shape_is_indexed_the_general_way() -> None:
    access = Access(grants=parse_scopes("user/*.cruds"), subject="u", client_id="app")
    made = provenance_for(access, "Goal/g1/_history/1", "CREATE", "2026-12-07T10:00:00Z")
    assert provenance_index_values(made) is not None
    assert provenance_index_values({**made, "location": {"reference": "Location/l"}}) is None
    role = {**made, "agent": [{**made["agent"][0], "role": [{"text": "nurse"}]}]}
    assert provenance_index_values(role) is None
