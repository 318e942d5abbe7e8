"""The "what matters" domain: record a conversation, and serve a patient's ranked priorities.

Both operations are compositions of FHIR interactions (one transaction to record, searches to
read), so this package sits on the FHIR core and does no I/O of its own.
"""
