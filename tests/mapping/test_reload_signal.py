"""SIGHUP to `whatmatters serve` reloads the mappings: an edited file is used by `$ingest`
from the new workers on; a broken folder is refused, logged with its file and line, and the
service goes on answering with the set before (a worker never fails to boot on it).
`whatmatters map reload` sends the signal itself, through the pid file, when the folder is good.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.reliability.traffic import served

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NHS = "https://fhir.nhs.uk/Id/nhs-number"
ROW = (
    "response_id,nhs_number,answered_at,what_matters,recorded_by,setting,setting_type\n"
    "r-1,9000000009,2026-11-20 10:15,Singing in the choir,,,\n"
)
SELF = "default: Patient (self-completed survey)"


def _performer(base: str) -> str:
    """Who the survey-csv mapping says recorded a row with no recorder (a dry run)."""
    response = requests.post(
        f"{base}/$ingest?mapping=survey-csv&dryRun=true",
        data=ROW.encode(),
        headers={"Content-Type": "text/csv"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    (bundle,) = [p["resource"] for p in response.json()["parameter"] if p["name"] == "bundle"]
    display: str = bundle["entry"][0]["resource"]["performer"][0]["display"]
    return display


def _wait_for(what: str, check: Callable[[], object], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"never saw {what}"
        time.sleep(0.2)


def _log_lines(log: Path, text: str) -> list[str]:
    return [line for line in log.read_text(errors="replace").splitlines() if text in line]


def test_sighup_reloads_the_mappings_and_a_broken_folder_keeps_the_old_set(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mappings"
    folder.mkdir()
    shutil.copy(ROOT / "mappings" / "survey-csv.yaml", folder)
    mapping = folder / "survey-csv.yaml"
    pid_file = tmp_path / "serve.pid"
    service = served(
        "reload",
        tmp_path,
        workers=2,
        WHATMATTERS_MAPPINGS_DIR=str(folder),
        WHATMATTERS_PID_FILE=str(pid_file),
    )
    try:
        assert service.process is not None
        master = service.process.pid
        patient = {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": NHS, "value": "9000000009"}],
        }
        created = requests.put(
            f"{service.base}/Patient/p1",
            json=patient,
            headers={"Content-Type": "application/fhir+json"},
            timeout=30,
        )
        assert created.status_code in (200, 201), created.text
        assert _performer(service.base) == "Patient (self-completed survey)"

        # an edit, then SIGHUP: the master reloads, new workers serve the edited mapping
        text = mapping.read_text(encoding="utf-8")
        assert SELF in text
        mapping.write_text(text.replace(SELF, "default: Patient (online survey)"), "utf-8")
        os.kill(master, signal.SIGHUP)
        _wait_for("the reload logged", lambda: _log_lines(service.log, "mappings reloaded"))
        assert "survey-csv" in _log_lines(service.log, "mappings reloaded")[-1]
        _wait_for(
            "the edited mapping in use",
            lambda: _performer(service.base) == "Patient (online survey)",
        )

        # a broken file, then SIGHUP: refused and logged by name; the service answers as before
        edited = mapping.read_text(encoding="utf-8")
        mapping.write_text(edited.replace("valueString: {column:", "valueString: {colum:"), "utf-8")
        os.kill(master, signal.SIGHUP)
        _wait_for("the refusal logged", lambda: _log_lines(service.log, "reload refused"))
        (refused,) = _log_lines(service.log, "reload refused")
        assert "survey-csv.yaml:" in refused
        assert "kept the previous set (survey-csv)" in refused
        # the new workers booted on the last good set, and answer with it
        _wait_for(
            "a worker on the last good set",
            lambda: _log_lines(service.log, "this worker serves the last good set"),
        )
        for _ in range(6):
            assert _performer(service.base) == "Patient (online survey)"
        assert service.process.poll() is None  # the service did not go down

        # `map reload` refuses to signal for a broken folder, and signals through the pid file
        # once it is mended
        assert pid_file.read_text().strip() == str(master)
        broken = service.cli("map", "reload")
        assert broken.returncode == 1
        assert "survey-csv.yaml:" in broken.stdout
        mapping.write_text(edited.replace("online survey", "survey kiosk"), "utf-8")
        sent = service.cli("map", "reload")
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert f"sent SIGHUP to the service (pid {master})" in sent.stdout
        _wait_for(
            "the second reload", lambda: len(_log_lines(service.log, "mappings reloaded")) > 1
        )
        _wait_for(
            "the mended mapping in use",
            lambda: _performer(service.base) == "Patient (survey kiosk)",
        )
    finally:
        service.stop()
