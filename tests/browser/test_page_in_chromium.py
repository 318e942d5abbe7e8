"""The clinician's page in real headless Chromium (Debian's package, never a downloaded
browser): ranked items and their provenance in the DOM, a one-page PDF, and a screenshot kept
as a test artifact in tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.priorities.conversations import conversation, goal, ranking, statement

CHROMIUM = Path(os.environ.get("WHATMATTERS_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = Path(__file__).parent / "artifacts"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
PATIENT = "browser-eluned"


def _ensure_chromium() -> Path:
    """Debian's Chromium; installed with apt-get when missing and this process may do so."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is not None and os.geteuid() == 0:
        subprocess.run(
            [apt, "install", "-y", "-q", "chromium"], check=True, timeout=900, capture_output=True
        )
    if not CHROMIUM.exists():
        pytest.fail(
            f"The browser test needs Debian's Chromium at {CHROMIUM}: "
            "apt-get install -y chromium chromium-driver (.ci/run does this)"
        )
    return CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = _ensure_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(executable), args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        yield launched
        launched.close()


@pytest.fixture
def seeded(live_server: str) -> str:
    """A patient with priorities recorded in two settings; returns the page URL."""
    patient = {
        "resourceType": "Patient",
        "id": PATIENT,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9000000017"}],
        "name": [{"given": ["Eluned"], "family": "Jones"}],
        "birthDate": "1941-03-02",
    }
    requests.put(f"{live_server}/Patient/{PATIENT}", json=patient, headers=FHIR_JSON, timeout=30)
    hospital = conversation(
        statement("s1", "Walking Bramble, my dog, every morning 🐕"),
        statement("s2", "Gweld fy wyres yn graddio ym mis Mehefin"),
        goal(
            "g1",
            "Walk to the end of the lane and back by spring",
            "s1",
            priority="high",
            acceptance="agree",
            **{"target-date": "2027-03-31"},
        ),
        ranking("g1", "s2", "s1"),
        setting="Ward 7, Ysbyty Gwynedd",
        setting_type="hospital",
        recorder="Nurse Ada Okafor",
        recorded="2026-11-20T10:15:00Z",
    )
    gp = conversation(
        statement("s3", "Not having to go back into hospital this winter"),
        ranking("s3"),
        setting="Bodnant Surgery",
        setting_type="primary-care",
        recorder="Dr Rhys Morgan",
        recorded="2026-11-24T09:00:00Z",
    )
    for body in (hospital, gp):
        response = requests.post(
            f"{live_server}/Patient/{PATIENT}/$record-what-matters",
            json=body,
            headers=FHIR_JSON,
            timeout=60,
        )
        assert response.status_code == 200, response.text[:500]
    return live_server.rsplit("/fhir", 1)[0] + f"/patients/{PATIENT}/what-matters"


def test_page_in_chromium_shows_ranked_priorities_prints_on_one_page(
    browser: Any, seeded: str
) -> None:
    page = browser.new_page(viewport={"width": 1024, "height": 1366})  # a ward tablet
    response = page.goto(seeded)
    assert response is not None
    assert response.status == 200
    assert page.locator("h1").inner_text() == "What matters to me"
    items = page.locator("ol.priorities > li")
    assert items.count() == 4
    assert [items.nth(i).get_attribute("data-rank") for i in range(4)] == ["1", "2", "3", "4"]
    assert [items.nth(i).locator(".words").inner_text() for i in range(4)] == [
        "Not having to go back into hospital this winter",  # the GP spoke most recently
        "Walk to the end of the lane and back by spring",
        "Gweld fy wyres yn graddio ym mis Mehefin",
        "Walking Bramble, my dog, every morning 🐕",
    ]
    first, second = items.nth(0), items.nth(1)
    assert first.locator('[data-field="recorded-by"]').inner_text() == "Dr Rhys Morgan"
    assert (
        first.locator('[data-field="setting"]').inner_text()
        == "Bodnant Surgery (GP / primary care)"
    )
    assert second.locator('[data-field="recorded-by"]').inner_text() == "Nurse Ada Okafor"
    assert "Ward 7, Ysbyty Gwynedd" in second.locator('[data-field="setting"]').inner_text()
    assert (
        second.locator('[data-field="status"]').inner_text()
        == "active, high priority, by 2027-03-31"
    )
    assert page.locator("script").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "what-matters-page.png"), full_page=True)
    pdf = page.pdf(format="A4", print_background=True)
    (ARTIFACTS / "what-matters-card.pdf").write_bytes(pdf)
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf))
    assert pages == 1
    page.close()
