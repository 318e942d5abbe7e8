"""An ingest's memory does not grow with its input: rows stream through, are written in
batches, and nothing is kept per row (the README's 100,000-row benchmark relies on it).

Memory is counted as the interpreter's allocated blocks (``sys.getallocatedblocks``, after a
collection) at each thousand records of one run: cheap enough to run every time, and exact
enough that keeping one small object per row (a set of every identifier made) fails."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

from flask.testing import FlaskClient

from service.fhir.actor import Actor
from service.fhir.ingest import ResolvedReferences, ingest
from tests.priorities.conversations import add_patient

HEADER = "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"


def _rows(count: int, nhs: str = "9000000009") -> Iterator[str]:
    yield HEADER
    for n in range(count):
        yield (
            f"r-{n},{nhs},2026-{1 + n % 12:02d}-{1 + n % 28:02d} 10:15,"
            f"Walking my dog {n},Nurse Ada Okafor,Bodnant Surgery,GP\n"
        )


def _held_blocks(client: FlaskClient, rows: int) -> dict[int, int]:
    """Blocks allocated at each thousand records of one streamed ingest of ``rows`` rows."""
    fhir = client.application.extensions["whatmatters.fhir"]
    mappings = client.application.extensions["whatmatters.mappings"]
    held: dict[int, int] = {}

    def progress(records: int) -> None:
        gc.collect()
        held.setdefault(records, sys.getallocatedblocks())

    _, report = ingest(
        fhir,
        Actor.system(),
        mappings.files["survey-csv"],
        _rows(rows),
        mappings.questionnaires,
        conceptmaps=mappings.conceptmaps,
        progress=progress,
    )
    assert report.created == rows, report.summary()
    return held


def test_an_ingest_holds_as_much_memory_after_3000_rows_as_after_1000(
    client: FlaskClient,
) -> None:
    add_patient(client)
    held = _held_blocks(client, 3000)
    growth = held[3000] - held[1000]
    # one object kept per row would be 2,000 blocks or more; the noise is a few hundred
    assert growth < 2000 * 0.25, f"{growth} more blocks held after 2,000 more rows: {held}"


def test_resolved_references_forget_the_oldest_beyond_their_limit() -> None:
    resolved = ResolvedReferences(limit=3)
    for n in range(5):
        resolved[f"Patient?identifier=s|{n}"] = f"Patient/p{n}"
    assert list(resolved) == [f"Patient?identifier=s|{n}" for n in (2, 3, 4)]
    resolved["Patient?identifier=s|3"] = "Patient/p3"  # known already: nothing forgotten
    assert len(resolved) == 3
    assert "Patient?identifier=s|2" in resolved
