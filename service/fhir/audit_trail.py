"""The audit trail: where each request's AuditEvent is stored, at once or in short batches.

``AuditTrail.record`` takes the AuditEvent of a request before its answer leaves.

- With a window of 0 it stores the event in a write transaction of its own and returns once it
  is committed (every answer's record is durable before the answer is sent).
- With a window (the default, 200 ms), it adds the event to this process's buffer; the buffer
  is stored in one transaction (multi-row inserts) at most ``window`` after the first of its
  events came, and on ``flush`` (before the trail itself is read, and at shutdown). While
  requests come, the request that finds the buffer due (or full) stores it on its way out; a
  timer thread stores what is left when no request comes. (A writer thread storing every batch
  spent most of its time waiting for the interpreter's lock behind busy request threads, which
  let it in a few milliseconds at a time: its batches fell seconds behind and held up the
  writes waiting for them.) An answered request whose record is still in the buffer when the
  process is killed outright (a crash, SIGKILL, power loss) has no record: that is the window
  operators accept, at most ``window`` plus one transaction's time. While the buffer cannot be
  written (the last write of the buffer failed, or it has waited ``STALLED_SECONDS`` past its
  window), ``record`` refuses (``StoreUnavailable``), so no read is answered whose record could
  be lost for longer; the buffered events are written when the database is back. A refused read
  is answered 503 and its event is not kept (it would say the read was answered).

AuditEvents are ordinary resources once stored: indexed, searchable with system/ scopes.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Protocol

from service.errors import FhirError, StorageError, StoreUnavailable
from service.fhir.audit import audit_index_values
from service.fhir.model import new_resource_id
from service.fhir.writes import Change, WriteHost, next_version, notify
from service.storage import IndexRows, Store, StoredResource

log = logging.getLogger("whatmatters.audit")
BATCH = 500  # events a transaction takes at most
STALLED_SECONDS = 10.0  # a buffer not written for this long (past its window) means trouble
CAPACITY = 50_000  # events a buffer holds at most while the database is away


class AuditHost(WriteHost, Protocol):
    """What the trail needs from the FHIR service (``FhirService`` is one)."""

    store: Store


def store_events(host: AuditHost, events: Sequence[dict[str, Any]]) -> None:
    """Store AuditEvents as new resources, with their index rows, in one transaction."""
    batch: list[tuple[StoredResource, IndexRows]] = []
    changes: list[Change] = []
    params = host.search_params
    fixed_shape = params.only_core("AuditEvent")
    for event in events:
        stored, content = next_version(host, "AuditEvent", new_resource_id(), event, None, "POST")
        values = audit_index_values(content) if fixed_shape else None
        rows = (
            params.index(content) if values is None else params.index_values("AuditEvent", values)
        )
        batch.append((stored, rows))
        changes.append(Change("AuditEvent", stored.id, 1, content))
    with host.store.transaction(write=True) as tx:
        tx.resources.insert_new(batch)
        for change in changes:
            notify(host, tx, change)


class AuditTrail:
    """Stores the AuditEvent of every request (see the module's docstring)."""

    def __init__(self, host: AuditHost, window_seconds: float) -> None:
        self.host = host
        self.window = window_seconds
        self._lock = threading.Condition()
        self._writing = threading.Lock()  # one batch in flight at a time
        # the buffered events, each with when it came (monotonic), oldest first
        self._buffer: list[tuple[float, dict[str, Any]]] = []
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._closed = False
        self._failing = False  # the last write of the buffer failed
        if window_seconds > 0:
            _TRAILS.add(self)

    def record(self, event: dict[str, Any]) -> None:
        """Store ``event`` now (window 0) or buffer it, storing the buffer when it is due;
        raise StorageError or StoreUnavailable when it cannot be (read: the request must not
        be answered)."""
        if self.window <= 0:
            store_events(self.host, [event])
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._start()  # (again, if a failure ended the timer)
                now = time.monotonic()
                waited = now - self._buffer[0][0] if self._buffer else 0.0
                stalled = waited > self.window + STALLED_SECONDS or len(self._buffer) >= CAPACITY
                if self._failing or stalled:
                    # the last write of the trail failed, or it has not been written for
                    # long, or it is full: the database is away
                    raise StoreUnavailable("The audit trail cannot be written")
                if not self._buffer:
                    self._lock.notify()  # the timer starts counting the window
                self._buffer.append((now, event))
                # requests store it from half the window on, so the timer (at the full
                # window) finds it stored unless requests have stopped coming
                due = waited >= self.window / 2 or len(self._buffer) >= BATCH
        if closed:  # after close(): each event is stored on its own
            store_events(self.host, [event])
            return
        if due and self._writing.acquire(blocking=False):
            # this request stores the buffer on its way out (the timer thread is for lulls)
            try:
                self._write_head()
            except Exception as exc:  # noqa: BLE001 - kept for the timer to retry; reads are refused meanwhile
                log.error("AuditEvents could not be stored (%s)", type(exc).__name__)
            finally:
                self._writing.release()

    def flush(self) -> None:
        """Store everything buffered so far (before the trail is read; at shutdown)."""
        if self.window <= 0:
            return
        while True:
            with self._writing:
                if not self._write_head():
                    return

    def close(self) -> None:
        """Flush and stop the timer; later events are stored one by one."""
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        try:
            self.flush()
        except (StorageError, FhirError):
            log.error("%d AuditEvents could not be stored at shutdown", self.pending())

    def pending(self) -> int:
        """How many events wait in the buffer."""
        with self._lock:
            return len(self._buffer)

    def _start(self) -> None:
        # started in the process that records (gunicorn forks workers after the app is made)
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="audit-trail", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """The timer: store what is due when no request has (a lull), batch after batch while
        more is due, or retry a write that failed. It sleeps through the window rather than
        polling, so it takes the interpreter's lock once per window at most."""
        while True:
            with self._lock:
                while not self._buffer and not self._closed:
                    self._lock.wait()
                if self._closed:
                    return
                wait = self._buffer[0][0] + self.window - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue  # the buffer may have been stored meanwhile: look again
            try:
                with self._writing:  # one batch; the loop comes back if more is due
                    if self._due(time.monotonic() - self.window):
                        self._write_head()
            except Exception as exc:  # noqa: BLE001 - the timer must live on to retry
                log.error("AuditEvents could not be stored (%s); retrying", type(exc).__name__)
                time.sleep(min(1.0, self.window))

    def _due(self, since: float) -> bool:
        """Whether the buffer holds an event that came before ``since`` (monotonic)."""
        with self._lock:
            return bool(self._buffer) and self._buffer[0][0] <= since

    def _write_head(self) -> bool:
        """Store the head of the buffer (a batch at most); False when it was empty. The
        caller holds ``_writing``."""
        with self._lock:
            taken = [event for _, event in self._buffer[:BATCH]]
        if taken:
            self._write(taken)
        return bool(taken)

    def _write(self, taken: list[dict[str, Any]]) -> None:
        """Store ``taken`` (the head of the buffer) and drop it from the buffer."""
        try:
            store_events(self.host, taken)
        except BaseException:
            self._failing = True
            raise
        self._failing = False
        with self._lock:
            del self._buffer[: len(taken)]


_TRAILS: weakref.WeakSet[AuditTrail] = weakref.WeakSet()


def close_all() -> None:
    """Close every buffered trail of this process (at exit: what they hold is stored)."""
    for trail in list(_TRAILS):
        trail.close()


def flush_all() -> None:
    """Store what every trail of this process holds now (a trail that cannot is logged)."""
    for trail in list(_TRAILS):
        try:
            trail.flush()
        except (StorageError, FhirError) as exc:
            log.error("AuditEvents could not be stored: %s", type(exc).__name__)


atexit.register(close_all)

__all__ = ["AuditTrail", "close_all", "flush_all", "store_events"]
