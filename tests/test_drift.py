"""Long calls: latency by turn index and over time, and the drift test (analysis/drift.py).

The traces are written with the real TraceWriter (analysis/synthetic.py) with a known
voice-to-voice per turn: the model's first token is set per turn, so a turn's
voice-to-voice is exactly the sum of its stages (:data:`BASE_MS` plus that first token).
A drift of exactly 3 ms per turn plus seeded noise must be recovered within the slope's
95 % interval and raise the ``drift`` finding; noise alone (several seeds), a significant
but small trend, and too few turns must not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from scipy import stats

from voiceaudit.analysis import build_report
from voiceaudit.analysis.drift import MIN_CHANGE_MS, MIN_TURNS, WINDOWS
from voiceaudit.analysis.recording import read_call
from voiceaudit.analysis.report import Report
from voiceaudit.analysis.synthetic import TurnSpec, lay_out, schedule, write_trace
from voiceaudit.audio import Audio, detect_speech, first_audible
from voiceaudit.gate import run_gate
from voiceaudit.gate.budget import BudgetError, parse_budget
from voiceaudit.gate.output import render_markdown
from voiceaudit.report import Format, render

#: voice-to-voice of a default TurnSpec without its first token: framing 12, endpointing
#: 300, transcription 80, handoff 5, aggregation 20, synthesis 60, transport 1, playout 0,
#: onset 10
BASE_MS = 488.0
BASE_FT_MS = 150.0


def _specs(n: int, per_turn_ms: float, noise_ms: float, seed: int) -> list[TurnSpec]:
    rng = np.random.default_rng(seed)
    return [
        TurnSpec(first_token_ms=BASE_FT_MS + per_turn_ms * i + float(rng.normal(0, noise_ms)))
        for i in range(n)
    ]


def _report(tmp_path: Path, specs: list[TurnSpec], name: str = "t") -> Report:
    p = write_trace(tmp_path / f"{name}.jsonl", specs)
    return build_report([p])


def _truth(specs: list[TurnSpec]) -> tuple[np.ndarray, np.ndarray]:
    """(seconds from the first speech end, voice-to-voice ms) of each turn, as laid out."""
    ends = [lay_out(spec, t0).speech_end for spec, _, _, t0 in schedule(specs)]
    t = (np.asarray(ends, dtype=np.float64) - ends[0]) / 1e9
    v = np.asarray([BASE_MS + s.first_token_ms for s in specs if s.first_token_ms is not None])
    return t, v


def test_known_drift_recovered_and_raised(tmp_path: Path) -> None:
    specs = _specs(60, 3.0, 10.0, seed=7)
    r = _report(tmp_path, specs)
    t, v = _truth(specs)
    # every turn's voice-to-voice is the injected one
    got = np.asarray([tr.voice_to_voice_ns for tr in r.stats_turns], dtype=np.float64) / 1e6
    np.testing.assert_allclose(got, v, atol=1e-6)
    view = r.drift
    assert view is not None and view.turns == 60
    assert view.duration_s == pytest.approx(t[-1], abs=1e-9)
    # by turn index: 60 indices in 12 ranges of 5, each range's figures from the truth
    assert [(int(row.start), int(row.end)) for row in view.by_turn] == [
        (5 * k, 5 * k + 4) for k in range(12)
    ]
    for k, row in enumerate(view.by_turn):
        vals = v[5 * k : 5 * k + 5]
        assert row.n == 5 and row.failures == 0
        assert row.p50_ms == pytest.approx(float(np.percentile(vals, 50)), abs=1e-6)
        assert row.p95_ms == pytest.approx(float(np.percentile(vals, 95)), abs=1e-6)
    # over time: 10 equal windows from the first speech end to the last
    assert len(view.over_time) == WINDOWS
    width = t[-1] / WINDOWS
    for k, row in enumerate(view.over_time):
        assert row.start == pytest.approx(k * width) and row.end == pytest.approx((k + 1) * width)
        inside = (t >= k * width) & ((t < (k + 1) * width) | (k == WINDOWS - 1))
        assert row.n == int(inside.sum())
        assert row.p50_ms == pytest.approx(float(np.percentile(v[inside], 50)), abs=1e-6)
    # the trend against turn index: 3 ms per turn inside the 95 % interval
    tr = view.turn
    assert tr is not None
    assert tr.low <= 3.0 <= tr.high
    assert abs(tr.slope - 3.0) < 0.5
    assert tr.p < 1e-10 and tr.drifts
    assert tr.change_ms == pytest.approx(tr.slope * 59)
    assert abs(tr.intercept - (BASE_MS + BASE_FT_MS)) < 10  # the line's turn-0 level
    # against time: the noise-free drift's own Theil-Sen slope (ms/min) inside the interval
    true_per_min = stats.theilslopes(3.0 * np.arange(60), t / 60.0)[0]
    tt = view.time
    assert tt is not None and tt.low <= true_per_min <= tt.high and tt.drifts
    # one finding, costed with the larger change over the run
    (f,) = [f for f in r.findings if f.kind == "drift"]
    best = max((tt, tr), key=lambda x: abs(x.change_ms))
    assert (f.turns, f.of) == (1, 1)
    assert f.total_ms == pytest.approx(abs(best.change_ms), abs=1e-3)
    assert 150 < f.total_ms < 210  # 3 ms x 59 turns = 177 ms injected
    doc = json.loads(r.to_json())
    assert doc["drift"]["trend"]["turn"]["drift"] is True
    lo, hi = doc["drift"]["trend"]["turn"]["slope_ms_per_turn_ci95"]
    assert lo <= 3.0 <= hi


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_noise_only_raises_no_drift(tmp_path: Path, seed: int) -> None:
    """Flat latency with 30 ms of noise (seeded): the view is shown, no finding."""
    r = _report(tmp_path, _specs(60, 0.0, 30.0, seed=seed))
    view = r.drift
    assert view is not None and view.time is not None and view.turn is not None
    assert view.drift is None
    assert not view.time.drifts and not view.turn.drifts
    assert "drift" not in {f.kind for f in r.findings}
    assert "no drift" in render(r, Format.MARKDOWN)


def test_significant_but_small_trend_is_shown_not_raised(tmp_path: Path) -> None:
    """0.5 ms per turn over 60 turns (30 ms) with 1 ms of noise: significant, under the
    minimum change, so no finding."""
    r = _report(tmp_path, _specs(60, 0.5, 1.0, seed=3))
    view = r.drift
    assert view is not None and view.turn is not None
    assert view.turn.significant
    assert view.turn.low <= 0.5 <= view.turn.high
    assert abs(view.turn.change_ms) < MIN_CHANGE_MS
    assert view.drift is None
    assert "drift" not in {f.kind for f in r.findings}


def test_a_step_is_not_a_drift(tmp_path: Path) -> None:
    """+300 ms from turn 45 of 60 (a shift, not a gradual drift): the trend is significant
    and shown with the step, where it is and its size; no drift finding."""
    specs = _specs(60, 0.0, 10.0, seed=5)
    specs = [
        s.with_(first_token_ms=(s.first_token_ms or 0) + 300.0) if i >= 45 else s
        for i, s in enumerate(specs)
    ]
    r = _report(tmp_path, specs)
    view = r.drift
    assert view is not None and view.turn is not None and view.time is not None
    assert view.turn.significant and view.turn.step is not None
    at, change = view.turn.step
    assert at == 44.5
    assert 270 < change < 330
    assert view.time.step is not None and not view.time.drifts
    assert view.drift is None
    assert "drift" not in {f.kind for f in r.findings}
    assert "fits better (not gradual)" in render(r, Format.MARKDOWN)


def test_too_few_turns_no_view_no_finding(tmp_path: Path) -> None:
    """A steep drift (20 ms per turn) over MIN_TURNS - 1 turns: nothing is shown, so a
    short run's report stays as it was."""
    r = _report(tmp_path, _specs(MIN_TURNS - 1, 20.0, 1.0, seed=1))
    assert r.drift is None
    assert "drift" not in {f.kind for f in r.findings}
    assert "drift" not in r.to_dict(turns=False)
    assert "Long calls" not in render(r, Format.MARKDOWN)
    assert "Long calls" not in render(r, Format.HTML)
    assert "Long calls" not in render(r, Format.TERMINAL)


def test_failed_turns_counted_in_their_window(tmp_path: Path) -> None:
    specs = _specs(40, 0.0, 5.0, seed=2)
    for i in (3, 17, 38):
        specs[i] = specs[i].with_(ok=False, reason="timeout: no reply audio")
    r = _report(tmp_path, specs)
    view = r.drift
    assert view is not None and view.turns == 37
    assert sum(row.failures for row in view.over_time) == 3
    assert sum(row.n for row in view.over_time) == 37
    failed_rows = [(int(row.start), row.failures) for row in view.by_turn if row.failures]
    # 40 indices in ranges of 4: turns 3, 17 and 38 fall in ranges 0, 16 and 36
    assert failed_rows == [(0, 1), (16, 1), (36, 1)]


def test_every_format_shows_the_section(tmp_path: Path) -> None:
    r = _report(tmp_path, _specs(60, 3.0, 10.0, seed=7))
    term = render(r, Format.TERMINAL)
    md = render(r, Format.MARKDOWN)
    html = render(r, Format.HTML)
    doc = json.loads(render(r, Format.JSON))
    for text in (term, md):
        assert "Voice-to-voice by turn index" in text and "Voice-to-voice over time" in text
        assert "ms/turn (95% CI" in text and "finding raised" in text
    assert "### Long calls" in md and "| `drift` |" in md
    assert "<h2>Long calls</h2>" in html and "ms/min (95% CI" in html
    assert 'alt="voice-to-voice p50 and p95 over time, and the trend"' in html
    assert "<code>drift</code>" in html
    assert len(doc["drift"]["over_time"]) == WINDOWS
    assert sum(row["n"] for row in doc["drift"]["by_turn"]) == 60
    assert [f["kind"] for f in doc["findings"]] == ["drift"]


# -- a recorded call ------------------------------------------------------------------------

CLIPS = ("0870", "0880", "0890", "0920", "0930")


def _clip(speech_dir: Path, name: str) -> np.ndarray:
    """A LibriVox clip cut to its labelled speech (the .lab ground truth)."""
    stem = speech_dir / f"pocketsphinx_sense_and_sensibility_01_austen_64kb-{name}"
    x, rate = sf.read(stem.with_suffix(".wav"), dtype="float32")
    assert rate == 16000
    lab = stem.with_suffix(".lab").read_text().split()
    return np.asarray(x[round(float(lab[0]) * rate) : round(float(lab[3]) * rate)])


def test_a_recorded_call_that_drifts(speech_dir: Path, tmp_path: Path) -> None:
    """A stereo call of 30 caller turns (real speech) whose agent answers 20 ms later at
    each turn (0.5 s, 0.52 s, ...): the recording is read into a trace and the same view
    recovers 20 ms per turn inside its interval and raises ``drift``."""
    rate = 16000
    clips = [_clip(speech_dir, n) for n in CLIPS]

    def trimmed(x: np.ndarray) -> np.ndarray:
        info = detect_speech(Audio(x, rate, 1))
        assert info.speech_start is not None and info.speech_end is not None
        piece = x[info.speech_start : info.speech_end]
        a = first_audible(piece, rate)
        b = first_audible(np.ascontiguousarray(piece[::-1]), rate)
        assert a is not None and b is not None
        return piece[a : piece.shape[0] - b]

    said = [trimmed(c[: round(2.0 * rate)]) for c in clips]
    replies = [trimmed(c[round(2.0 * rate) : round(3.2 * rate)]) for c in clips]
    n = 30
    total = sum(s.shape[0] for s in said) * 6 + n * 4 * rate
    caller = np.zeros(total, dtype=np.float32)
    agent = np.zeros(total, dtype=np.float32)
    at = rate  # one second of silence first
    truth = []
    for i in range(n):
        s = said[i % len(said)]
        caller[at : at + s.shape[0]] = s
        at += s.shape[0]
        lat = 0.5 + 0.02 * i
        truth.append(lat)
        at += round(lat * rate)
        r = replies[(i + 2) % len(replies)]
        agent[at : at + r.shape[0]] = r
        at += r.shape[0] + round(0.8 * rate)
    wav = tmp_path / "call.wav"
    sf.write(wav, np.stack([caller[:at], agent[:at]], axis=1), rate, subtype="PCM_16")
    r = build_report([read_call(wav)])
    got = np.asarray([t.voice_to_voice_ns for t in r.stats_turns], dtype=np.float64) / 1e9
    assert len(got) == n
    assert np.abs(got - np.asarray(truth)).max() <= 0.010  # the recording's own accuracy
    view = r.drift
    assert view is not None and view.turn is not None
    # the reader is sample-exact on clean speech: the interval may shrink to a point
    assert view.turn.low - 0.01 <= 20.0 <= view.turn.high + 0.01
    assert abs(view.turn.slope - 20.0) < 0.5
    assert view.turn.drifts and view.turn.step is None
    (f,) = [f for f in r.findings if f.kind == "drift"]
    assert 560 < f.total_ms < 600  # 20 ms x 29 turns = 580 ms injected
    assert "### Long calls" in render(r, Format.MARKDOWN)


# -- the gate -------------------------------------------------------------------------------


def _gate(trace: Path, limit: str) -> Any:
    return run_gate(
        [trace], budget=parse_budget(f"[budget]\ndrift.slope_ms_per_min = {{ max = {limit} }}\n")
    )


def test_gate_drift_slope(tmp_path: Path) -> None:
    """3 ms per turn is about 23 ms per minute (interval about 22 to 24): a limit of 10
    fails, 30 passes (within), 23 passes (inside the interval: not significantly above);
    noise alone passes a limit of 1; 19 turns fail closed."""
    drift = write_trace(tmp_path / "drift.jsonl", _specs(60, 3.0, 10.0, seed=7))
    flat = write_trace(tmp_path / "flat.jsonl", _specs(60, 0.0, 30.0, seed=0))
    short = write_trace(tmp_path / "short.jsonl", _specs(MIN_TURNS - 1, 0.0, 5.0, seed=0))
    bad = _gate(drift, "10")
    (c,) = bad.checks
    assert not bad.passed and c.problem == "over the limit" and c.kind == "drift"
    assert c.metric == "drift.slope_ms_per_min" and c.unit == "ms/min"
    assert c.ci95 is not None and c.ci95[0] > 10 and c.observed is not None
    assert c.ci95[0] <= c.observed <= c.ci95[1]
    assert _gate(drift, "30").passed
    assert c.observed is not None and _gate(drift, f"{c.observed:.3f}").passed
    assert _gate(flat, "1").passed
    closed = _gate(short, "100")
    assert not closed.passed and closed.checks[0].problem == "not enough turns"
    assert closed.checks[0].needed == MIN_TURNS
    md = render_markdown(bad)
    assert "drift.slope_ms_per_min &lt;= 10 ms/min" in md and "| 10.00 ms/min |" in md


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drift = { slope = 5 }", "unknown key 'slope' in drift"),
        ("drift.slope_ms_per_min = { max = -1 }", "must be a number of ms per minute >= 0"),
        ('drift.slope_ms_per_min = { max = "5ms" }', "must be a number of ms per minute >= 0"),
        ("drift.slope_ms_per_min = { min = 5 }", "unknown key 'min'"),
    ],
)
def test_gate_drift_budget_errors(text: str, message: str) -> None:
    with pytest.raises(BudgetError, match=message) as err:
        parse_budget(f"[budget]\n{text}\n")
    assert "<budget>:2" in str(err.value)
