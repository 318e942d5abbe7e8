"""``$ingest`` serves the mappings now in the folder: a new file needs no restart, a broken
edit is refused and the previous set stays; an unknown name lists the known ones."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import Config
from tests.builders import outcome_issues, whatmatters

ROOT = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).parent / "vendor"
HL7 = {"Content-Type": "x-application/hl7-v2+er7"}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    shutil.copy(ROOT / "mappings" / "wmty-oru.yaml", mappings)
    return mappings


@pytest.fixture
def live(config: Config, folder: Path, folders: dict[str, Any]) -> Iterator[Flask]:
    application = create_app(
        dataclasses.replace(config, mappings_dir=folder), registry=folders["registry"]
    )
    yield application
    application.extensions["whatmatters.store"].close()


def _dry_run(client: FlaskClient, name: str) -> int:
    message = (VENDOR / "oru-assessment.hl7").read_bytes()
    return client.post(
        f"/fhir/$ingest?mapping={name}&dryRun=true", data=message, headers=HL7
    ).status_code


def test_an_unknown_mapping_lists_the_known_ones(live: Flask) -> None:
    response = live.test_client().post("/fhir/$ingest?mapping=rio-oru", data="x", headers=HL7)
    assert response.status_code == 400
    assert outcome_issues(response)[0]["diagnostics"] == (
        "No mapping 'rio-oru'; known mappings: wmty-oru"
    )


def test_a_new_mapping_file_is_served_without_a_restart(live: Flask, folder: Path) -> None:
    client = live.test_client()
    assert _dry_run(client, "community-oru") == 400
    shutil.copy(VENDOR / "community-oru.yaml", folder)
    assert _dry_run(client, "community-oru") == 200


def test_a_broken_edit_is_refused_and_the_old_set_kept(
    live: Flask, folder: Path, config: Config
) -> None:
    client = live.test_client()
    shutil.copy(VENDOR / "community-oru.yaml", folder)
    assert _dry_run(client, "community-oru") == 200
    broken = folder / "community-oru.yaml"
    broken.write_text(
        broken.read_text(encoding="utf-8").replace("valueString: {hl7", "valueString: {hl8"),
        encoding="utf-8",
    )
    assert _dry_run(client, "community-oru") == 200  # still the set that worked
    checked = whatmatters(
        "map",
        "reload",
        env={
            "WHATMATTERS_DATABASE_URL": config.database_url,
            "WHATMATTERS_MAPPINGS_DIR": str(folder),
        },
    )
    assert checked.returncode == 1
    assert "community-oru.yaml:" in checked.stdout
    assert "keeps the set it has" in checked.stdout


def test_map_reload_checks_then_signals_only_a_running_service(
    folder: Path, config: Config, tmp_path: Path
) -> None:
    env = {
        "WHATMATTERS_DATABASE_URL": config.database_url,
        "WHATMATTERS_MAPPINGS_DIR": str(folder),
    }
    checked = whatmatters("map", "reload", env=env)
    assert checked.returncode == 0
    assert "wmty-oru (SIGHUP to `whatmatters serve`, or --pid" in checked.stdout
    gone = tmp_path / "serve.pid"
    gone.write_text("999999999\n")  # no such process
    refused = whatmatters("map", "reload", env={**env, "WHATMATTERS_PID_FILE": str(gone)})
    assert refused.returncode == 1
    assert "no service to reload at pid 999999999" in refused.stdout
