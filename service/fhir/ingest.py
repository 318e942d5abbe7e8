"""``$ingest``: run a mapping over a raw input and write what it makes in one transaction.

Records stream from the input; each is mapped, each resource is validated against the base
definitions and the profile it claims, and written with a conditional create on its identifier
(so ingesting the same input again changes nothing), all inside one database transaction: any
error rolls everything back. A dry run writes nothing and returns the Bundle that would be
written with its validation outcome.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from service.errors import FhirError, Issue, Unprocessable
from service.fhir.access import require_population_write
from service.fhir.actor import Actor
from service.fhir.bundles import resolve_conditional_references
from service.fhir.interactions import FhirService
from service.fhir.model import dump_json
from service.fhir.results import Result, operation_outcome
from service.fhir.search_parser import escape_value
from service.fhir.session import Session
from service.mapping.engine import Mapped, Mapper, Output
from service.mapping.files import MappingError, MappingFile
from service.mapping.resource_paths import value_at
from service.mapping.sources import mapping_records

MAX_ERRORS = 100  # reported at once; the rest are summarised
DRY_RUN_LIMIT = 10_000  # resources shown by a dry run
BATCH = 200  # resources inserted with one multi-row statement per table
RESOLVED_LIMIT = 10_000  # conditional references kept resolved during one ingest


@dataclass(frozen=True)
class Mappings:
    """The loaded mapping files by name, and the Questionnaires their inputs answer."""

    files: dict[str, MappingFile]
    questionnaires: dict[str, dict[str, Any]]
    conceptmaps: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class IngestReport:
    """What an ingest did."""

    records: int = 0
    skipped: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[Issue] = field(default_factory=list)
    more_errors: int = 0
    warnings: list[Issue] = field(default_factory=list)
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add_error(self, issue: Issue) -> None:
        """Keep the first MAX_ERRORS problems; count the rest."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(issue)
        else:
            self.more_errors += 1

    @property
    def error_count(self) -> int:
        """Every problem found, shown or not."""
        return len(self.errors) + self.more_errors

    def warn(self, issue: Issue) -> None:
        """Keep the first MAX_ERRORS warnings (they change nothing, so the rest are dropped)."""
        if len(self.warnings) < MAX_ERRORS:
            self.warnings.append(issue)

    def summary(self) -> list[Issue]:
        """The warnings, then the counts as an information issue."""
        return [
            *self.warnings,
            Issue(
                "information",
                "informational",
                f"{self.records} records read, {self.skipped} skipped; {self.created} resources "
                f"created, {self.unchanged} already present and unchanged, {self.updated} "
                f"corrected; {self.error_count} errors",
            ),
        ]


class ResolvedReferences(dict[str, str]):
    """Conditional references already resolved (criteria -> ``Type/id``), at most ``limit`` of
    them: the oldest is forgotten first, so an input naming a million patients does not hold a
    million entries (a forgotten one is looked up again)."""

    def __init__(self, limit: int = RESOLVED_LIMIT) -> None:
        super().__init__()
        self.limit = limit

    def __setitem__(self, criteria: str, reference: str) -> None:
        if criteria not in self and len(self) >= self.limit:
            del self[next(iter(self))]
        super().__setitem__(criteria, reference)


class _Rollback(Exception):
    """Raised inside the transaction to undo every write of a failed ingest or a dry run."""


def ingest(
    fhir: FhirService,
    actor: Actor,
    mapping: MappingFile,
    data: bytes | str | Iterable[str],
    questionnaires: dict[str, dict[str, Any]],
    dry_run: bool = False,
    conceptmaps: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Result, IngestReport]:
    """Map ``data`` with ``mapping`` and write the result (or, with ``dry_run``, only show it).

    A dry run does everything a real run does, references and all, in a transaction it then
    rolls back: its outcome lists exactly the problems the real run would meet.
    """
    require_population_write(actor.access, "$ingest")
    report = IngestReport()
    mapper = Mapper(mapping, conceptmaps)
    per_record = mapping.content.get("errors") == "skip-record"

    def records() -> Iterator[Mapped]:
        mapped = mapper.mapped(mapping_records(mapping, data, questionnaires))
        while True:
            try:
                item = next(mapped)
            except StopIteration:
                return
            except MappingError as exc:
                report.add_error(Issue("error", "structure", f"{mapping.path.name} <- {exc}"))
                return
            if item.record:
                report.records += 1
                if progress is not None and report.records % 1000 == 0:
                    progress(report.records)
            if item.error is not None:
                report.add_error(Issue("error", "processing", str(item.error)))
                continue
            if not item.outputs and item.record and not item.ranks:
                report.skipped += 1
            yield item

    def check(session: Session, output: Output) -> bool:
        resource = output.resource
        try:
            session.check(resource, resource["resourceType"])  # what every write must meet
        except FhirError as error:
            for issue in error.outcome_issues():
                if issue.severity in ("error", "fatal"):
                    where = _field_where(output, issue.expression)
                    report.add_error(
                        replace(
                            issue,
                            diagnostics=f"{where} <- {output.position}: the "
                            f"{resource['resourceType']} made is not valid: {issue.diagnostics}",
                        )
                    )
            return False
        return True

    def write(session: Session) -> None:
        # Nothing here grows with the input: what a record refers to that an earlier record
        # made is either in the batch not yet written (``pending``) or already written in this
        # transaction, where the database finds it; ``resolved`` is bounded.
        batch: list[tuple[Output, dict[str, Any]]] = []
        pending: set[str] = set()  # what the batch will create, as conditional references
        resolved = ResolvedReferences()  # the same patient is named by many records
        # what this run creates is written from now on (concurrent runs of one feed take
        # turns on its identifier system's lock): a resource found with a later first version
        # was made by an earlier record of this input
        started = session.fhir.clock()

        def flush() -> None:
            items = [(o.resource["resourceType"], r, o.identifier) for o, r in batch]
            for (output, resource), result in zip(batch, session.create_many(items), strict=True):
                if result.status == 201:
                    report.created += 1
                    if output.corrects:
                        report.warn(_corrects_nothing(output))
                elif output.corrects and _corrected(session, resource, result):
                    report.updated += 1
                elif not output.corrects and _differs(resource, result):
                    if _made_by_this_run(result, started):
                        # two records of one input under one identifier, saying different
                        # things: keeping one would lose the other's words, so it is an error
                        report.add_error(_same_identifier(output))
                    else:
                        report.unchanged += 1
                        report.warn(_kept_stored(output, result))
                else:
                    report.unchanged += 1
            batch.clear()
            pending.clear()

        def resolvable(output: Output, references: list[str], earlier: set[str]) -> bool:
            for criteria in references:
                if criteria in pending or criteria in earlier:
                    continue
                try:
                    resolve_conditional_references(session, {"reference": criteria}, resolved)
                except FhirError as error:
                    report.add_error(
                        Issue(
                            "error",
                            error.code,
                            f"{_reference_where(output, criteria)} <- {output.position}: "
                            f"{error.diagnostics}",
                        )
                    )
                    return False
            return True

        for item in records():
            # after an error the run goes on, to report every problem
            if not all([check(session, output) for output in item.outputs]):
                continue
            references = [_references(output.resource) for output in item.outputs]
            if not all(
                [
                    resolvable(
                        output, references[index], {o.criteria for o in item.outputs[:index]}
                    )
                    for index, output in enumerate(item.outputs)
                ]
            ):
                continue
            if dry_run:
                room = DRY_RUN_LIMIT - len(report.entries)
                report.entries += [_entry(output) for output in item.outputs[: max(room, 0)]]
            # after an error nothing will be kept, yet the rest is still written (and rolled
            # back at the end), so that what later records refer to is found as in a real run
            for output, refers_to in zip(item.outputs, references, strict=True):
                if not pending.isdisjoint(refers_to):
                    flush()  # it refers to what this input creates: write that first
                resource = resolve_conditional_references(session, output.resource, resolved)
                batch.append((output, resource))
                pending.add(output.criteria)
            if len(batch) >= BATCH:
                flush()
        flush()  # (the last batch can find an error too: _same_identifier)
        if report.errors and not per_record:
            report.created = report.updated = report.unchanged = 0  # nothing is kept
            raise _Rollback
        if progress is not None:
            progress(report.records)
        if dry_run:
            raise _Rollback

    with contextlib.suppress(_Rollback):
        fhir.perform(actor, write, retry=False)
    if report.more_errors:
        report.errors.append(
            Issue("error", "too-costly", f"... and {report.more_errors} more problems")
        )
    if dry_run:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": report.entries}
        outcome = operation_outcome(report.errors + report.summary())
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": bundle},
                {"name": "outcome", "resource": outcome},
            ],
        }
        return Result(200, body=parameters), report
    if report.errors and not per_record:
        raise Unprocessable(
            f"Nothing was written: {report.errors[0].diagnostics}"
            + (f" (and {report.error_count - 1} more)" if report.error_count > 1 else ""),
            issues=report.errors,
        )
    return Result(200, body=operation_outcome(report.errors + report.summary())), report


def _references(value: Any) -> list[str]:
    """The conditional references (``Patient?identifier=...``) in a resource."""
    if isinstance(value, dict):
        found = []
        for key, item in value.items():
            if key == "reference" and isinstance(item, str) and "?" in item:
                found.append(item)
            else:
                found += _references(item)
        return found
    if isinstance(value, list):
        return [criteria for item in value for criteria in _references(item)]
    return []


def _reference_where(output: Output, criteria: str) -> str:
    """The mapping line of the field that made a reference (else the rule's)."""
    for target, where in output.fields.items():
        if criteria in _references({"v": value_at(output.resource, target)}) or (
            value_at(output.resource, target) == criteria
        ):
            return where
    return output.where


def _field_where(output: Output, expressions: tuple[str, ...]) -> str:
    """The mapping line of the field a validation issue is about (else the rule's)."""
    for expression in expressions:
        element = re.sub(r"\[\d+\]|\[x\]", "", expression.split(".", 1)[-1])
        for target, where in output.fields.items():
            plain = re.sub(r"\[\d+\]", "", target)
            if (
                plain == element
                or plain.startswith(element + ".")
                or (element.startswith(plain + "."))
            ):
                return where
    return output.where


def _corrected(session: Session, resource: dict[str, Any], result: Result) -> bool:
    """Update the resource an earlier input made if the correction changes it."""
    current = result.stored
    if current is None or not _differs(resource, result):
        return False
    session.update(current.type, current.id, {**resource, "id": current.id}, checked=True)
    return True


def _differs(resource: dict[str, Any], result: Result) -> bool:
    """Whether ``resource`` says something other than the stored one ``result`` found."""
    current = result.stored
    if current is None or current.content is None:
        return False
    before = {k: v for k, v in json.loads(current.content).items() if k not in ("id", "meta")}
    # through the same JSON the store holds, so decimals compare as stored
    after = json.loads(dump_json({k: v for k, v in resource.items() if k != "meta"}))
    return bool(before != after)


def _made_by_this_run(result: Result, started: int) -> bool:
    stored = result.stored
    return stored is not None and stored.version == 1 and stored.last_updated_us >= started


def _same_identifier(output: Output) -> Issue:
    """Two records of one input with one identifier and other content (an HL7 v2 message
    whose OBX set ids restart in each OBR group, under an identifier template without the
    order number): an error naming the second record, since storing only one of them would
    lose what the other says."""
    identifier = output.identifier
    return Issue(
        "error",
        "duplicate",
        f"{output.position}: an earlier record of this input has the same identifier "
        f"({identifier['system']}|{identifier['value']}) and other content; neither can stand "
        "for the other, so this one is not stored (give each record its own identifier in the "
        "rule's identifier template)",
    )


def _corrects_nothing(output: Output) -> Issue:
    """A record marked a correction (a C, D or W result) with nothing of its patient's under
    its identifier: stored as new, and the sender told, since it may be a result first posted
    to another patient, which this does not touch."""
    identifier = output.identifier
    return Issue(
        "warning",
        "business-rule",
        f"{output.position}: this correction corrects nothing: the patient has no record "
        f"with identifier {identifier['system']}|{identifier['value']}, so it was stored as "
        "new. If it was first posted to another patient, that patient's record is unchanged "
        "(retract it there)",
    )


def _kept_stored(output: Output, result: Result) -> Issue:
    """A record already stored with other content, not marked a correction: the stored version
    stays, and the sender is told, so what the record said now is not lost without a word."""
    stored = result.stored
    where = f"{stored.type}/{stored.id}" if stored is not None else "the stored resource"
    identifier = output.identifier
    return Issue(
        "warning",
        "business-rule",
        f"{output.position}: {where} (identifier {identifier['system']}|"
        f"{identifier['value']}) is already stored with other content; the stored version "
        "is kept, as this mapping does not mark the record a correction",
    )


def _entry(output: Output) -> dict[str, Any]:
    identifier = output.identifier
    return {
        "resource": output.resource,
        "request": {
            "method": "POST",
            "url": output.resource["resourceType"],
            "ifNoneExist": f"identifier={escape_value(identifier['system'])}|"
            f"{escape_value(identifier['value'])}",
        },
    }
