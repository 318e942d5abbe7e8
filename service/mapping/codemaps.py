"""Codemaps: the code translations a mapping names, written inline or taken from a ConceptMap
of the profiles folder."""

from __future__ import annotations

from typing import Any

from service.mapping.files import MappingError

# ConceptMap equivalences that say the source code has no translation
UNMAPPED_EQUIVALENCE = frozenset({"unmatched", "disjoint"})


def resolve_codemap(
    definition: dict[str, Any], conceptmaps: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """A codemap as source, target and map: inline, or from a ConceptMap resource.

    ConceptMap semantics (https://hl7.org/fhir/R4/conceptmap.html): each element's first target
    whose equivalence is not ``unmatched`` or ``disjoint`` is the translation.
    """
    url = definition.get("conceptmap")
    if url is None:
        return definition
    concept_map = conceptmaps.get(str(url))
    if concept_map is None:
        raise MappingError(f"no ConceptMap {url} in the profiles folder")
    groups = concept_map.get("group", [])
    mapped: dict[str, Any] = {}
    for group in groups:
        for element in group.get("element", []):
            for target in element.get("target", []):
                equivalence = target.get("equivalence", "equivalent")
                if "code" in target and equivalence not in UNMAPPED_EQUIVALENCE:
                    mapped.setdefault(
                        str(element["code"]),
                        {"code": target["code"], "equivalence": equivalence},
                    )
    first = groups[0] if groups else {}
    return {
        "source": first.get("source", concept_map.get("sourceUri", url)),
        "target": first.get("target", concept_map.get("targetUri", "")),
        "map": mapped,
        "unmapped": definition.get("unmapped", "error"),
    }
