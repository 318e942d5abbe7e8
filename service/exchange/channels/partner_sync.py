"""The partner sync channel: a partner holds this service's resources themselves.

Each row carries the current state of its resource, written at the partner by conditional
create or update on the resource identifier (``partner_api.PartnerApi``), so a redelivery after
a crash or a lost acknowledgement changes nothing; a deletion deletes the partner's copy. Rows
of types the partner takes only as the patient's summary go to the documents channel.
"""

from __future__ import annotations

import json
import logging

from service.exchange.channels import Refused, Retry, Skipped
from service.exchange.channels.documents import SUMMARY_TYPES, Documents
from service.exchange.channels.partner_api import PartnerApi
from service.exchange.partner_client import Unreachable
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")


class PartnerSync:
    """Delivers a partner's rows: the resource as it is now, or its deletion."""

    coalesces = True

    def __init__(self, api: PartnerApi, documents: Documents) -> None:
        self.api = api
        self.documents = documents

    def deliver(self, row: OutboxRow) -> int | None:
        """Deliver one row (raises Retry, Unreachable or Refused); return the version of the
        resource the partner now holds (its current state is what is sent), if any."""
        target = self.api.prepare(row)
        if target is None:
            return None
        partner, client, capability, current = (
            target.partner,
            target.client,
            target.capability,
            target.current,
        )
        if Documents.takes(capability, row.res_type, partner):
            return self.documents.send(target, row)
        if current.deleted:
            if capability.writes(row.res_type):
                self.api.send_delete(client, row)
            else:
                raise Skipped(f"{partner.name} accepts no {row.res_type} writes")
            return current.version
        content = json.loads(current.content or "{}")
        if not capability.writes(row.res_type):
            if row.res_type in SUMMARY_TYPES or row.res_type == "Provenance":
                # nothing it accepts carries this: set aside, saying so (never "done")
                raise Skipped(
                    f"{partner.name} accepts no {row.res_type} writes"
                    + ("" if row.res_type == "Provenance" else " and no DocumentReference")
                )
            raise Refused(f"{partner.name} accepts no {row.res_type} writes")
        self.api.send_resource(client, capability, row.res_type, content, current.version)
        return current.version

    def gave_up(self, row: OutboxRow, reason: str) -> None:
        """Nothing to do: the partner's dead row is the operator's to see."""

    def check_partners(self) -> None:
        """Read each partner's CapabilityStatement once, at start-up, and say what is wrong:
        none at all, a base URL the partner does not call its own, or this very instance."""
        for partner in self.api.partners.values():
            try:
                capability = self.api.capability(self.api.client(partner))
            except (Retry, Refused, Unreachable) as exc:
                log.warning(
                    "partner %s: its CapabilityStatement could not be read (%s); deliveries "
                    "wait until it can",
                    partner.name,
                    type(exc).__name__,
                )
                continue
            if not capability.usable:
                log.warning(
                    "partner %s publishes no usable CapabilityStatement at %s/metadata; its "
                    "rows go dead until it does",
                    partner.name,
                    partner.base_url,
                )
            if capability.base and capability.base != partner.base_url:
                log.warning(
                    "partner %s calls its base %s, the partners file says %s",
                    partner.name,
                    capability.base,
                    partner.base_url,
                )
            if capability.instance == self.api.instance_id:
                log.warning("partner %s is this instance itself; nothing is sent", partner.name)
