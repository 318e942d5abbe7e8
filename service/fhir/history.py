"""The history interaction's parameters, its typed page and its Bundle:
https://hl7.org/fhir/R4/http.html#history."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from service.errors import BadRequest
from service.fhir.model import instant, parse_instant, parse_json
from service.fhir.results import Result
from service.storage import StoredResource

_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII digits that fit a 64-bit integer


class PageSizes(Protocol):
    """The page sizes of the FHIR service."""

    default_page_size: int
    max_page_size: int


def parse_history_params(
    params: Sequence[tuple[str, str]], sizes: PageSizes
) -> tuple[int, int | None, int | None, list[tuple[str, str]]]:
    """(count, since, before, the parameters to repeat in links) of a history request."""
    count = sizes.default_page_size
    since: int | None = None
    before: int | None = None
    kept: list[tuple[str, str]] = []
    for name, value in params:
        if name == "_count":
            try:
                count = min(max(int(value), 0), sizes.max_page_size)
            except ValueError as exc:
                raise BadRequest(f"_count must be a whole number, not {value!r}") from exc
            kept.append((name, str(count)))
        elif name == "_since":
            since = parse_instant(value, "_since")
            kept.append((name, value))
        elif name == "_page":
            if not _DIGITS.fullmatch(value):
                raise BadRequest("_page must come from a link of an earlier page")
            before = int(value)
        elif name not in ("_format", "_pretty"):
            raise BadRequest(f"The history parameter {name!r} is not supported")
    return count, since, before, kept


@dataclass
class HistoryPage:
    """One page of a history, newest first, and the cursor to the next (``next_before``: the
    position the next page starts before, None on the last page)."""

    type: str | None
    id: str | None
    versions: list[StoredResource]
    kept: list[tuple[str, str]]  # the parameters every page's link repeats
    before: int | None
    next_before: int | None

    @property
    def next_params(self) -> list[tuple[str, str]] | None:
        """The parameters of the next page, or None when this is the last."""
        if self.next_before is None:
            return None
        return [*self.kept, ("_page", str(self.next_before))]


def history_page(
    versions: list[StoredResource],
    type_: str | None,
    id_: str | None,
    count: int,
    kept: list[tuple[str, str]],
    before: int | None,
) -> HistoryPage:
    """The page of ``versions`` (read one more than ``count``, to know whether more follow)."""
    page = versions[:count]
    following = page[-1].seq if len(versions) > count and page else None
    return HistoryPage(type_, id_, page, kept, before, following)


def history_bundle(
    clock: Callable[[], int],
    base: str,
    history: HistoryPage,
    recreated: set[tuple[str, str, int]] | None = None,
) -> Result:
    """The history Bundle of one page; ``recreated``: the versions that created their resource
    again after a deletion (answered 201 when they were written)."""
    kept, page = history.kept, history.versions
    path = "/".join(p for p in (base, history.type, history.id, "_history") if p)
    links = [{"relation": "self", "url": _with_params(path, kept, history.before)}]
    if history.next_before is not None:
        links.append({"relation": "next", "url": _with_params(path, kept, history.next_before)})
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(clock())},
        "type": "history",
        "link": links,
    }
    entries = [_history_entry(base, item, recreated or set()) for item in page]
    if entries:
        bundle["entry"] = entries
    return Result(200, body=bundle)


def _history_entry(
    base: str, item: StoredResource, recreated: set[tuple[str, str, int]]
) -> dict[str, Any]:
    url = f"{item.type}/{item.id}"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{url}"}
    if item.deleted:
        entry["request"] = {"method": "DELETE", "url": url}
        entry["response"] = {
            "status": "204 No Content",
            "etag": f'W/"{item.version}"',
            "lastModified": instant(item.last_updated_us),
        }
        return entry
    entry["resource"] = parse_json(item.content or "{}")
    created = (
        item.version == 1
        or item.method == "POST"
        or (item.type, item.id, item.version) in recreated
    )
    entry["request"] = {
        "method": item.method if item.method in ("POST", "PUT", "PATCH") else "PUT",
        "url": item.type if item.method == "POST" else url,
    }
    entry["response"] = {
        "status": "201 Created" if created else "200 OK",
        "etag": f'W/"{item.version}"',
        "lastModified": instant(item.last_updated_us),
    }
    return entry


def _with_params(path: str, params: Sequence[tuple[str, str]], page: int | None) -> str:
    items = list(params)
    if page is not None:
        items.append(("_page", str(page)))
    return path + ("?" + urlencode(items) if items else "")
