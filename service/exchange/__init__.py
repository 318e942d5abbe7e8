"""Exchange with EHR partners and subscribers: the outbox, its worker, imports, subscriptions.

What the package is for: everything this service sends to or pulls from other servers.

- ``feed.py``: the feed that listens to every write of the FHIR core (its ``ChangeListener``
  port) and queues deliveries in the writing transaction; ``destinations.py``: where a row
  goes (``Destination(kind, name)``, parsed and formatted at the store's boundary);
- ``queue.py``: claim, lease, renew, settle and back off; ``worker.py``: the loop that claims
  rows and hands each to the channel its destination names; ``channels/``: the delivery
  interface (``Retry``, ``Refused``, ``Skipped``) and the partner sync, documents and rest-hook
  channels;
- ``admin.py``: outbox administration, the one use case the CLI and ``/admin/outbox`` call;
- ``partner_client.py`` (HTTP, the only module here that talks to other servers, through
  ``requests``), ``smart.py`` (SMART Backend Services), ``partners.py`` (the partners file),
  ``importer.py`` (pulling a patient's priorities), ``subscriptions.py`` and
  ``notifications.py`` (Subscriptions Backport: specs, topic, notification Bundles),
  ``summary.py`` (the "What matters to me" document).

May import: ``service.priorities``, ``service.fhir`` and everything below them (storage,
validation, mapping, errors, config). Never ``service.api`` or ``service.cli``, which call it.
"""
