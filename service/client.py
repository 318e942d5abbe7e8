"""A small Python client for clinical apps: a patient's priorities from a What Matters server.

It fetches ``$what-matters`` for a patient named by id or by identifier and returns the
answer twice: as ``fhir.resources`` R4B models (the Bundle, the merged List, the setting Lists,
the Goals, Observations and Provenances), and as the plain ranked items the facade and the page
show. The service itself never imports this module::

    from service.client import WhatMattersClient
    client = WhatMattersClient("http://localhost:8080/fhir")
    found = client.priorities(identifier="https://fhir.nhs.uk/Id/nhs-number|9000000009")
    for item in found.items:
        print(item.rank, item.text, item.recorded_by, item.settings)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import requests
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.goal import Goal
from fhir.resources.R4B.list import List as FhirList
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.provenance import Provenance

from service.priorities.view import priorities as plain_items

__all__ = ["Item", "Priorities", "WhatMattersClient", "WhatMattersError"]


class WhatMattersError(Exception):
    """The server refused or could not answer; ``outcome`` is its OperationOutcome, if any."""

    def __init__(self, message: str, status: int | None = None, outcome: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


@dataclass(frozen=True)
class Item:
    """One thing the patient said, as the page shows it."""

    rank: int
    ranked: bool  # False: no current priorities list ranks it yet
    kind: str  # statement | goal
    text: str  # the patient's words, verbatim
    reference: str
    language: str | None
    status: str | None
    recorded_by: str | None
    settings: list[str]
    date: str | None
    goals: list[str] = field(default_factory=list)
    change: str | None = None  # new | changed | removed, when asked with ``since``
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> Item:
        """An Item from one entry of the facade's ``priorities``."""
        return cls(
            rank=int(plain["rank"]),
            ranked=bool(plain.get("ranked", True)),
            kind=str(plain["kind"]),
            text=str(plain["text"]),
            reference=str(plain.get("reference", "")),
            language=plain.get("language"),
            status=plain.get("status"),
            recorded_by=plain.get("recordedBy"),
            settings=list(plain.get("settings") or []),
            date=plain.get("date"),
            goals=[str(g["text"]) for g in plain.get("goals") or []],
            change=(plain.get("change") or {}).get("mark"),
            raw=plain,
        )


@dataclass
class Priorities:
    """A patient's priorities: the R4B models and the plain items, most important first."""

    bundle: Bundle
    merged: FhirList
    lists: list[FhirList]
    goals: list[Goal]
    observations: list[Observation]
    provenances: list[Provenance]
    items: list[Item]


class WhatMattersClient:
    """Reads a patient's priorities from a What Matters FHIR base URL."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        session: requests.Session | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers["Accept"] = "application/fhir+json"
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def priorities(
        self,
        patient_id: str | None = None,
        identifier: str | None = None,
        since: str | None = None,
    ) -> Priorities:
        """The priorities of the patient with ``patient_id``, or with ``identifier``
        (``system|value``); ``since`` (a FHIR instant) marks what changed since then."""
        if (patient_id is None) == (identifier is None):
            raise ValueError("Name the patient by patient_id or by identifier, not both")
        if patient_id is None:
            patient_id = self.patient_id(str(identifier))
        params = {"since": since} if since else None
        body = self._get(f"/Patient/{quote(patient_id, safe='')}/$what-matters", params)
        bundle = Bundle.model_validate(body)
        resources = [e.resource for e in bundle.entry or [] if e.resource is not None]
        return Priorities(
            bundle=bundle,
            merged=resources[0],  # type: ignore[arg-type]  # the merged List comes first
            lists=[r for r in resources[1:] if isinstance(r, FhirList)],
            goals=[r for r in resources if isinstance(r, Goal)],
            observations=[r for r in resources if isinstance(r, Observation)],
            provenances=[r for r in resources if isinstance(r, Provenance)],
            items=[Item.from_plain(p) for p in plain_items(body)["priorities"]],
        )

    def patient_id(self, identifier: str) -> str:
        """The id of the one Patient with ``identifier`` (``system|value``)."""
        body = self._get("/Patient", {"identifier": identifier, "_elements": "id"})
        ids = [
            str(e["resource"]["id"])
            for e in body.get("entry", [])
            if e.get("search", {}).get("mode", "match") == "match"
        ]
        if len(ids) != 1:
            raise WhatMattersError(f"{len(ids)} patients have the identifier {identifier}")
        return ids[0]

    def _get(self, path: str, params: dict[str, str] | None) -> dict[str, Any]:
        response = self.session.get(self.base_url + path, params=params, timeout=self.timeout)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code != 200 or not isinstance(body, dict):
            issues = (body or {}).get("issue", []) if isinstance(body, dict) else []
            message = next((i.get("diagnostics") for i in issues if i.get("diagnostics")), None)
            raise WhatMattersError(
                message or f"HTTP {response.status_code} from {path}",
                response.status_code,
                body,
            )
        return body
