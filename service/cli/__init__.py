"""The ``whatmatters`` command: serve, worker, outbox, import, init-db, map, validate ..."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from service.cli.mapping import _map_check, _map_reload, _map_run, _map_test
from service.cli.serving import _init_db, _serve, _worker
from service.config import Config, ConfigError
from service.errors import FhirError


def _row_id(text: str) -> int:
    """An outbox row id for argparse."""
    from service.exchange.admin import parse_row_id

    row_id = parse_row_id(text)
    if row_id is None:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an outbox row id")
    return row_id


def _outbox(config: Config, args: argparse.Namespace) -> int:
    from service import build_fhir_service
    from service.exchange.admin import NoSelection, OutboxAdmin, Selection, reason_text
    from service.fhir.model import instant

    fhir = build_fhir_service(config)
    admin = OutboxAdmin(fhir)
    selection = Selection.of(args.id, args.partner, args.destination)
    try:
        if args.outbox_command == "status":
            lines = admin.summary()
            if not lines:
                print("the outbox is empty")
            for line in lines:
                print(
                    f"{line.destination:32} {line.state:10} {line.rows:8} "
                    f"oldest {instant(line.oldest_us)}"
                )
            states = ["dead", "blocked"] if not args.all else None
            for row in admin.rows(selection, states):
                reason = reason_text(row.last_error)
                print(
                    f"#{row.id} {row.state} {row.destination} {row.kind} "
                    f"{row.res_type}/{row.res_id}/_history/{row.version} attempts={row.attempts} "
                    f"status={row.last_status}: {reason}"
                )
            return 0
        if args.outbox_command == "retry":
            changed = admin.retry(selection)
            print(f"{len(changed)} rows queued again: {' '.join(f'#{r.id}' for r in changed)}")
            return 0
        try:
            changed = admin.discard(selection, everything=args.all)
        except NoSelection:
            print("whatmatters: name the rows to discard (--id, --partner, or --all)")
            return 2
        print(f"{len(changed)} rows discarded: {' '.join(f'#{r.id}' for r in changed)}")
        return 0
    finally:
        fhir.store.close()


def _refused(exc: FhirError) -> int:
    """Print an import's refusal, an error line per issue with where it is; exit code 1."""
    for issue in exc.outcome_issues():
        print(f"error: {', '.join(issue.expression) or '-'}: {issue.diagnostics}")
    return 1


def _import_document(config: Config, path: Path) -> int:
    from service import build_fhir_service
    from service.priorities.ips_import import import_document

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        print(f"whatmatters: cannot read {path}: {exc}", file=sys.stderr)
        return 2
    fhir = build_fhir_service(config)
    try:
        report = import_document(fhir, document)
    except FhirError as exc:
        return _refused(exc)
    finally:
        fhir.store.close()
    read = ", ".join(f"{n} {t}" for t, n in report.read.items())
    print(
        f"imported {report.patient} from {path}: read {read}; "
        f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged"
    )
    return 0


def _import(config: Config, args: argparse.Namespace) -> int:
    if args.ips is not None:
        if args.source or args.patient:
            print(
                "whatmatters: --ips reads a document; leave out --from and --patient",
                file=sys.stderr,
            )
            return 2
        return _import_document(config, args.ips)
    if not args.source or not args.patient:
        print(
            "whatmatters: import needs --from NAME --patient SYSTEM|VALUE, or --ips FILE",
            file=sys.stderr,
        )
        return 2
    from service import build_fhir_service
    from service.exchange.channels import Refused, Retry
    from service.exchange.partner_client import HttpPartnerClient, Unreachable
    from service.exchange.partners import load_partners

    partners = {p.name: p for p in load_partners(config.partners_file)}
    partner = partners.get(args.source)
    if partner is None:
        known = ", ".join(sorted(partners)) or "none (set WHATMATTERS_PARTNERS_FILE)"
        print(f"whatmatters: no partner {args.source!r}; partners: {known}", file=sys.stderr)
        return 2
    system, sep, value = args.patient.partition("|")
    if not sep or not system or not value:
        print("whatmatters: --patient must be SYSTEM|VALUE", file=sys.stderr)
        return 2
    from service.exchange.importer import import_patient

    fhir = build_fhir_service(config)
    try:
        report = import_patient(fhir, HttpPartnerClient(partner), system, value)
    except (Refused, Retry, Unreachable) as exc:
        print(f"whatmatters: import from {partner.name} failed: {exc}", file=sys.stderr)
        return 1
    except FhirError as exc:
        return _refused(exc)
    finally:
        fhir.store.close()
    read = ", ".join(f"{n} {t}" for t, n in report.read.items())
    if report.document:
        read += f" from its What matters to me document {report.document}"
    print(
        f"imported {report.patient} from {partner.name}: read {read}; "
        f"{report.created} created, {report.updated} updated, {report.unchanged} unchanged"
    )
    return 0


def _reindex(config: Config, args: argparse.Namespace) -> int:
    from service import build_fhir_service

    service = build_fhir_service(config)
    width = 30

    def bar(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        percent = 100 * done // max(total, 1)
        sys.stderr.write(
            f"\rreindex [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {percent}%"
        )
        sys.stderr.flush()

    count = service.reindex(batch_size=args.batch, restart=args.restart, progress=bar)
    sys.stderr.write("\n")
    print(f"reindexed {count} resources")
    service.store.close()
    return 0


def _validate(config: Config, args: argparse.Namespace) -> int:
    from service.fhir.model import parse_json
    from service.validation.definitions import Definitions
    from service.validation.profiles import ProfileRegistry
    from service.validation.validator import ResourceValidator

    registry = ProfileRegistry.load(Definitions.shared(), config.profiles_dir)
    validator = ResourceValidator(registry, invariants=True)
    errors = 0
    for name in args.files:
        path = Path(name)
        try:
            resource = parse_json(path.read_bytes(), what=str(path))
        except (OSError, FhirError) as exc:
            print(f"{path}: error: {exc}")
            errors += 1
            continue
        issues = validator.validate(resource) + validator.validate_profiles(resource, args.profile)
        for issue in issues:
            where = ", ".join(issue.expression) or "-"
            print(f"{path}: {issue.severity} [{issue.code}] {where}: {issue.diagnostics}")
        failed = [i for i in issues if i.severity in ("error", "fatal")]
        errors += len(failed)
        if not issues:
            print(f"{path}: no issues")
    return 1 if errors else 0


def _vendor(_config: Config, args: argparse.Namespace) -> int:
    from service.validation.vendor import vendor

    for name, count in vendor(Path(args.package)).items():
        print(f"{name}: {count} resources")
    return 0


def _vendor_terminology(_config: Config, args: argparse.Namespace) -> int:
    from service.validation.vendor_terminology import vendor_terminology

    for kind, count in vendor_terminology(Path(args.core), Path(args.tho)).items():
        print(f"{kind}: {count}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the whatmatters command line."""
    parser = argparse.ArgumentParser(prog="whatmatters", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the FHIR service (gunicorn)")
    serve.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=4, help="threads per worker")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8080)")
    serve.set_defaults(run=_serve)
    init_db = sub.add_parser("init-db", help="create or migrate the database schema")
    init_db.set_defaults(run=_init_db)
    reindex = sub.add_parser(
        "reindex",
        help="rebuild the search index (resumable: an interrupted run continues where it stopped)",
    )
    reindex.add_argument("--batch", type=int, default=500, help="resources per transaction")
    reindex.add_argument("--restart", action="store_true", help="start again from the beginning")
    reindex.set_defaults(run=_reindex)
    validate = sub.add_parser(
        "validate", help="check FHIR JSON files against the R4 definitions (exit 1 on errors)"
    )
    validate.add_argument("files", nargs="+", help="FHIR resources in JSON")
    validate.add_argument("--profile", help="canonical URL of the profile to check against")
    validate.set_defaults(run=_validate)
    mapping = sub.add_parser("map", help="check, test and run inbound mappings (mappings/)")
    map_sub = mapping.add_subparsers(dest="map_command", required=True)
    check = map_sub.add_parser("check", help="check mapping files (schema and lint)")
    check.add_argument("files", nargs="+", help="mapping files (YAML)")
    check.set_defaults(run=_map_check)
    golden = map_sub.add_parser("test", help="run the golden tests inside mapping files")
    golden.add_argument("files", nargs="*", help="mapping files (default: the mappings folder)")
    golden.set_defaults(run=_map_test)
    run = map_sub.add_parser("run", help="map an input and write it in one transaction")
    run.add_argument("mapping", help="the mapping file")
    run.add_argument("input", help="the input file (HL7 v2, CSV, JSON, QuestionnaireResponse)")
    run.add_argument("--dry-run", action="store_true", help="show the Bundle; write nothing")
    run.set_defaults(run=_map_run)
    reload = map_sub.add_parser(
        "reload",
        help="check the mappings folder, then (with --pid or WHATMATTERS_PID_FILE) send the "
        "running service SIGHUP to reload it; a broken folder is never sent",
    )
    reload.add_argument("--pid", type=int, help="the `whatmatters serve` master's process id")
    reload.set_defaults(run=_map_reload)
    worker = sub.add_parser("worker", help="deliver the outbox to partners and subscribers")
    worker.add_argument("--threads", type=int, default=2, help="delivery threads")
    worker.add_argument("--once", action="store_true", help="deliver what is due, then stop")
    worker.add_argument("--timeout", type=float, default=60.0, help="with --once: at most")
    worker.set_defaults(run=_worker)
    box = sub.add_parser("outbox", help="show and manage the delivery queue")
    box_sub = box.add_subparsers(dest="outbox_command", required=True)
    for name, text in (
        ("status", "rows per destination and state, and the dead rows with their reasons"),
        ("retry", "queue dead rows again (all of them, or --id / --partner)"),
        ("discard", "give up rows (--id, --partner or --all); they stay listed"),
    ):
        command = box_sub.add_parser(name, help=text)
        command.add_argument("--id", type=_row_id, action="append", help="a row id (repeatable)")
        command.add_argument("--partner", help="only rows for this partner")
        command.add_argument("--destination", help="only rows for this destination")
        command.add_argument("--all", action="store_true", help="status: list every row")
        command.set_defaults(run=_outbox)
    pull = sub.add_parser(
        "import", help="pull a patient's priorities from a partner, or read an IPS document"
    )
    pull.add_argument("--from", dest="source", help="the partner's name")
    pull.add_argument("--patient", help="the patient's identifier SYSTEM|VALUE")
    pull.add_argument(
        "--ips", type=Path, help="an IPS document (JSON Bundle) whose Patient Story to store"
    )
    pull.set_defaults(run=_import)
    vendor = sub.add_parser(
        "vendor-definitions", help="regenerate the vendored R4 definitions from the npm package"
    )
    vendor.add_argument("package", help="path to hl7.fhir.r4.examples-4.0.1.tgz")
    vendor.set_defaults(run=_vendor)
    terms = sub.add_parser(
        "vendor-terminology", help="regenerate the vendored value sets and code systems"
    )
    terms.add_argument("core", help="path to hl7.fhir.r4.examples-4.0.1.tgz (the R4 core)")
    terms.add_argument("tho", help="path to hl7.terminology.r4-VERSION.tgz (HL7 THO)")
    terms.set_defaults(run=_vendor_terminology)
    args = parser.parse_args(argv)
    try:
        config = Config.from_env()
        overrides = {}
        if getattr(args, "host", None):
            overrides["host"] = args.host
        if getattr(args, "port", None):
            overrides["port"] = args.port
        if overrides:
            config = replace(config, **overrides)
    except ConfigError as exc:
        print(f"whatmatters: {exc}", file=sys.stderr)
        return 2
    from service.exchange.partners import PartnerConfigError
    from service.mapping.files import MappingError
    from service.validation.profiles import ProfileError

    try:
        result: int = args.run(config, args)
    except ProfileError as exc:
        print(f"whatmatters: the profiles cannot be used: {exc}", file=sys.stderr)
        return 2
    except (MappingError, PartnerConfigError) as exc:
        print(f"whatmatters: {exc}", file=sys.stderr)
        return 2
    return result
