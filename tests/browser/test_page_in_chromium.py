"""The clinician's page in real headless Chromium (Debian's package, never a downloaded
browser): ranked items and their provenance in the DOM, a one-page PDF, and a screenshot kept
as a test artifact in tests/browser/artifacts/.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
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
    assert items.count() == 3  # the goal sits under the statement it addresses
    assert [items.nth(i).get_attribute("data-rank") for i in range(3)] == ["1", "2", "3"]
    assert [items.nth(i).locator("h2.words").inner_text() for i in range(3)] == [
        "Not having to go back into hospital this winter",  # the GP spoke most recently
        "Walking Bramble, my dog, every morning 🐕",  # its goal was ranked first on the ward
        "Gweld fy wyres yn graddio ym mis Mehefin",
    ]
    first, second = items.nth(0), items.nth(1)
    assert first.locator('[data-field="recorded"]').inner_text() == (
        "Dr Rhys Morgan · Bodnant Surgery (GP) · 24 Nov 2026"
    )
    assert first.locator("time").get_attribute("datetime") == "2026-11-24T09:00:00Z"
    assert second.locator('[data-field="recorded-by"]').inner_text() == "Nurse Ada Okafor"
    assert "Ward 7, Ysbyty Gwynedd" in second.locator('[data-field="setting"]').inner_text()
    assert second.locator('[data-field="goal"]').inner_text() == (
        "Walk to the end of the lane and back by spring (active, high priority, by 31 Mar 2027)"
    )
    assert page.locator("h2").count() == 3
    assert page.locator('[data-field="identifier"]').inner_text() == "900 000 0017"
    assert "NHS number 900 000 0017" in page.locator(".patient").inner_text()
    assert page.locator("script").count() == 0
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "what-matters-page.png"), full_page=True)
    pdf = page.pdf(format="A4", print_background=True)
    (ARTIFACTS / "what-matters-card.pdf").write_bytes(pdf)
    pages = len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf))
    assert pages == 1
    page.close()


AXE = "axe-core"
AXE_VERSION = "4.14.1"


def _axe_source() -> str:
    """axe-core's browser script, from its npm package (fetched once into the cache folder)."""
    cache = Path(os.environ.get("WHATMATTERS_CACHE", Path.home() / ".cache" / "whatmatters"))
    tarball = cache / f"{AXE}-{AXE_VERSION}.tgz"
    if not tarball.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"The accessibility test needs npm to fetch {AXE}@{AXE_VERSION}")
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [npm, "pack", f"{AXE}@{AXE_VERSION}", "--pack-destination", str(cache)],
            check=True,
            capture_output=True,
            timeout=600,
        )
    with tarfile.open(tarball) as archive:
        member = archive.extractfile("package/axe.min.js")
        assert member is not None
        return member.read().decode()


def _patient(live_server: str, id_: str, nhs: str) -> None:
    patient = {
        "resourceType": "Patient",
        "id": id_,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
        "name": [{"given": ["Nia"], "family": "Haddad"}],
        "birthDate": "1948-06-14",
    }
    response = requests.put(
        f"{live_server}/Patient/{id_}", json=patient, headers=FHIR_JSON, timeout=30
    )
    assert response.status_code in (200, 201), response.text[:500]


def _page_url(live_server: str, id_: str) -> str:
    return live_server.rsplit("/fhir", 1)[0] + f"/patients/{id_}/what-matters"


def _pages(pdf: bytes) -> int:
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf))


EIGHT = [
    "Walking Bramble, my dog, along the promenade every morning before breakfast",
    "Seeing my granddaughter graduate from Bangor University in June",
    "Not having to go back into hospital this winter, whatever happens",
    "Being able to make my own cup of tea and sit in the garden",
    "Singing with the chapel choir on Thursday evenings again",
    "Keeping my own front door key and my independence",
    "Not being a burden on my daughter, who works nights",
    "Going to the rugby at the Principality Stadium with my son",
    "Growing tomatoes in the greenhouse next summer",
]


def _record_items(live_server: str, id_: str, texts: list[str]) -> None:
    keys = [f"s{i}" for i in range(len(texts))]
    body = conversation(
        *[statement(k, t) for k, t in zip(keys, texts, strict=True)],
        goal("g1", "Walk to the end of the lane and back by spring", "s0", priority="high"),
        goal("g2", "Manage the stairs at home before discharge", "s2", priority="medium"),
        ranking(*keys),
        recorded="2026-11-20T10:15:00Z",
    )
    response = requests.post(
        f"{live_server}/Patient/{id_}/$record-what-matters",
        json=body,
        headers=FHIR_JSON,
        timeout=60,
    )
    assert response.status_code == 200, response.text[:500]


def test_eight_items_print_on_one_a4_page_and_more_are_counted(
    browser: Any, live_server: str
) -> None:
    _patient(live_server, "browser-eight", "9000000025")
    _record_items(live_server, "browser-eight", EIGHT[:8])
    _patient(live_server, "browser-nine", "9000000033")
    _record_items(live_server, "browser-nine", EIGHT)
    page = browser.new_page(viewport={"width": 1024, "height": 1366})
    page.goto(_page_url(live_server, "browser-eight"))
    assert page.locator("ol.priorities > li").count() == 8
    pdf = page.pdf(format="A4", print_background=True)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "what-matters-card-eight.pdf").write_bytes(pdf)
    assert _pages(pdf) == 1
    page.goto(_page_url(live_server, "browser-nine"))
    page.emulate_media(media="print")
    page.set_viewport_size({"width": 718, "height": 1050})  # A4 less the card's margins
    page.screenshot(path=str(ARTIFACTS / "what-matters-card-nine.png"), full_page=True)
    assert page.locator(".more").inner_text() == (
        "…and 1 more not shown on this card: see the full list on screen."
    )
    assert page.locator("ol.priorities > li:visible").count() == 8
    page.emulate_media(media="screen")
    assert page.locator("ol.priorities > li:visible").count() == 9
    assert not page.locator(".more").is_visible()
    page.emulate_media(media="print")  # page.pdf() prints with the emulated media
    assert _pages(page.pdf(format="A4", print_background=True)) == 1
    page.close()


def test_three_languages_pass_axe_and_are_screenshotted(browser: Any, live_server: str) -> None:
    id_ = "browser-three-languages"
    _patient(live_server, id_, "9000000041")
    said = [
        ("ar", "أن أعود إلى بيتي وأرى حديقتي قبل الشتاء"),
        ("cy", "Gweld fy wyres yn graddio ym mis Mehefin"),
        ("en", "Walking Bramble, my dog, every morning"),
    ]
    for language, text in said:
        observation = {
            "resourceType": "Observation",
            "language": language,
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": "http://hl7.org/fhir/us/pco/CodeSystem/pco-concepts-temporary",
                            "code": "what-matters",
                        }
                    ]
                }
            ],
            "code": {"coding": [{"system": "http://loinc.org", "code": "95541-9"}]},
            "subject": {"reference": f"Patient/{id_}"},
            "effectiveDateTime": "2026-11-20T10:15:00Z",
            "performer": [{"display": "Nurse Ada Okafor"}],
            "valueString": text,
        }
        response = requests.post(
            f"{live_server}/Observation", json=observation, headers=FHIR_JSON, timeout=30
        )
        assert response.status_code == 201, response.text[:500]
    context = browser.new_context(bypass_csp=True)  # the page allows no script; axe is ours
    page = context.new_page()
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(_page_url(live_server, id_))
    words = page.locator("h2.words")
    assert words.count() == 3
    shown = {
        words.nth(i).get_attribute("lang"): words.nth(i).get_attribute("dir") for i in range(3)
    }
    assert shown == {"ar": "rtl", "cy": "ltr", "en": "ltr"}
    page.add_script_tag(content=_axe_source())
    result = page.evaluate("async () => await axe.run(document)")
    serious = [v for v in result["violations"] if v["impact"] in ("serious", "critical")]
    assert serious == [], [(v["id"], v["help"]) for v in serious]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "what-matters-1280.png"), full_page=True)
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(ARTIFACTS / "what-matters-390.png"), full_page=True)
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing to scroll sideways on a phone
    context.close()
