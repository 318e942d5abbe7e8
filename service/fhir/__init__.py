"""The FHIR core: the R4 RESTful interactions, search, Bundles, capability, ``$ingest`` and
the terminology operations.

Every caller (the API, the what-matters operations, the exchange worker, the CLI) works through
``FhirService`` (interactions.py): ``session(actor)`` opens a ``Session`` (session.py) over one
store transaction, in which each interaction is written once; ``perform(actor, work)`` runs a
write session and retries it when it loses a race. The ``Actor`` (actor.py) says who acts: the
access its token allows (enforced by guard.py on the transaction), the origin (client, server,
system), whether its writes bring their own Provenance, and what the request touched. No state
travels sideways in context variables.

Modules by job: router.py (the route table: every request and Bundle entry to its interaction),
writes.py (the write pipeline: version, index, listeners, Provenance, unique identifiers),
checking.py (types, ids, validation, ``$validate``); search: search_parser.py (parameters to
store criteria), search_executor.py (a search as a typed ``SearchPage``, and its searchset
Bundle), search_index.py (the SearchParameters and the values they find), index_values.py (the
index rows those values give); history.py, bundles.py (batch and transaction), references.py
(the one reference walker), ingest.py, access.py (scopes, compartment, ownership), guard.py
(the access guard), audit.py, capability.py and conformance_resources.py (the profiles folder,
served), terminology_ops.py (``$expand``, ``$validate-code``, ``$lookup`` over the terminology
held).

May import: ``service.storage`` (the Store port), ``service.validation``, ``service.mapping``,
``service.errors`` and ``service.config``. Never Flask, Werkzeug, SQLAlchemy, psycopg or
``requests``, and nothing above it (api, exchange, priorities, cli); exchange is known only
through the ``ChangeListener`` port defined here (writes.py).
"""
