"""Rules of https://hl7.org/fhir/R4/bundle.html that the Bundle's invariants leave to prose
(duplicates and versioned fullUrls are bdl-7 and bdl-8, evaluated with the other invariants).

- ``fullUrl`` is an absolute URL (or a well-formed ``urn:uuid:``/``urn:oid:``), and a RESTful
  ``fullUrl`` ends in the type and id of the entry's resource (bundle.html#bundle-unique);
- search results (``searchset`` matches) carry the id they were found under;
- in a ``document`` or ``message`` every reference resolves to an entry of the Bundle
  (documents.html#content, messaging.html#content), and a versioned reference in a document
  names the version the Bundle holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from service.errors import Issue

UUID_URN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
OID_URN = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")
_RESTFUL = re.compile(
    r"(?P<base>.*/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?"
)
# Bundle types whose references must resolve inside the Bundle
_SELF_CONTAINED = frozenset({"document", "message"})
# Elements whose references name things outside the document's content, by design
_NOT_CONTENT = frozenset({"Bundle"})


def uri_problem(value: str) -> str | None:
    """Why a ``urn:uuid:`` or ``urn:oid:`` value is malformed ("is not ..."), or None."""
    lower = value[:9].lower()
    if lower.startswith("urn:uuid:") and UUID_URN.fullmatch(value) is None:
        return "is not a valid urn:uuid (lower-case 8-4-4-4-12 hexadecimal digits)"
    if lower.startswith("urn:oid:") and OID_URN.fullmatch(value) is None:
        return "is not a valid urn:oid (dotted numbers starting 0, 1 or 2)"
    return None


def bundle_issues(bundle: dict[str, Any]) -> list[Issue]:
    """Every departure of ``bundle`` from the rules above."""
    issues: list[Issue] = []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return issues
    kind = bundle.get("type")
    targets: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        where = f"Bundle.entry[{index}]"
        if not isinstance(entry, dict):
            continue
        resource = entry.get("resource")
        resource = resource if isinstance(resource, dict) else None
        full_url = entry.get("fullUrl")
        if isinstance(full_url, str):
            issues += full_url_issues(full_url, resource, where)
            if resource is not None:
                targets.setdefault(full_url, resource)
        if resource is not None and isinstance(resource.get("resourceType"), str):
            if isinstance(resource.get("id"), str):
                targets.setdefault(f"{resource['resourceType']}/{resource['id']}", resource)
            search = entry.get("search")
            mode = search.get("mode") if isinstance(search, dict) else None
            if kind == "searchset" and mode in (None, "match") and "id" not in resource:
                issues.append(
                    Issue(
                        "error",
                        "required",
                        "A search result must carry its id",
                        (f"{where}.resource",),
                    )
                )
    if kind in _SELF_CONTAINED:
        issues += _unresolved(entries, targets, kind == "document")
    return issues


def full_url_issues(full_url: str, resource: dict[str, Any] | None, where: str) -> list[Issue]:
    """What is wrong with an entry's fullUrl: not absolute, or (a RESTful URL) disagreeing
    with the type or id of the entry's resource (bundle.html#bundle-unique)."""
    path = (f"{where}.fullUrl",)
    if uri_problem(full_url) is not None:
        return []  # the base rules report a malformed urn:uuid or urn:oid
    if _ABSOLUTE.fullmatch(full_url) is None:
        return [
            Issue(
                "error",
                "value",
                f"fullUrl {full_url!r} is not an absolute URL (bundle.html#bundle-unique)",
                path,
            )
        ]
    restful = _RESTFUL.fullmatch(full_url) if full_url.startswith(("http:", "https:")) else None
    if resource is None or restful is None or restful.group("base") is None:
        return []
    type_, id_ = resource.get("resourceType"), resource.get("id")
    if restful.group("type") == type_ and id_ is not None and restful.group("id") != id_:
        return [
            Issue(
                "error",
                "invalid",
                f"fullUrl {full_url!r} does not end in the resource's id {id_!r}",
                path,
            )
        ]
    if restful.group("type") != type_ and isinstance(type_, str) and id_ is not None:
        return [
            Issue(
                "error",
                "invalid",
                f"fullUrl {full_url!r} names a {restful.group('type')}, but the resource is a "
                f"{type_}",
                path,
            )
        ]
    return []


def _version(resource: dict[str, Any] | None) -> Any:
    meta = resource.get("meta") if resource is not None else None
    return meta.get("versionId") if isinstance(meta, dict) else None


def _unresolved(
    entries: list[Any], targets: dict[str, dict[str, Any]], document: bool
) -> list[Issue]:
    issues: list[Issue] = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        resource = entry["resource"]
        base = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        for reference, where in _references(resource, f"Bundle.entry[{index}].resource"):
            if reference.startswith("#") or resource.get("resourceType") in _NOT_CONTENT:
                continue
            found, version = _resolve(reference, base, targets)
            if found is None:
                issues.append(
                    Issue(
                        "error",
                        "not-found",
                        f"The reference {reference!r} does not resolve to an entry of this "
                        + ("document" if document else "message")
                        + "; everything it refers to must be in the Bundle",
                        (where,),
                    )
                )
            elif document and version is not None and _version(found) not in (None, version):
                issues.append(
                    Issue(
                        "error",
                        "not-found",
                        f"The reference {reference!r} names version {version}, but the document "
                        f"holds version {_version(found)}",
                        (where,),
                    )
                )
    return issues


def _resolve(
    reference: str, base: str | None, targets: dict[str, dict[str, Any]]
) -> tuple[dict[str, Any] | None, str | None]:
    """The entry resource a reference names (bundle.html#references), and the version it asks."""
    key, version = bundle_target(reference, base, targets)
    return (targets[key] if key is not None else None), version


def bundle_target(
    reference: str, base: str | None, targets: Mapping[str, Any]
) -> tuple[str | None, str | None]:
    """Which key of ``targets`` (the Bundle's fullUrls, and ``Type/id`` of its resources) a
    reference made in the entry whose fullUrl is ``base`` names, by the rules of
    bundle.html#references, and the version it asks for."""
    if reference in targets:
        return reference, None
    match = _RESTFUL.fullmatch(reference)
    if match is None:
        return None, None
    plain = f"{match.group('type')}/{match.group('id')}"
    version = match.group("version")
    absolute = (match.group("base") or "") + plain
    if absolute in targets:
        return absolute, version
    if match.group("base") is None:
        # relative: against the base of the entry's fullUrl, else by type and id
        restful = _RESTFUL.fullmatch(base) if base is not None else None
        relative_to = restful.group("base") if restful is not None else None
        if relative_to is not None and relative_to + plain in targets:
            return relative_to + plain, version
        return (plain if plain in targets else None), version
    return None, version


def _references(node: Any, where: str) -> Iterator[tuple[str, str]]:
    """Every ``Reference.reference`` under ``node`` (contained resources aside), with its path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "contained":
                continue
            if key == "reference" and isinstance(value, str):
                yield value, where
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    yield from _references(item, f"{where}.{key}[{index}]")
            elif isinstance(value, dict):
                yield from _references(value, f"{where}.{key}")
