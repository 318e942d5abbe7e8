"""The quality team's page (/reports/what-matters) in Debian's headless Chromium, over the
1,000-patient data set with known answers: the chart and the table are drawn without any
script, the table's numbers equal the MeasureReport's, the CSV download parses to the same
numbers, and a screenshot is kept (tests/browser/artifacts/, and the README's copy)."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path
from typing import Any

import requests

from service import build_fhir_service
from service.config import Config
from service.storage.sql import SqlStore
from tests.browser.test_page_in_chromium import ARTIFACTS, browser
from tests.conftest import wipe
from tests.measure import cohort
from tests.measure.test_evaluate_measure import EXPECTED, FACTS

__all__ = ["browser"]
README_COPY = Path(__file__).parent / "quality-report.png"


def test_quality_page_in_chromium(
    browser: Any, live_server: str, database_url: str, sql_store: SqlStore
) -> None:
    wipe(sql_store)
    fhir = build_fhir_service(Config(database_url=database_url, auto_migrate=False))
    cohort.load(fhir, FACTS)
    fhir.store.close()
    root = live_server.rsplit("/fhir", 1)[0]
    page = browser.new_page(viewport={"width": 1280, "height": 900}, java_script_enabled=False)
    response = page.goto(f"{root}/reports/what-matters?period=2026-01..2026-06")
    assert response is not None
    assert response.status == 200
    assert page.locator("script").count() == 0
    assert page.locator("svg[role=img] polyline").count() >= 4  # all settings and each setting
    svg_box = page.locator("svg[role=img]").bounding_box()
    assert svg_box is not None
    assert svg_box["width"] > 600
    report = requests.get(
        f"{live_server}/Measure/what-matters/$evaluate-measure",
        params={"periodStart": "2026-01-01", "periodEnd": "2026-06-30"},
        timeout=120,
    ).json()
    csv_href = page.locator('[data-field="csv"]').get_attribute("href")
    assert csv_href is not None
    table = list(
        csv.DictReader(
            io.StringIO(requests.get(f"{root}/reports/what-matters{csv_href}", timeout=120).text)
        )
    )
    rows = {(r["period"], r["setting"]): r for r in table}
    for n, group in enumerate(report["group"]):
        strata = [("all settings", group["population"])] + [
            (s["value"]["text"], s["population"]) for s in group["stratifier"][0]["stratum"]
        ]
        for setting, populations in strata:
            counts = {p["code"]["coding"][0]["code"]: p["count"] for p in populations}
            row = page.locator(f'tr[data-period="whole period"][data-setting="{setting}"]')
            shown = row.locator(f'[data-field="{group["id"]}"]').inner_text()
            assert int(shown) == counts["numerator"], (group["id"], setting)
            population = row.locator('[data-field="initial-population"]').inner_text()
            assert int(population) == counts["initial-population"]
            in_csv = rows[("whole period", setting)][group["id"].replace("-", "_")]
            assert int(in_csv) == counts["numerator"]
            key = "overall" if setting == "all settings" else setting
            assert counts["numerator"] == len(EXPECTED.numerators[key][n])
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "quality-report.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, README_COPY)
    page.close()
