"""The "what matters" domain: record a conversation, and serve a patient's ranked priorities.

Both operations (operations.py) are compositions of FHIR interactions in sessions of the
caller's ``Actor``: ``$what-matters`` reads through one session with typed searches
(``Session.search``), ``$record-what-matters`` writes one transaction Bundle. conversation.py
reads the input, record.py builds the resources, items.py gathers one item per thing said,
merged.py renders the merged List and its changes, view.py the plain view of it. No I/O of its
own.

May import: ``service.fhir`` and what it may import (storage types, validation, errors,
config). Never ``service.api``, ``service.exchange`` or ``service.cli``, nor Flask, SQL drivers
or ``requests``.
"""
