"""Who a session works for: the ``Actor`` every session of the FHIR core is opened with.

An actor carries what used to travel sideways with a request: the access its token allows
(None: unrestricted), where the work comes from (a client's request, the server's own status
changes, or the system's bookkeeping), whether its writes bring their own Provenance, and the
resources the request touched (for its AuditEvent).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from service.fhir.access import Access

Origin = Literal["client", "server", "system"]


@dataclass(frozen=True)
class Actor:
    """Who acts in a session, and on what terms.

    ``origin``: ``client`` for a request (with or without a token), ``server`` for this
    server's own writes that clients may not make (a Subscription's status after its
    handshake), ``system`` for work of the service itself (the CLI, the worker, the audit
    trail). ``touched`` collects the (type, id) of each resource read or written through a
    guarded transaction, first ones first; it is shared by the copies ``replace`` makes.
    """

    access: Access | None = None
    origin: Origin = "client"
    provenance_supplied: bool = False
    touched: list[tuple[str, str]] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def client(cls, access: Access | None) -> Actor:
        """A client's request, restricted by ``access`` (None: the embedded ``none`` mode)."""
        return cls(access=access, origin="client")

    @classmethod
    def server(cls) -> Actor:
        """This server's own writes (the status of a Subscription), unrestricted."""
        return cls(origin="server")

    @classmethod
    def system(cls) -> Actor:
        """The service's own work (CLI, worker, audit trail), unrestricted."""
        return cls(origin="system")

    def supplying_provenance(self) -> Actor:
        """The same actor, whose writes bring their own Provenance: no other is added
        ($record-what-matters names the clinician who recorded the conversation)."""
        return replace(self, provenance_supplied=True)
