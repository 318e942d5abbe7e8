"""The "what matters" domain: record a conversation, and serve a patient's ranked priorities.

Both operations are compositions of FHIR interactions (one transaction to record, searches to
read), so this package sits on the FHIR core and does no I/O of its own.

May import: ``service.fhir`` and what it may import (storage types, validation, errors,
config). Never ``service.api``, ``service.exchange`` or ``service.cli``, nor Flask, SQL drivers
or ``requests``.
"""
