"""Search parameters and the index rows they give a resource.

The definitions are the official R4 SearchParameters (vendored) plus any SearchParameter
resources in the profiles folder. Each expression is compiled once per resource type with
fhirpathpy and the R4 model; ``where(resolve() is X)`` (which fhirpathpy cannot run) becomes a
filter on the reference's type. https://hl7.org/fhir/R4/searchparameter.html
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from fhirpathpy import compile as compile_fhirpath
from fhirpathpy.models import models

from service.fhir.index_values import Component, OwnBase, add_rows, dedupe
from service.fhir.model import SUPPORTED_TYPES
from service.storage import IndexRows, ReferenceRow

R4_MODEL = models["r4"]
_COMPILED: dict[str, SearchParameters] = {}
PARAM_TYPES = frozenset(
    {"token", "string", "date", "number", "quantity", "reference", "uri", "composite"}
)
_RESOLVE = re.compile(r"\.where\(resolve\(\) is (\w+)\)")
_AS_CALL = re.compile(r"^(\w+)\.as\((\w+)\)$")
# Parameters answered from the resources table or by the search machinery itself.
CORE_URL = "http://hl7.org/fhir/SearchParameter/"
SPECIAL = frozenset({"_id", "_lastUpdated"})
UNSUPPORTED = frozenset({"_text", "_content", "_query", "_filter", "_list", "_has", "_type"})


@dataclass
class SearchParam:
    """A search parameter as it applies to one resource type."""

    code: str
    type: str
    url: str
    targets: tuple[str, ...] = ()
    evaluators: list[tuple[Callable[..., list[Any]], str | None]] = field(default_factory=list)
    # The top-level element each evaluator starts from ("" when it cannot be told): an
    # evaluator whose element is absent from a resource is skipped, which makes indexing
    # several times faster for the sparse resources clinical systems send.
    roots: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # the FHIRPath each evaluator runs
    components: tuple[Component, ...] = ()

    def evaluate(
        self, resource: dict[str, Any], strict: bool = False
    ) -> list[tuple[Any, str | None]]:
        """The values of this parameter in ``resource``, each with its required target type.

        fhirpathpy raises bare Exceptions on data it cannot walk; a write must not fail for
        that, so the parameter then has no value (``strict`` re-raises, for tests).
        """
        out: list[tuple[Any, str | None]] = []
        for (evaluator, target_type), root in zip(self.evaluators, self.roots, strict=True):
            if root and not _present(resource, root):
                continue
            try:
                values = evaluator(resource)
            except Exception:
                if strict:
                    raise
                values = []
            out.extend((value, target_type) for value in values)
        return out


_SIMPLE_PATH = re.compile(r"^(\w+)((?:\.\w+)+)$")


def _compile(expression: str, type_: str) -> Callable[..., list[Any]]:
    """Compile with fhirpathpy, or to a plain walk for a simple dotted path (most of them).

    The walk gives the same values as fhirpathpy for paths such as ``Patient.name.given`` or
    ``Observation.effective`` (a choice element) in a fraction of the time.
    """
    stripped = expression.strip()
    if stripped == type_:
        return lambda resource: [resource]  # composite parameters start at the resource
    match = _SIMPLE_PATH.match(_of_type_as_path(stripped))
    if match is None or match.group(1) != type_:
        compiled: Callable[..., list[Any]] = compile_fhirpath(expression, R4_MODEL)
        return compiled
    steps = tuple(match.group(2).split(".")[1:])

    def walk(resource: dict[str, Any]) -> list[Any]:
        nodes: list[Any] = [resource]
        for step in steps:
            found: list[Any] = []
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                if step in node:
                    values = [node[step]]
                else:
                    values = [
                        v
                        for k, v in node.items()
                        if k.startswith(step) and k[len(step) : len(step) + 1].isupper()
                    ]
                for value in values:
                    found.extend(value if isinstance(value, list) else [value])
            nodes = found
        return [n for n in nodes if n is not None]

    return walk


_OF_TYPE = re.compile(r"^\((\w+(?:\.\w+)*)\.(\w+)\.ofType\(([A-Za-z]+)\)\)((?:\.\w+)*)$")


def _of_type_as_path(expression: str) -> str:
    """``(Observation.value.ofType(Quantity)).code`` as the path ``Observation.valueQuantity.code``.

    A choice element's JSON name is the element name plus the type name, so the walk reads the
    one key that holds that type (R4 choice types have no subtypes to include).
    """
    match = _OF_TYPE.match(expression)
    if match is None:
        return expression
    head, element, type_name, tail = match.groups()
    return f"{head}.{element}{type_name[0].upper()}{type_name[1:]}{tail}"


_ROOT = re.compile(r"^\(*(\w+)\.(\w+)")


def _root_element(expression: str, type_: str) -> str:
    """The first element below the resource that ``expression`` reads, or "" if unclear."""
    match = _ROOT.match(expression.strip())
    if match is None or match.group(1) != type_:
        return ""
    name = match.group(2)
    return name if name[:1].islower() else ""


def _present(resource: dict[str, Any], root: str) -> bool:
    if root in resource or "_" + root in resource:
        return True
    # choice elements: value -> valueQuantity, deceased -> deceasedDateTime ...
    return any(
        key.startswith(root) and key[len(root) : len(root) + 1].isupper() for key in resource
    )


def _as_to_of_type(expression: str) -> str:
    """Make R4 expressions runnable by fhirpathpy.

    They apply ``as`` to collections (Observation.component.value as Quantity), which FHIRPath
    only allows on one item; ``ofType`` is the collection-safe equivalent.
    """
    expression = re.sub(r"\.as\((\w+)\)", r".ofType(\1)", expression)
    # fhirpathpy has no hasExtension(); this is its definition in FHIRPath terms.
    expression = re.sub(
        r"hasExtension\(('[^']*')\)", r"extension.where(url = \1).exists()", expression
    )
    return re.sub(r"\s+as\s+(\w+)", r".ofType(\1)", expression)


def _parts_for(expression: str, type_: str) -> list[str]:
    parts = []
    depth = 0
    current: list[str] = []
    for ch in expression:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "|" and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    parts.append("".join(current).strip())
    mine = []
    for part in parts:
        bare = part.lstrip("(")
        if bare.startswith("Resource.") or bare.startswith("DomainResource."):
            part = part.replace("DomainResource.", f"{type_}.", 1).replace(
                "Resource.", f"{type_}.", 1
            )
            bare = part.lstrip("(")
        if bare == type_ or bare.startswith(type_ + ".") or bare.startswith(type_ + " "):
            mine.append(part)
    return mine


def _component_paths(expression: str) -> tuple[tuple[str, str | None], ...]:
    paths: list[tuple[str, str | None]] = []
    for part in expression.split("|"):
        part = part.strip()
        match = _AS_CALL.match(part)
        if match:
            paths.append((match.group(1), match.group(2)))
        else:
            paths.append((part, None))
    return tuple(paths)


class SearchParameters:
    """Every search parameter of every stored resource type, compiled."""

    def __init__(self, definitions: Iterable[dict[str, Any]]) -> None:
        by_url: dict[str, dict[str, Any]] = {}
        for sp in definitions:
            by_url[sp["url"]] = sp
        self._by_url = by_url
        self._params: dict[str, dict[str, SearchParam]] = {t: {} for t in SUPPORTED_TYPES}
        self._core: dict[str, bool] = {}
        self._own: OwnBase | None = None
        for sp in by_url.values():
            self._add(sp)

    def _add(self, sp: dict[str, Any]) -> None:
        kind = sp.get("type")
        expression = sp.get("expression")
        code = sp.get("code")
        if kind not in PARAM_TYPES or not expression or not code or code in UNSUPPORTED:
            return
        if code in SPECIAL:
            return  # answered from the resources table
        for type_ in SUPPORTED_TYPES:
            bases = sp.get("base", [])
            if type_ not in bases and "Resource" not in bases and "DomainResource" not in bases:
                continue
            parts = _parts_for(expression, type_)
            if not parts:
                continue
            param = SearchParam(
                code=code,
                type=kind,
                url=sp["url"],
                targets=tuple(sp.get("target", [])),
            )
            for part in parts:
                resolved = _RESOLVE.search(part)
                target_type = resolved.group(1) if resolved else None
                text = _as_to_of_type(_RESOLVE.sub("", part))
                param.evaluators.append((_compile(text, type_), target_type))
                param.roots.append(_root_element(text, type_))
                param.texts.append(text)
            if kind == "composite":
                components = []
                for comp in sp.get("component", []):
                    definition = self._by_url.get(comp.get("definition", ""), {})
                    components.append(
                        Component(
                            type=definition.get("type", "token"),
                            paths=_component_paths(comp.get("expression", "")),
                        )
                    )
                if len(components) != 2 or components[0].type != "token":
                    continue  # only token + value composites are indexed
                param.components = tuple(components)
            self._params[type_][code] = param

    @classmethod
    def shared(cls, definitions: list[dict[str, Any]]) -> SearchParameters:
        """Compile once per process for the same definitions (compiling takes a while)."""
        key = json.dumps(definitions, sort_keys=True)
        found = _COMPILED.get(key)
        if found is None:
            found = cls(definitions)
            _COMPILED[key] = found
        return found

    def with_own_base(self, own: OwnBase) -> SearchParameters:
        """These parameters (compiled once, shared) indexing references for a server whose
        absolute URLs ``own`` recognises: another server's URL is indexed as that URL only."""
        local = copy.copy(self)
        local._own = own
        return local

    def for_type(self, type_: str) -> dict[str, SearchParam]:
        """The parameters of a resource type, by code."""
        return self._params.get(type_, {})

    def get(self, type_: str, code: str) -> SearchParam | None:
        """One parameter of a type, or None."""
        return self._params.get(type_, {}).get(code)

    def references(self, resource: dict[str, Any], codes: Iterable[str]) -> list[ReferenceRow]:
        """The reference rows of some of a resource's parameters (only those are evaluated)."""
        rows = IndexRows()
        for code in codes:
            param = self.get(resource["resourceType"], code)
            if param is not None and param.type == "reference":
                for value, target_type in param.evaluate(resource):
                    add_rows(rows, param, value, target_type, self._own)
        return rows.references

    def index(self, resource: dict[str, Any]) -> IndexRows:
        """All index rows of a resource."""
        rows = IndexRows()
        for param in self.for_type(resource["resourceType"]).values():
            for value, target_type in param.evaluate(resource):
                add_rows(rows, param, value, target_type, self._own)
        dedupe(rows)
        return rows

    def only_core(self, type_: str) -> bool:
        """Whether every parameter of a type is an official R4 one (no SearchParameter of the
        profiles folder adds to or replaces them): then ``index_values`` may be fed from a
        resource shape the service itself makes."""
        found = self._core.get(type_)
        if found is None:
            found = all(p.url.startswith(CORE_URL) for p in self.for_type(type_).values())
            self._core[type_] = found
        return found

    def index_values(self, type_: str, values: Iterable[tuple[str, Any, str | None]]) -> IndexRows:
        """The index rows of values already picked out of a resource, as (parameter code,
        value, required target type): the rows ``index`` would give when these are all the
        values the type's parameters find, without running each parameter's expression."""
        rows = IndexRows()
        params = self.for_type(type_)
        for code, value, target_type in values:
            param = params.get(code)
            if param is not None:
                add_rows(rows, param, value, target_type, self._own)
        dedupe(rows)
        return rows
