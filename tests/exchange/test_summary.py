"""The "What matters to me" summary in plain text and PDF keeps the patient's words."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest

from service.exchange import summary
from service.exchange.summary import SummaryItem, summary_pdf, summary_text

GENERATED = "2024-05-01T10:00:00Z"
DEJAVU = next((path for path in summary.FONT_CANDIDATES if path.is_file()), None)
needs_dejavu = pytest.mark.skipif(DEJAVU is None, reason="DejaVu Sans is not installed")

GERMAN = "Ich möchte wieder im Garten arbeiten"
CHINESE = "回家过年"
ARABIC = "العودة إلى المنزل"
EMOJI = "🌱 my garden"


def item(rank: int | None, text: str, **details: str) -> SummaryItem:
    """Build an item with only the details a test cares about."""
    return SummaryItem(
        rank=rank,
        text=text,
        kind=details.get("kind", "statement"),
        recorded_by=details.get("recorded_by"),
        setting=details.get("setting"),
        date=details.get("date"),
    )


def multilingual() -> list[SummaryItem]:
    """Return items in four scripts, given out of rank order."""
    return [
        item(3, ARABIC),
        item(1, GERMAN, recorded_by="Dr Lee", setting="Ward 7", date="2024-04-30"),
        item(4, EMOJI),
        item(2, CHINESE, kind="goal"),
    ]


# -- a small text extractor, because pypdf is not a dependency --------------------------------

_LITERAL = re.compile(rb"\((?P<body>(?:\\.|[^\\)])*)\)\s*Tj", re.S)
_ESCAPES = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}


def _unescape(body: bytes) -> bytes:
    """Undo PDF literal-string escapes."""
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i : i + 1] != b"\\":
            out += body[i : i + 1]
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        octal = re.match(rb"[0-7]{1,3}", body[i + 1 : i + 4])
        if octal:
            out.append(int(octal.group(), 8))
            i += 1 + len(octal.group())
        else:
            out += _ESCAPES.get(nxt, nxt)
            i += 2
    return bytes(out)


def _streams(pdf: bytes) -> list[bytes]:
    """Return every stream of the PDF, inflated where fpdf2 compressed it."""
    out = []
    for match in re.finditer(rb"stream\r?\n(.*?)\r?\nendstream", pdf, re.S):
        try:
            out.append(zlib.decompress(match.group(1)))
        except zlib.error:
            out.append(match.group(1))
    return out


def pdf_text(pdf: bytes) -> str:
    """Return the text drawn by Tj operators, one line per operator."""
    streams = _streams(pdf)
    to_unicode: dict[int, str] = {}
    for stream in streams:
        if b"beginbfchar" in stream:
            for code, uni in re.findall(rb"<([0-9A-Fa-f]{4})>\s*<([0-9A-Fa-f]+)>", stream):
                to_unicode[int(code, 16)] = bytes.fromhex(uni.decode()).decode("utf-16-be")
    lines = []
    for stream in streams:
        for match in _LITERAL.finditer(stream):
            raw = _unescape(match.group("body"))
            if to_unicode:
                codes = [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]
                lines.append("".join(to_unicode.get(code, "\ufffd") for code in codes))
            else:
                lines.append(raw.decode("latin-1"))
    return "\n".join(lines)


def words(text: str) -> str:
    """Collapse whitespace, since wrapping turns a space into a line break."""
    return " ".join(text.split())


def page_count(pdf: bytes) -> int:
    """Count /Type /Page objects, not the /Pages tree."""
    return len(re.findall(rb"/Type\s*/Page(?!s)", pdf))


# -- plain text ---------------------------------------------------------------------------------


def test_text_keeps_every_script_verbatim() -> None:
    text = summary_text("Anna Müller", multilingual(), GENERATED)
    lines = text.splitlines()
    assert lines[0] == "What matters to me"
    assert "Patient: Anna Müller" in lines
    for words_ in (GERMAN, CHINESE, ARABIC, EMOJI):
        assert words_ in text


def test_text_orders_by_rank_and_numbers_lines() -> None:
    lines = summary_text("Anna", multilingual(), GENERATED).splitlines()
    numbered = [line for line in lines if re.match(r"\d+\. ", line)]
    assert numbered == [f"1. {GERMAN}", f"2. {CHINESE}", f"3. {ARABIC}", f"4. {EMOJI}"]


def test_text_shows_provenance_indented_under_its_item() -> None:
    lines = summary_text("Anna", multilingual(), GENERATED).splitlines()
    at = lines.index(f"1. {GERMAN}")
    assert lines[at + 1] == "   recorded by Dr Lee at Ward 7 on 2024-04-30"


def test_text_provenance_names_only_what_is_known() -> None:
    text = summary_text("Anna", [item(1, "walk", setting="home"), item(2, "sing")], GENERATED)
    lines = text.splitlines()
    assert lines[lines.index("1. walk") + 1] == "   recorded at home"
    assert "recorded" not in "\n".join(lines[lines.index("2. sing") :])


def test_text_marks_goals() -> None:
    lines = summary_text("Anna", multilingual(), GENERATED).splitlines()
    assert lines[lines.index(f"2. {CHINESE}") + 1] == "   (goal)"


def test_text_lists_unranked_after_ranked_in_given_order() -> None:
    items = [item(None, "b"), item(2, "second"), item(None, "a"), item(1, "first")]
    lines = summary_text("Anna", items, GENERATED).splitlines()
    body = [line for line in lines if line.startswith(("1.", "2.", "- "))]
    assert body == ["1. first", "2. second", "- b", "- a"]


def test_text_never_truncates_or_normalises() -> None:
    # a decomposed umlaut (u + combining diaeresis), doubled spaces and a line break
    words_ = "Zu\u0308rich  sehen\nund " + "sehr " * 400 + "lange bleiben  "
    text = summary_text("Anna", [item(1, words_)], GENERATED)
    assert f"1. {words_}\n" in text


def test_text_without_name_or_items_says_so() -> None:
    text = summary_text(None, [], GENERATED)
    assert "Patient: (name not recorded)" in text
    assert "Nothing has been recorded yet." in text
    assert "Generated: 2024-05-01T10:00:00Z" in text


# -- PDF ------------------------------------------------------------------------------------------


@needs_dejavu
def test_pdf_is_a_pdf_with_embedded_font_and_metadata() -> None:
    pdf = summary_pdf("Anna Müller", multilingual(), GENERATED)
    assert pdf.startswith(b"%PDF-")
    assert pdf.rstrip().endswith(b"%%EOF")
    assert b"/FontFile2" in pdf
    assert b"/Title (What matters to me)" in pdf
    assert b"/CreationDate (D:20240501100000Z" in pdf
    assert b"/MediaBox [0 0 595.28 841.89]" in pdf  # A4 in points
    assert page_count(pdf) == 1


@needs_dejavu
def test_pdf_words_are_extractable() -> None:
    drawn = pdf_text(summary_pdf("Anna Müller", multilingual(), GENERATED))
    assert "What matters to me" in drawn
    assert "Patient: Anna Müller" in drawn
    assert f"1. {GERMAN}" in drawn
    assert "recorded by Dr Lee at Ward 7 on 2024-04-30" in drawn


@needs_dejavu
def test_pdf_replaces_glyphs_the_font_lacks_and_points_to_the_text() -> None:
    drawn = words(pdf_text(summary_pdf("Anna", multilingual(), GENERATED)))
    # DejaVu Sans has no CJK or emoji: shown as "?" rather than silently left out
    assert "2. ????" in drawn
    assert "4. ? my garden" in drawn
    assert words(summary.UNSHOWN_NOTE) in drawn


@needs_dejavu
def test_pdf_without_unshowable_text_has_no_note() -> None:
    drawn = words(pdf_text(summary_pdf("Anna Müller", [item(1, GERMAN)], GENERATED)))
    assert f"1. {GERMAN}" in drawn
    assert "could not be shown" not in drawn


@needs_dejavu
def test_pdf_notes_right_to_left_text_it_cannot_shape() -> None:
    drawn = words(pdf_text(summary_pdf("Anna", [item(1, ARABIC)], GENERATED)))
    assert words(summary.UNSHOWN_NOTE) in drawn


@needs_dejavu
def test_pdf_wraps_long_text_over_pages_without_cutting() -> None:
    long_words = " ".join(f"word{n}" for n in range(1500))
    pdf = summary_pdf("Anna", [item(1, long_words)], GENERATED)
    assert page_count(pdf) > 1
    drawn = words(pdf_text(pdf))
    assert f"1. {long_words}" in drawn


@needs_dejavu
def test_pdf_is_deterministic_for_the_same_input() -> None:
    first = summary_pdf("Anna", multilingual(), GENERATED)
    assert summary_pdf("Anna", multilingual(), GENERATED) == first
    assert summary_pdf("Anna", multilingual(), "2024-05-02T10:00:00Z") != first


@needs_dejavu
def test_pdf_uses_the_given_font(tmp_path: Path) -> None:
    assert DEJAVU is not None
    copy = tmp_path / "Custom.ttf"
    copy.write_bytes(DEJAVU.read_bytes())
    pdf = summary_pdf("Anna", [item(1, GERMAN)], GENERATED, font_path=copy)
    assert b"/FontFile2" in pdf
    assert f"1. {GERMAN}" in pdf_text(pdf)


def test_pdf_rejects_a_missing_font_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="font file not found"):
        summary_pdf("Anna", [item(1, GERMAN)], GENERATED, font_path=tmp_path / "nope.ttf")


def test_pdf_falls_back_to_core_font_with_note(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(summary, "FONT_CANDIDATES", (tmp_path / "absent.ttf",))
    pdf = summary_pdf("Anna Müller", multilingual(), GENERATED)
    assert pdf.startswith(b"%PDF-")
    assert b"/FontFile2" not in pdf
    assert b"/BaseFont /Helvetica" in pdf
    drawn = words(pdf_text(pdf))
    assert "Patient: Anna Müller" in drawn  # latin-1 survives in the core font
    assert f"1. {GERMAN}" in drawn
    assert "2. ????" in drawn
    assert "3. " + words("".join("?" if ch != " " else " " for ch in ARABIC)) in drawn
    assert "4. ? my garden" in drawn
    assert drawn.endswith(words(summary.UNSHOWN_NOTE))


def test_pdf_core_font_fallback_without_unshowable_text_has_no_note(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(summary, "FONT_CANDIDATES", ())
    drawn = words(pdf_text(summary_pdf("Anna", [item(1, "Café au lait")], GENERATED)))
    assert "1. Café au lait" in drawn
    assert "could not be shown" not in drawn


@needs_dejavu
def test_pdf_reads_a_naive_generated_time_as_utc() -> None:
    pdf = summary_pdf("Anna", [item(1, GERMAN)], "2024-05-01T10:00:00")
    assert b"/CreationDate (D:20240501100000Z" in pdf


@needs_dejavu
def test_pdf_accepts_a_generated_value_that_is_not_a_timestamp() -> None:
    pdf = summary_pdf("Anna", [item(1, GERMAN)], "1 May 2024")
    assert "Generated: 1 May 2024" in pdf_text(pdf)
