"""Exchange with EHR partners: outbox and worker, SMART Backend Services, subscriptions.

The outbox feed listens to every write of the FHIR core (its ``ChangeListener`` port) and queues
deliveries in the writing transaction; the worker delivers them over HTTP (``requests``), the
only package besides ``api`` that talks to other servers.

May import: ``service.priorities``, ``service.fhir`` and everything below them (storage,
validation, mapping, errors, config). Never ``service.api`` or ``service.cli``.
"""
