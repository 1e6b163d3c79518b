"""matplotlib figures for the HTML report, returned as PNG bytes.

matplotlib is imported lazily (it is slow to import). Text from traces never goes
through mathtext (``text.parse_math`` off), so a transcript with ``$`` in it is drawn as
typed and cannot make a figure fail.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceaudit.analysis.ledger import ALL_SEGMENTS, UNEXPLAINED
from voiceaudit.analysis.report import VOICE_TO_VOICE, Report, TurnReport
from voiceaudit.report.common import COLOURS, label, segment_label

#: At most this many turns are drawn in the per-turn budget figure (evenly by rank).
MAX_BUDGET_TURNS = 300
ENVELOPE_MS = 10

FloatArray = npt.NDArray[np.float64]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


_RC = {
    "text.parse_math": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "svg.hashsalt": "voiceaudit",
}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def cdf_png(series: Sequence[tuple[str, FloatArray]]) -> bytes:
    """Empirical CDF of voice-to-voice, one line per series."""
    plt = _plt()
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        for name, values in series:
            x = np.sort(values)
            if len(x) == 0:
                continue
            y = np.arange(1, len(x) + 1) / len(x)
            ax.step(x, y, where="post", label=f"{name} (n={len(x)})")
        for q in (0.5, 0.9, 0.95, 0.99):
            ax.axhline(q, color="#cccccc", lw=0.6, zorder=0)
        ax.set_xlabel("voice-to-voice (ms)")
        ax.set_ylabel("fraction of turns")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower right", frameon=False)
        return _png(fig)


def concurrency_png(report: Report) -> bytes:
    """Voice-to-voice p50 and p95 per concurrency level, the baseline's p95 plus the knee
    margin, and the knee."""
    view = report.concurrency
    if view is None:
        raise ValueError("one concurrency level: nothing to draw")
    plt = _plt()
    x = [lv.concurrency for lv in view.levels]
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(x, [lv.p50_ms for lv in view.levels], marker="o", label="p50")
        ax.plot(x, [lv.p95_ms for lv in view.levels], marker="s", label="p95")
        base = view.levels[0].p95_ms
        ax.axhline(
            view.margin.allowed(base),
            color="#d62728",
            lw=0.8,
            ls="--",
            label=f"baseline p95 {view.margin}",
        )
        if view.knee is not None:
            ax.axvline(view.knee, color="#d62728", lw=0.8, label=f"knee ({view.knee})")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("concurrent sessions")
        ax.set_ylabel("voice-to-voice (ms)")
        ax.legend(loc="upper left", frameon=False)
        return _png(fig)


def drift_png(report: Report) -> bytes:
    """Voice-to-voice p50 and p95 per window of time (at each window's middle) and the
    Theil-Sen line of the trend against time (docs/report-format.md, "Long calls")."""
    view = report.drift
    if view is None:
        raise ValueError("too few turns: no drift view")
    plt = _plt()
    rows = [r for r in view.over_time if r.n]
    mid = [(r.start + r.end) / 2 / 60 for r in rows]
    with plt.rc_context(_RC):
        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot(mid, [r.p50_ms for r in rows], marker="o", label="p50 per window")
        ax.plot(mid, [r.p95_ms for r in rows], marker="s", label="p95 per window")
        tr = view.time
        if tr is not None:
            xs = np.asarray([0.0, view.duration_s / 60])
            ax.plot(
                xs,
                tr.intercept + tr.slope * xs,
                color="#d62728",
                lw=0.9,
                ls="--",
                label=f"Theil-Sen {tr.slope:+.2f} ms/min",
            )
        ax.set_xlabel("minutes from the run's start")
        ax.set_ylabel("voice-to-voice (ms)")
        ax.legend(loc="upper left", frameon=False)
        return _png(fig)


def budget_png(report: Report) -> bytes:
    """Stacked budget by segment: the mean turn, then every turn sorted by voice-to-voice."""
    plt = _plt()
    turns = sorted(
        (t for t in report.stats_turns if t.voice_to_voice_ns is not None),
        key=lambda t: (t.voice_to_voice_ns, t.session, t.turn),
    )
    if len(turns) > MAX_BUDGET_TURNS:
        idx = np.linspace(0, len(turns) - 1, MAX_BUDGET_TURNS).round().astype(int)
        turns = [turns[i] for i in idx]
    present = [b.segment for b in report.budget]
    with plt.rc_context(_RC):
        fig, (ax_mean, ax_turns) = plt.subplots(
            1, 2, figsize=(9, 3.6), gridspec_kw={"width_ratios": [1, 5]}, sharey=True
        )
        bottom = 0.0
        for b in report.budget:
            ax_mean.bar(0, b.mean_ms, bottom=bottom, color=COLOURS[b.segment], width=0.6)
            bottom += b.mean_ms
        ax_mean.set_xticks([0], ["mean turn"])
        ax_mean.set_ylabel("ms")
        x = np.arange(len(turns))
        bottoms = np.zeros(len(turns))
        for seg in present:
            vals = np.array([(t.ledger.segment_ns(seg) or 0) / 1e6 for t in turns])
            ax_turns.bar(x, vals, bottom=bottoms, color=COLOURS[seg], width=1.0, label=label(seg))
            bottoms += vals
        ax_turns.set_xlabel(
            "turns, sorted by voice-to-voice"
            + (f" (every {len(report.stats_turns) // len(turns)}th)" if len(turns) else "")
            if len(report.stats_turns) > MAX_BUDGET_TURNS
            else "turns, sorted by voice-to-voice"
        )
        ax_turns.set_xticks([])
        ax_turns.legend(loc="upper left", frameon=False, fontsize=7, ncol=2)
        return _png(fig)


def reply_envelope(
    turn: TurnReport, trace_path: str | None
) -> tuple[FloatArray, FloatArray, str] | None:
    """(times in ms after speech end, level 0..1, what it is) of the reply audio.

    From the reply audio the probe saved next to the trace
    (``reply_audio/<session>-t<turn>.wav``) when there is one, else from per-chunk
    ``peak`` attributes; ``None`` when neither exists.
    """
    t0 = turn.ledger.t0_ns
    start = turn.ledger.times.get("reply.playout_start")
    if t0 is None or start is None:
        return None
    if trace_path is not None:
        wav = Path(trace_path).parent / "reply_audio" / f"{turn.session}-t{turn.turn}.wav"
        if wav.is_file():
            try:
                import soundfile

                audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=True)
            except Exception:  # a damaged file only loses the envelope
                audio = None
            if audio is not None and len(audio):
                mono = np.abs(audio[:, 0])
                win = max(1, rate * ENVELOPE_MS // 1000)
                n = len(mono) // win
                if n > 0:
                    peaks = mono[: n * win].reshape(n, win).max(axis=1).astype(np.float64)
                    times = (start - t0) / 1e6 + np.arange(n) * ENVELOPE_MS
                    return times, peaks, "reply audio (saved by the probe)"
    obs = turn.obs
    if obs is not None:
        pts = [
            (c.offset / c.rate, c.peak)
            for c in obs.chunks
            if c.peak is not None and c.offset is not None and c.rate
        ]
        if pts:
            pts.sort()
            times = (start - t0) / 1e6 + np.array([p[0] for p in pts]) * 1000
            return times, np.array([p[1] for p in pts], dtype=np.float64), "chunk peaks"
    return None


def waterfall_png(turn: TurnReport, title: str, trace_path: str | None = None) -> bytes:
    """One turn on a time axis: segments as a waterfall, marks, reply audio below."""
    plt = _plt()
    t0 = turn.ledger.t0_ns
    assert t0 is not None
    segs = turn.ledger.segments
    env = reply_envelope(turn, trace_path)
    v2v = (turn.voice_to_voice_ns or 0) / 1e6
    with plt.rc_context(_RC):
        fig, (ax, ax_audio) = plt.subplots(
            2,
            1,
            figsize=(9, 0.32 * len(segs) + 2.4),
            sharex=True,
            gridspec_kw={"height_ratios": [max(2, len(segs)), 2]},
        )
        start = 0.0
        for i, s in enumerate(segs):
            ms = s.ns / 1e6
            colour = COLOURS.get(s.name, COLOURS[UNEXPLAINED])
            hatch = "//" if s.name == UNEXPLAINED else None
            ax.barh(i, max(ms, 0.001), left=start, color=colour, hatch=hatch, height=0.7)
            ax.text(
                start + ms + v2v * 0.01,
                i,
                f"{segment_label(s)}  {ms:.1f} ms",
                va="center",
                fontsize=8,
            )
            start += ms
        ax.set_yticks([])
        ax.invert_yaxis()
        for m in turn.ledger.marks:
            x = (m.t_ns - t0) / 1e6
            ax.axvline(x, color="#bbbbbb", lw=0.5, zorder=0)
        for o in turn.ledger.off_path:
            x = (o.t_ns - t0) / 1e6
            ax.plot([x], [len(segs) - 0.4], marker="x", color="#555555")
            ax.text(x, len(segs) - 0.1, o.name, rotation=30, fontsize=7, color="#555555")
        ax.axvline(0, color="black", lw=1)
        ax.axvline(v2v, color="black", lw=1)
        ax.set_title(title, loc="left", fontsize=10)
        if env is not None:
            times, level, what = env
            ax_audio.fill_between(times, -level, level, color="#e377c2", lw=0)
            ax_audio.set_ylabel(what, fontsize=7)
            ax_audio.set_ylim(-1.05, 1.05)
        else:
            _delivered(ax_audio, turn, t0)
        ax_audio.axvline(0, color="black", lw=1)
        ax_audio.axvline(v2v, color="black", lw=1)
        ax_audio.set_xlabel("ms after the caller stopped speaking")
        right = max(v2v * 1.25, v2v + 200)
        ax_audio.set_xlim(-max(50.0, v2v * 0.05), right)
        return _png(fig)


def _delivered(ax: Any, turn: TurnReport, t0: int) -> None:
    """Without audio levels: reply audio delivered (s) over time, as it arrived."""
    obs = turn.obs
    chunks = [] if obs is None else sorted(obs.chunks, key=lambda c: c.t_ns)
    if not chunks:
        ax.text(0.5, 0.5, "no reply audio recorded", transform=ax.transAxes, ha="center")
        ax.set_yticks([])
        return
    xs, ys = [], []
    total = 0.0
    for c in chunks:
        xs.append((c.t_ns - t0) / 1e6)
        if c.samples is not None and c.rate:
            total += c.samples / c.rate
        ys.append(total)
    ax.step(xs, ys, where="post", color="#8c564b")
    ax.set_ylabel("reply audio\nreceived (s)", fontsize=7)


def segment_names(report: Report) -> list[str]:
    return [s for s in ALL_SEGMENTS if s in report.summary]


def v2v_values(report: Report) -> FloatArray:
    return report.metric_values[VOICE_TO_VOICE]
