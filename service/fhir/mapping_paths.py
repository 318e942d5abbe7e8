"""The R4 element definitions as the mapping checker sees them: the mapping package may not
import validation, so this layer, which sees both, hands the checker a look-up function."""

from __future__ import annotations

from service.mapping.files import Element, ElementChildren, MappingFile, check_targets
from service.validation.definitions import Definitions


def element_children(definitions: Definitions) -> ElementChildren:
    """The child elements of an element path, from the vendored R4 StructureDefinitions."""

    def children(path: str) -> dict[str, Element] | None:
        model = definitions.model(path.split(".", 1)[0])
        if model is None:
            return None
        kids = model.children.get(path)
        if kids is None:
            return None
        return {
            name: Element(element.max, element.types, element.content_reference)
            for name, element in kids.items()
        }

    return children


def target_problems(mapping: MappingFile, definitions: Definitions | None = None) -> list[str]:
    """The target paths of a mapping's fields that R4 does not define, each at its line."""
    return check_targets(mapping, element_children(definitions or Definitions.shared()))
