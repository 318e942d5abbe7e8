"""``$ingest``: run a mapping over a raw input and write what it makes in one transaction.

Records stream from the input; each is mapped, each resource is validated against the base
definitions and the profile it claims, and written with a conditional create on its identifier
(so ingesting the same input again changes nothing), all inside one database transaction: any
error rolls everything back. A dry run writes nothing and returns the Bundle that would be
written with its validation outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from service.errors import FhirError, Issue, Unprocessable
from service.fhir.access import require_population_write
from service.fhir.bundles import resolve_conditional_references
from service.fhir.interactions import FhirService
from service.fhir.results import Result, operation_outcome
from service.fhir.search import escape_value
from service.mapping.engine import Mapper, Output
from service.mapping.files import MappingError, MappingFile
from service.mapping.sources import mapping_records
from service.storage import Transaction

MAX_ERRORS = 100  # reported at once; the rest are summarised
DRY_RUN_LIMIT = 10_000  # resources shown by a dry run
BATCH = 200  # resources inserted with one multi-row statement per table


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
    unchanged: int = 0
    errors: list[Issue] = field(default_factory=list)
    more_errors: int = 0
    entries: list[dict[str, Any]] = field(default_factory=list)

    def add_error(self, issue: Issue) -> None:
        """Keep the first MAX_ERRORS problems; count the rest."""
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(issue)
        else:
            self.more_errors += 1

    def summary(self) -> list[Issue]:
        """The counts, as information issues."""
        return [
            Issue(
                "information",
                "informational",
                f"{self.records} records read, {self.skipped} skipped; {self.created} resources "
                f"created, {self.unchanged} already present and unchanged",
            )
        ]


class _Rollback(Exception):
    """Raised inside the transaction to undo every write of a failed ingest."""


def ingest(
    fhir: FhirService,
    mapping: MappingFile,
    data: bytes | str | Iterable[str],
    questionnaires: dict[str, dict[str, Any]],
    dry_run: bool = False,
    conceptmaps: dict[str, dict[str, Any]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[Result, IngestReport]:
    """Map ``data`` with ``mapping`` and write the result (or, with ``dry_run``, only show it)."""
    require_population_write("$ingest")
    report = IngestReport()
    mapper = Mapper(mapping, conceptmaps)

    def outputs() -> Iterable[Output]:
        records = mapping_records(mapping, data, questionnaires)
        while True:
            try:
                record = next(records)
            except StopIteration:
                return
            except MappingError as exc:
                report.add_error(Issue("error", "structure", f"{mapping.path.name} <- {exc}"))
                return
            report.records += 1
            if progress is not None and report.records % 1000 == 0:
                progress(report.records)
            try:
                made = mapper.map_record(record)
            except MappingError as exc:
                report.add_error(Issue("error", "processing", str(exc)))
                continue
            if not made:
                report.skipped += 1
            yield from made

    def check(output: Output) -> bool:
        resource = output.resource
        try:
            fhir.check_resource(resource, resource["resourceType"])  # what every write must meet
        except FhirError as error:
            for issue in error.outcome_issues():
                if issue.severity in ("error", "fatal"):
                    report.add_error(
                        replace(
                            issue,
                            diagnostics=f"{output.where} <- {output.position}: the "
                            f"{resource['resourceType']} made is not valid: {issue.diagnostics}",
                        )
                    )
            return False
        return True

    if dry_run:
        for output in outputs():
            if check(output) and len(report.entries) < DRY_RUN_LIMIT:
                report.entries.append(_entry(output))
        if progress is not None:
            progress(report.records)
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": report.entries}
        outcome = operation_outcome(report.errors or report.summary())
        parameters = {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "bundle", "resource": bundle},
                {"name": "outcome", "resource": outcome},
            ],
        }
        return Result(200, body=parameters), report

    def write(tx: Transaction) -> None:
        batch: list[tuple[str, dict[str, Any], dict[str, str]]] = []
        resolved: dict[str, str] = {}  # the same patient is named by many records

        def flush() -> None:
            for result in fhir.create_many_in(tx, batch):
                if result.status == 201:
                    report.created += 1
                else:
                    report.unchanged += 1
            batch.clear()

        for output in outputs():
            if not check(output) or report.errors:
                continue  # keep mapping to report every problem; nothing will be kept
            try:
                resource = resolve_conditional_references(fhir, tx, output.resource, resolved)
            except FhirError as error:
                report.add_error(
                    Issue(
                        "error",
                        error.code,
                        f"{output.where} <- {output.position}: {error.diagnostics}",
                    )
                )
                continue
            batch.append((resource["resourceType"], resource, output.identifier))
            if len(batch) >= BATCH:
                flush()
        if report.errors:
            raise _Rollback
        flush()
        if progress is not None:
            progress(report.records)

    with contextlib.suppress(_Rollback):
        fhir.run(write, retry=False)
    if report.errors:
        if report.more_errors:
            report.errors.append(
                Issue("error", "too-costly", f"... and {report.more_errors} more problems")
            )
        raise Unprocessable(
            f"Nothing was written: {report.errors[0].diagnostics}"
            + (f" (and {len(report.errors) - 1} more)" if len(report.errors) > 1 else ""),
            issues=report.errors,
        )
    return Result(200, body=operation_outcome(report.summary())), report


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
