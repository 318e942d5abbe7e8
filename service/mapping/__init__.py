"""Declarative inbound mappings: files in ``mappings/`` turn HL7 v2, CSV, JSON and
QuestionnaireResponses into our resources, with exact error locations and golden tests.

May import: ``service.errors`` and ``service.config`` only (beside storage and validation,
independent of both; the FHIR core's ``$ingest`` validates and writes what a mapping makes).
No HTTP or SQL I/O.
"""
