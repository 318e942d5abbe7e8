"""The patient's words are never altered: any Unicode, any whitespace, up to 10,000 characters,
byte for byte on every path (operation, REST read, history, $what-matters, facade, page).
"""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from flask.testing import FlaskClient
from markupsafe import escape

from tests.priorities.conversations import NHS, add_patient, conversation, record, statement

WORDS = {
    "welsh": "Gweld fy ŵyr a’m wyres yn Nhŷ Ddewi — â ê î ô û ŵ ŷ",
    "arabic": "أن أعود إلى بيتي وأرى حديقتي",
    "hebrew": "לחזור הביתה לפני החגים",
    "mixed-direction": "Ffion: «بيتي» and ‘בית’ 2024",
    "chinese": "能自己走路去公园，和老朋友喝茶",
    "emoji": "Walking Bramble 🐕‍🦺 with my family 👩‍👩‍👧 ❤️",
    "whitespace": "  two leading spaces,\tinner  tab and\nnew line, trailing  ",
    "crlf": "first line\r\nsecond line",
    "markup": "<b>not bold</b> & <script>alert(1)</script> \"quoted\" 'single'",
    "combining": "Cafe\u0301 and cafe\u0301 vs café",  # decomposed and precomposed kept apart
    "long": ("Mae hyn yn bwysig i mi. " * 435)[:10_000],
}


class _Words(HTMLParser):
    """Collect the text of the page's ``<h2 class="words">`` elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[str] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2" and ("class", "words") in attrs:
            self._inside = True
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._inside = False

    def handle_data(self, data: str) -> None:
        if self._inside:
            self.found[-1] += data


@pytest.mark.parametrize("name", sorted(WORDS))
def test_words_survive_every_path(client: FlaskClient, name: str) -> None:
    words = WORDS[name]
    assert len(words) <= 10_000
    add_patient(client)
    response = record(client, conversation(statement("s1", words)))
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    written = response.get_json()["entry"][0]["resource"]
    assert written["valueString"] == words  # the operation's own answer
    location = f"/fhir/Observation/{written['id']}"
    raw = client.get(location).get_data()
    assert json.loads(raw)["valueString"] == words  # REST read
    assert json.dumps(words, ensure_ascii=False).encode() in raw  # and its UTF-8 bytes as sent
    history = client.get(f"{location}/_history/1").get_json()
    assert history["valueString"] == words  # vread
    listed = client.get(f"{location}/_history").get_json()
    assert listed["entry"][0]["resource"]["valueString"] == words  # history
    bundle = client.get("/fhir/Patient/p1/$what-matters").get_json()
    assert words in [e["resource"].get("valueString") for e in bundle["entry"]]
    facade = client.get(f"/api/patients/{NHS}%7C9000000009/priorities")
    assert facade.get_json()["priorities"][0]["text"] == words
    assert json.dumps(words, ensure_ascii=False).encode() in facade.get_data()
    page = client.get("/patients/p1/what-matters").get_data(as_text=True)
    assert str(escape(words)) in page  # escaped, nothing else changed
    parser = _Words()
    parser.feed(page)
    assert parser.found == [words]


def test_words_sent_through_the_facade_are_kept(client: FlaskClient) -> None:
    add_patient(client)
    body = {"statements": [{"text": w} for w in WORDS.values()]}
    response = client.post(f"/api/patients/{NHS}%7C9000000009/priorities", json=body)
    assert response.status_code == 201
    assert sorted(p["text"] for p in response.get_json()["priorities"]) == sorted(WORDS.values())
