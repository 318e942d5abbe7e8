"""A Bulk Data client, written from the IG's export.html with ``requests``, drives a real
`whatmatters serve` end to end: kick-off, polling as Retry-After says, download, cancel; and an
export whose `whatmatters worker` is killed half way completes, after a restart, without a line
twice."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.exchange.instances import Instance

pytestmark = pytest.mark.slow


class BulkClient:
    """The client side of export.html: kick-off, status polling with exponential backoff and
    Retry-After, file download (with the token when requiresAccessToken)."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.session = requests.Session()
        # as an HTTP client should (RFC 9112 section 9.3.1), a GET that meets a kept-alive
        # connection the server closed while the client slept between polls is sent again
        # on a new one; anything else, and a second failure, still fails the test
        again = Retry(total=1, connect=1, read=1, status=0, allowed_methods=frozenset({"GET"}))
        self.session.mount("http://", HTTPAdapter(max_retries=again))
        self.auth = {"Authorization": f"Bearer {token}"} if token else {}
        self.polls: list[tuple[int, float]] = []  # (status, seconds waited after it)

    def kick_off(self, path: str = "$export", **params: str) -> str:
        """Bulk Data Kick-off Request: the status URL (Content-Location of the 202)."""
        headers = {"Accept": "application/fhir+json", "Prefer": "respond-async", **self.auth}
        response = self.session.get(
            f"{self.base}/{path}", params=params, headers=headers, timeout=30
        )
        assert response.status_code == 202, response.text
        return response.headers["Content-Location"]

    def wait(self, status_url: str, timeout: float = 300.0) -> dict[str, Any]:
        """Bulk Data Status Request, repeated until complete: the manifest."""
        delay = 1.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            response = self.session.get(
                status_url, headers={"Accept": "application/json", **self.auth}, timeout=30
            )
            if response.status_code == 200:
                assert response.headers["Content-Type"].startswith("application/json")
                manifest: dict[str, Any] = response.json()
                return manifest
            if response.status_code != 202:
                raise AssertionError(f"export failed: {response.status_code} {response.text}")
            assert response.headers.get("X-Progress")
            wait = self._retry_after(response.headers.get("Retry-After"), delay)
            self.polls.append((response.status_code, wait))
            time.sleep(wait)
            delay = min(delay * 2, 10.0)  # exponential backoff when the server gives none
        raise AssertionError("the export did not complete in time")

    @staticmethod
    def _retry_after(value: str | None, fallback: float) -> float:
        if value is None:
            return fallback
        if value.isdigit():
            return float(value)
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)

    def download(self, manifest: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
        """Bulk Data Output File Request, each file streamed line by line: (type, resource)."""
        headers = {"Accept": "application/fhir+ndjson"}
        if manifest["requiresAccessToken"]:
            headers.update(self.auth)
        for item in manifest["output"]:
            with self.session.get(item["url"], headers=headers, stream=True, timeout=60) as got:
                assert got.status_code == 200
                assert got.headers["Content-Type"].startswith("application/fhir+ndjson")
                for line in got.iter_lines():
                    if line:
                        resource = json.loads(line)
                        assert resource["resourceType"] == item["type"]
                        yield item["type"], resource

    def cancel(self, status_url: str) -> int:
        """Bulk Data Delete Request."""
        return self.session.delete(status_url, headers=self.auth, timeout=30).status_code


def load(base: str, patients: int, goals_each: int) -> dict[tuple[str, str], dict[str, Any]]:
    """Store patients and goals with transaction Bundles; return them as stored."""
    stored: dict[tuple[str, str], dict[str, Any]] = {}
    for first in range(0, patients, 50):
        entries: list[dict[str, Any]] = []
        for n in range(first, min(first + 50, patients)):
            resources: list[dict[str, Any]] = [
                {"resourceType": "Patient", "id": f"bc{n}", "name": [{"family": "B"}]}
            ]
            resources += [
                {
                    "resourceType": "Goal",
                    "id": f"bc{n}-g{k}",
                    "lifecycleStatus": "active",
                    "description": {"text": f"Goal {k} of patient {n}: canu yn y c\u00f4r"},
                    "subject": {"reference": f"Patient/bc{n}"},
                }
                for k in range(goals_each)
            ]
            entries += [
                {
                    "resource": r,
                    "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
                }
                for r in resources
            ]
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        response = requests.post(
            base,
            json=bundle,
            headers={"Content-Type": "application/fhir+json"},
            timeout=120,
        )
        assert response.status_code == 200, response.text[:2000]
    session = requests.Session()
    for type_ in ("Patient", "Goal"):
        url: str | None = f"{base}/{type_}?_count=500"
        while url:
            page = session.get(url, timeout=60).json()
            for entry in page.get("entry", []):
                stored[(type_, entry["resource"]["id"])] = entry["resource"]
            url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    return stored


def test_a_bulk_data_client_exports_end_to_end(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    server = Instance("bulk", tmp_path, env={"WHATMATTERS_EXPORT_DIR": str(exports)}).start()
    try:
        stored = load(server.base, patients=60, goals_each=3)
        client = BulkClient(server.base)
        status = client.kick_off(_type="Patient,Goal", _outputFormat="application/fhir+ndjson")
        assert status.startswith(f"{server.root}/bulk-export/")
        manifest = client.wait(status)
        assert manifest["request"].startswith(f"{server.base}/$export?")
        assert manifest["requiresAccessToken"] is False
        assert manifest["error"] == []
        got = [(type_, resource) for type_, resource in client.download(manifest)]
        keys = [(type_, resource["id"]) for type_, resource in got]
        assert len(keys) == len(set(keys))  # no resource twice
        assert dict(zip(keys, [r for _, r in got], strict=True)) == stored
        counts = {item["type"]: item["count"] for item in manifest["output"]}
        assert counts == {"Goal": 180, "Patient": 60}

        # a second export, cancelled: its files are gone and its status URL is 404
        cancelled = client.kick_off()
        assert client.cancel(cancelled) == 202
        time.sleep(1.0)
        assert requests.get(cancelled, timeout=10).status_code == 404
        assert not (exports / cancelled.rsplit("/", 1)[1]).exists()
    finally:
        server.stop()


def test_an_export_survives_a_killed_worker(tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    server = Instance(
        "bulkkill",
        tmp_path,
        env={"WHATMATTERS_EXPORT_DIR": str(exports), "WHATMATTERS_OUTBOX_WORKER": "false"},
    ).start()
    try:
        stored = load(server.base, patients=400, goals_each=9)
        client = BulkClient(server.base)
        status = client.kick_off(_type="Goal")
        job = exports / status.rsplit("/", 1)[1]
        server.start_worker()
        deadline = time.monotonic() + 120
        while not (job / "Goal.ndjson.part").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        server.kill_worker()  # SIGKILL half way: the lease stays, the file is partial
        assert not (job / "manifest.json").exists()
        server.start_worker()  # takes the export over once the lease (3 s) has run out
        manifest = client.wait(status)
        ids = [resource["id"] for _, resource in client.download(manifest)]
        assert len(ids) == len(set(ids)) == sum(1 for t, _ in stored if t == "Goal")
    finally:
        server.stop()
