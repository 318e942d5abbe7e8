"""Base R4 structural validation: https://hl7.org/fhir/R4/json.html and the base snapshots.

Checks, for a resource in JSON: element names (unknown elements are errors), JSON shapes that
follow from cardinality (arrays for repeating elements), minimum cardinality, choice types,
primitive formats (``primitives.py``: the regex of each R4 primitive type), and required
bindings (with invariants, extensible ones too; ``bindings.py``). Every problem is reported,
each with its FHIRPath. The walk carries where it is (the resource and its root, for invariants and
``#id`` references) as a ``Walk`` passed down, never as ambient state.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from service.errors import Issue
from service.validation.bindings import add_once, binding_issues
from service.validation.contained import local_reference_issues
from service.validation.dates import date_range
from service.validation.definitions import Definitions, ElementDef, TypeModel
from service.validation.fhirpath import InvariantEngine
from service.validation.narrative import narrative_issues
from service.validation.primitives import primitive_issues, short

ID_MAX = 64
_ID = re.compile(r"[A-Za-z0-9\-.]+")  # datatypes.html#id, with its length below
# Invariants not evaluated, and why:
# - ele-1 (a value or children) is what the structural walk already checks, element by element;
# - txt-1/txt-2 use htmlChecks(), which FHIRPath engines define for themselves: narrative.py
#   checks them in Python;
# - que-7 tests "answer is Boolean", which fhirpathpy answers false for a FHIR boolean (a false
#   alarm on the official Questionnaire-bb example);
# - per-1, rng-2, age-1, ctm-1 and dom-3 raise errors inside fhirpathpy (hasValue(), comparing
#   quantities, 'as' on a collection); per-1, rng-2, age-1 and que-7 are checked in Python
#   below;
# - ref-1 looks up %rootResource.contained.id for every reference, which is quadratic in the
#   size of the resource.
# dom-3 and ref-1 are checked in Python instead, on every write: contained.py.
NOT_EVALUATED = frozenset(
    {"ele-1", "txt-1", "txt-2", "que-7", "per-1", "rng-2", "age-1", "ctm-1", "dom-3", "ref-1"}
)


def _period_reversed(node: dict[str, Any]) -> bool:
    """per-1 (start <= end), where the two values certainly disagree at their precision."""
    start, end = node.get("start"), node.get("end")
    if not isinstance(start, str) or not isinstance(end, str):
        return False
    first, last = date_range(start), date_range(end)
    return first is not None and last is not None and first[0] > last[1]


def _range_reversed(node: dict[str, Any]) -> bool:
    """rng-2 (low <= high) for a Range whose two ends have the same unit."""
    low, high = node.get("low"), node.get("high")
    if not isinstance(low, dict) or not isinstance(high, dict):
        return False
    a, b = low.get("value"), high.get("value")
    same_unit = (low.get("system"), low.get("code")) == (high.get("system"), high.get("code"))
    numbers = all(isinstance(v, int | float | Decimal) and not isinstance(v, bool) for v in (a, b))
    return same_unit and numbers and a > b  # type: ignore[operator]


def _age_invalid(node: dict[str, Any]) -> bool:
    """age-1 as R4 writes it: a value has a code; the system, if any, is UCUM; a value is
    positive."""
    value, system = node.get("value"), node.get("system")
    number = isinstance(value, int | float | Decimal) and not isinstance(value, bool)
    return (
        (value is not None and node.get("code") is None)
        or (system is not None and system != "http://unitsofmeasure.org")
        or (number and value <= 0)  # type: ignore[operator]
    )


def _exists_without_boolean(node: dict[str, Any]) -> bool:
    """que-7: an enableWhen with operator 'exists' answers with a boolean."""
    return node.get("operator") == "exists" and "answerBoolean" not in node


# Invariants fhirpathpy cannot run, checked here in Python instead.
_PYTHON_CHECKS = {
    "per-1": _period_reversed,
    "rng-2": _range_reversed,
    "age-1": _age_invalid,
    "que-7": _exists_without_boolean,
}
_CODED = frozenset({"code", "Coding", "CodeableConcept"})
# Elements naming a code or identifier system: absolute URIs, never local names
_ABSOLUTE_SYSTEMS = frozenset({"Coding.system", "Quantity.system", "Identifier.system"})
_ABSOLUTE_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:\S+")


def _unpaired_nulls(node: dict[str, Any], expr: str) -> list[Issue]:
    """json.html#primitive: a null in a primitive array only keeps it aligned with its
    ``_name`` companion, whose item there must then hold something (an id or extensions)."""
    issues = []
    for key, value in node.items():
        if key.startswith("_") or not isinstance(value, list) or None not in value:
            continue
        companion = node.get(f"_{key}")
        for index, item in enumerate(value):
            paired = isinstance(companion, list) and index < len(companion) and companion[index]
            if item is None and not paired and any(v is not None for v in value):
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"{key}[{index}] is null, and _{key}[{index}] gives it no id or "
                        "extension: a null only stands beside one",
                        (f"{expr}.{key}[{index}]",),
                    )
                )
    return issues


def _capitalise(type_code: str) -> str:
    return type_code[0].upper() + type_code[1:]


@dataclass(frozen=True)
class Walk:
    """Where the walk is: the resource whose elements are being checked (FHIRPath
    ``%resource``, and the container of its ``#id`` references) and its root (``%rootResource``:
    the resource itself unless it is contained)."""

    resource: dict[str, Any] | None = None
    root: dict[str, Any] | None = None

    def enter(self, resource: dict[str, Any], contained: bool) -> Walk:
        """The walk inside ``resource``, found here (as a contained resource when ``contained``)."""
        return Walk(resource, self.root if contained else resource)


class StructureValidator:
    """Validate resources against the base R4 StructureDefinitions.

    With ``invariants`` the FHIRPath constraints of the snapshots are evaluated too
    (fhirpathpy, R4 model), except the few listed in ``NOT_EVALUATED``.
    """

    def __init__(
        self, definitions: Definitions, invariants: bool = False, compiled: bool = True
    ) -> None:
        self._definitions = definitions
        self._invariants = invariants
        # compiled: recurring invariant shapes run as Python closures (fhirpath_compiled.py)
        self._engine = InvariantEngine(compiled=compiled)

    def validate(self, resource: Any, expected_type: str | None = None) -> list[Issue]:
        """Return every base-R4 problem of ``resource``; an empty list means it is valid.

        Invariants read the resource in place: neither the compiled closures nor fhirpathpy
        change what they walk (tests/validation/test_compiled_invariants.py checks it)."""
        return self._validate(resource, expected_type)

    def _validate(self, resource: Any, expected_type: str | None) -> list[Issue]:
        issues: list[Issue] = []
        if not isinstance(resource, dict):
            return [Issue("error", "structure", "A resource must be a JSON object", ())]
        resource_type = resource.get("resourceType")
        if not isinstance(resource_type, str):
            return [Issue("error", "required", "The resource has no resourceType", ())]
        if expected_type is not None and resource_type != expected_type:
            return [
                Issue(
                    "error",
                    "invalid",
                    f"The resourceType is {resource_type!r} but {expected_type!r} was expected",
                    ("resourceType",),
                )
            ]
        self._resource(resource, resource_type, resource_type, issues, Walk())
        return issues

    def _resource(
        self, node: dict[str, Any], rtype: str, expr: str, issues: list[Issue], walk: Walk
    ) -> None:
        model = self._definitions.model(rtype)
        if model is None or model.kind != "resource" or model.abstract:
            issues.append(
                Issue("error", "structure", f"{rtype!r} is not a FHIR R4 resource type", (expr,))
            )
            return
        rid = node.get("id")
        if isinstance(rid, str) and not is_valid_id(rid):
            issues.append(
                Issue(
                    "error",
                    "value",
                    "A resource id is 1 to 64 letters, digits, '-' and '.'",
                    (f"{expr}.id",),
                )
            )
        # fhirpath.html#vars: %rootResource is the resource itself unless it is contained (a
        # Bundle entry's resource, a Parameters resource, are roots of their own)
        contained = expr.rsplit(".", 1)[-1].startswith("contained[")
        self._object(node, model, rtype, expr, issues, walk.enter(node, contained), True)
        if not contained:
            issues += local_reference_issues(node, expr)

    def _object(
        self,
        node: dict[str, Any],
        model: TypeModel,
        path: str,
        expr: str,
        issues: list[Issue],
        walk: Walk,
        is_resource: bool = False,
    ) -> None:
        children = model.children.get(path, {})
        choices = {d.name[:-3]: d for d in children.values() if d.is_choice}
        seen: set[str] = set()
        chosen: dict[str, set[str]] = {}
        if not node or (not is_resource and path != "Element" and set(node) == {"id"}):
            # ele-1: an id alone is neither a value nor a child (a primitive's _name companion
            # may hold only an id: the primitive holds the value)
            issues.append(
                Issue("error", "structure", "An element must have a value or children", (expr,))
            )
            return
        issues += _unpaired_nulls(node, expr)
        for key, value in node.items():
            if is_resource and key == "resourceType":
                continue
            primitive_ext = key.startswith("_")
            name = key[1:] if primitive_ext else key
            definition, type_code = lookup_element(children, choices, name)
            if definition is None or type_code is None:
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"Unknown element {key!r}: {path} has no such element in FHIR R4",
                        (f"{expr}.{key}",),
                    )
                )
                continue
            base_name = definition.name[:-3] if definition.is_choice else definition.name
            if definition.is_choice:
                chosen.setdefault(base_name, set()).add(type_code)
                if len(chosen[base_name]) > 1:
                    issues.append(
                        Issue(
                            "error",
                            "structure",
                            f"Only one type of {definition.name} may be present",
                            (f"{expr}.{key}",),
                        )
                    )
            seen.add(base_name)
            self._element(
                value, definition, type_code, model, f"{expr}.{name}", issues, walk, primitive_ext
            )
            if definition.path == "Narrative.div" and isinstance(value, str):
                # txt-1 on every write, not only in $validate: a script or an event attribute
                # stored here runs in the next reader that shows the narrative (txt-2, an
                # empty narrative, and broken links are $validate's)
                issues += narrative_issues(value, f"{expr}.{name}", only_txt1=not self._invariants)
            if (
                definition.path in _ABSOLUTE_SYSTEMS
                and isinstance(value, str)
                and _ABSOLUTE_URI.fullmatch(value) is None
            ):
                issues.append(
                    Issue(
                        "error",
                        "value",
                        f"{definition.path} must be an absolute URI (terminologies.html"
                        f"#4.1), not {short(value)}",
                        (f"{expr}.{name}",),
                    )
                )
        if self._invariants and path == "Coding":
            self._coding(node, expr, issues)
        if self._invariants:
            element = model.elements.get(path)
            if element is not None and element.constraints:
                self._check_invariants(node, path, element.constraints, expr, issues, walk)
        for definition in children.values():
            if definition.min > 0:
                base_name = definition.name[:-3] if definition.is_choice else definition.name
                if base_name not in seen:
                    issues.append(
                        Issue(
                            "error",
                            "required",
                            f"{definition.path} is required (minimum cardinality "
                            f"{definition.min}) but is missing",
                            (f"{expr}.{base_name}" if not definition.is_choice else expr,),
                        )
                    )

    def _coding(self, node: dict[str, Any], expr: str, issues: list[Issue]) -> None:
        """A code of a code system we hold must exist in it; its display should be the
        concept's (terminologies.html#4.1; a display mismatch is a warning, as for the
        reference validator)."""
        system, code = node.get("system"), node.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            return
        found = self._definitions.concept(system, code)
        if found is None:
            return
        concept = found[0]
        if concept is None:
            issues.append(
                Issue(
                    "error",
                    "code-invalid",
                    f"The code {code!r} is not defined in the code system {system}",
                    (f"{expr}.code",),
                )
            )
            return
        display = node.get("display")
        if isinstance(display, str):
            names = [concept.get("display")] + [
                d.get("value") for d in concept.get("designation", []) if isinstance(d, dict)
            ]
            known = {" ".join(str(n).split()).lower() for n in names if isinstance(n, str)}
            if known and " ".join(display.split()).lower() not in known:
                issues.append(
                    Issue(
                        "warning",
                        "value",
                        f"The display {display!r} is not the display of {system}#{code} "
                        f"({concept.get('display')!r})",
                        (f"{expr}.display",),
                    )
                )

    def _check_invariants(
        self,
        node: dict[str, Any],
        path: str,
        constraints: tuple[tuple[str, str, str, str], ...],
        expr: str,
        issues: list[Issue],
        walk: Walk,
    ) -> None:
        for key, severity, human, expression in constraints:
            if key in NOT_EVALUATED:
                failed = _PYTHON_CHECKS.get(key)
                if failed is not None and failed(node):
                    issues.append(Issue(severity, "invariant", f"{key}: {human}", (expr,)))
                continue
            holds = self._engine.holds(node, path, expression, walk.resource, walk.root)
            if holds is None:
                issues.append(
                    Issue(
                        "information",
                        "informational",
                        f"Invariant {key} could not be evaluated here and was skipped",
                        (expr,),
                    )
                )
                continue
            if not holds:
                issues.append(
                    Issue(
                        "error" if severity == "error" else "warning",
                        "invariant",
                        f"{key}: {human}",
                        (expr,),
                    )
                )

    def _element(
        self,
        value: Any,
        definition: ElementDef,
        type_code: str,
        model: TypeModel,
        expr: str,
        issues: list[Issue],
        walk: Walk,
        primitive_ext: bool,
    ) -> None:
        if definition.repeats and not definition.is_choice:
            if not isinstance(value, list):
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"{definition.path} repeats, so it must be a JSON array",
                        (expr,),
                    )
                )
                return
            if not value:
                issues.append(Issue("error", "structure", "Arrays must not be empty", (expr,)))
                return
            for index, item in enumerate(value):
                if item is None and primitive_ext:
                    continue
                if item is None:
                    # null keeps primitive arrays aligned with their _name companions
                    continue
                where = f"{expr}[{index}]"
                self._single(item, definition, type_code, model, where, issues, walk, primitive_ext)
            if not primitive_ext and all(v is None for v in value):
                issues.append(
                    Issue("error", "structure", "An array must not hold only nulls", (expr,))
                )
            return
        if isinstance(value, list):
            issues.append(
                Issue(
                    "error",
                    "structure",
                    f"{definition.path} does not repeat, so it must not be a JSON array",
                    (expr,),
                )
            )
            return
        self._single(value, definition, type_code, model, expr, issues, walk, primitive_ext)

    def _single(
        self,
        value: Any,
        definition: ElementDef,
        type_code: str,
        model: TypeModel,
        expr: str,
        issues: list[Issue],
        walk: Walk,
        primitive_ext: bool,
    ) -> None:
        if primitive_ext:
            element_model = self._definitions.model("Element")
            if not isinstance(value, dict) or element_model is None:
                issues.append(
                    Issue("error", "structure", "A '_' companion must be a JSON object", (expr,))
                )
                return
            self._object(value, element_model, "Element", expr, issues, walk)
            return
        if type_code == "canonical" and definition.canonical_targets and isinstance(value, str):
            held = self._definitions.canonical_type(value)
            wanted = definition.canonical_targets
            if held is not None and held not in wanted and "Resource" not in wanted:
                issues.append(
                    Issue(
                        "error",
                        "invalid",
                        f"{value} is a {held}, but {definition.path} names a "
                        + " or ".join(wanted),
                        (expr,),
                    )
                )
        if type_code == "#":
            target = (definition.content_reference or "#").lstrip("#")
            self._complex(value, model, target, expr, issues, walk)
            return
        if type_code in ("BackboneElement", "Element") and definition.path in model.children:
            self._complex(value, model, definition.path, expr, issues, walk)
            return
        if type_code == "Resource":
            if not isinstance(value, dict) or not isinstance(value.get("resourceType"), str):
                issues.append(
                    Issue("error", "structure", "A resource here needs a resourceType", (expr,))
                )
                return
            self._resource(value, value["resourceType"], expr, issues, walk)
            return
        type_model = self._definitions.model(type_code)
        if type_model is None:
            issues.append(Issue("error", "structure", f"Unknown type {type_code!r}", (expr,)))
            return
        if type_model.kind == "primitive-type":
            issues += primitive_issues(value, type_code, type_model, expr)
        else:
            self._complex(value, type_model, type_code, expr, issues, walk)
        strength = definition.binding_strength
        if type_code in _CODED and (
            strength == "required" or (strength == "extensible" and self._invariants)
        ):
            found = binding_issues(
                self._definitions, strength, definition.value_set, value, definition.path, expr
            )
            add_once(issues, found)
        if type_code == "Reference" and definition.targets and "Resource" not in definition.targets:
            kind = reference_type(value, walk.resource)
            if kind is not None and kind not in definition.targets:
                issues.append(
                    Issue(
                        "error",
                        "structure",
                        f"{definition.path} may refer to {', '.join(definition.targets)}, "
                        f"not {kind}",
                        (f"{expr}.reference",),
                    )
                )

    def _complex(
        self, value: Any, model: TypeModel, path: str, expr: str, issues: list[Issue], walk: Walk
    ) -> None:
        if not isinstance(value, dict):
            issues.append(Issue("error", "structure", f"{path} must be a JSON object", (expr,)))
            return
        self._object(value, model, path, expr, issues, walk)


def reference_type(reference: Any, root: dict[str, Any] | None) -> str | None:
    """The resource type a Reference points at, when its ``reference`` says so."""
    if not isinstance(reference, dict):
        return None
    target = reference.get("reference")
    if not isinstance(target, str) or not target or target.startswith(("urn:", "?")):
        return reference.get("type") if isinstance(reference.get("type"), str) else None
    if target.startswith("#"):
        for contained in (root or {}).get("contained", []) or []:
            if isinstance(contained, dict) and contained.get("id") == target[1:]:
                kind = contained.get("resourceType")
                return kind if isinstance(kind, str) else None
        return None
    parts = target.split("?", 1)[0].split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2]
    return None


def lookup_element(
    children: dict[str, ElementDef], choices: dict[str, ElementDef], name: str
) -> tuple[ElementDef | None, str | None]:
    """The definition of a JSON property and its type (``valueQuantity`` -> value[x], Quantity).

    ``choices`` maps each choice element's stem (``value``) to its definition; the type is
    "#" for an element defined by a contentReference.
    """
    definition = children.get(name)
    if definition is not None and not definition.is_choice:
        if definition.content_reference is not None:
            return definition, "#"
        return definition, definition.types[0] if definition.types else None
    for prefix, choice in choices.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            suffix = name[len(prefix) :]
            for type_code in choice.types:
                if _capitalise(type_code) == suffix:
                    return choice, type_code
    return None, None


def is_valid_id(value: str) -> bool:
    """Whether ``value`` is a valid FHIR id: https://hl7.org/fhir/R4/datatypes.html#id."""
    return len(value) <= ID_MAX and _ID.fullmatch(value) is not None
