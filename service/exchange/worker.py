"""The outbox worker: claims groups of rows and hands each row to its destination's channel.

At-least-once delivery with an exactly-once effect: the queue (``queue.py``) leases one group
(one patient at one destination) at a time and settles each row; the channel the row's
destination names (``channels/``: partner sync, documents, rest-hook; ``bulk_export.py`` for
Bulk Data export jobs) delivers it, raising
``Retry`` (timeouts, 408, 429 and 5xx: backed off, honouring Retry-After), ``Refused`` (400,
403, 404, 409, 412, 422 and other refusals: dead with the destination's OperationOutcome) or
``Skipped`` (nothing left to deliver: discarded with the reason).
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence

from service.errors import FhirError, describe_exception
from service.exchange.bulk_export import BulkExport, ExportFolder
from service.exchange.channels import Channel, Refused, Retry, Skipped, Waiting
from service.exchange.channels.documents import Documents, IpsDocument, Records, Summariser
from service.exchange.channels.partner_api import PartnerApi
from service.exchange.channels.partner_sync import PartnerSync
from service.exchange.channels.rest_hook import RestHook
from service.exchange.destinations import Destination, Kind
from service.exchange.partner_client import HookClient, HttpHookClient, PartnerClient, Unreachable
from service.exchange.partners import Partner
from service.exchange.queue import Backoff, OutboxQueue
from service.fhir.interactions import FhirService
from service.fhir.model import now_us
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")


class Worker:
    """Leases outbox groups and delivers them; several may run at once, in threads or processes."""

    def __init__(
        self,
        fhir: FhirService,
        partners: Sequence[Partner],
        base_url: str,
        clients: Callable[[Partner], PartnerClient],
        *,
        summarise: Summariser | None = None,
        ips: IpsDocument | None = None,
        records: Records | None = None,
        lease_seconds: float = 60.0,
        backoff: Backoff | None = None,
        batch: int = 10,
        clock: Callable[[], int] = now_us,
        capability_ttl: float = 600.0,
        lookup_ttl: float = 300.0,
        learned: Callable[[Partner, str], None] | None = None,
        hooks: HookClient | None = None,
        exports: ExportFolder | None = None,
        endpoint_allow: Sequence[str] = (),
    ) -> None:
        self.fhir = fhir
        self.partners = {p.destination: p for p in partners}
        self.base_url = base_url.rstrip("/")
        self.summarise = summarise  # the patient's summary, for partners that take documents
        self.clock = clock
        self.owner = f"worker-{uuid.uuid4().hex[:12]}"
        self.rng = random.Random()

        def now() -> int:  # the worker's clock as it is at each call (tests move it)
            return self.clock()

        self.partner_api = PartnerApi(
            fhir,
            self.partners,
            self.base_url,
            clients,
            capability_ttl=capability_ttl,
            lookup_ttl=lookup_ttl,
            learned=learned,
        )
        self.documents = Documents(self.partner_api, summarise, now, ips=ips, records=records)
        self.partner_sync = PartnerSync(self.partner_api, self.documents)
        self.rest_hook = RestHook(
            fhir, self.base_url, hooks or HttpHookClient(), now, endpoint_allow
        )
        self.channels: dict[Kind, Channel] = {
            Kind.PARTNER: self.partner_sync,
            Kind.SUBSCRIPTION: self.rest_hook,
        }
        # Bulk Data export jobs: their files are written by the same workers, one row a job
        self.bulk_export = BulkExport(fhir, exports) if exports is not None else None
        if self.bulk_export is not None:
            self.channels[Kind.EXPORT] = self.bulk_export
        # the lease is renewed before each row: it needs to outlive one row's partner calls,
        # not a group's. A row slower than the lease may be sent again by the worker that takes
        # it over, which the idempotent writes (and the subscribers' event numbers) make harmless.
        self.queue = OutboxQueue(
            fhir,
            lease_us=int(lease_seconds * 1_000_000),
            backoff=backoff or Backoff(),
            batch=batch,
            clock=now,
            rng=lambda: self.rng,
            on_dead=self._gave_up,
        )
        if self.bulk_export is not None:
            queue = self.queue
            # an export runs longer than one lease: its lease is renewed before each page
            self.bulk_export.renew = lambda row: queue.renew([row], row.lease_owner or "")

    # -- the loop --------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Lease one group and deliver it; return how many rows were handled."""
        now = self.clock()
        if not self.queue.due(now):
            return 0
        owner = f"{self.owner}-{uuid.uuid4().hex[:12]}"  # this claim's lease, no other
        rows = self.queue.claim(owner, now)
        if rows:
            self.deliver_group(rows)
        return len(rows)

    def drain(self, timeout: float = 30.0) -> int:
        """Deliver until nothing is due (tests and one-shot runs); return rows handled."""
        handled = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.run_once()
            if not done:
                break
            handled += done
        return handled

    @property
    def instance_id(self) -> str:
        """This installation's identifier, stamped on what it originates."""
        return self.fhir.instance_id

    def check_partners(self) -> None:
        """Read each partner's CapabilityStatement once, at start-up, and say what is wrong."""
        self.partner_sync.check_partners()

    def heartbeats(self) -> None:
        """Send a heartbeat to each active subscription quiet for its heartbeat period; remove
        the files of Bulk Data exports past their time."""
        self.rest_hook.heartbeats()
        if self.bulk_export is not None:
            self.bulk_export.sweep()

    def serve_forever(self, stop: threading.Event, threads: int = 2, poll: float = 0.5) -> None:
        """Deliver in ``threads`` threads until ``stop`` is set; send heartbeats."""
        try:
            self.check_partners()
        except Exception as exc:  # noqa: BLE001 - a check; delivery must start regardless
            log.error("checking the partners failed: %s", describe_exception(exc))

        def loop(heartbeats: bool) -> None:
            while not stop.is_set():
                try:
                    if heartbeats:
                        self.heartbeats()
                    if not self.run_once():
                        stop.wait(poll)
                # the database may be down; the loop must outlive it
                except Exception as exc:  # noqa: BLE001 - logged without its message
                    log.error("outbox delivery failed; trying again: %s", describe_exception(exc))
                    stop.wait(max(poll, 1.0))

        workers = [
            threading.Thread(target=loop, args=(n == 0,), name=f"outbox-{n}", daemon=True)
            for n in range(max(threads, 1))
        ]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()

    # -- one group ---------------------------------------------------------------------------------

    def deliver_group(self, rows: Sequence[OutboxRow]) -> None:
        """Deliver leased rows in order; stop the group at the first row that must wait.

        Before each row the lease is renewed; a worker that finds its lease gone (it was too
        slow and another worker took the group) stops at once, so no row is sent twice.
        """
        if not rows:
            return
        owner = rows[0].lease_owner or ""
        queue = self.queue
        # each row sends its resource's current state: a later row of the same resource whose
        # version was sent already has nothing left to send. (Skipping the earlier row instead
        # would leave the rows between, which may refer to the resource, waiting for it.)
        sent: dict[tuple[str, str, str], int] = {}
        for position, row in enumerate(rows):
            if not queue.renew(rows[position:], owner):
                log.warning("the lease on outbox row %s was lost; stopping its group", row.id)
                return
            key = (row.res_type, row.res_id, row.kind)
            channel = self._channel(row)
            if channel is not None and channel.coalesces and sent.get(key, 0) >= row.version:
                if not queue.done(row, owner, attempted=False):
                    return
                continue
            try:
                version = self.deliver(row)
                if version is not None:
                    sent[key] = version
            except (Retry, Unreachable) as exc:
                dead = (
                    queue.dead_dependency(row, exc.waits_for) if isinstance(exc, Waiting) else None
                )
                if dead is not None:
                    queue.blocked(row, dead, exc)
                else:
                    queue.retry_later(row, exc)
                queue.release(rows[position + 1 :])  # keep the group's order: they wait too
                return
            except Skipped as exc:
                settled = queue.discarded(row, owner, str(exc))
            except Refused as exc:
                settled = queue.dead(row, str(exc), exc.status, exc.outcome)
            except FhirError as exc:  # our own data cannot be sent as it is
                settled = queue.dead(row, str(exc), None)
            # a bug or the database: wait, do not lose the row
            except Exception as exc:  # noqa: BLE001 - logged without its message
                log.error("outbox row %s failed unexpectedly: %s", row.id, describe_exception(exc))
                queue.retry_later(row, Retry(f"{type(exc).__name__} while delivering"))
                queue.release(rows[position + 1 :])
                return
            else:
                settled = queue.done(row, owner)
            if not settled:
                return

    def deliver(self, row: OutboxRow) -> int | None:
        """Deliver one row through its destination's channel (raises Retry, Unreachable,
        Refused or Skipped); return the version of the resource a partner now holds, if any."""
        channel = self._channel(row)
        if channel is None:
            raise Refused(f"{row.destination} is no longer in the partners file")
        return channel.deliver(row)

    def _channel(self, row: OutboxRow) -> Channel | None:
        """The channel the row's destination names (None: a destination of no known kind)."""
        try:
            destination = Destination.parse(row.destination)
        except ValueError:
            return None
        return self.channels.get(destination.kind)

    def _gave_up(self, row: OutboxRow, reason: str) -> None:
        channel = self._channel(row)
        if channel is not None:
            channel.gave_up(row, reason)
