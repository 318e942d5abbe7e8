"""The CapabilityStatement: https://hl7.org/fhir/R4/capabilitystatement.html.

It lists exactly what this server does, built from the same tables the code uses: the
interactions and operations from the route table (service.fhir.router: what is listed is what
routes), the search parameters from the SearchParameters, the profiles from the validator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from service.fhir import router
from service.fhir.conformance_resources import CONFORMANCE_TYPES
from service.fhir.model import FHIR_VERSION, INSTANCE_EXTENSION, SUPPORTED_TYPES, instance_uri
from service.fhir.search_index import SearchParameters
from service.validation.value_sets import Terminology

SOFTWARE_NAME = "What Matters"
SOFTWARE_VERSION = "0.1.0"
# the conformance resources of the profiles folder are routed like any type, but the FHIR core
# refuses to write them (405): of their routes, these interactions answer
_READ_ONLY = ("read", "search-type")
_SPECIAL_PARAMS = [
    {
        "name": "_id",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-id",
        "type": "token",
    },
    {
        "name": "_lastUpdated",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
        "type": "date",
    },
]


def _search_params(params: SearchParameters, type_: str) -> list[dict[str, Any]]:
    listed = list(_SPECIAL_PARAMS)
    for code, param in sorted(params.for_type(type_).items()):
        if code in ("_id", "_lastUpdated"):
            continue
        listed.append({"name": code, "definition": param.url, "type": param.type})
    return listed


BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
TOPIC_EXTENSION = f"{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"


def _interactions(codes: list[str]) -> list[dict[str, str]]:
    return [{"code": code} for code in codes]


def _operations(type_: str | None) -> list[dict[str, str]]:
    return [{"name": name, "definition": url} for name, url in router.operations(type_)]


def capability_statement(
    base: str,
    released: str,
    params: SearchParameters,
    supported_profiles: Callable[[str], list[str]] = lambda _type: [],
    security: dict[str, Any] | None = None,
    instance_id: str | None = None,
    topics: Sequence[str] = (),
) -> dict[str, Any]:
    """Build the CapabilityStatement for the server at ``base``.

    ``supported_profiles`` gives, per type, the profiles the server validates against
    (CapabilityStatement.rest.resource.supportedProfile). ``instance_id`` is this
    installation's identifier, published in ``implementation`` for partners (exchange).
    ``topics`` are the SubscriptionTopics a Subscription may name: Subscription then lists
    the backport-subscription profile and each topic's canonical (the Backport IG's R4 server
    CapabilityStatement), so a client learns what to subscribe with.
    """
    resources = []
    for type_ in SUPPORTED_TYPES:
        supported = supported_profiles(type_)
        if type_ == "Subscription" and topics:
            supported = [*supported, f"{BACKPORT}/StructureDefinition/backport-subscription"]
        resources.append(
            {
                "type": type_,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
                **({"supportedProfile": supported} if supported else {}),
                "interaction": _interactions(router.type_interactions(type_)),
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "full-support",
                "conditionalUpdate": True,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": [
                    *sorted(
                        f"{type_}:{code}"
                        for code, p in params.for_type(type_).items()
                        if p.type == "reference"
                    ),
                    "*",
                ],
                "searchRevInclude": [
                    *sorted(
                        f"{source}:{code}"
                        for source in SUPPORTED_TYPES
                        for code, p in params.for_type(source).items()
                        if p.type == "reference" and (type_ in p.targets or not p.targets)
                    ),
                    "*",
                ],
                "searchParam": _search_params(params, type_),
                "operation": _operations(type_),
                **(
                    {"extension": [{"url": TOPIC_EXTENSION, "valueCanonical": t} for t in topics]}
                    if type_ == "Subscription" and topics
                    else {}
                ),
            }
        )
    for type_ in CONFORMANCE_TYPES:
        resources.append(
            {
                "type": type_,
                "documentation": "Read-only: the conformance resources of the profiles folder",
                "interaction": _interactions(
                    [code for code in router.type_interactions(type_) if code in _READ_ONLY]
                ),
                "searchParam": [
                    {"name": "_id", "type": "token"},
                    {"name": "url", "type": "uri"},
                    {"name": "name", "type": "string"},
                    {"name": "version", "type": "token"},
                    {"name": "status", "type": "token"},
                ],
                **(
                    {"operation": [{"name": n, "definition": d} for n, d in own]}
                    if (own := router.operations(type_, own=True))
                    else {}
                ),
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": released,
        "publisher": "What Matters",
        "kind": "instance",
        "instantiates": [
            f"{BACKPORT}/CapabilityStatement/backport-subscription-server-r4",
            # Bulk Data Access IG: $export (system and Patient level)
            "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data",
        ],
        "software": {"name": SOFTWARE_NAME, "version": SOFTWARE_VERSION},
        "implementation": {
            **(
                {"extension": [{"url": INSTANCE_EXTENSION, "valueUri": instance_uri(instance_id)}]}
                if instance_id
                else {}
            ),
            "description": "What Matters FHIR service: a patient's priorities and goals",
            "url": base,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                **({"security": security} if security else {}),
                "resource": resources,
                "interaction": _interactions(router.system_interactions()),
                **({"operation": _operations(None)} if router.operations(None) else {}),
                # [base]/Patient/[id]/[type] searches (the member types' patient parameter)
                "compartment": ["http://hl7.org/fhir/CompartmentDefinition/patient"],
            }
        ],
    }


def smart_security(token_url: str | None, authorize_url: str | None) -> dict[str, Any]:
    """rest.security of a SMART on FHIR server (SMART App Launch 2.x conformance.html): the
    SMART-on-FHIR service code and the oauth-uris extension."""
    uris = [
        {"url": name, "valueUri": url}
        for name, url in (("token", token_url), ("authorize", authorize_url))
        if url
    ]
    security: dict[str, Any] = {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "description": "Bearer access tokens from the configured SMART issuer; scopes v1 and v2",
    }
    if uris:
        security["extension"] = [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": uris,
            }
        ]
    return security


def terminology_capabilities(base: str, released: str, terminology: Terminology) -> dict[str, Any]:
    """``GET [base]/metadata?mode=terminology`` (http.html#capabilities): the
    TerminologyCapabilities of the code systems this server holds whole (those $lookup and
    $validate-code answer for), with what its $expand, $validate-code and $lookup do (R4
    terminologycapabilities.html)."""
    held = [
        (resource["url"], resource.get("version"))
        for key, resource in terminology.resources.items()
        if key.startswith("CodeSystem|") and terminology.complete(resource["url"])
    ]
    systems = []
    for url, version in sorted(held):
        entry: dict[str, Any] = {"uri": url}
        if version:
            entry["version"] = [{"code": version, "isDefault": True}]
        systems.append(entry)
    return {
        "resourceType": "TerminologyCapabilities",
        "status": "active",
        "date": released,
        "kind": "instance",
        "implementation": {"description": "What Matters FHIR service", "url": base},
        "codeSystem": systems,
        "expansion": {"hierarchical": False, "paging": True, "incomplete": False},
        "validateCode": {"translations": False},
        "codeSearch": "explicit",
    }
