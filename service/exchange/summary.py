"""Render a patient's "What matters to me" summary as plain text and PDF for document partners."""

from __future__ import annotations

import unicodedata
from collections.abc import Container, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import TTFFont

TITLE = "What matters to me"
UNSHOWN_NOTE = (
    "Some characters could not be shown in this PDF; the text/plain attachment has the exact words."
)
NO_NAME = "(name not recorded)"

# Debian/Ubuntu, Fedora and Arch paths of DejaVu Sans, which covers Latin, Greek, Cyrillic,
# Arabic and Hebrew; the slim container image has none, hence the core-font fallback.
FONT_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
)

_FAMILY = "WhatMattersSans"
_CORE_FAMILY = "Helvetica"
# the core fonts draw latin-1 only; its control characters have no glyph either
_LATIN1_PRINTABLE = frozenset(code for code in range(256) if chr(code).isprintable())


@dataclass(frozen=True)
class SummaryItem:
    """One thing that matters to the patient, in the patient's own words."""

    rank: int | None
    text: str
    kind: str
    recorded_by: str | None
    setting: str | None
    date: str | None
    status: str | None = None  # a goal's lifecycleStatus (active, completed, cancelled...)
    under: bool = False  # a goal shown under the statement before it, with that one's rank


@dataclass(frozen=True)
class _Line:
    text: str
    size: float
    indent: bool = False
    gap_before: float = 0.0


def _ordered(items: Sequence[SummaryItem]) -> list[SummaryItem]:
    """Return ranked items by rank, then unranked items in their given order."""
    # sorted() is stable, so equal ranks and all unranked items keep the caller's order
    return sorted(items, key=lambda item: (item.rank is None, item.rank or 0))


def _provenance(item: SummaryItem) -> str | None:
    """Return the "recorded by X at Y on DATE" line, or None when nothing is known."""
    parts = []
    if item.recorded_by:
        parts.append(f"by {item.recorded_by}")
    if item.setting:
        parts.append(f"at {item.setting}")
    if item.date:
        parts.append(f"on {item.date}")
    return "recorded " + " ".join(parts) if parts else None


def _lines(patient_name: str | None, items: Sequence[SummaryItem], generated: str) -> list[_Line]:
    """Lay out the summary as lines shared by the text and PDF renderings."""
    lines = [
        _Line(TITLE, 18),
        _Line(f"Patient: {patient_name or NO_NAME}", 12, gap_before=2),
        _Line(f"Generated: {generated}", 10),
    ]
    if not items:
        lines.append(_Line("Nothing has been recorded yet.", 12, gap_before=6))
    number = 0
    for item in _ordered(items):
        if item.under:
            marker = "  -"
        elif item.rank is None:
            marker = "-"
        else:
            number += 1
            marker = f"{number}."
        # the patient's words go in untouched: no strip, no wrap, no Unicode normalisation
        lines.append(_Line(f"{marker} {item.text}", 12, gap_before=4))
        if item.kind and item.kind != "statement":
            status = f", {item.status}" if item.status else ""
            lines.append(_Line(f"({item.kind}{status})", 10, indent=True))
        provenance = _provenance(item)
        if provenance:
            lines.append(_Line(provenance, 10, indent=True))
    return lines


def summary_text(patient_name: str | None, items: Sequence[SummaryItem], generated: str) -> str:
    """Render the summary as plain text carrying the patient's exact words."""
    out: list[str] = []
    for line in _lines(patient_name, items, generated):
        if line.gap_before and out:
            out.append("")
        out.append(("   " if line.indent else "") + line.text)
    return "\n".join(out) + "\n"


def _find_font(font_path: Path | None) -> Path | None:
    """Return the TTF to embed, or None when only the core font is available."""
    if font_path is not None:
        if not font_path.is_file():
            raise ValueError(f"font file not found: {font_path}")
        return font_path
    return next((candidate for candidate in FONT_CANDIDATES if candidate.is_file()), None)


def _creation_date(generated: str) -> datetime | None:
    """Parse the generation time so identical input gives an identical PDF."""
    try:
        parsed = datetime.fromisoformat(generated.strip())
    except ValueError:
        return None
    # a naive time would be read in the host's zone, making the bytes depend on the machine
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _pdf_text(text: str) -> str:
    """Return text with line breaks as the "\\n" that multi_cell lays out."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _replace_unshowable(text: str, covered: Container[int]) -> str:
    """Replace each character the font cannot draw with "?" so none vanishes silently."""
    return "".join(ch if ch == "\n" or ord(ch) in covered else "?" for ch in text)


def _needs_shaping(text: str) -> bool:
    """Tell whether text holds right-to-left or joining script that fpdf2 lays out unshaped."""
    # without a shaping engine, Arabic and Hebrew come out in logical order and Indic vowel
    # signs unattached: legible to no one, so the reader is pointed at the text attachment
    return any(
        unicodedata.bidirectional(ch) in ("R", "AL") or unicodedata.category(ch) == "Mc"
        for ch in text
    )


def summary_pdf(
    patient_name: str | None,
    items: Sequence[SummaryItem],
    generated: str,
    font_path: Path | None = None,
) -> bytes:
    """Render the summary as an A4 PDF, embedding a Unicode font when one is available."""
    font_file = _find_font(font_path)
    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_title(TITLE)
    pdf.set_creator("What Matters")
    created = _creation_date(generated)
    if created is not None:
        pdf.set_creation_date(created)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()

    covered: Container[int]
    if font_file is not None:
        pdf.add_font(_FAMILY, fname=font_file)
        family = _FAMILY
        font = pdf.fonts[_FAMILY.lower()]
        # a TTF rarely covers every script (DejaVu has no CJK and no emoji)
        covered = font.cmap if isinstance(font, TTFFont) else frozenset()
    else:
        family = _CORE_FAMILY
        covered = _LATIN1_PRINTABLE

    lines = []
    unshown = False
    for line in _lines(patient_name, items, generated):
        wanted = _pdf_text(line.text)
        shown = _replace_unshowable(wanted, covered)
        unshown = unshown or shown != wanted or _needs_shaping(wanted)
        lines.append(replace(line, text=shown))
    if unshown:
        lines.append(_Line(UNSHOWN_NOTE, 9, gap_before=8))

    indent = 8.0
    for line in lines:
        pdf.set_font(family, size=line.size)
        if line.gap_before:
            pdf.ln(line.gap_before)
        pdf.set_x(pdf.l_margin + (indent if line.indent else 0))
        pdf.multi_cell(
            w=0,
            h=line.size * 0.5,
            text=line.text,
            # ragged right: justifying stretches the spaces of short, personal sentences
            align="L",
            new_x=XPos.LMARGIN,
            new_y=YPos.NEXT,
        )
    return bytes(pdf.output())
