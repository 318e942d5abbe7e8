"""Run a search and build its searchset Bundle: https://hl7.org/fhir/R4/search.html.

Paging: when a search has more matches than one page, its ordered matches are kept (up to
``MAX_KEPT``) under a token, and ``next``/``previous`` links page through that list. Writes made
while a client pages therefore neither repeat nor skip a match.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import urlencode

from service.errors import Issue, NotFound
from service.fhir.access import confined, current_access, read_visible
from service.fhir.model import dump_json, instant, parse_json
from service.fhir.results import Result, operation_outcome
from service.fhir.search import Include, SearchParser, SearchRequest
from service.fhir.subsetting import subset
from service.storage import StoredResource, Transaction

if TYPE_CHECKING:
    from service.fhir.searchparams import SearchParameters
    from service.validation.definitions import Definitions

MAX_KEPT = 20_000
MAX_INCLUDED = 1_000
ITERATE_DEPTH = 4
Key = tuple[str, str]
Page = tuple[list[StoredResource], list[StoredResource]]
T = TypeVar("T")


class SearchHost(Protocol):
    """What a search needs from the FHIR service (``FhirService`` is one). Named here, so this
    module does not import interactions.py, which calls it: no import cycle."""

    search_params: SearchParameters
    definitions: Definitions
    default_page_size: int
    max_page_size: int
    max_chain_depth: int
    clock: Callable[[], int]

    def read_only(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work`` in a read transaction."""
        ...

    def run(self, work: Callable[[Transaction], T], *, retry: bool = True) -> T:
        """Run ``work`` in one write transaction."""
        ...


def search_type(
    service: SearchHost,
    type_: str,
    params: Sequence[tuple[str, str]],
    base: str,
    *,
    strict: bool,
    tx: Transaction | None,
) -> Result:
    """Search one resource type and return a searchset Bundle."""
    request = SearchParser(service.search_params, base, service.max_chain_depth).parse(
        type_,
        params,
        strict=strict,
        default_count=service.default_page_size,
        max_count=service.max_page_size,
    )
    access = current_access()
    if access is not None:
        request.query = confined(access, request.query)
    warnings = list(request.warnings)

    def read(work: Any) -> Any:
        return work(tx) if tx is not None else service.read_only(work)

    total: int | None = None
    page: Page | None = None
    token = request.page_token
    offset = request.offset
    count = request.count
    if request.summary == "count" or count == 0:
        total = read(lambda t: t.count(request.query))
        keys: list[Key] = []
        more = False
    elif token is not None:
        kept = read(lambda t: t.saved_search(_kept_under(token, type_), offset, count))
        if kept is None:
            raise NotFound(
                f"No {type_} search with this _page_token is open to this access token (it "
                "belongs to another search, or has expired); run the search again",
                expression=("_page_token",),
            )
        keys, kept_total = kept
        more = offset + count < kept_total
        if request.total:
            total = kept_total
    else:

        def first_page(t: Transaction) -> tuple[list[Key], Page | None]:
            found = t.search_keys(request.query, count + 1)
            if len(found) > count or offset > 0:
                return found[:count], None
            # One page holds every match: read it in the same transaction.
            return found, _page(t, request, found)

        keys, done = read(first_page)
        more = done is None
        if done is not None:
            page = done
            if request.total:
                total = len(keys)
        else:
            every = read(lambda t: t.search_keys(request.query, MAX_KEPT + 1))
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
            moment = service.clock()
            new_token = _kept_under(token, type_)
            if tx is not None:
                tx.save_search(new_token, every, moment)
            else:
                service.run(lambda t: t.save_search(new_token, every, moment))
            if request.total:
                capped = len(every) >= MAX_KEPT
                total = read(lambda t: t.count(request.query)) if capped else len(every)
    if page is None:
        page = read(lambda t: _page(t, request, keys))
    matches, included = page
    entries = [_entry(service, base, item, "match", request) for item in matches]
    entries += [_entry(service, base, item, "include", request) for item in included]
    if warnings:
        outcome = {"resource": operation_outcome(warnings), "search": {"mode": "outcome"}}
        entries.append(dump_json(outcome))
    links = [{"relation": "self", "url": _url(base, type_, request.used, token, offset, count)}]
    if more and token is not None and count > 0:
        links.append(
            {
                "relation": "next",
                "url": _url(base, type_, request.used, token, offset + count, count),
            }
        )
    if token is not None and offset > 0:
        links.append(
            {
                "relation": "previous",
                "url": _url(base, type_, request.used, token, max(0, offset - count), count),
            }
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(service.clock())},
        "type": "searchset",
    }
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    text = dump_json(bundle)
    if entries:
        text = text[:-1] + ',"entry":[' + ",".join(entries) + "]}"
    return Result(200, text=text)


def _page(t: Transaction, request: SearchRequest, keys: list[Key]) -> Page:
    matches = t.read_many(keys)
    return matches, _includes(t, request.includes, matches) if matches else []


def _entry(
    service: SearchHost, base: str, item: StoredResource, mode: str, request: SearchRequest
) -> str:
    """One entry as JSON text; the stored resource is spliced in unless it must be subsetted."""
    full_url = dump_json(f"{base}/{item.type}/{item.id}")
    content = item.content or "{}"
    if request.summary is not None or request.elements is not None:
        resource = subset(
            service.definitions, parse_json(content), request.summary, request.elements
        )
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
                keys = tx.referencing(rule.source_type, rule.param, sources)
            else:
                keys = tx.references_from(sources, rule.param)
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


def _kept_under(token: str, type_: str) -> str:
    """The key a search's matches are kept under: the token the client sees, bound to the
    type and to whoever made it (issuer, subject, client, patient), so nobody else and no
    other type's search can page through them."""
    access = current_access()
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
    items = [(k, v) for k, v in params if k != "_count"]
    items.append(("_count", str(count)))
    if token is not None:
        items += [("_page_token", token), ("_offset", str(offset))]
    return f"{base}/{type_}?" + urlencode(items)


__all__ = ["search_type"]
