"""What an interaction gives back to the API layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.errors import Issue
from service.storage import StoredResource


@dataclass
class Result:
    """What an interaction produced: a status, the version concerned and/or a body."""

    status: int
    stored: StoredResource | None = None
    body: dict[str, Any] | None = None
    # A body already serialised (search Bundles are spliced from stored JSON, not re-encoded)
    text: str | None = None
    location: bool = False
    # Validation warnings of a write, returned with Prefer: return=OperationOutcome
    issues: tuple[Issue, ...] = ()
    # Headers of the answer besides those the rendering derives (Content-Location of an
    # asynchronous kick-off)
    headers: dict[str, str] = field(default_factory=dict)


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """Build an OperationOutcome resource from issues."""
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}
