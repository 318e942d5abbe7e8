"""The quality team's page: ``GET /reports/what-matters?period=2026-01..2026-06``.

The What Matters measure (service.priorities.measure) for the whole period and for each
month in it: per care setting, how many patients were in the initial population and how many
had what matters documented, acted on and reviewed. Shown as a small chart (inline SVG drawn on
the server: no JavaScript) and the same numbers as a table; ``&format=csv`` downloads them;
per setting a link to the patients not yet asked (``/reports/what-matters/not-asked``).

``period`` is ``YYYY-MM..YYYY-MM``, ``YYYY-MM-DD..YYYY-MM-DD``, one month or one year;
``review-days`` as for ``$evaluate-measure``. The same access rules as the operation: a user/
or system/ read of Patient, Observation, Goal and List.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, render_template, request

from service.api.handlers import request_actor
from service.api.measure_handlers import DEFAULT_REVIEW_DAYS, measure
from service.api.page import PAGE_HEADERS
from service.errors import BadRequest, FhirError
from service.priorities.measure import GROUPS, UNSPECIFIED, Figures, Tally, parse_period

MAX_MONTHS = 36
_MONTH = re.compile(r"\d{4}-\d{2}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
COLOURS = ("#005a9c", "#b35900", "#00703c", "#6f3c9a", "#a4001d", "#4a4a4a", "#006d75")
DASHES = ("", "6 3", "2 3", "8 3 2 3", "1 2", "10 4", "4 4")


def _last_day(month: date) -> date:
    return (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)


def parse_span(text: str | None) -> tuple[str, str]:
    """``period`` as (first day, last day), ISO dates."""
    if not text:
        raise BadRequest("Give a period, e.g. ?period=2026-01..2026-06", ("period",))
    first, _, last = text.partition("..")
    last = last or first
    try:
        if re.fullmatch(r"\d{4}", first) and re.fullmatch(r"\d{4}", last):
            return f"{first}-01-01", f"{last}-12-31"
        if _MONTH.fullmatch(first) and _MONTH.fullmatch(last):
            end = _last_day(date.fromisoformat(f"{last}-01"))
            return f"{first}-01", end.isoformat()
        if _DAY.fullmatch(first) and _DAY.fullmatch(last):
            return date.fromisoformat(first).isoformat(), date.fromisoformat(last).isoformat()
    except ValueError:
        pass
    raise BadRequest(
        "period is YYYY-MM..YYYY-MM, YYYY-MM-DD..YYYY-MM-DD, one month or one year", ("period",)
    )


def months(first: str, last: str) -> list[tuple[str, str, str]]:
    """(label, first day, last day) of each calendar month the period touches, clipped."""
    start, end = date.fromisoformat(first), date.fromisoformat(last)
    out = []
    month = start.replace(day=1)
    while month <= end:
        out.append(
            (
                month.strftime("%Y-%m"),
                max(month, start).isoformat(),
                min(_last_day(month), end).isoformat(),
            )
        )
        month = _last_day(month) + timedelta(days=1)
    if len(out) > MAX_MONTHS:
        raise BadRequest(f"A period of at most {MAX_MONTHS} months", ("period",))
    return out


@dataclass
class Row:
    """One line of the table and the CSV: a setting in a month (or the whole period)."""

    when: str
    setting: str
    population: int
    numerators: tuple[int, int, int]

    def percent(self, group: int) -> float | None:
        """A numerator as a percentage of the population, one decimal place."""
        if not self.population:
            return None
        return round(100 * self.numerators[group] / self.population, 1)


def _rows(when: str, figures: Figures) -> list[Row]:
    def row(setting: str, tally: Tally) -> Row:
        return Row(when, setting, tally.population, tuple(tally.numerators))  # type: ignore[arg-type]

    return [row("all settings", figures.overall)] + [
        row(name, tally) for name, tally in sorted(figures.settings.items())
    ]


def chart(months_: list[str], series: dict[str, list[float | None]]) -> dict[str, Any]:
    """The geometry of the SVG line chart: one line per setting of the documented proportion
    by month, on a 0-100 % scale (numbers only: the template draws it)."""
    width, height, left, right, top, bottom = 720, 300, 48, 150, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(len(months_) - 1, 1)

    def x(i: int) -> float:
        return round(left + (i * step if len(months_) > 1 else plot_w / 2), 1)

    def y(value: float) -> float:
        return round(top + plot_h * (1 - value / 100), 1)

    lines = []
    for n, (name, values) in enumerate(series.items()):
        points = [(x(i), y(v), v, months_[i]) for i, v in enumerate(values) if v is not None]
        lines.append(
            {
                "name": name,
                "colour": COLOURS[n % len(COLOURS)],
                "dash": DASHES[n % len(DASHES)],
                "points": points,
                "path": " ".join(f"{px},{py}" for px, py, _, _ in points),
                "label_y": 0,
            }
        )
    # legend labels at the right, one per line, in the order of their last value
    for n, line in enumerate(lines):
        line["label_y"] = top + 14 + n * 18
    return {
        "width": width,
        "height": height,
        "left": left,
        "top": top,
        "plot_w": plot_w,
        "plot_h": plot_h,
        "ticks": [(v, y(v)) for v in (0, 25, 50, 75, 100)],
        "months": [(label, x(i)) for i, label in enumerate(months_)],
        "lines": lines,
        "legend_x": left + plot_w + 16,
    }


def _report(args: Any) -> dict[str, Any]:
    first, last = parse_span(args.get("period"))
    days = args.get("review-days", str(DEFAULT_REVIEW_DAYS))
    if not days.isdigit():
        raise BadRequest("review-days is a whole number of days", ("review-days",))
    evaluate = measure().evaluate
    actor = request_actor()
    whole = evaluate(actor, parse_period(first, last), int(days))
    per_month = [
        (label, evaluate(actor, parse_period(a, b), int(days)))
        for label, a, b in months(first, last)
    ]
    rows = _rows("whole period", whole)
    for label, figures in per_month:
        rows += _rows(label, figures)
    settings = ["all settings", *sorted(whole.settings)]
    series: dict[str, list[float | None]] = {}
    for name in settings:
        values: list[float | None] = []
        for label, _ in per_month:
            found = next((r for r in rows if r.when == label and r.setting == name), None)
            values.append(found.percent(0) if found else None)
        series[name] = values
    return {
        "first": first,
        "last": last,
        "review_days": int(days),
        "rows": rows,
        "settings": settings,
        "months": [label for label, _ in per_month],
        "chart": chart([label for label, _ in per_month], series),
        "whole": whole,
    }


def _csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    names = [g.replace("-", "_") for g in GROUPS]
    writer.writerow(
        ["period", "setting", "initial_population", *names, *(f"{n}_percent" for n in names)]
    )
    for row in report["rows"]:
        percents = [row.percent(g) for g in range(3)]
        writer.writerow(
            [
                row.when,
                row.setting,
                row.population,
                *row.numerators,
                *("" if p is None else f"{p:.1f}" for p in percents),
            ]
        )
    return out.getvalue()


def build_quality_page() -> Blueprint:
    """The blueprint of the quality team's page."""
    bp = Blueprint("quality", __name__, template_folder="templates")

    @bp.errorhandler(FhirError)
    def _error(error: FhirError) -> Response:
        html = render_template("error.html", status=error.status, message=error.diagnostics)
        headers = {**PAGE_HEADERS, **error.headers}
        return Response(html, status=error.status, mimetype="text/html", headers=headers)

    @bp.get("/reports/what-matters")
    def report() -> Response:
        figures = _report(request.args)
        query = {k: v for k, v in request.args.items() if k != "format"}
        if request.args.get("format") == "csv":
            name = f"what-matters-{figures['first']}-{figures['last']}.csv"
            headers = {**PAGE_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'}
            return Response(_csv(figures), mimetype="text/csv", headers=headers)
        html = render_template(
            "quality_report.html",
            **figures,
            groups=GROUPS,
            csv_link="?" + urlencode({**query, "format": "csv"}),
            not_asked=lambda setting: (
                "/reports/what-matters/not-asked?" + urlencode({**query, "setting": setting})
            ),
        )
        return Response(html, mimetype="text/html", headers=PAGE_HEADERS)

    @bp.get("/reports/what-matters/not-asked")
    def not_asked() -> Response:
        first, last = parse_span(request.args.get("period"))
        setting = request.args.get("setting") or "all settings"
        figures = measure().evaluate(request_actor(), parse_period(first, last), members=True)
        key = "" if setting == UNSPECIFIED else setting
        patients = [
            m.id
            for m in figures.members or []
            if not m.flags[0] and (setting == "all settings" or key in m.strata)
        ]
        html = render_template(
            "quality_not_asked.html", setting=setting, first=first, last=last, patients=patients
        )
        return Response(html, mimetype="text/html", headers=PAGE_HEADERS)

    return bp
