"""Run a search (``search``, a typed ``SearchPage``) and render it as a searchset Bundle
(``searchset``): https://hl7.org/fhir/R4/search.html.

Paging writes nothing for a search ordered by id (no ``_sort``, or ``_sort=_id``): its
``next``/``previous`` links carry a cursor (search_cursor.py), the id of the page's last (first)
match and the write sequence when the search began, and each page runs the search again after
(before) that id among the resources first written by then. Ids never change, so writes made
while a client pages neither repeat nor skip a match. A ``_sort`` on anything else orders by
values an update may change, which no cursor can follow: there, and only there, the ordered
matches (up to ``MAX_KEPT``) are kept under a token when the search begins, and its links page
through that list.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlencode

from service.errors import Issue, NotFound
from service.fhir.access import Access, confined, narrowed
from service.fhir.guard import read_visible
from service.fhir.model import dump_json, instant, parse_json
from service.fhir.results import Result, operation_outcome
from service.fhir.search_cursor import Cursor, binding, is_cursor, read_cursor, write_cursor
from service.fhir.search_parser import Include, SearchParser, SearchRequest
from service.fhir.subsetting import subset
from service.storage import StoredResource, Transaction, Window, pages_by_cursor

if TYPE_CHECKING:
    from service.fhir.search_index import SearchParameters
    from service.validation.definitions import Definitions

MAX_KEPT = 20_000
MAX_INCLUDED = 1_000
ITERATE_DEPTH = 4
Key = tuple[str, str]
Page = tuple[list[StoredResource], list[StoredResource]]


class SearchHost(Protocol):
    """The settings a search needs from the FHIR service (``FhirService`` is one)."""

    search_params: SearchParameters
    definitions: Definitions
    default_page_size: int
    max_page_size: int
    max_chain_depth: int
    clock: Callable[[], int]


@dataclass
class SearchPage:
    """One page of a search: the matches, what ``_include`` added, and where it stands.

    ``token``/``offset``/``count`` say where this page is; ``next_token`` and
    ``previous_token`` (a cursor, or a kept search's token) page on. ``next_params`` gives the
    parameters of the next page (None on the last), as the ``next`` link says them.
    """

    type: str
    request: SearchRequest
    matches: list[StoredResource]
    included: list[StoredResource]
    total: int | None
    token: str | None
    offset: int
    count: int
    more: bool
    warnings: list[Issue] = field(default_factory=list)
    next_token: str | None = None
    previous_token: str | None = None

    @property
    def next_params(self) -> list[tuple[str, str]] | None:
        """The parameters of the next page, or None when this is the last."""
        if not (self.more and self.next_token is not None and self.count > 0):
            return None
        return _paged(self.request.used, self.next_token, self.offset + self.count, self.count)


def search(
    host: SearchHost,
    access: Access | None,
    tx: Callable[[], Transaction],
    keep: Callable[[str, list[Key], int], None],
    type_: str,
    params: Sequence[tuple[str, str]],
    *,
    strict: bool,
    base: str = "",
) -> SearchPage:
    """Run a search of one resource type for ``access`` and return the page asked for.

    ``base`` is the server's base URL (absolute references to it are local); ``tx`` gives
    the session's open transaction. A search ordered by id pages by cursor and writes
    nothing; ``keep`` keeps the ordered matches of any other multi-page search under a key
    (in a write transaction) so later pages come from the same list.
    """
    if access is not None:
        params = narrowed(access, type_, params)
    request = SearchParser(host.search_params, base, host.max_chain_depth).parse(
        type_,
        params,
        strict=strict,
        default_count=host.default_page_size,
        max_count=host.max_page_size,
    )
    if access is not None:
        request.query = confined(access, request.query)
    if request.summary == "count" or request.count == 0:
        total = tx().searches.count(request.query)
        return SearchPage(type_, request, [], [], total, None, request.offset, 0, False)
    token = request.page_token
    if pages_by_cursor(request.query) and (token is None or is_cursor(token)):
        return _by_cursor(host, access, tx(), type_, request)
    return _kept(host, access, tx, keep, type_, request)


def _by_cursor(
    host: SearchHost, access: Access | None, t: Transaction, type_: str, request: SearchRequest
) -> SearchPage:
    """A page of a search ordered by id: from the cursor it brings, or the first page."""
    bound_to = binding(access, type_, request.used)
    count = request.count
    now = host.clock()
    query = request.query
    total: int | None = None
    if request.page_token is not None:
        cursor = read_cursor(request.page_token, bound_to, now)
        if cursor is None:
            raise _gone(type_)
        as_of: int | None = cursor.as_of
        offset = cursor.offset
        if cursor.backward:
            window = Window(as_of=as_of, before=cursor.key)
            matches, earlier = t.resources.matching(query, count, window)
            if not earlier:
                offset = 0  # the page before reached the first match
            more = True
        else:
            window = Window(as_of=as_of, after=cursor.key)
            matches, more = t.resources.matching(query, count, window)
        if request.total:
            total = t.searches.count(query, as_of)
    else:
        offset = request.offset
        matches, more = t.resources.matching(query, count, Window(offset=offset))
        as_of = t.searches.horizon() if more or offset else None
        if request.total:
            total = offset + len(matches) if matches and not more else t.searches.count(query)
    next_token = previous_token = None
    if as_of is not None and matches:
        if more:
            after = Cursor(as_of, matches[-1].id, False, offset + count, now)
            next_token = write_cursor(after, bound_to)
        if offset > 0:
            before = Cursor(as_of, matches[0].id, True, max(0, offset - count), now)
            previous_token = write_cursor(before, bound_to)
    included = _includes(t, request.includes, matches) if matches else []
    return SearchPage(
        type_,
        request,
        matches,
        included,
        total,
        request.page_token,
        offset,
        count,
        more,
        list(request.warnings),
        next_token,
        previous_token,
    )


def _kept(
    host: SearchHost,
    access: Access | None,
    tx: Callable[[], Transaction],
    keep: Callable[[str, list[Key], int], None],
    type_: str,
    request: SearchRequest,
) -> SearchPage:
    """A page of a search whose order a cursor cannot follow (``_sort`` on a value an update
    may change): its ordered matches are kept when it begins, and later pages read them."""
    warnings = list(request.warnings)
    total: int | None = None
    page: Page | None = None
    token = request.page_token
    offset = request.offset
    count = request.count
    if token is not None:
        kept = tx().searches.saved(_kept_under(access, token, type_), offset, count)
        if kept is None:
            raise _gone(type_)
        keys, kept_total = kept
        more = offset + count < kept_total
        if request.total:
            total = kept_total
    else:
        found = tx().searches.keys(request.query, count + 1)
        more = len(found) > count or offset > 0
        if not more:
            # One page holds every match: read it in the same transaction.
            keys = found
            page = _page(tx(), request, found)
            if request.total:
                total = len(keys)
        else:
            every = tx().searches.keys(request.query, MAX_KEPT + 1)
            if len(every) > MAX_KEPT:
                warnings.append(
                    Issue(
                        "warning",
                        "too-costly",
                        f"More than {MAX_KEPT} resources match; only the first {MAX_KEPT} can "
                        "be paged through. Narrow the search.",
                    )
                )
                every = every[:MAX_KEPT]
            # The page asked for comes from the kept list, like every later page.
            keys = every[offset : offset + count]
            more = offset + count < len(every)
            token = str(uuid.uuid4())
            keep(_kept_under(access, token, type_), every, host.clock())
            if request.total:
                capped = len(every) >= MAX_KEPT
                total = tx().searches.count(request.query) if capped else len(every)
    if page is None:
        page = _page(tx(), request, keys)
    matches, included = page
    previous = token if token is not None and offset > 0 else None
    return SearchPage(
        type_,
        request,
        matches,
        included,
        total,
        token,
        offset,
        count,
        more,
        warnings,
        token,
        previous,
    )


def _gone(type_: str) -> NotFound:
    return NotFound(
        f"No {type_} search with this _page_token is open to this access token (it "
        "belongs to another search, or has expired); run the search again",
        expression=("_page_token",),
    )


def searchset(host: SearchHost, page: SearchPage, base: str) -> Result:
    """The searchset Bundle of a search page: https://hl7.org/fhir/R4/bundle.html#searchset."""
    request, type_ = page.request, page.type
    offset, count = page.offset, page.count
    entries = [_entry(host, base, item, "match", request) for item in page.matches]
    entries += [_entry(host, base, item, "include", request) for item in page.included]
    if page.warnings:
        outcome = {"resource": operation_outcome(page.warnings), "search": {"mode": "outcome"}}
        entries.append(dump_json(outcome))
    links = [
        {"relation": "self", "url": _url(base, type_, request.used, page.token, offset, count)}
    ]
    if page.next_params is not None:
        links.append(
            {
                "relation": "next",
                "url": _url(base, type_, request.used, page.next_token, offset + count, count),
            }
        )
    if page.previous_token is not None and offset > 0:
        links.append(
            {
                "relation": "previous",
                "url": _url(
                    base,
                    type_,
                    request.used,
                    page.previous_token,
                    max(0, offset - count),
                    count,
                ),
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(host.clock())},
        "type": "searchset",
    }
    if page.total is not None:
        bundle["total"] = page.total
    bundle["link"] = links
    text = dump_json(bundle)
    if entries:
        text = text[:-1] + ',"entry":[' + ",".join(entries) + "]}"
    return Result(200, text=text)


def _page(t: Transaction, request: SearchRequest, keys: list[Key]) -> Page:
    matches = t.resources.read_many(keys)
    return matches, _includes(t, request.includes, matches) if matches else []


def _entry(
    host: SearchHost, base: str, item: StoredResource, mode: str, request: SearchRequest
) -> str:
    """One entry as JSON text; the stored resource is spliced in unless it must be subsetted."""
    full_url = dump_json(f"{base}/{item.type}/{item.id}")
    content = item.content or "{}"
    if request.summary is not None or request.elements is not None:
        resource = subset(host.definitions, parse_json(content), request.summary, request.elements)
        content = dump_json(resource)
    return (
        '{"fullUrl":' + full_url + ',"resource":' + content + ',"search":{"mode":"' + mode + '"}}'
    )


def _includes(
    tx: Transaction, includes: Sequence[Include], matches: Sequence[StoredResource]
) -> list[StoredResource]:
    """Resolve _include and _revinclude (https://hl7.org/fhir/R4/search.html#include)."""
    if not includes:
        return []
    seen: set[Key] = {(m.type, m.id) for m in matches}
    found: list[StoredResource] = []
    frontier: list[Key] = list(seen)
    for depth in range(ITERATE_DEPTH):
        rules = [i for i in includes if depth == 0 or i.iterate]
        if not rules or not frontier:
            break
        new_keys: list[Key] = []
        for rule in rules:
            sources = [k for k in frontier if rule.reverse or k[0] == rule.source_type]
            if not sources:
                continue
            if rule.reverse:
                keys = tx.index.referencing(rule.source_type, rule.param, sources)
            else:
                keys = tx.index.references_from(sources, rule.param)
                if rule.target_type is not None:
                    keys = [k for k in keys if k[0] == rule.target_type]
            for key in keys:
                if key not in seen:
                    seen.add(key)
                    new_keys.append(key)
        # a target the token may not read is left out, whether it exists or not; the cap
        # counts only what is shown, so unreadable targets cannot push readable ones out
        room = MAX_INCLUDED - len(found)
        resources: list[StoredResource] = []
        for start in range(0, len(new_keys), room):
            resources += read_visible(tx, new_keys[start : start + room])
            if len(resources) >= room:
                break
        resources = resources[:room]
        found.extend(resources)
        frontier = [(r.type, r.id) for r in resources]
        if len(found) >= MAX_INCLUDED:
            break
    return found


def _kept_under(access: Access | None, token: str, type_: str) -> str:
    """The key a search's matches are kept under: the token the client sees, bound to the
    type and to whoever made it (issuer, subject, client, patient), so nobody else and no
    other type's search can page through them."""
    owner = (
        ()
        if access is None
        else (access.issuer, access.subject, access.client_id, access.patient, access.scopes)
    )
    return hashlib.sha256(repr((token, type_, owner)).encode()).hexdigest()


def _url(
    base: str,
    type_: str,
    params: Sequence[tuple[str, str]],
    token: str | None,
    offset: int,
    count: int,
) -> str:
    return f"{base}/{type_}?" + urlencode(_paged(params, token, offset, count))


def _paged(
    params: Sequence[tuple[str, str]], token: str | None, offset: int, count: int
) -> list[tuple[str, str]]:
    items = [(k, v) for k, v in params if k != "_count"]
    items.append(("_count", str(count)))
    if token is not None:
        items += [("_page_token", token), ("_offset", str(offset))]
    elif offset:  # a first page asked for at an offset: self says so (search.html#return)
        items.append(("_offset", str(offset)))
    return items


__all__ = ["SearchPage", "search", "searchset"]
