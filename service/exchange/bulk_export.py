"""Bulk Data export (FHIR Bulk Data Access IG v2, https://hl7.org/fhir/uv/bulkdata/export.html):
the jobs, their folder, and the channel of the outbox worker that writes their NDJSON files.

A kick-off (``start``) writes the job's request into its own folder under the export folder and
queues one outbox row for the destination ``export:<job id>`` in the same store as every other
delivery; the worker hands that row to ``BulkExport``, which writes one ``<Type>.ndjson`` file
per resource type. Files are written in flat memory: the store is paged by key (a page of
resources at a time) and each resource is written as one line, its stored JSON as it was
served. After each page the file is flushed to disk and then the job's progress (the last key
written and the lines in the file) is recorded with ``tx.jobs``; a worker that takes the row over
after a crash cuts the file back to the recorded lines and goes on from the recorded key, so no
line is written twice. A type's file is renamed from ``.part`` when it is complete, and the
manifest (``manifest.json``) is written last. Cancelling removes the folder; the worker notices
it before its next page and stops. Folders are removed ``ttl_seconds`` after the job ended
(``sweep``).

The export reads through the access guard of the access the kick-off had (``ExportJob.access``),
so it sees exactly what the same token could read with a search.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from service.errors import FhirError
from service.exchange.channels import Refused, Retry, Skipped
from service.exchange.destinations import Destination
from service.fhir.access import COMPARTMENT_PARAMS, Access, parse_scopes, patients_of
from service.fhir.actor import Actor
from service.fhir.interactions import FhirService
from service.fhir.model import instant, now_us
from service.storage import HistoryQuery, Key, StoredResource, Transaction
from service.storage.outbox import OutboxRow

log = logging.getLogger("whatmatters.exchange")

NDJSON = "application/fhir+ndjson"
# _outputFormat: the full type and its abbreviations, as the IG requires a server to accept
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
# Patient/$export: the types of the R4 patient compartment this server stores
PATIENT_TYPES: tuple[str, ...] = tuple(sorted(COMPARTMENT_PARAMS))
EXPORT_ROW_KIND = "export"
PAGE_SIZE = 1000
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_FILE = re.compile(r"^([A-Za-z]+)\.ndjson$")
SWEEP_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class ExportJob:
    """One export as it was asked for.

    ``level``: ``system`` or ``patient``. ``scopes`` is None when no token asked (the
    loopback-only ``none`` mode); then nothing is restricted and no token is needed to fetch
    the files. ``files_base`` is the absolute URL the files are served under.
    """

    id: str
    level: str
    types: tuple[str, ...]
    since_us: int | None
    request: str
    transaction_us: int
    files_base: str
    scopes: str | None = None
    client_id: str | None = None
    subject: str | None = None
    # the Patient ids a patient-level export is narrowed to (its ``patient`` parameter)
    patients: tuple[str, ...] | None = None

    @property
    def requires_token(self) -> bool:
        """Whether the files are fetched with an access token (the kick-off had one)."""
        return self.scopes is not None

    def access(self) -> Access | None:
        """The access of the kick-off, which the export reads with (None: unrestricted)."""
        if self.scopes is None:
            return None
        return Access(
            grants=parse_scopes(self.scopes),
            subject=self.subject,
            client_id=self.client_id,
            scopes=self.scopes,
        )

    def owned_by(self, access: Access | None) -> bool:
        """Whether a request with ``access`` may poll, cancel and download this export: the
        same client (and token subject) that kicked it off."""
        if self.scopes is None:
            return True
        return access is not None and (access.client_id, access.subject) == (
            self.client_id,
            self.subject,
        )

    def to_json(self) -> str:
        """The job as stored in its folder."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ExportJob:
        """The job stored in its folder."""
        data = json.loads(text)
        data["types"] = tuple(data["types"])
        if data.get("patients") is not None:
            data["patients"] = tuple(data["patients"])
        return cls(**data)


def new_job_id() -> str:
    """A job id nobody can guess."""
    return uuid.uuid4().hex


class ExportFolder:
    """The export folder: one folder per job with ``job.json``, the NDJSON files, and at the
    end ``manifest.json`` (or ``error.json``). Removed ``ttl_seconds`` after the job ended."""

    def __init__(self, root: Path, ttl_seconds: float = 3600.0) -> None:
        # absolute: a relative folder (the default instance/exports) is the working
        # directory's, where Flask's send_file would read it from the package's folder
        self.root = Path(root).absolute()
        self.ttl_seconds = ttl_seconds
        self._swept = 0.0

    def path(self, job_id: str) -> Path | None:
        """The folder of a job (None for a string that cannot be a job id)."""
        return self.root / job_id if _JOB_ID.match(job_id) else None

    def create(self, job: ExportJob) -> None:
        """Make the job's folder and write its request."""
        folder = self.root / job.id
        folder.mkdir(parents=True, exist_ok=False)
        write_atomically(folder / "job.json", job.to_json())

    def job(self, job_id: str) -> ExportJob | None:
        """The job, or None when it is unknown, cancelled or expired."""
        found: ExportJob | None = _read(self.path(job_id), "job.json", ExportJob.from_json)
        return found

    def manifest(self, job_id: str) -> dict[str, Any] | None:
        """The completion manifest, once the export is complete."""
        found: dict[str, Any] | None = _read(self.path(job_id), "manifest.json", json.loads)
        return found

    def failure(self, job_id: str) -> dict[str, Any] | None:
        """The OperationOutcome of an export that failed."""
        found: dict[str, Any] | None = _read(self.path(job_id), "error.json", json.loads)
        return found

    def ended_us(self, job_id: str) -> int | None:
        """When the export completed or failed (microseconds), None while it runs."""
        folder = self.path(job_id)
        for name in ("manifest.json", "error.json"):
            with contextlib.suppress(OSError, TypeError):
                return int((folder / name).stat().st_mtime * 1_000_000)  # type: ignore[operator]
        return None

    def file(self, job_id: str, name: str) -> tuple[str, Path] | None:
        """(resource type, path) of a complete NDJSON file of the job, or None."""
        folder, match = self.path(job_id), _FILE.match(name)
        if folder is None or match is None or not (folder / name).is_file():
            return None
        return match.group(1), folder / name

    def fail(self, job_id: str, outcome: dict[str, Any]) -> None:
        """Record that the export failed (its folder stays until the TTL has passed)."""
        folder = self.path(job_id)
        if folder is not None and folder.is_dir():
            with contextlib.suppress(OSError):
                write_atomically(folder / "error.json", json.dumps(outcome))

    def remove(self, job_id: str) -> None:
        """Remove a job's folder and everything in it (a cancelled or expired export)."""
        folder = self.path(job_id)
        if folder is None:
            return
        for _ in range(5):  # a worker may add a file while the folder is being removed
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                return
            time.sleep(0.05)

    def sweep(self, now: int | None = None, *, force: bool = False) -> list[str]:
        """Remove the folders of exports that ended more than ``ttl_seconds`` ago (at most once a
        minute unless ``force``); return the job ids removed."""
        if not force and time.monotonic() - self._swept < SWEEP_EVERY_SECONDS:
            return []
        self._swept = time.monotonic()
        now = now_us() if now is None else now
        removed = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.root):
                if not _JOB_ID.match(entry.name):
                    continue
                ended = self.ended_us(entry.name)
                if ended is None:
                    job = self.job(entry.name)
                    # a job whose request vanished, or that never ended in a day, is abandoned
                    ended = job.transaction_us + 24 * 3600 * 1_000_000 if job else 0
                if now - ended > self.ttl_seconds * 1_000_000:
                    self.remove(entry.name)
                    removed.append(entry.name)
        return removed


def _read(folder: Path | None, name: str, parse: Callable[[str], Any]) -> Any:
    if folder is None:
        return None
    try:
        return parse((folder / name).read_text(encoding="utf-8"))
    except (FileNotFoundError, NotADirectoryError):
        return None


def write_atomically(path: Path, text: str) -> None:
    """Write a small file whole or not at all (a temporary file renamed over it)."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(temporary, "x", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


# -- kick-off, status and cancel (for the API) ---------------------------------------------------


def destination_of(job_id: str) -> str:
    """The outbox destination of an export job."""
    return Destination.export(job_id).format()


def progress_key(job_id: str) -> str:
    """The name of a job's progress in ``tx.jobs``."""
    return f"export:{job_id}"


def start(fhir: FhirService, folder: ExportFolder, job: ExportJob) -> None:
    """Kick an export off: its folder and request, then its row in the outbox."""
    folder.create(job)
    row = OutboxRow(
        destination=destination_of(job.id),
        group_key=job.id,
        kind=EXPORT_ROW_KIND,
        res_type="Bulk",
        res_id=job.id,
        version=0,
        created_us=job.transaction_us,
        next_attempt_us=job.transaction_us,
    )
    try:
        fhir.run(lambda tx: tx.outbox.add([row]))
    except BaseException:
        folder.remove(job.id)
        raise


@dataclass(frozen=True)
class Progress:
    """How far a running export got: the type being written, the types done, its lines."""

    current: str | None
    types_done: int
    types: int
    lines: int
    stopped: bool = False  # its outbox row was discarded or went dead: it will not complete

    def describe(self) -> str:
        """The X-Progress text (the IG: under 100 characters)."""
        if self.current is None:
            return f"queued: {self.types} resource types to export"
        text = (
            f"writing {self.current} ({self.lines} resources so far); "
            f"{self.types_done} of {self.types} types complete"
        )
        return text[:99]


def progress(fhir: FhirService, folder: ExportFolder, job: ExportJob) -> Progress:
    """The progress of a running export."""

    def read(tx: Transaction) -> tuple[tuple[Key | None, int] | None, list[OutboxRow]]:
        rows = tx.outbox.rows(destination=destination_of(job.id), limit=10)
        return tx.jobs.progress(progress_key(job.id)), rows

    state, rows = fhir.read_only(read)
    stopped = bool(rows) and all(row.state in ("dead", "discarded") for row in rows)
    done = sum(1 for t in job.types if (folder.root / job.id / f"{t}.ndjson").exists())
    if state is None or state[0] is None:
        return Progress(None, done, len(job.types), 0, stopped)
    return Progress(state[0][0], done, len(job.types), state[1], stopped)


def cancel(fhir: FhirService, folder: ExportFolder, job_id: str) -> None:
    """Cancel an export: its outbox row discarded (a worker writing it stops at its next page),
    its progress forgotten, its folder and files removed."""

    def discard(tx: Transaction) -> None:
        destination = destination_of(job_id)
        for row in tx.outbox.rows(states=("pending", "inflight"), destination=destination):
            tx.outbox.save(replace(row, state="discarded", lease_owner=None, lease_until_us=0))
        tx.jobs.set_progress(progress_key(job_id), None, None)

    fhir.run(discard)
    folder.remove(job_id)


def outcome(severity: str, code: str, text: str) -> dict[str, Any]:
    """An OperationOutcome of one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }


# -- the worker's channel ------------------------------------------------------------------------


class Cancelled(Exception):
    """The export was cancelled (or expired) while it was being written."""


class BulkExport:
    """The channel of ``export:`` destinations: writes one export's files, resumably."""

    coalesces = False

    def __init__(
        self,
        fhir: FhirService,
        folder: ExportFolder,
        *,
        page_size: int = PAGE_SIZE,
        renew: Callable[[OutboxRow], bool] | None = None,
    ) -> None:
        self.fhir = fhir
        self.folder = folder
        self.page_size = page_size
        self.renew = renew  # keeps the row's lease while the export runs (set by the worker)

    def deliver(self, row: OutboxRow) -> int | None:
        """Write the export of ``row``: every type not complete yet, then the manifest."""
        job = self.folder.job(row.res_id)
        if job is None:
            raise Skipped("the export was cancelled or has expired")
        if self.folder.manifest(job.id) is not None:
            return None  # complete already (a worker stopped after writing the manifest)
        # an operator put a failed export back in the queue: it is running again
        (self.folder.root / job.id / "error.json").unlink(missing_ok=True)
        try:
            for type_ in job.types:
                self._write_type(job, type_, row)
            self._finish(job)
        except Cancelled as exc:
            self.folder.remove(job.id)  # whatever was written after the cancel goes too
            self._forget(job.id)
            raise Skipped("the export was cancelled") from exc
        except FhirError as exc:  # the kick-off's token no longer reads what it asked for
            self.folder.fail(job.id, outcome("error", exc.code, str(exc)))
            raise Refused(f"the export cannot be written: {exc}") from exc
        except OSError as exc:
            if self.folder.job(job.id) is None:
                self.folder.remove(job.id)
                self._forget(job.id)
                raise Skipped("the export was cancelled") from exc
            raise Retry(f"the export files could not be written ({type(exc).__name__})") from exc
        return None

    def gave_up(self, row: OutboxRow, reason: str) -> None:
        """An export that went dead is answered as failed (with its own outcome, if any)."""
        if self.folder.failure(row.res_id) is None:
            self.folder.fail(row.res_id, outcome("error", "exception", "The export failed"))

    def sweep(self) -> list[str]:
        """Remove expired exports (at most once a minute)."""
        return self.folder.sweep()

    # -- one type ------------------------------------------------------------------------------

    def _write_type(self, job: ExportJob, type_: str, row: OutboxRow) -> None:
        folder = self.folder.root / job.id
        final = folder / f"{type_}.ndjson"
        if final.exists():
            return
        part = folder / f"{type_}.ndjson.part"
        key = progress_key(job.id)
        state = self.fhir.read_only(lambda tx: tx.jobs.progress(key))
        after: Key = (type_, "")
        lines = 0
        if state is not None and state[0] is not None and state[0][0] == type_:
            kept = _cut_to_lines(part, state[1])
            if kept:
                after, lines = state[0], state[1]
        if lines == 0:
            with open(part, "wb"):
                pass  # a fresh file (never one left by an earlier attempt)
        with open(part, "r+b") as out:
            out.seek(0, os.SEEK_END)
            while True:
                self._check(job, row)
                keys, written, more = self._page(job, type_, after, out)
                if not keys:
                    break
                out.flush()
                os.fsync(out.fileno())
                lines += written
                after = keys[-1]
                self._record(key, after, lines)
                if not more:
                    break
        os.replace(part, final)

    def _check(self, job: ExportJob, row: OutboxRow) -> None:
        """Stop when the export was cancelled, or when another worker took the row over."""
        if self.folder.job(job.id) is None:
            raise Cancelled()
        if self.renew is not None and not self.renew(row):
            if self.folder.job(job.id) is None:
                raise Cancelled()
            raise Retry("the lease on the export was lost to another worker")

    def _forget(self, job_id: str) -> None:
        """Forget the progress of an export that will not go on."""
        self.fhir.run(lambda tx: tx.jobs.set_progress(progress_key(job_id), None, None))

    def _record(self, key: str, after: Key, lines: int) -> None:
        """Record how far the export got (after its lines are on disk)."""
        self.fhir.run(lambda tx: tx.jobs.set_progress(key, after, lines))

    def _page(
        self, job: ExportJob, type_: str, after: Key, out: Any
    ) -> tuple[list[Key], int, bool]:
        """Write the next page of ``type_`` after ``after``: (keys read, lines written,
        whether more may follow)."""
        with self.fhir.session(Actor.client(job.access())) as session:
            tx = session.tx
            found = tx.resources.current_keys(after, self.page_size)
            keys = [k for k in found if k[0] == type_]
            more = len(keys) == len(found) == self.page_size
            if not keys:
                return [], 0, False
            stored = sorted(tx.resources.read_many(keys), key=lambda s: s.id)
            wanted = set(job.patients) if job.patients is not None else None
            chunk = []
            for resource in stored:
                version = self._as_of(tx, resource, job.transaction_us)
                if version is None or version.content is None:
                    continue
                if job.since_us is not None and version.last_updated_us <= job.since_us:
                    continue
                if job.level == "patient" and not self._in_a_compartment(tx, version, wanted):
                    continue
                chunk.append(_line(version.content))
            out.write("".join(chunk).encode("utf-8"))
            return keys, len(chunk), more

    def _as_of(
        self, tx: Transaction, resource: StoredResource, moment: int
    ) -> StoredResource | None:
        """The version current at the export's transaction time (the IG: nothing changed after
        it), or None when the resource did not exist then."""
        if resource.last_updated_us <= moment:
            return resource
        for version in tx.resources.history(
            HistoryQuery(type=resource.type, id=resource.id, count=1000)
        ):
            if version.last_updated_us <= moment:
                return None if version.deleted else version
        return None

    def _in_a_compartment(
        self, tx: Transaction, resource: StoredResource, wanted: set[str] | None
    ) -> bool:
        """Whether ``resource`` is in some patient's compartment (one of ``wanted``, the
        job's patients, when it names them)."""
        if resource.type == "Patient":
            return wanted is None or resource.id in wanted

        def read(type_: str, id_: str) -> Any:
            found = tx.resources.read(type_, id_)
            return json.loads(found.content) if found and found.content else None

        content = json.loads(resource.content or "{}")
        references = self.fhir.search_params.references
        found = patients_of(resource.type, content, references, read)
        return bool(found if wanted is None else found & wanted)

    # -- the end -------------------------------------------------------------------------------

    def _finish(self, job: ExportJob) -> None:
        folder = self.folder.root / job.id
        output = []
        for type_ in job.types:
            path = folder / f"{type_}.ndjson"
            count = _count_lines(path)
            if count:
                url = f"{job.files_base}/{job.id}/{type_}.ndjson"
                output.append({"type": type_, "url": url, "count": count})
            else:
                path.unlink(missing_ok=True)  # the IG: no file for a type with no resources
        manifest = {
            "transactionTime": instant(job.transaction_us),
            "request": job.request,
            "requiresAccessToken": job.requires_token,
            "output": output,
            "error": [],
        }
        if self.folder.job(job.id) is None:
            raise Cancelled()
        write_atomically(folder / "manifest.json", json.dumps(manifest))
        self._forget(job.id)
        log.info("bulk export %s complete: %d files", job.id, len(output))


def _line(content: str) -> str:
    """One NDJSON line: the stored JSON (already on one line unless stored pretty)."""
    if "\n" in content or "\r" in content:
        content = json.dumps(json.loads(content), ensure_ascii=False, separators=(",", ":"))
    return content + "\n"


def _count_lines(path: Path) -> int:
    """The lines of a file, read a block at a time."""
    count = 0
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as source:
        while block := source.read(1 << 20):
            count += block.count(b"\n")
    return count


def _cut_to_lines(path: Path, lines: int) -> bool:
    """Cut a partly written file back to its first ``lines`` lines (the ones whose progress
    was recorded); False when it holds fewer (then the type starts again)."""
    if lines <= 0:
        return False
    seen = 0
    offset = 0
    try:
        with open(path, "r+b") as part:
            while block := part.read(1 << 20):
                start = 0
                while seen < lines:
                    found = block.find(b"\n", start)
                    if found < 0:
                        break
                    seen += 1
                    start = found + 1
                if seen == lines:
                    part.truncate(offset + start)
                    return True
                offset += len(block)
    except FileNotFoundError:
        return False
    return False


def export_types(
    level: str, asked: Sequence[str], access: Access | None, supported: Sequence[str]
) -> tuple[str, ...]:
    """The types an export writes: those asked for (all of the level's when none are), each
    one the access may read with a system/ scope (see ``service.fhir.access``)."""
    candidates = PATIENT_TYPES if level == "patient" else tuple(sorted(supported))
    if not asked:
        chosen = candidates
        if access is not None:
            chosen = tuple(t for t in candidates if system_reads(access, t))
        return chosen
    return tuple(sorted(set(asked)))


def system_reads(access: Access, type_: str) -> bool:
    """Whether the access holds a system/ scope that reads (and searches) ``type_``."""
    return any(
        g.context == "system" and g.covers(type_, "r") and g.covers(type_, "s")
        for g in access.grants
    )
