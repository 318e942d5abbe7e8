"""Declarative inbound mappings: files in ``mappings/`` turn HL7 v2, CSV, JSON and
QuestionnaireResponses into our resources, with exact error locations and golden tests.
"""
