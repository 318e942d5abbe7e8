"""Bulk Data export over HTTP (FHIR Bulk Data Access IG v2, export.html): the ``$export``
kick-off handler of the route table, and the plain routes of what follows it.

- kick-off: ``GET`` (or ``POST`` with a Parameters body) ``[base]/$export``,
  ``[base]/Patient/$export`` (``Group/{id}/$export``: 404,
  this server stores no Group) with ``Prefer: respond-async``, ``_type``, ``_since`` and
  ``_outputFormat``; 202 with ``Content-Location``, the status URL;
- status: ``GET /bulk-export/{job}``: 202 with ``X-Progress`` and ``Retry-After`` while it runs,
  200 with the manifest when complete, 500 with an OperationOutcome when it failed, 404 when
  unknown, cancelled or expired; ``DELETE`` cancels it (202) and removes its files;
- files: ``GET /bulk-export/{job}/{Type}.ndjson`` as ``application/fhir+ndjson``.

Exporting needs ``system/`` read scopes (SMART Backend Services) on every type exported; a
patient-context token is refused. The status and the files answer only the client that kicked
the export off. The jobs, their files and the worker's channel are in
``service.exchange.bulk_export``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Blueprint, Response, current_app, send_file

from service.api.handlers import Context, Params, request_actor
from service.api.negotiation import prefer, request_body
from service.config import Config
from service.errors import BadRequest, Forbidden, NotFound
from service.exchange.bulk_export import (
    NDJSON,
    OUTPUT_FORMATS,
    PATIENT_TYPES,
    ExportFolder,
    ExportJob,
    cancel,
    export_types,
    new_job_id,
    outcome,
    progress,
    start,
    system_reads,
)
from service.fhir.interactions import FhirService
from service.fhir.model import SUPPORTED_TYPES, http_date, now_us, parse_instant
from service.fhir.parameters import parameters_in, single_value
from service.fhir.results import Result
from service.fhir.router import FhirRequest

FILES_PATH = "/bulk-export"
RETRY_AFTER_SECONDS = 2
# kick-off parameters of the IG this server does not support: refused, unless the client
# sends Prefer: handling=lenient, then ignored (export.html, "Query Parameters")
UNSUPPORTED = ("_elements", "_typeFilter", "includeAssociatedData", "organizeOutputBy")
_PATIENT = re.compile(r"^Patient/([A-Za-z0-9\-.]{1,64})$")
# parameters any FHIR request may carry
GENERAL = ("_format", "_pretty")


def exports() -> ExportFolder:
    """The export folder of this application."""
    folder: ExportFolder | None = current_app.extensions.get("whatmatters.exports")
    if folder is None:
        config: Config = current_app.config["WHATMATTERS"]
        folder = ExportFolder(config.export_dir, config.export_ttl_seconds)
        current_app.extensions["whatmatters.exports"] = folder
    return folder


def _service() -> FhirService:
    service: FhirService = current_app.extensions["whatmatters.fhir"]
    return service


def _parameters(req: FhirRequest) -> list[tuple[str, str]]:
    """The kick-off's parameters: the query string, and for a POST the Parameters resource of
    its body (export.html: a server MAY support POST; each value as query-string text)."""
    given = list(req.query)
    if req.method != "POST":
        return given
    body, _ = request_body(req)
    for where, name, parameter in parameters_in(body, "$export"):
        found = single_value(parameter)
        if found is None or found[0] == "resource":
            raise BadRequest("each parameter needs a name and one value[x]", (where,))
        value = found[1]
        given.append((name, value if isinstance(value, str) else json.dumps(value)))
    return given


def _once(params: list[tuple[str, str]], name: str) -> str | None:
    given = [value for key, value in params if key == name]
    if len(given) > 1:
        raise BadRequest(f"{name} may be given once", expression=(name,))
    return given[0] if given else None


def _asked_types(params: list[tuple[str, str]], allowed: tuple[str, ...]) -> list[str]:
    types = [value for key, value in params if key == "_type"]
    asked = [t.strip() for value in types for t in value.split(",") if t.strip()]
    unknown = [t for t in asked if t not in allowed]
    if unknown:
        raise BadRequest(
            f"_type names {', '.join(unknown)}, which this export cannot include (it exports "
            f"{', '.join(allowed)})",
            expression=("_type",),
        )
    return asked


def _patients(params: list[tuple[str, str]], base: str, level: str) -> tuple[str, ...] | None:
    """The ids the ``patient`` parameter names (export.html: the export holds only their
    compartments), or None without it. Each value is a Patient reference, as a Reference (a
    POST's valueReference) or as its text; several by repeating it or with commas."""
    given = [value for key, value in params if key == "patient"]
    if not given:
        return None
    if level != "patient":
        raise BadRequest(
            "patient narrows a patient-level export: send it to Patient/$export (the IG: not "
            "applicable to a system-level export)",
            ("patient",),
        )
    ids: list[str] = []
    for value in given:
        if value.startswith("{"):
            try:
                reference = json.loads(value).get("reference")
            except (ValueError, AttributeError):
                reference = None
            texts = [reference] if isinstance(reference, str) else [value]
        else:
            texts = [t.strip() for t in value.split(",") if t.strip()]
        for text in texts:
            local = text.removeprefix(base.rstrip("/") + "/")
            match = _PATIENT.match(local)
            if match is None:
                raise BadRequest(
                    f"patient must name a Patient of this server (Patient/[id]), not {text!r}",
                    ("patient",),
                )
            ids.append(match.group(1))
    return tuple(dict.fromkeys(ids))


def _export(ctx: Context, req: FhirRequest, p: Params) -> Result:
    """The kick-off request (export.html, "Bulk Data Kick-off Request")."""
    if req.path.startswith("Group/"):
        raise NotFound(
            "This server stores no Group resources, so Group/[id]/$export has no group to "
            "export; export every patient's data with Patient/$export"
        )
    level = "patient" if req.path.startswith("Patient/") else "system"
    if prefer(req, "respond-async") is None:
        raise BadRequest(
            "Bulk Data export is asynchronous: the kick-off needs the header Prefer: respond-async"
        )
    lenient = prefer(req, "handling") == "lenient"
    params = _parameters(req)
    ignored: list[str] = []
    for name, _ in params:
        if name in ("_type", "_since", "_outputFormat", "patient", *GENERAL):
            continue
        if name not in UNSUPPORTED:
            raise BadRequest(f"$export does not support the parameter {name}", (name,))
        if not lenient:
            raise BadRequest(
                f"$export does not support the parameter {name}: the export would not be "
                "narrowed as asked. Send Prefer: handling=lenient to export without it",
                (name,),
            )
        ignored.append(name)
    patients = _patients(params, ctx.base, level)
    output_format = _once(params, "_outputFormat")
    if output_format is not None:
        # the '+' of application/fhir+ndjson, left unencoded, arrives as a space
        output_format = output_format.replace(" ", "+")
    if output_format is not None and output_format not in OUTPUT_FORMATS:
        raise BadRequest(
            f"_outputFormat {output_format!r} is not supported; this server writes "
            f"{NDJSON} (also accepted as application/ndjson and ndjson)",
            expression=("_outputFormat",),
        )
    since = _once(params, "_since")
    since_us = parse_instant(since, "_since") if since is not None else None
    supported = PATIENT_TYPES if level == "patient" else tuple(sorted(SUPPORTED_TYPES))
    asked = _asked_types(params, supported)
    access = ctx.actor.access
    if access is not None:
        if access.patient is not None:
            raise Forbidden(
                "Bulk Data export is system-level access (SMART Backend Services): a "
                "patient-context access token cannot export; use a token with system/ scopes"
            )
        refused = [t for t in asked if not system_reads(access, t)]
        if refused:
            raise Forbidden(
                f"Exporting {', '.join(refused)} needs a system/ scope that reads it "
                "(system/*.read or system/*.rs, or the type's own)"
            )
    types = export_types(level, asked, access, supported)
    if not types:
        raise Forbidden(
            "Bulk Data export needs system/ read scopes (system/*.read or system/*.rs); the "
            "access token holds none"
        )
    folder = exports()
    folder.sweep()
    query = f"?{req.query_string}" if req.query_string else ""
    files_base = _root(ctx) + FILES_PATH
    job = ExportJob(
        id=new_job_id(),
        level=level,
        types=types,
        since_us=since_us,
        request=f"{ctx.base}/{req.path}{query}",
        transaction_us=now_us(),
        files_base=files_base,
        scopes=access.scopes if access is not None else None,
        client_id=access.client_id if access is not None else None,
        subject=access.subject if access is not None else None,
        patients=patients,
    )
    start(_service(), folder, job)
    text = f"The export of {', '.join(types)} was accepted; poll the Content-Location URL"
    if ignored:
        text += (
            f". Not supported, so ignored (handling=lenient): {', '.join(dict.fromkeys(ignored))}"
        )
    body = outcome("information", "informational", text)
    return Result(202, body=body, headers={"Content-Location": f"{files_base}/{job.id}"})


def _root(ctx: Context) -> str:
    """The service's root URL as clients see it (the FHIR base without its path)."""
    base_path = ctx.config.base_path
    return ctx.base[: -len(base_path)] if ctx.base.endswith(base_path) else ctx.base


EXPORT_HANDLERS = {"export": _export}


# -- status, cancel and files ----------------------------------------------------------------------


def _owned(job_id: str) -> ExportJob:
    """The job, when the request's client kicked it off; 404 otherwise (whether it exists or
    not does not show)."""
    job = exports().job(job_id)
    if job is None or not job.owned_by(request_actor().access):
        raise NotFound(f"There is no export {job_id}: unknown, cancelled or expired")
    return job


def _json(status: int, body: Any, media: str, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype=media, headers=headers or {})


def build_exports() -> Blueprint:
    """The blueprint of the export status and file URLs."""
    bp = Blueprint("bulk_export", __name__)

    @bp.get(f"{FILES_PATH}/<job_id>")
    def status(job_id: str) -> Response:
        job = _owned(job_id)
        folder = exports()
        folder.sweep()
        manifest = folder.manifest(job.id)
        if manifest is not None:
            ended = folder.ended_us(job.id) or now_us()
            expires = http_date(ended + int(folder.ttl_seconds * 1_000_000))
            return _json(200, manifest, "application/json", {"Expires": expires})
        state = progress(_service(), folder, job)
        if state.stopped:  # it failed, or an operator discarded its row (not retried since)
            failure = folder.failure(job.id) or outcome(
                "error", "exception", "The export was stopped and will not complete"
            )
            return _json(500, failure, "application/fhir+json")
        return Response(
            status=202,
            headers={"X-Progress": state.describe(), "Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    @bp.delete(f"{FILES_PATH}/<job_id>")
    def delete(job_id: str) -> Response:
        job = _owned(job_id)
        cancel(_service(), exports(), job.id)
        body = outcome("information", "informational", "The export was cancelled")
        return _json(202, body, "application/fhir+json")

    @bp.get(f"{FILES_PATH}/<job_id>/<name>")
    def download(job_id: str, name: str) -> Response:
        job = _owned(job_id)
        folder = exports()
        found = folder.file(job.id, name)
        if found is None or folder.manifest(job.id) is None:
            raise NotFound(f"Export {job_id} has no file {name}")
        # streamed from disk a block at a time; Range requests are honoured
        return send_file(found[1], mimetype=NDJSON, conditional=True, max_age=0)

    return bp
