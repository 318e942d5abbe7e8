"""Operating the service: /healthz, /readyz, Prometheus /metrics, request ids and JSON logs.

- ``/healthz``: the process answers (liveness).
- ``/readyz``: the database answers, its schema is current and the profiles are loaded
  (readiness); 503 with the failing check otherwise.
- ``/metrics``: Prometheus text format (prometheus_client): requests by interaction and
  status, latency histograms, outbox depth and age per destination and state, validation
  failures, rate-limit store failures. Under ``whatmatters serve`` the gunicorn workers share
  prometheus_client's multiprocess mode (a metrics folder cleaned at start, each dead worker's
  files marked), so one scrape sums every worker; the outbox gauges are read from the database
  once per scrape.
- ``X-Request-ID``: taken from the request when it is a plain token, else made; returned on
  every response and written in every log line of the request (JSON logs, one per line).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.api.fhir_views import request_interaction
from service.errors import describe_exception

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class OutboxCollector(Collector):
    """Outbox depth and age per destination and state, read from the store at each scrape."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """Yield the outbox gauges (nothing when the database does not answer)."""
        rows = GaugeMetricFamily(
            "whatmatters_outbox_rows", "Outbox rows", labels=["destination", "state"]
        )
        age = GaugeMetricFamily(
            "whatmatters_outbox_oldest_age_seconds",
            "Age of the oldest outbox row",
            labels=["destination", "state"],
        )
        fhir = self.app.extensions["whatmatters.fhir"]
        try:
            lines = fhir.read_only(lambda tx: tx.outbox.summary())
        except Exception:  # noqa: BLE001 - a scrape must answer while the database is down
            lines = []
        now = fhir.clock()
        for destination, state, count, oldest in lines:
            rows.add_metric([destination, state], count)
            age.add_metric([destination, state], max(0.0, (now - oldest) / 1_000_000))
        yield rows
        yield age


class WorkerFiles(Collector):
    """What every worker wrote in the multiprocess folder, summed by prometheus_client.

    A worker creates its file empty and sizes it a moment later (``MmapedDict``); a file still
    shorter than its 8-byte header holds no value yet and is left out of this scrape, where
    ``MultiProcessCollector`` would fail the whole scrape on it.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def collect(self) -> Iterator[Any]:
        """Yield the summed metrics of the folder's files that hold values."""
        files = []
        for path in self.folder.glob("*.db"):
            try:
                if path.stat().st_size >= 8:
                    files.append(str(path))
            except FileNotFoundError:  # a dead worker's live gauge, removed since the glob
                continue
        yield from multiprocess.MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]


class Metrics:
    """The process's metrics."""

    def __init__(self, app: Flask) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "whatmatters_requests",
            "HTTP requests by FHIR interaction and status",
            ["interaction", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "whatmatters_request_duration_seconds",
            "HTTP request latency by FHIR interaction",
            ["interaction"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.validation_failures = Counter(
            "whatmatters_validation_failures",
            "Writes refused by validation (400 structure, 422 profile)",
            ["status"],
            registry=self.registry,
        )
        self.rate_limit_store_errors = Counter(
            "whatmatters_rate_limit_store_errors",
            "Requests let through unlimited because the rate-limit store (Redis) failed",
            registry=self.registry,
        )
        self.registry.register(OutboxCollector(app))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, pid."""

    def format(self, record: logging.LogRecord) -> str:
        """Render a record."""
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": os.getpid(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info and record.exc_info[1] is not None:
            entry["error"] = describe_exception(record.exc_info[1])  # never the message
        return json.dumps(entry, ensure_ascii=False)


class RequestIdFilter(logging.Filter):
    """Adds the running request's id to each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Keep the record, with ``request_id`` when there is a request."""
        if has_request_context():
            record.request_id = g.get("whatmatters_request_id")
        return True


def configure_json_logs(level: int = logging.INFO) -> None:
    """Send the service's logs to stderr as JSON lines with request ids."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def install(app: Flask, metrics_dir: Path | None = None) -> Metrics:
    """Mount /healthz, /readyz and /metrics; count, time and label every request.

    ``metrics_dir`` is prometheus_client's multiprocess folder when several processes serve
    (PROMETHEUS_MULTIPROC_DIR): a scrape then sums what every process wrote there.
    """
    metrics = Metrics(app)
    app.extensions["whatmatters.metrics"] = metrics

    @app.before_request
    def _start() -> None:
        given = request.headers.get("X-Request-ID", "")
        g.whatmatters_request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        g.whatmatters_started = time.perf_counter()

    @app.after_request
    def _finish(response: Response) -> Response:
        _drain_body(app)
        response.headers["X-Request-ID"] = g.get("whatmatters_request_id") or uuid.uuid4().hex
        started = g.get("whatmatters_started")
        rule = request.url_rule.rule if request.url_rule is not None else None
        if rule in ("/metrics", "/healthz", "/readyz"):
            return response
        interaction = request_interaction()
        metrics.requests.labels(interaction, str(response.status_code)).inc()
        if started is not None:
            metrics.latency.labels(interaction).observe(time.perf_counter() - started)
        if response.status_code in (400, 422) and request.method in ("POST", "PUT", "PATCH"):
            metrics.validation_failures.labels(str(response.status_code)).inc()
        return response

    @app.get("/healthz")
    def _healthz() -> Response:
        return _plain({"status": "up"}, 200)

    @app.get("/readyz")
    def _readyz() -> Response:
        fhir = app.extensions["whatmatters.fhir"]
        checks: dict[str, str] = {}
        try:
            fhir.store.check()
            checks["database"] = "up"
            pending = fhir.store.pending_migrations()
            checks["schema"] = "current" if not pending else f"migrations {pending} pending"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks["database"] = f"down ({type(exc).__name__})"
            checks["schema"] = "unknown"
        loaded = fhir.validator.supported_profiles("Goal")
        checks["profiles"] = "loaded" if loaded else "none loaded"
        ready = checks["database"] == "up" and checks["schema"] == "current" and bool(loaded)
        response = _plain(
            {"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503
        )
        if not ready:
            response.headers["Retry-After"] = "5"
        return response

    @app.get("/metrics")
    def _metrics() -> Response:
        registry = metrics.registry
        if metrics_dir is not None:
            registry = CollectorRegistry()
            registry.register(WorkerFiles(metrics_dir))
            registry.register(OutboxCollector(app))
        return Response(generate_latest(registry), content_type=PROMETHEUS_TEXT)

    return metrics


def _drain_body(app: Flask) -> None:
    """Read what is left of a request body the answer did not need (a 405, a 401, a refusal),
    up to the size limit, so the client is not cut off while still sending and gets the
    answer (RFC 9112 section 9.6)."""
    length = request.content_length
    limit = app.config.get("MAX_CONTENT_LENGTH")
    if not length or (limit is not None and length > limit):
        return
    stream = request.stream
    while stream.read(65536):
        pass


def _plain(body: dict[str, Any], status: int) -> Response:
    return Response(
        json.dumps(body),
        status=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )
