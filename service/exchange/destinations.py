"""Where an outbox row goes: a partner by name, a subscription or an export job by id, typed.

The store keeps a destination as text (``partner:NAME``, ``subscription:ID``,
``export:JOB``); ``Destination``
is parsed from that text and formatted back to it at the store's boundary, so the rest of the
exchange asks ``destination.kind`` instead of testing string prefixes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    """What a destination is; each kind has its delivery channel (service/exchange/channels)."""

    PARTNER = "partner"
    SUBSCRIPTION = "subscription"
    EXPORT = "export"  # a Bulk Data export job (exchange/bulk_export.py): its files are written


@dataclass(frozen=True)
class Destination:
    """One destination of outbox rows."""

    kind: Kind
    name: str  # the partner's name, or the Subscription's id

    @classmethod
    def partner(cls, name: str) -> Destination:
        """The destination of a partner of the partners file."""
        return cls(Kind.PARTNER, name)

    @classmethod
    def subscription(cls, id_: str) -> Destination:
        """The destination of a Subscription's notifications."""
        return cls(Kind.SUBSCRIPTION, id_)

    @classmethod
    def export(cls, job_id: str) -> Destination:
        """The destination of a Bulk Data export job (its files, written by the worker)."""
        return cls(Kind.EXPORT, job_id)

    @classmethod
    def parse(cls, text: str) -> Destination:
        """The destination a row's stored text names; ValueError for a kind not known here."""
        kind, sep, name = text.partition(":")
        if not sep or kind not in {k.value for k in Kind}:
            raise ValueError(f"{text!r} is not an outbox destination")
        return cls(Kind(kind), name)

    def format(self) -> str:
        """The text the store keeps."""
        return f"{self.kind.value}:{self.name}"

    def __str__(self) -> str:
        return self.format()
