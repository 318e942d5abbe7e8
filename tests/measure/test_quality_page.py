"""The quality team's page (/reports/what-matters): its table and CSV give the MeasureReport's
numbers for the whole period and for each month, and its not-yet-asked lists name exactly the
patients of each setting without a statement."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from tests.measure import cohort
from tests.measure.test_evaluate_measure import EXPECTED, FACTS

PAGE = "/reports/what-matters?period=2026-01..2026-06"
MEASURE = "/fhir/Measure/what-matters/$evaluate-measure"


class _Cells(HTMLParser):
    """Each table row's data-period, data-setting and data-field cells; links by data-field."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[tuple[str, str], dict[str, str]] = {}
        self.links: dict[str, list[str]] = {}
        self._row: dict[str, str] | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-period"):
            self._row = self.rows.setdefault((a["data-period"] or "", a["data-setting"] or ""), {})
        if tag == "td" and self._row is not None and a.get("data-field"):
            self._field = a["data-field"]
        if tag == "a" and a.get("data-field"):
            self.links.setdefault(a["data-field"] or "", []).append(a.get("href") or "")
        if tag == "a" and a.get("data-patient"):
            self.links.setdefault("patient", []).append(a["data-patient"] or "")

    def handle_data(self, data: str) -> None:
        if self._row is not None and self._field is not None:
            self._row[self._field] = data.strip()
            self._field = None


def _parse(html: str) -> _Cells:
    cells = _Cells()
    cells.feed(html)
    return cells


def _report_counts(report: dict[str, Any]) -> dict[str, dict[str, int]]:
    """setting -> {initial-population, documented, acted-on, reviewed} of a MeasureReport."""
    out: dict[str, dict[str, int]] = {}

    def put(key: str, group: str, populations: list[dict[str, Any]]) -> None:
        counts = {p["code"]["coding"][0]["code"]: p["count"] for p in populations}
        out.setdefault(key, {})["initial-population"] = counts["initial-population"]
        out[key][group] = counts["numerator"]

    for group in report["group"]:
        put("all settings", group["id"], group["population"])
        for stratum in group["stratifier"][0]["stratum"]:
            put(stratum["value"]["text"], group["id"], stratum["population"])
    return out


def test_page_table_and_csv_equal_the_measure_reports(app: Flask, client: FlaskClient) -> None:
    cohort.load(app.extensions["whatmatters.fhir"], FACTS)
    response = client.get(PAGE)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "<script" not in html
    assert "<svg" in html
    cells = _parse(html)
    spans = [("whole period", "2026-01-01", "2026-06-30")] + [
        (f"2026-{m:02d}", f"2026-{m:02d}-01", f"2026-{m:02d}-{d}")
        for m, d in ((1, 31), (2, 28), (3, 31), (4, 30), (5, 31), (6, 30))
    ]
    csv_link = cells.links["csv"][0]
    table = list(csv.DictReader(io.StringIO(client.get("/reports/what-matters" + csv_link).text)))
    from_csv = {(r["period"], r["setting"]): r for r in table}
    assert len(table) == len(cells.rows) > 20
    for when, start, end in spans:
        report = client.get(f"{MEASURE}?periodStart={start}&periodEnd={end}").get_json()
        for setting, counts in _report_counts(report).items():
            shown = cells.rows[(when, setting)]
            assert {k: int(v) for k, v in shown.items()} == counts, (when, setting)
            row = from_csv[(when, setting)]
            assert int(row["initial_population"]) == counts["initial-population"]
            assert int(row["documented"]) == counts["documented"]
            assert int(row["acted_on"]) == counts["acted-on"]
            assert int(row["reviewed"]) == counts["reviewed"]
    # the whole period's figures are the known answers
    whole = cells.rows[("whole period", "hospital")]
    assert int(whole["initial-population"]) == len(EXPECTED.population["hospital"])
    # per setting, the patients not yet asked
    links = [link for link in cells.links["not-asked"] if "setting=" in link]
    assert len(links) == len(_report_counts(report))
    for link in links:
        setting = link.split("setting=")[1].replace("+", " ")
        listed = set(_parse(client.get(link).get_data(as_text=True)).links.get("patient", []))
        key = "overall" if setting == "all settings" else setting
        assert listed == EXPECTED.population[key] - EXPECTED.numerators[key][0], setting


def test_page_asks_for_a_period(client: FlaskClient) -> None:
    for query in ("", "?period=soon", "?period=2026-13..2026-14", "?period=2020-01..2026-01"):
        response = client.get("/reports/what-matters" + query)
        assert response.status_code == 400, query
        assert response.mimetype == "text/html"
