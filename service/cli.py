"""The ``whatmatters`` command: serve, init-db, vendor-definitions."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from service.config import Config, ConfigError


def _serve(config: Config, args: argparse.Namespace) -> int:
    from gunicorn.app.base import BaseApplication

    from service import create_app

    if config.auto_migrate:
        _init_db(config, args)
    # Broken profiles stop the service here, with the file and element, not in each worker.
    from service import wire_fhir_service
    from service.storage.memory import MemoryStore

    wire_fhir_service(config, MemoryStore())
    # Each worker builds its own app (and connection pool) after the fork.
    worker_config = replace(config, auto_migrate=False)

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{config.host}:{config.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("accesslog", None)
            self.cfg.set("graceful_timeout", 20)

        def load(self) -> object:
            return create_app(worker_config)

    print(
        f"What Matters FHIR service on http://{config.host}:{config.port}{config.base_path} "
        f"({config.database_url.split(':', 1)[0]})",
        flush=True,
    )
    _Server().run()
    return 0


def _init_db(config: Config, _args: argparse.Namespace) -> int:
    from service.storage.sql import SqlStore

    store = SqlStore.from_url(config.database_url)
    applied = store.migrate()
    store.close()
    if applied:
        for line in applied:
            print(f"applied migration {line}")
    else:
        print("schema is current")
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
    from service.errors import FhirError
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
    vendor = sub.add_parser(
        "vendor-definitions", help="regenerate the vendored R4 definitions from the npm package"
    )
    vendor.add_argument("package", help="path to hl7.fhir.r4.examples-4.0.1.tgz")
    vendor.set_defaults(run=_vendor)
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
    from service.validation.profiles import ProfileError

    try:
        result: int = args.run(config, args)
    except ProfileError as exc:
        print(f"whatmatters: the profiles cannot be used: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
