"""The FHIR core's entry point: ``FhirService`` holds the collaborators (a Store, a validator,
change listeners, settings) and opens sessions for actors: https://hl7.org/fhir/R4/http.html.

``session(actor)`` yields a ``Session`` (session.py) over one transaction, in which each
interaction is written once; ``perform(actor, work)`` runs a write session and retries it when
it lost a race to another writer (without ``If-Match``; with it the answer is 412).
``run``/``read_only`` give the raw, unguarded transaction for the service's own bookkeeping
(outbox rows, counters). The service does no I/O of its own; the API layer renders ``Result``s.
"""

from __future__ import annotations

import contextlib
import functools
import random
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from service.config import NHS_NUMBER_SYSTEM
from service.errors import Conflict, FhirError, PreconditionFailed
from service.fhir.actor import Actor
from service.fhir.checking import (
    Validator,
    check_id,
    check_type,
    parse_json_patch,
    without_resource,
)
from service.fhir.conformance_resources import ConformanceResources
from service.fhir.model import SUPPORTED_TYPES, now_us, parse_json
from service.fhir.results import Result
from service.fhir.search_index import SearchParameters
from service.fhir.search_parser import DEFAULT_MAX_CHAIN_DEPTH
from service.fhir.session import Session
from service.fhir.writes import Change, ChangeListener
from service.storage import Query, Store, Transaction, VersionConflict
from service.validation.definitions import Definitions
from service.validation.value_sets import Terminology

T = TypeVar("T")
WRITE_RETRIES = 5


class FhirService:
    """The FHIR core over one Store, checked by one Validator."""

    def __init__(
        self,
        store: Store,
        validator: Validator,
        search_params: SearchParameters,
        definitions: Definitions,
        *,
        thorough: Validator | None = None,
        default_page_size: int = 50,
        max_page_size: int = 1000,
        clock: Callable[[], int] = now_us,
        return_warnings: bool = True,
        conformance: ConformanceResources | None = None,
        unique_identifier_systems: Sequence[str] = (NHS_NUMBER_SYSTEM,),
        max_chain_depth: int = DEFAULT_MAX_CHAIN_DEPTH,
        terminology: Terminology | None = None,
    ) -> None:
        self.store = store
        self.max_chain_depth = max_chain_depth
        self.validator = validator
        self.search_params = search_params
        self.definitions = definitions
        # the value sets and code systems held (vendored and the profiles folder's): $expand...
        self.terminology = terminology or definitions.terminology
        # $validate also runs the snapshot invariants, which writes do not (yet) pay for
        self.thorough = thorough or validator
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self.clock = clock
        self.return_warnings = return_warnings
        self.conformance = conformance
        self.unique_identifier_systems = frozenset(unique_identifier_systems)
        # the exchange outbox listens here, so every write path (REST, Bundles, operations,
        # ingest) queues its deliveries in the same transaction
        self.listeners: list[ChangeListener] = []

    # -- sessions -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def session(self, actor: Actor, *, write: bool = False) -> Iterator[Session]:
        """A session of ``actor`` over one transaction (a write one with ``write``), guarded
        by the actor's access; committed when the block ends, rolled back if it raises."""
        session = Session(self, actor, write)
        try:
            yield session
        except BaseException as exc:
            session.close(type(exc), exc, exc.__traceback__)
            raise
        session.close()

    def perform(self, actor: Actor, work: Callable[[Session], T], *, retry: bool = True) -> T:
        """Run ``work`` in a write session of ``actor``, again if it lost a race to another
        writer (``retry``; without it, or after the last try, the loss is answered)."""
        attempts = WRITE_RETRIES if retry else 1
        for attempt in range(attempts):
            try:
                with self.session(actor, write=True) as session:
                    return work(session)
            except VersionConflict as exc:
                if attempt < attempts - 1:
                    time.sleep(random.uniform(0, 0.01 * 2**attempt))  # jitter, then try again
                    continue
                if retry:
                    raise Conflict(
                        "The resource was changed by another request at the same time; "
                        "retry the request"
                    ) from exc
                raise PreconditionFailed(
                    "The resource was changed by another request (version conflict)"
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def run(self, work: Callable[[Transaction], T], *, retry: bool = True) -> T:
        """Run ``work`` on the raw store in one write transaction, retried like ``perform``:
        the service's own bookkeeping (outbox rows, counters), unguarded."""
        return self.perform(Actor.system(), lambda session: work(session.tx), retry=retry)

    def read_only(self, work: Callable[[Transaction], T]) -> T:
        """Run ``work`` on the raw store in a read transaction (unguarded)."""
        with self.store.transaction(write=False) as tx:
            return work(tx)

    @functools.cached_property
    def instance_id(self) -> str:
        """The identifier of this installation (made once with its database)."""
        return self.store.instance_id()

    # -- maintenance ----------------------------------------------------------------------------

    def reindex(
        self,
        batch_size: int = 500,
        restart: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Rebuild the search index of every current resource, in short batches.

        Each batch is one transaction that also records how far the job got, so an interrupted
        reindex resumes where it stopped; readers are never blocked for longer than a batch.
        Returns how many resources were reindexed in all.
        """
        job = "reindex"
        total = self.read_only(lambda tx: sum(tx.searches.count(Query(t)) for t in SUPPORTED_TYPES))
        state = self.read_only(lambda tx: tx.jobs.progress(job))
        if restart or state is None:
            last: tuple[str, str] | None = None
            done = 0
        else:
            last, done = state

        def batch(tx: Transaction) -> tuple[tuple[str, str] | None, int]:
            keys = tx.resources.current_keys(last, batch_size)
            for type_, id_ in keys:
                tx.locks.hold(f"{type_}/{id_}")  # the same lock a writer of this resource takes
                current = tx.resources.read(type_, id_)
                if current is None or current.deleted or current.content is None:
                    continue
                tx.index.replace(type_, id_, self.search_params.index(parse_json(current.content)))
            new_last = keys[-1] if keys else None
            tx.jobs.set_progress(job, new_last, done + len(keys) if keys else None)
            return new_last, len(keys)

        while True:
            last, count = self.run(batch)
            done += count
            if progress is not None:
                progress(done, max(total, done))
            if last is None:
                return done


__all__ = [
    "Actor",
    "Change",
    "ChangeListener",
    "FhirError",
    "FhirService",
    "Result",
    "Session",
    "Validator",
    "check_id",
    "check_type",
    "parse_json_patch",
    "without_resource",
]
