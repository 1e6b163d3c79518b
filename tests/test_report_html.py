"""The HTML report: one self-contained file, figures embedded, trace text inert.

Every string a trace can carry (transcripts, reference text, failure reasons, audio and
session names, target description) is planted with markup that would run script if it
were not escaped. The page is parsed and checked element by element; when a Chromium is
installed it is also loaded in headless Chromium, whose DOM must show the script never ran.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from voiceaudit.analysis import build_report, compare
from voiceaudit.analysis.synthetic import TurnSpec, schedule, synthetic_header, turn_events
from voiceaudit.report import Format, render
from voiceaudit.trace_io import TraceWriter

PAYLOAD = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"
ALLOWED_TAGS = {
    "html",
    "head",
    "meta",
    "title",
    "style",
    "body",
    "h1",
    "h2",
    "h3",
    "p",
    "br",
    "span",
    "b",
    "code",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "img",
    "ul",
    "li",
}


def hostile_trace(path: Path) -> Path:
    header = synthetic_header(run_id=f"run {PAYLOAD}")
    header = type(header)(
        run_id=header.run_id,
        voiceaudit_version=header.voiceaudit_version,
        target={"protocol": "realtime", "url": f"ws://x/{PAYLOAD}", "description": PAYLOAD},
        host=header.host,
        clock=header.clock,
        anchors=header.anchors,
        config=header.config,
    )
    specs = [
        TurnSpec(
            text=f"said {PAYLOAD}", transcript=f"heard {PAYLOAD} $x^2$", audio=f"{PAYLOAD}.wav"
        ),
        TurnSpec(aggregation_ms=183.0, transcript=PAYLOAD),
        TurnSpec(ok=False, reason=f"failed {PAYLOAD}"),
    ]
    w = TraceWriter(path, header)
    for spec, _, turn, t0 in schedule(specs):
        session = f"s{PAYLOAD}"
        for ev in turn_events(spec, session, turn, t0):
            w.write(ev)
        w.commit()
    w.close()
    return path


class Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = hostile_trace(tmp_path_factory.mktemp("html") / "trace.jsonl")
    return render(build_report([p], keep_observations=True), Format.HTML)


def test_trace_text_cannot_become_markup(page: str) -> None:
    c = Collector()
    c.feed(page)
    tags = {t for t, _ in c.tags}
    assert tags <= ALLOWED_TAGS, tags - ALLOWED_TAGS
    assert "script" not in tags
    for tag, attrs in c.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name)
            if tag == "img" and name == "src":
                assert value is not None and value.startswith("data:image/png;base64,")
    text = "".join(c.text)
    # the planted strings are shown, as text
    assert f"heard {PAYLOAD} $x^2$" in text
    assert f"failed {PAYLOAD}" in text
    assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in page


def test_page_is_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "http://" not in page and "https://" not in page
    c = Collector()
    c.feed(page)
    images = [dict(a)["src"] for t, a in c.tags if t == "img"]
    # budget, CDF, and one waterfall per representative turn (two ok turns here)
    assert len(images) == 4
    for src in images:
        assert src is not None
        assert base64.b64decode(src.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n")


def test_comparison_page_is_escaped_too(tmp_path: Path) -> None:
    a = build_report([hostile_trace(tmp_path / "a.jsonl")], label=PAYLOAD)
    b = build_report([hostile_trace(tmp_path / "b.jsonl")])
    html = render(compare(a, b), Format.HTML)
    c = Collector()
    c.feed(html)
    assert {t for t, _ in c.tags} <= ALLOWED_TAGS
    assert PAYLOAD not in html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


# `make test` installs Debian's chromium, so under CI a missing browser is a failure, not a skip.
@pytest.mark.skipif(
    _chromium() is None and not os.environ.get("CI"), reason="no Chromium installed"
)
def test_headless_chromium_runs_no_script(page: str, tmp_path: Path) -> None:
    f = tmp_path / "report.html"
    f.write_text(page, encoding="utf-8")
    chromium = _chromium()
    assert chromium is not None
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=2000",
            "--dump-dom",
            f.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = out.stdout
    assert "<title>voiceaudit report</title>" in dom, out.stderr[-2000:]
    assert "pwned</title>" not in dom
    # the planted script is present only as text
    assert "&lt;script&gt;" in dom
