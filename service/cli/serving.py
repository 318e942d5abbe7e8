"""``whatmatters serve`` and ``whatmatters worker``: gunicorn with the outbox worker beside it
(or on its own), the metrics folder of its workers, and SIGHUP reloading the mappings."""

from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from service.config import Config, is_loopback


def _metrics_folder(config: Config) -> Path:
    """The multiprocess metrics folder for this run, emptied, and announced to prometheus_client
    (it must be in the environment before prometheus_client is first imported)."""
    import os
    import tempfile

    folder = config.metrics_dir or Path(tempfile.mkdtemp(prefix="whatmatters-metrics-"))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # counters of an earlier run must not be summed in
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def _serve(config: Config, args: argparse.Namespace) -> int:
    metrics_dir = _metrics_folder(config)
    from gunicorn.app.base import BaseApplication
    from prometheus_client import multiprocess

    from service import create_app
    from service.api.observability import configure_json_logs

    configure_json_logs()

    if config.auth_mode == "none" and not is_loopback(config.host):
        print(
            f"whatmatters: refusing to serve {config.host} without authorization: "
            "WHATMATTERS_AUTH_MODE=none is for a service bound to a loopback address "
            "(127.0.0.1, ::1). Set WHATMATTERS_AUTH_MODE=smart and WHATMATTERS_AUTH_ISSUER "
            "to serve the network.",
            file=sys.stderr,
        )
        return 2

    if config.auto_migrate:
        _init_db(config, args)
    # Broken profiles or mappings stop the service here, with file and line, not in each worker.
    from service import load_mappings, wire_fhir_service
    from service.storage.memory import MemoryStore
    from service.validation.definitions import Definitions
    from service.validation.profiles import ProfileRegistry

    registry = ProfileRegistry.load(Definitions.shared(), config.profiles_dir)
    for warning in registry.warnings:
        print(f"warning: {warning}", file=sys.stderr)  # accepted, but worth fixing in the file
    wire_fhir_service(config, MemoryStore(), registry)
    from service.api.live_mappings import ServedMappings, log
    from service.validation.profiles import ProfileError

    # the last good mappings: SIGHUP reloads them; a worker falls back on them (never fails)
    served = ServedMappings(
        load_mappings(config, [f.resource for f in registry.files]), lambda: load_mappings(config)
    )
    # Each worker builds its own app (and connection pool) after the fork.
    worker_config = replace(config, auto_migrate=False, metrics_dir=metrics_dir)

    def _worker_exited(_server: object, worker: Any) -> None:
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

    class _Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{config.host}:{config.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("accesslog", None)
            self.cfg.set("graceful_timeout", 20)
            # the longest request line gunicorn allows: long searches reach the service, which
            # answers with an OperationOutcome; longer lines get gunicorn's own 414
            self.cfg.set("limit_request_line", 8190)
            # a dead worker's live gauges leave the sums; its counters stay counted
            self.cfg.set("child_exit", _worker_exited)
            # SIGHUP: gunicorn reloads, this reads the mappings, new workers replace the old
            self.cfg.set("on_reload", lambda _arbiter: served.reload())
            if config.pid_file is not None:
                self.cfg.set("pidfile", str(config.pid_file))

        def load(self) -> object:
            fresh = registry
            try:
                fresh = ProfileRegistry.load(Definitions.shared(), worker_config.profiles_dir)
            except ProfileError:  # a worker that cannot boot would stop the service
                log.error("the profiles folder is broken; this worker serves the start-up one")
            resources = [f.resource for f in fresh.files]
            mappings = served.for_worker(lambda: load_mappings(worker_config, resources))
            app = create_app(worker_config, registry=fresh, mappings=mappings)
            if config.outbox_worker:
                _start_embedded_worker(worker_config, app)
            gc.freeze()  # as wsgi.py does: what the app loaded is never garbage
            return app

    print(
        f"What Matters FHIR service on http://{config.host}:{config.port}{config.base_path} "
        f"({config.database_url.split(':', 1)[0]})",
        flush=True,
    )
    _Server().run()
    return 0


def _start_embedded_worker(config: Config, app: Any) -> None:
    """Deliver the outbox from a thread of this gunicorn process (the embedded default)."""
    import threading

    from service import build_worker

    worker = build_worker(
        config, app.extensions["whatmatters.fhir"], app.extensions["whatmatters.partners"]
    )
    stop = threading.Event()
    threading.Thread(
        target=worker.serve_forever,
        args=(stop, 2, config.outbox_poll_seconds),
        name="outbox-worker",
        daemon=True,
    ).start()


def _worker(config: Config, args: argparse.Namespace) -> int:
    import signal
    import threading

    from service.api.observability import configure_json_logs

    configure_json_logs()

    from service import build_fhir_service, build_worker
    from service.exchange.partners import load_partners

    fhir = build_fhir_service(config)
    worker = build_worker(config, fhir, load_partners(config.partners_file))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"What Matters outbox worker {worker.owner} ({args.threads} threads)", flush=True)
    if args.once:
        print(f"delivered {worker.drain(timeout=args.timeout)} rows")
    else:
        worker.serve_forever(stop, args.threads, config.outbox_poll_seconds)
    fhir.store.close()
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
