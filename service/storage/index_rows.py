"""The search index rows a resource gives (one type per index table), and the index kinds."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class TokenRow:
    """A token index row: the resource matches ``param=system|code``; ``text`` serves :text."""

    param: str
    system: str | None
    code: str
    text: str | None = None  # normalised display or CodeableConcept.text


@dataclass(frozen=True)
class StringRow:
    """A string index row: ``norm`` is case- and accent-folded, ``exact`` as written."""

    param: str
    norm: str
    exact: str


@dataclass(frozen=True)
class RangeRow:
    """A date (microseconds) or number row: the value is the range [low, high]."""

    param: str
    low: float
    high: float


@dataclass(frozen=True)
class QuantityRow:
    """A quantity row: the value range plus its unit system and code."""

    param: str
    low: float
    high: float
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceRow:
    """A reference row: a local target (type and id) or an absolute or canonical URL."""

    param: str
    target_type: str | None
    target_id: str | None
    url: str | None = None


@dataclass(frozen=True)
class UriRow:
    """A uri row."""

    param: str
    value: str


@dataclass(frozen=True)
class CompositeRow:
    """A two-part composite row (e.g. Observation code-value-quantity): a token and a value."""

    param: str
    system: str | None
    code: str
    value_system: str | None = None
    value_code: str | None = None
    low: float | None = None
    high: float | None = None
    text: str | None = None


@dataclass
class IndexRows:
    """Every index row of one resource version, written with it in one transaction."""

    tokens: list[TokenRow] = field(default_factory=list)
    strings: list[StringRow] = field(default_factory=list)
    dates: list[RangeRow] = field(default_factory=list)
    numbers: list[RangeRow] = field(default_factory=list)
    quantities: list[QuantityRow] = field(default_factory=list)
    references: list[ReferenceRow] = field(default_factory=list)
    uris: list[UriRow] = field(default_factory=list)
    composites: list[CompositeRow] = field(default_factory=list)

    def of(self, kind: str) -> list[Any]:
        """The rows of one parameter type (token, string, date, ...)."""
        rows: list[Any] = getattr(self, INDEX_KINDS[kind].rows)
        return rows


@dataclass(frozen=True)
class IndexKind:
    """How one search parameter type is kept: where its rows are, and what they hold."""

    rows: str  # the IndexRows attribute
    fields: tuple[str, ...]  # the row's values besides param (also the table's columns)
    sort_field: str  # what _sort orders by (the smallest or largest of a resource's rows)


def _values(row_type: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(row_type) if f.name != "param")


INDEX_KINDS = {
    "token": IndexKind("tokens", _values(TokenRow), "code"),
    "string": IndexKind("strings", _values(StringRow), "norm"),
    "date": IndexKind("dates", _values(RangeRow), "low"),
    "number": IndexKind("numbers", _values(RangeRow), "low"),
    "quantity": IndexKind("quantities", _values(QuantityRow), "low"),
    "reference": IndexKind("references", _values(ReferenceRow), "target_id"),
    "uri": IndexKind("uris", _values(UriRow), "value"),
    "composite": IndexKind("composites", _values(CompositeRow), "code"),
}


# -- search criteria: what a query asks of the index (built by the FHIR core) -----------------
