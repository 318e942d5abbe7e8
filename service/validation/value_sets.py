"""Local terminology: expand value sets, look up and validate codes over the code systems held.

What is held: the R4 core and HL7 THO ValueSets and CodeSystems vendored in
``definitions/terminology.json.gz`` (see ``vendor_terminology.py``), the required-binding subset
in ``definitions/r4-terminology.json`` and the profiles folder's own. A value set can be expanded
when every part of its ``compose`` can: enumerated concepts, or a whole code system we hold
completely, optionally filtered (https://hl7.org/fhir/R4/valueset.html#compose: ``is-a``,
``descendent-of``, ``is-not-a``, ``generalizes``, ``in``, ``not-in``, ``regex``, ``=``,
``exists``), or another value set we can expand. A value set that draws on a system we do not
hold (SNOMED CT, LOINC, ...) cannot be expanded, and everything that asks says so.

A ``Terminology`` answers over a mapping of ``"ValueSet|url"`` / ``"CodeSystem|url"`` keys to
resources; expansions are computed once per value set.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_MAX_DEPTH = 10


@dataclass(frozen=True)
class Entry:
    """One code of an expansion."""

    system: str
    code: str
    display: str | None = None
    version: str | None = None
    abstract: bool = False


@dataclass(frozen=True)
class Verdict:
    """The answer of $validate-code: whether the code is valid, why not, and its display."""

    result: bool
    message: str | None = None
    display: str | None = None


def normal(text: str) -> str:
    """A display compared as the reference validator does: case and spacing ignored."""
    return " ".join(text.split()).lower()


class _Hierarchy:
    """One code system's concepts indexed by code, with each concept's parents and children
    (from nesting, and from the ``subsumedBy``/``parent``/``child`` properties)."""

    def __init__(self, cs: dict[str, Any]) -> None:
        self.concepts: dict[str, dict[str, Any]] = {}
        self.children: dict[str, list[str]] = {}
        self.order: list[str] = []
        self._index(cs.get("concept", []), None)
        for code, concept in self.concepts.items():
            for prop in concept.get("property", []):
                value = prop.get("valueCode")
                if not isinstance(value, str):
                    continue
                if prop.get("code") in ("subsumedBy", "parent"):
                    self._link(value, code)
                elif prop.get("code") == "child":
                    self._link(code, value)

    def _index(self, concepts: list[dict[str, Any]], parent: str | None) -> None:
        for c in concepts:
            code = c["code"]
            if code not in self.concepts:
                self.concepts[code] = c
                self.order.append(code)
            if parent is not None:
                self._link(parent, code)
            self._index(c.get("concept", []), code)

    def _link(self, parent: str, child: str) -> None:
        kids = self.children.setdefault(parent, [])
        if child not in kids:
            kids.append(child)

    def descendants(self, code: str) -> list[str]:
        """Every code below ``code`` (not itself), each once."""
        found: list[str] = []
        seen = {code}
        pending = list(self.children.get(code, []))
        while pending:
            current = pending.pop(0)
            if current in seen:
                continue
            seen.add(current)
            found.append(current)
            pending.extend(self.children.get(current, []))
        return found

    def ancestors(self, code: str) -> list[str]:
        """Every code above ``code`` (not itself)."""
        return [c for c in self.order if c != code and code in self.descendants(c)]


def _property_values(concept: dict[str, Any], name: str) -> list[str]:
    values = []
    for prop in concept.get("property", []):
        if prop.get("code") == name:
            for key, value in prop.items():
                if key.startswith("value"):
                    values.append(str(value).lower() if isinstance(value, bool) else str(value))
    return values


def is_abstract(concept: dict[str, Any]) -> bool:
    """Whether a concept is marked not selectable (``notSelectable``/``abstract`` true)."""
    return any(
        v == "true"
        for name in ("notSelectable", "abstract")
        for v in _property_values(concept, name)
    )


class Terminology:
    """Expansions, look-ups and code validation over the terminology resources held."""

    def __init__(self, resources: Mapping[str, dict[str, Any]]) -> None:
        self._resources = resources
        self._expansions: dict[str, list[Entry] | None] = {}
        self._hierarchies: dict[str, _Hierarchy] = {}

    @property
    def resources(self) -> Mapping[str, dict[str, Any]]:
        """The terminology resources held, by ``"ValueSet|url"`` / ``"CodeSystem|url"``."""
        return self._resources

    def value_set(self, url: str) -> dict[str, Any] | None:
        """A ValueSet held, by canonical URL (a ``|version`` suffix is ignored)."""
        return self._resources.get("ValueSet|" + url.split("|", 1)[0])

    def code_system(self, url: str) -> dict[str, Any] | None:
        """A CodeSystem held, by canonical URL."""
        return self._resources.get("CodeSystem|" + url.split("|", 1)[0])

    def complete(self, system: str) -> bool:
        """Whether we hold every concept of ``system``."""
        cs = self.code_system(system)
        return cs is not None and cs.get("content", "complete") == "complete" and "concept" in cs

    def by_id(self, kind: str, id_: str) -> dict[str, Any] | None:
        """A ValueSet or CodeSystem held, by its id."""
        for key, resource in self._resources.items():
            if key.startswith(kind + "|") and resource.get("id") == id_:
                return resource
        return None

    def hierarchy(self, system: str) -> _Hierarchy | None:
        """The indexed concepts of a code system held completely."""
        if not self.complete(system):
            return None
        found = self._hierarchies.get(system)
        if found is None:
            found = _Hierarchy(self.code_system(system) or {})
            self._hierarchies[system] = found
        return found

    def concept(self, system: str, code: str) -> dict[str, Any] | None:
        """The concept of ``code`` in a code system held completely (None when undefined)."""
        tree = self.hierarchy(system)
        if tree is None:
            return None
        found = tree.concepts.get(code)
        cs = self.code_system(system) or {}
        if found is None and cs.get("caseSensitive") is False:
            lowered = code.lower()
            found = next((c for k, c in tree.concepts.items() if k.lower() == lowered), None)
        return found

    # -- expansion ---------------------------------------------------------------------

    def expand(self, url: str) -> list[Entry] | None:
        """Every code of a value set, or None when it cannot be expanded here."""
        url = url.split("|", 1)[0]
        if url not in self._expansions:
            self._expansions[url] = self._expand(url, 0)
        return self._expansions[url]

    def _expand(self, url: str, depth: int) -> list[Entry] | None:
        vs = self.value_set(url)
        if vs is None or depth > _MAX_DEPTH:
            return None
        if "compose" not in vs:
            listed = vs.get("expansion", {}).get("contains")
            return _flatten(listed) if listed is not None else None
        included: dict[tuple[str, str], Entry] = {}
        for part in vs["compose"].get("include", []):
            entries = self._part(part, depth)
            if entries is None:
                return None
            for e in entries:
                included.setdefault((e.system, e.code), e)
        for part in vs["compose"].get("exclude", []):
            entries = self._part(part, depth)
            if entries is None:
                return None
            for e in entries:
                included.pop((e.system, e.code), None)
        return list(included.values())

    def _part(self, part: dict[str, Any], depth: int) -> list[Entry] | None:
        result: list[Entry] | None = None
        system = part.get("system")
        if isinstance(system, str):
            result = self._system_part(system, part)
            if result is None:
                return None
        for nested in part.get("valueSet", []):
            entries = self._expand(str(nested).split("|", 1)[0], depth + 1)
            if entries is None:
                return None
            if result is None:
                result = list(entries)
            else:
                keys = {(e.system, e.code) for e in entries}
                result = [e for e in result if (e.system, e.code) in keys]
        return result

    def _system_part(self, system: str, part: dict[str, Any]) -> list[Entry] | None:
        version = part.get("version")
        if "concept" in part:
            out = []
            for c in part["concept"]:
                held = self.concept(system, c["code"]) if self.complete(system) else None
                display = c.get("display") or (held or {}).get("display")
                out.append(Entry(system, c["code"], display, version))
            return out
        tree = self.hierarchy(system)
        if tree is None:
            return None
        codes: list[str] | None = list(tree.order)
        for f in part.get("filter", []):
            codes = _apply_filter(tree, codes or [], f)
            if codes is None:
                return None
        return [
            Entry(
                system, c, tree.concepts[c].get("display"), version, is_abstract(tree.concepts[c])
            )
            for c in codes or []
        ]

    # -- validation ----------------------------------------------------------------------

    def check_code(
        self, system: str | None, code: str, display: str | None, value_set: str | None
    ) -> Verdict | None:
        """Whether ``code`` (of ``system``) is valid, in ``value_set`` when given; None when we
        cannot tell (the value set cannot be expanded, or no value set and a system not held)."""
        concept = None
        if system is not None and self.complete(system):
            concept = self.concept(system, code)
            if concept is None:
                return Verdict(
                    False, f"The code {code!r} is not defined in the code system {system}"
                )
        if value_set is not None:
            entries = self.expand(value_set)
            if entries is None:
                return None
            entry = next(
                (e for e in entries if e.code == code and (system is None or e.system == system)),
                None,
            )
            if entry is None:
                where = f"{system}#{code}" if system else repr(code)
                return Verdict(False, f"{where} is not in the value set {value_set}")
            if concept is None and self.complete(entry.system):
                concept = self.concept(entry.system, code)
            known = entry.display
        elif concept is None:
            return None
        else:
            known = None
        shown = (concept or {}).get("display") or known
        if display is not None and concept is not None:
            names = [concept.get("display")] + [
                d.get("value") for d in concept.get("designation", []) if isinstance(d, dict)
            ]
            allowed = {normal(n) for n in names if isinstance(n, str)}
            if allowed and normal(display) not in allowed:
                return Verdict(
                    True,
                    f"The display {display!r} is not the display of {system or ''}#{code} "
                    f"({shown!r})",
                    shown,
                )
        return Verdict(True, None, shown)


def _flatten(contains: list[dict[str, Any]]) -> list[Entry]:
    out: list[Entry] = []
    for e in contains:
        if "code" in e and "system" in e:
            out.append(
                Entry(
                    e["system"],
                    e["code"],
                    e.get("display"),
                    e.get("version"),
                    bool(e.get("abstract")),
                )
            )
        out.extend(_flatten(e.get("contains", [])))
    return out


def _apply_filter(tree: _Hierarchy, codes: list[str], f: dict[str, Any]) -> list[str] | None:
    prop, op, value = f.get("property"), f.get("op"), str(f.get("value", ""))
    keep: set[str]
    if prop in ("concept", "code") and op in ("is-a", "descendent-of", "is-not-a", "generalizes"):
        if value not in tree.concepts:
            return []
        if op == "generalizes":
            keep = {value, *tree.ancestors(value)}
        else:
            below = set(tree.descendants(value))
            keep = below | {value} if op in ("is-a", "is-not-a") else below
            if op == "is-not-a":
                keep = set(codes) - keep
    elif prop in ("concept", "code") and op in ("=", "in", "not-in"):
        listed = {v.strip() for v in value.split(",")} if op != "=" else {value}
        keep = set(codes) - listed if op == "not-in" else listed
    elif prop in ("concept", "code") and op == "regex":
        pattern = re.compile(value)
        keep = {c for c in codes if pattern.fullmatch(c)}
    elif prop == "display" and op in ("=", "regex"):
        pattern = re.compile(value if op == "regex" else re.escape(value))
        keep = {c for c in codes if pattern.fullmatch(str(tree.concepts[c].get("display", "")))}
    elif op == "=" and isinstance(prop, str):
        keep = {c for c in codes if value in _property_values(tree.concepts[c], prop)}
    elif op == "exists" and isinstance(prop, str):
        wanted = value == "true"
        keep = {c for c in codes if bool(_property_values(tree.concepts[c], prop)) == wanted}
    else:
        return None  # a filter we do not implement: the value set cannot be expanded
    return [c for c in codes if c in keep]
