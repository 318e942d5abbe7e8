"""Declarative inbound mappings: files in ``mappings/`` turn HL7 v2, CSV, JSON and
QuestionnaireResponses into our resources, with exact error locations and golden tests.

The modules, by job:

- ``files.py``: a mapping file read, checked against its schema and linted.
- ``sources.py``: the input read as records (HL7 v2 segments, CSV rows, JSON, answered items).
- ``engine.py``: ``Mapper``, the rules applied to records; with ``source_dates.py`` (dates and
  times from source text), ``codemaps.py`` (code translations), ``resource_paths.py`` (target
  paths read and written) and ``sdc.py`` (SDC Observation extraction).
- ``golden.py``: a mapping's golden tests.

May import: ``service.errors`` and ``service.config`` only (beside storage and validation,
independent of both; see ``[tool.importlinter]`` in pyproject.toml; the FHIR core's
``$ingest`` validates and writes what a mapping makes). No HTTP or SQL I/O.
"""
