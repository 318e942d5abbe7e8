"""The CapabilityStatement: https://hl7.org/fhir/R4/capabilitystatement.html.

It lists exactly what this server does, built from the same tables the code uses.
"""

from __future__ import annotations

from typing import Any

from service.fhir.model import FHIR_VERSION, SUPPORTED_TYPES
from service.fhir.search import supported_parameters

SOFTWARE_NAME = "What Matters"
SOFTWARE_VERSION = "0.1.0"
_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
_PARAM_DOCS = {
    "_id": "Logical id of the resource (comma-separated for OR)",
    "identifier": "Resource.identifier as system|value, |value, system| or value",
}


def capability_statement(base: str, released: str) -> dict[str, Any]:
    """Build the CapabilityStatement for the server at ``base``."""
    resources = []
    for type_ in SUPPORTED_TYPES:
        resources.append(
            {
                "type": type_,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
                "interaction": [{"code": code} for code in _INTERACTIONS],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchParam": [
                    {
                        "name": name,
                        "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"
                        if name == "_id"
                        else f"http://hl7.org/fhir/SearchParameter/{type_}-identifier",
                        "type": kind,
                        "documentation": _PARAM_DOCS[name],
                    }
                    for name, kind in supported_parameters(type_).items()
                ],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": released,
        "publisher": "What Matters",
        "kind": "instance",
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {
            "description": "What Matters FHIR service: a patient's priorities and goals",
            "url": base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "history-system"},
                ],
            }
        ],
    }
