"""The FHIR core: the R4 RESTful interactions, search, Bundles, capability and ``$ingest``.

``FhirService`` (interactions.py) is the unit every caller drives: the API, the what-matters
operations, the exchange worker and the CLI. It receives its collaborators (a Store, a
validator, change listeners) and returns ``Result``s or raises typed ``FhirError``s; it does no
I/O of its own.

May import: ``service.storage`` (the Store port), ``service.validation``, ``service.mapping``,
``service.errors`` and ``service.config``. Never Flask, Werkzeug, SQLAlchemy, psycopg or
``requests``, and nothing above it (api, exchange, priorities, cli); exchange is known only
through the ``ChangeListener`` port defined here.
"""
