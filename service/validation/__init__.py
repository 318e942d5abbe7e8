"""Validation of FHIR resources: the base R4 rules, profiles (with snapshots generated from
differentials), extensions, FHIRPath invariants, QuestionnaireResponses against their
Questionnaire, and local terminology.

Validation returns issues; the caller decides what they mean (a 400, a 422, a warning). One
verb throughout: each validator's entry point is ``validate`` (and ``validate_profiles``,
``validate_extensions`` for those questions). The vendored R4 definitions live in
``definitions/``; the profiles folder is loaded and checked at start-up (profiles.py).

The modules, by job:

- ``validator.py``: ``ResourceValidator``, what the FHIR core calls (base rules; profiles,
  extensions and Questionnaires).
- ``structure.py`` (with ``primitives.py``, ``narrative.py``, ``bundles.py``): the base R4
  rules of a resource's JSON, walked with an explicit ``Walk``.
- ``profile_validation.py`` (with ``profile_tree.py``, ``profile_walk.py``,
  ``extensions.py``): a resource against a profile, and its extensions against theirs.
- ``questionnaire.py`` (with ``questionnaire_answers.py``): a QuestionnaireResponse against its
  Questionnaire.
- ``definitions.py``, ``profiles.py``, ``snapshots.py``, ``vendor.py``: the R4 definitions, the
  profiles folder and its snapshots, re-vendoring.
- ``fhirpath.py``, ``terminology.py``, ``dates.py``, ``comparison.py``: invariants, code format
  checks, date ranges, the order of two values.
- ``fhirpath_compiled.py``: the recurring invariant shapes as Python closures (``fhirpath.py``
  interprets the rest with fhirpathpy).
- ``vital_signs.py``: the core vital-signs profiles, applied to an Observation by its code.
- ``value_sets.py``, ``bindings.py``, ``vendor_terminology.py``: local terminology (the R4
  core and HL7 THO value sets and code systems: expansion, look-up, code checks), the binding
  strength rules, re-vendoring the terminology.

May import: ``service.errors`` and ``service.config`` only (it sits beside storage and mapping,
independent of both; see ``[tool.importlinter]`` in pyproject.toml), and libraries that do no
I/O (fhirpathpy, not flask, sqlalchemy or requests). No HTTP or SQL I/O; state lives in the
objects passed along, never in module-level context variables.
"""
