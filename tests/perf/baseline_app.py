"""The bare baseline for the REST benchmark: a minimal Flask app that does the same database
insert and read of the same JSON as the service, with no FHIR logic (no validation, no
versions, no index rows, no content negotiation). Served by gunicorn like the service."""

from __future__ import annotations

import json
import os
import uuid

from flask import Flask, Response, request
from sqlalchemy import Column, MetaData, String, Table, Text, insert, select

from service.storage.sql import engine_for

metadata = MetaData()
baseline = Table(
    "baseline_resources",
    metadata,
    Column("res_id", String(64), primary_key=True),
    Column("content", Text, nullable=False),
)


def create_baseline_app() -> Flask:
    """Build the baseline app on WHATMATTERS_DATABASE_URL (same engine settings as the service)."""
    engine = engine_for(os.environ["WHATMATTERS_DATABASE_URL"])
    metadata.create_all(engine)
    app = Flask(__name__)

    @app.post("/fhir/Patient")
    def create() -> Response:
        body = json.loads(request.get_data())
        body["id"] = str(uuid.uuid4())
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
        with engine.begin() as conn:
            conn.execute(insert(baseline).values(res_id=body["id"], content=text))
        return Response(text, status=201, content_type="application/fhir+json")

    @app.get("/fhir/Patient/<id_>")
    def read(id_: str) -> Response:
        with engine.connect() as conn:
            row = conn.execute(select(baseline.c.content).where(baseline.c.res_id == id_)).first()
        if row is None:
            return Response("{}", status=404, content_type="application/fhir+json")
        return Response(row.content, status=200, content_type="application/fhir+json")

    return app


app = create_baseline_app() if "WHATMATTERS_DATABASE_URL" in os.environ else None
