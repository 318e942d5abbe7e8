"""The FHIR core driven one call at a time, as the REST API drives it: each read in a session
of its own, each write in ``perform`` (retried unless it names a version), all for one actor.

For tests that set up or check data without going through HTTP. Whatever else the wrapped
``FhirService`` offers (``run``, ``read_only``, ``session``, ``store``, ``listeners``, ...)
passes through, so a ``Direct`` can stand in wherever the service is expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.results import Result


class Direct:
    """A FhirService with one-call interactions for one actor (unrestricted by default)."""

    def __init__(self, fhir: FhirService, actor: Actor | None = None) -> None:
        self.fhir = fhir
        self.actor = actor if actor is not None else Actor.system()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fhir, name)

    def acting(self, actor: Actor) -> Direct:
        """The same service, driven for ``actor``."""
        return Direct(self.fhir, actor)

    # -- reads ------------------------------------------------------------------------------------

    def read(self, type_: str, id_: str, *args: Any, **kwargs: Any) -> Result:
        with self.fhir.session(self.actor) as s:
            return s.read(type_, id_, *args, **kwargs)

    def vread(self, type_: str, id_: str, version: str) -> Result:
        with self.fhir.session(self.actor) as s:
            return s.vread(type_, id_, version)

    def search_type(
        self, type_: str, params: Sequence[tuple[str, str]], base: str, **kw: Any
    ) -> Result:
        with self.fhir.session(self.actor) as s:
            return s.search_type(type_, params, base, **kw)

    def history(
        self, type_: str | None, id_: str | None, params: Sequence[tuple[str, str]], base: str
    ) -> Result:
        with self.fhir.session(self.actor) as s:
            return s.history(type_, id_, params, base)

    def validate_operation(self, *args: Any, **kwargs: Any) -> Result:
        with self.fhir.session(self.actor) as s:
            return s.validate_operation(*args, **kwargs)

    def check_resource(self, resource: Any, type_: str) -> Any:
        with self.fhir.session(self.actor) as s:
            return s.check(resource, type_)

    # -- writes -----------------------------------------------------------------------------------

    def create(self, type_: str, resource: Any, if_none_exist: str | None = None) -> Result:
        return self.fhir.perform(self.actor, lambda s: s.create(type_, resource, if_none_exist))

    def update(self, type_: str, id_: str, resource: Any, if_match: int | None = None) -> Result:
        return self.fhir.perform(
            self.actor,
            lambda s: s.update(type_, id_, resource, if_match),
            retry=if_match is None,
        )

    def conditional_update(
        self, type_: str, criteria: str, resource: Any, if_match: int | None = None
    ) -> Result:
        return self.fhir.perform(
            self.actor,
            lambda s: s.conditional_update(type_, criteria, resource, if_match),
            retry=if_match is None,
        )

    def patch(self, type_: str, id_: str, body: Any, if_match: int | None = None) -> Result:
        return self.fhir.perform(
            self.actor, lambda s: s.patch(type_, id_, body, if_match), retry=if_match is None
        )

    def conditional_patch(
        self, type_: str, criteria: str, body: Any, if_match: int | None = None
    ) -> Result:
        return self.fhir.perform(
            self.actor,
            lambda s: s.conditional_patch(type_, criteria, body, if_match),
            retry=if_match is None,
        )

    def delete(self, type_: str, id_: str, if_match: int | None = None) -> Result:
        return self.fhir.perform(
            self.actor, lambda s: s.delete(type_, id_, if_match), retry=if_match is None
        )

    def conditional_delete(self, type_: str, criteria: str) -> Result:
        return self.fhir.perform(self.actor, lambda s: s.conditional_delete(type_, criteria))
