"""The conformance resources of the profiles folder, served read-only.

``GET /fhir/StructureDefinition/wmty-statement`` (with the snapshot the service generated),
and the same for ValueSet, CodeSystem, OperationDefinition, SearchParameter, ConceptMap and
Measure; search by ``url``, ``_id`` or ``name``. They change only with the profiles folder, so every
write is 405 (https://hl7.org/fhir/R4/http.html, capability-based read-only resources).
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from typing import Any

from service.errors import BadRequest, NotFound
from service.fhir.model import dump_json, instant, now_us
from service.fhir.results import Result
from service.storage import StoredResource

CONFORMANCE_TYPES = (
    "StructureDefinition",
    "ValueSet",
    "CodeSystem",
    "OperationDefinition",
    "SearchParameter",
    "ConceptMap",
    "Measure",
)
SEARCH_PARAMS = ("url", "_id", "name", "version", "status")
_CHANGED = "_changed"


class ConformanceResources:
    """The profiles folder's conformance resources, by type and id."""

    def __init__(
        self,
        resources: Sequence[dict[str, Any]],
        snapshots: dict[str, list[dict[str, Any]]] | None = None,
    ) -> None:
        self.loaded_us = now_us()
        self._by_type: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in CONFORMANCE_TYPES}
        for resource in resources:
            kind = resource.get("resourceType")
            if kind not in self._by_type or not isinstance(resource.get("id"), str):
                continue
            served = copy.deepcopy(resource)
            snapshot = (snapshots or {}).get(str(served.get("url")))
            if kind == "StructureDefinition" and snapshot is not None:
                served["snapshot"] = {
                    "element": [{k: v for k, v in e.items() if k != _CHANGED} for e in snapshot]
                }
            served["meta"] = {
                **served.get("meta", {}),
                "versionId": "1",
                "lastUpdated": instant(self.loaded_us),
            }
            self._by_type[kind][served["id"]] = served

    def _stored(self, resource: dict[str, Any]) -> StoredResource:
        return StoredResource(
            type=resource["resourceType"],
            id=resource["id"],
            version=1,
            last_updated_us=self.loaded_us,
            deleted=False,
            content=dump_json(resource),
            method="GET",
        )

    def read(self, type_: str, id_: str) -> Result:
        """read: the resource, or 404."""
        found = self._by_type.get(type_, {}).get(id_)
        if found is None:
            raise NotFound(f"{type_}/{id_} is not in this server's profiles folder")
        return Result(200, stored=self._stored(found))

    def search(self, type_: str, params: Sequence[tuple[str, str]], base: str) -> Result:
        """search-type by url, _id, name, version or status (exact, comma for OR)."""
        matches = list(self._by_type.get(type_, {}).values())
        for name, value in params:
            if name in ("_count", "_format", "_pretty", "_summary"):
                continue
            key = name.split(":", 1)[0]
            if key not in SEARCH_PARAMS:
                raise BadRequest(
                    f"{type_} is searched here by {', '.join(SEARCH_PARAMS)} only, not {name!r}",
                    expression=(name,),
                )
            wanted = set(value.split(","))
            field = "id" if key == "_id" else key
            matches = [m for m in matches if str(m.get(field, "")).split("|")[0] in wanted]
        bundle = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "meta": {"lastUpdated": instant(now_us())},
            "type": "searchset",
            "total": len(matches),
            "link": [{"relation": "self", "url": f"{base}/{type_}"}],
            "entry": [
                {
                    "fullUrl": f"{base}/{type_}/{m['id']}",
                    "resource": m,
                    "search": {"mode": "match"},
                }
                for m in sorted(matches, key=lambda r: str(r["id"]))
            ],
        }
        if not bundle["entry"]:
            del bundle["entry"]
        return Result(200, body=bundle)
