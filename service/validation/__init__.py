"""Validation of FHIR resources: the base R4 rules, profiles (with snapshots generated from
differentials), extensions, FHIRPath invariants and local terminology.

Validation returns issues; the caller decides what they mean (a 400, a 422, a warning). The
vendored R4 definitions live in ``definitions/``; the profiles folder is loaded and checked at
start-up (profiles.py).

May import: ``service.errors`` and ``service.config`` only (it sits beside storage and mapping,
independent of both). No HTTP or SQL I/O.
"""
