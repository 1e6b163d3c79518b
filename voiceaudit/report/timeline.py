"""Per-turn timeline strips and audio players for the HTML report (issue 25).

When a report has exactly one source and its sessions have call recordings on disk (the
``call-<session>.wav`` files ``voiceaudit run --record`` writes beside the trace, named by
the trace's ``session.recording`` events; or the file ``voiceaudit report CALL.wav``
read), each turn (the first :data:`MAX_STRIP_TURNS`) gets:

- a **strip**: an inline SVG with both sides' waveforms (per-column min/max envelopes of
  the caller's channel above and the heard channel below) over the turn's stretch of the
  call, from :data:`PAD_NS` before its speech end (or its first cut-in) to :data:`PAD_NS`
  after its reply was last heard (at most :data:`MAX_STRETCH_NS`), with vertical marks at
  the speech end, the first audible sample, the ledger's segment boundaries (its chain
  marks), barge-in onsets and stops (``reply.stop``) and cut-ins (``reply.cut_in``);
- a **player** of that stretch: a WAV of the file's very samples, embedded as a data URI
  while the report's embedded audio stays under :data:`MAX_EMBED_BYTES`; beyond it a link
  to the call's WAV with the stretch as a media fragment (``#t=start,end``, seconds in
  the file).

This is the one part of the renderers that reads files: the recordings, and the lines of
the trace that name them (``session.recording``, read only when a ``call-*.wav`` sits
beside the trace). A report without recordings reads nothing and renders as before.
"""

from __future__ import annotations

import base64
import gzip
import html
import io
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import numpy.typing as npt
import soundfile as sf

from voiceaudit.analysis.ledger import AUDIBLE, SPEECH_END
from voiceaudit.analysis.report import Report, TurnReport

#: turns shown with a strip and a player (the first ones, in the report's order)
MAX_STRIP_TURNS = 50
#: the report's embedded audio (WAV bytes, before base64) stays under this
MAX_EMBED_BYTES = 20 * 1024 * 1024
#: the stretch starts this long before the speech end and ends this long after the
#: reply was last heard
PAD_NS = 500_000_000
#: a stretch is never longer than this (a reply heard for longer is cut here)
MAX_STRETCH_NS = 30_000_000_000
#: the strip's drawing size (SVG user units; it scales with the page)
WIDTH, HEIGHT = 1000, 120

#: mark kinds, in drawing order, with their colours
COLOURS = {
    "segment": "#999999",
    "speech end": "#1f77b4",
    "first audible": "#2ca02c",
    "barge-in onset": "#d62728",
    "barge-in stop": "#ff7f0e",
    "cut-in": "#9467bd",
}


@dataclass(frozen=True)
class CallFile:
    """A session's call recording: sample ``k`` is at ``t0_ns + k / rate``."""

    path: Path
    #: the link the report gives (the path as the report was given it, URL-quoted)
    href: str
    rate: int
    frames: int
    channels: int
    t0_ns: int
    #: the caller's channel (0 left, 1 right); the other is what the caller heard
    caller: int = 0


@dataclass(frozen=True)
class StripMark:
    """A vertical mark: ``kind`` (a key of :data:`COLOURS`), its label, its time on the
    trace's clock and its x position in the strip (SVG units, 0..:data:`WIDTH`)."""

    kind: str
    label: str
    t_ns: int
    x: float


@dataclass(frozen=True)
class Strip:
    """One turn's strip and player."""

    turn: TurnReport
    call: CallFile
    #: the stretch, on the trace's clock and as the file's samples ``[first, stop)``
    start_ns: int
    end_ns: int
    first: int
    stop: int
    marks: tuple[StripMark, ...]
    svg: str
    #: the embedded WAV (None: linked instead)
    wav: bytes | None

    @property
    def start_s(self) -> float:
        """The stretch's start, seconds into the file."""
        return self.first / self.call.rate

    @property
    def end_s(self) -> float:
        """The stretch's end, seconds into the file."""
        return self.stop / self.call.rate

    @property
    def link(self) -> str:
        """The call's WAV with the stretch as a media fragment."""
        return f"{self.call.href}#t={self.start_s:.3f},{self.end_s:.3f}"


def _href(p: Path) -> str:
    return quote(p.as_posix(), safe="/:._-")


def _wav_info(p: Path) -> tuple[int, int, int] | None:
    try:
        info = sf.info(str(p))
    except (RuntimeError, OSError, ValueError):
        return None
    if info.channels != 2 or info.samplerate <= 0:
        return None
    return int(info.samplerate), int(info.frames), int(info.channels)


def _trace_file(path: Path) -> Path | None:
    if path.is_file():
        return path
    for name in ("trace.jsonl", "trace.jsonl.gz"):
        if (path / name).is_file():
            return path / name
    return None


def _recording_events(trace: Path) -> list[tuple[str, dict[str, Any]]]:
    """(session, attrs) of each ``session.recording`` line of a trace."""
    out: list[tuple[str, dict[str, Any]]] = []
    opener: Any = gzip.open if trace.name.endswith(".gz") else open
    try:
        with opener(trace, "rt", encoding="utf-8", errors="replace") as f:
            for line in f:
                if '"session.recording"' not in line:
                    continue
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if (
                    isinstance(rec, dict)
                    and rec.get("name") == "session.recording"
                    and isinstance(rec.get("attrs"), dict)
                    and isinstance(rec.get("session"), str)
                ):
                    out.append((rec["session"], rec["attrs"]))
    except (OSError, EOFError, gzip.BadGzipFile):
        return out
    return out


def find_recordings(report: Report) -> dict[str, CallFile]:
    """The call recordings of a one-source report, by session (empty when there are
    none, or several sources)."""
    if len(report.sources) != 1:
        return {}
    src = report.sources[0]
    rec = src.config.get("recording") if src.target.get("protocol") == "recording" else None
    if isinstance(rec, dict):
        # `voiceaudit report CALL.wav`: the trace's clock is the file's (sample 0 at 0)
        file = rec.get("file")
        if not isinstance(file, str) or rec.get("agent_track") is not None:
            return {}
        p = Path(file)
        got = _wav_info(p)
        if got is None:
            return {}
        caller = 1 if rec.get("caller") == "right" else 0
        return {p.name: CallFile(p, _href(p), *got, t0_ns=0, caller=caller)}
    trace = _trace_file(Path(src.path))
    if trace is None or not any(trace.parent.glob("call-*.wav")):
        return {}
    out: dict[str, CallFile] = {}
    for sid, a in _recording_events(trace):
        name, t0 = a.get("path"), a.get("t0_ns")
        if not isinstance(name, str) or type(t0) is not int or sid in out:
            continue
        p = trace.parent / name
        got = _wav_info(p)
        if got is not None:
            out[sid] = CallFile(p, _href(p), *got, t0_ns=t0)
    return out


# --------------------------------------------------------------------------------------
# One turn
# --------------------------------------------------------------------------------------


def _times(t: TurnReport, name: str) -> list[tuple[int, dict[str, Any]]]:
    if t.obs is None:
        return []
    return [(occ[0], occ[2]) for occ in t.obs.marks.get(name, ())]


def _heard_end(t: TurnReport) -> int | None:
    """When the turn's reply was last heard (an estimate from the marks where the trace
    gives no exact one: the playout start plus the reply's audio and its underruns)."""
    stops = [ts for ts, _ in _times(t, "reply.stop")]
    if stops:
        return max(stops)
    ends = [ts for ts, _ in _times(t, "reply.end")]
    best = max(ends) if ends else None
    start = _times(t, "reply.playout_start") or _times(t, AUDIBLE)
    if start and t.obs is not None:
        dur = sum(
            c.samples * 1_000_000_000 // c.rate
            for c in t.obs.chunks
            if c.samples is not None and c.rate
        )
        under = sum(int(a.get("underrun_ns") or 0) for _, a in _times(t, "reply.end"))
        heard = start[0][0] + dur + under
        best = heard if best is None else max(best, heard)
    if best is None:
        audible = t.ledger.times.get(AUDIBLE)
        return audible
    return best


def turn_marks(t: TurnReport) -> list[tuple[str, str, int]]:
    """(kind, label, time) of every mark a turn's strip shows."""
    out: list[tuple[str, str, int]] = []
    times = t.ledger.times
    for m in t.ledger.marks:
        if m.name not in (SPEECH_END, AUDIBLE):
            out.append(("segment", m.name, m.t_ns))
    if SPEECH_END in times:
        out.append(("speech end", SPEECH_END, times[SPEECH_END]))
    elif t.obs is not None and t.obs.first(SPEECH_END) is not None:
        occ = t.obs.first(SPEECH_END)
        assert occ is not None
        out.append(("speech end", SPEECH_END, occ[0]))
    if AUDIBLE in times:
        out.append(("first audible", AUDIBLE, times[AUDIBLE]))
    elif t.obs is not None and t.obs.first(AUDIBLE) is not None:
        occ = t.obs.first(AUDIBLE)
        assert occ is not None
        out.append(("first audible", AUDIBLE, occ[0]))
    for ts, a in _times(t, "reply.stop"):
        what = "barge-in" if a.get("kind") in (None, "interrupt") else str(a.get("kind"))
        onset = a.get("onset_ns")
        if type(onset) is int:
            out.append(("barge-in onset", f"{what} onset", onset))
        out.append(("barge-in stop", f"{what}: reply stopped", ts))
    for ts, _ in _times(t, "reply.cut_in"):
        out.append(("cut-in", "cut-in", ts))
    return out


def _stretch(t: TurnReport, marks: list[tuple[str, str, int]]) -> tuple[int, int] | None:
    ends = [ts for kind, _, ts in marks if kind == "speech end"]
    if not ends:
        return None
    # a cut-in (the agent speaking inside the caller's pause) comes before the speech end
    start = min(ends[0], *(ts for _, _, ts in marks)) - PAD_NS
    last = max([_heard_end(t) or ends[0], *(ts for _, _, ts in marks)])
    end = min(last + PAD_NS, start + MAX_STRETCH_NS)
    return start, end


def _sample(call: CallFile, t_ns: int) -> int:
    k = ((t_ns - call.t0_ns) * call.rate + 500_000_000) // 1_000_000_000
    return max(0, min(call.frames, k))


def read_stretch(call: CallFile, first: int, stop: int) -> npt.NDArray[np.int16]:
    """The file's samples ``[first, stop)``, (frames, channels) int16."""
    with sf.SoundFile(str(call.path)) as f:
        f.seek(first)
        data = f.read(stop - first, dtype="int16", always_2d=True)
    return np.ascontiguousarray(data)


def wav_bytes(samples: npt.NDArray[np.int16], rate: int) -> bytes:
    """A 16-bit PCM WAV of ``samples`` (frames, channels)."""
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _envelope(x: npt.NDArray[np.int16], cols: int) -> tuple[list[float], list[float]]:
    if x.shape[0] == 0:
        return [0.0] * cols, [0.0] * cols
    edges = np.linspace(0, x.shape[0], cols + 1).astype(np.int64)
    lo, hi = [], []
    for a, b in itertools.pairwise(edges):
        seg = x[a : max(b, a + 1)] if a < x.shape[0] else x[-1:]
        lo.append(float(seg.min()) / 32768.0)
        hi.append(float(seg.max()) / 32768.0)
    return lo, hi


def _lane(x: npt.NDArray[np.int16], top: float, height: float, colour: str) -> str:
    cols = WIDTH // 2
    lo, hi = _envelope(x, cols)
    mid, half = top + height / 2, height / 2 * 0.95
    step = WIDTH / cols
    pts = [f"{i * step:.1f},{mid - v * half:.1f}" for i, v in enumerate(hi)]
    pts += [f"{i * step:.1f},{mid - v * half:.1f}" for i, v in reversed(list(enumerate(lo)))]
    return (
        f'<polygon points="{" ".join(pts)}" fill="{colour}" stroke="{colour}" stroke-width="0.5"/>'
    )


def _svg(samples: npt.NDArray[np.int16], call: CallFile, marks: list[StripMark]) -> str:
    lane = (HEIGHT - 10) / 2
    caller = samples[:, call.caller]
    heard = samples[:, 1 - call.caller]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="100%" height="{HEIGHT}" preserveAspectRatio="none" role="img" '
        'aria-label="caller (top) and heard (bottom) waveforms with the turn\'s marks">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fafafa"/>',
        _lane(caller, 0, lane, "#4a7fb5"),
        _lane(heard, lane + 10, lane, "#5a9e5a"),
        f'<line x1="0" x2="{WIDTH}" y1="{lane + 5}" y2="{lane + 5}" stroke="#ddd"/>',
    ]
    for m in marks:
        colour = COLOURS[m.kind]
        dash = ' stroke-dasharray="3,3"' if m.kind == "segment" else ""
        parts.append(
            f'<line x1="{m.x:.2f}" x2="{m.x:.2f}" y1="0" y2="{HEIGHT}" stroke="{colour}" '
            f'stroke-width="{1 if m.kind == "segment" else 2}"{dash}>'
            f"<title>{html.escape(m.label)}</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)


def turn_strip(t: TurnReport, call: CallFile, budget: list[int]) -> Strip | None:
    """The strip of one turn (None when it has no speech end inside the file). ``budget``
    holds the embedded bytes still allowed: the WAV is embedded when it fits, and the
    budget shrinks by its size."""
    raw = turn_marks(t)
    span = _stretch(t, raw)
    if span is None:
        return None
    start_ns, end_ns = span
    first, stop = _sample(call, start_ns), _sample(call, end_ns)
    if stop <= first:
        return None
    # the stretch as the file's samples: the marks are placed on that
    start_ns = call.t0_ns + first * 1_000_000_000 // call.rate
    end_ns = call.t0_ns + stop * 1_000_000_000 // call.rate
    width = end_ns - start_ns
    marks = sorted(
        (
            StripMark(kind, label, ts, (ts - start_ns) * WIDTH / width)
            for kind, label, ts in raw
            if start_ns <= ts <= end_ns
        ),
        key=lambda m: (list(COLOURS).index(m.kind), m.t_ns),
    )
    try:
        samples = read_stretch(call, first, stop)
    except (RuntimeError, OSError, ValueError):
        return None
    wav: bytes | None = None
    size = 44 + samples.size * 2
    if size <= budget[0]:
        wav = wav_bytes(samples, call.rate)
        budget[0] -= len(wav)
    return Strip(
        t, call, start_ns, end_ns, first, stop, tuple(marks), _svg(samples, call, marks), wav
    )


def strips(report: Report, max_embed_bytes: int = MAX_EMBED_BYTES) -> list[Strip]:
    """The strips of the report's first :data:`MAX_STRIP_TURNS` turns that have a
    recording (empty when the report has none)."""
    calls = find_recordings(report)
    if not calls:
        return []
    budget = [max_embed_bytes]
    out: list[Strip] = []
    for t in report.turns:
        if len(out) >= MAX_STRIP_TURNS:
            break
        call = calls.get(t.session)
        if call is None:
            continue
        s = turn_strip(t, call, budget)
        if s is not None:
            out.append(s)
    return out


def audio_html(s: Strip, limit_bytes: int = MAX_EMBED_BYTES) -> str:
    """The player (embedded) or the link, with the stretch's place in the file."""
    where = f"{s.start_s:.3f} s to {s.end_s:.3f} s of {s.call.path.name}"
    if s.wav is not None:
        data = base64.b64encode(s.wav).decode("ascii")
        return (
            f'<audio controls preload="none" src="data:audio/wav;base64,{data}"></audio>'
            f' <span class="dim">{html.escape(where)}</span>'
        )
    return (
        f'<a href="{html.escape(s.link, quote=True)}">{html.escape(s.call.path.name)}'
        f'</a> <span class="dim">{html.escape(where)} (not embedded: the report\'s '
        f"embedded audio would pass {limit_bytes / (1024 * 1024):g} MB)</span>"
    )


def mark_legend(s: Strip) -> str:
    """The marks as text: each one's label and time after the speech end (ms)."""
    origin = next((m.t_ns for m in s.marks if m.kind == "speech end"), s.start_ns)
    items = []
    for m in sorted(s.marks, key=lambda m: m.t_ns):
        colour = COLOURS[m.kind]
        items.append(
            f'<span style="color:{colour}">|</span> {html.escape(m.label)} '
            f"{(m.t_ns - origin) / 1e6:+.1f} ms"
        )
    return " &nbsp; ".join(items)


def env_max_embed_bytes() -> int:
    """:data:`MAX_EMBED_BYTES`, or ``VOICEAUDIT_MAX_EMBED_MB`` (megabytes) when set."""
    v = os.environ.get("VOICEAUDIT_MAX_EMBED_MB")
    if v is None:
        return MAX_EMBED_BYTES
    try:
        return max(0, int(float(v) * 1024 * 1024))
    except ValueError:
        return MAX_EMBED_BYTES


__all__ = [
    "MAX_EMBED_BYTES",
    "MAX_STRIP_TURNS",
    "CallFile",
    "Strip",
    "StripMark",
    "find_recordings",
    "strips",
    "turn_marks",
]
