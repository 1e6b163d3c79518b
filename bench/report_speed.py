"""How long `voiceaudit report` takes on a large trace, against just parsing it.

Writes a synthetic trace of N turns (default 100,000) as `voiceaudit run` writes one
(trace schema version 2): every probe and pipeline mark of the documented vocabulary
once per turn, three transcript partials, and the reply audio as one reply.chunks event
(``--reply-ms`` of audio in ``--chunk-ms`` chunks); with ``--frames``, one input.frames
event with an element per 20 ms of input audio (150 per turn). ``--version 1`` writes
the old layout instead: one reply.chunk event per chunk, one input.frame per frame.
Stage durations vary per turn and 1 % of turns fail, so the statistics have work to do.

Then, in one process, it times:

* parse: reading the file and decoding every line with the stdlib ``json`` module;
* report: ``build_report`` (read, ledgers, findings) plus the statistics and the terminal
  rendering, then the JSON rendering of every turn separately.

    .venv/bin/python bench/report_speed.py [--turns 100000] [--frames] [--chunk-ms 100]
        [--reply-ms 2000] [--decoder auto|json] [--version 1|2] [--dir DIR] [--keep]

A real trace from `voiceaudit run` against the reference pipeline has 20 ms reply chunks
and 20 ms input frames: ``--frames --chunk-ms 20 --reply-ms 4600`` reproduces it.

Goal (issue 5): report <= 3x parse time, and a 100,000-turn report in under 10 s.
CPU times are printed too: on a shared machine they say more than wall-clock times.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

from voiceaudit import trace_io
from voiceaudit.analysis import build_report
from voiceaudit.analysis.synthetic import TurnSpec, write_trace_fast
from voiceaudit.model import SCHEMA_VERSION
from voiceaudit.report import Format, render


def specs(n: int, *, frames: bool, chunk_ms: float, reply_ms: float) -> Iterator[TurnSpec]:
    rng = random.Random(1)
    base = TurnSpec(frames=frames, chunk_ms=chunk_ms, reply_ms=reply_ms)
    for i in range(n):
        if rng.random() < 0.01:
            yield base.with_(ok=False, reason="timeout: no reply audio within 10 s")
            continue
        yield base.with_(
            warmup=i < 2,
            endpointing_ms=round(rng.uniform(200, 700), 3),
            transcription_ms=round(rng.uniform(40, 160), 3),
            first_token_ms=round(rng.lognormvariate(5.0, 0.5), 3),
            aggregation_ms=rng.choice((15.0, 183.0)),
            synthesis_ms=round(rng.uniform(40, 120), 3),
            onset_ms=rng.choice((8.0, 300.0)),
            notify_ms=round(rng.uniform(0.1, 2.0), 3),
        )


class Timer:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        gc.collect()
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c


def parse_all(path: Path) -> int:
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            json.loads(line)
            n += 1
    return n


def row(what: str, t: Timer, parse: Timer) -> None:
    print(
        f"{what:<50} {t.wall:7.2f} s wall {t.wall / parse.wall:5.2f}x   "
        f"{t.cpu:7.2f} s CPU {t.cpu / parse.cpu:5.2f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--frames", action="store_true", help="one input.frame per 20 ms")
    ap.add_argument("--chunk-ms", type=float, default=100.0, help="reply audio per reply.chunk")
    ap.add_argument("--reply-ms", type=float, default=2000.0, help="reply audio per turn")
    ap.add_argument("--decoder", choices=("auto", "json"), default="auto",
                    help="json: never orjson, even when installed")  # fmt: skip
    ap.add_argument("--version", type=int, choices=(1, 2), default=SCHEMA_VERSION,
                    help="trace schema version (1: an event per chunk and frame)")  # fmt: skip
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write the trace")
    ap.add_argument("--keep", action="store_true", help="keep the trace (and reuse it)")
    args = ap.parse_args()
    if args.decoder == "json":
        trace_io._FAST_DECODE = trace_io._loads
    decoder = "orjson" if trace_io._FAST_DECODE is not trace_io._loads else "json"

    frames = "-frames" if args.frames else ""
    path = args.dir / (
        f"voiceaudit-bench-v{args.version}-{args.turns}{frames}-{args.chunk_ms:g}-"
        f"{args.reply_ms:g}.jsonl"
    )
    if not (args.keep and path.exists()):
        path.unlink(missing_ok=True)
        t = time.perf_counter()
        turns = specs(
            args.turns, frames=args.frames, chunk_ms=args.chunk_ms, reply_ms=args.reply_ms
        )
        write_trace_fast(path, turns, sessions=8, version=args.version)
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    size = path.stat().st_size

    with Timer() as parse:
        lines = parse_all(path)
    print(
        f"trace: {args.turns:,} turns, {lines:,} lines ({lines / args.turns:.0f} per turn), "
        f"{size / 1e6:.0f} MB; report decoder: {decoder}"
    )
    row("parse (stdlib json, every line)", parse, parse)

    with Timer() as build:
        report = build_report([path])
    with Timer() as term:
        text = render(report, Format.TERMINAL)
    whole = Timer()
    whole.wall, whole.cpu = build.wall + term.wall, build.cpu + term.cpu
    row("report: build (read, ledgers, findings)", build, parse)
    row("report: statistics + terminal rendering", term, parse)
    row("report (total)", whole, parse)
    with Timer() as js:
        out = render(report, Format.JSON)
    row(f"JSON of all {len(report.turns):,} turns ({len(out) / 1e6:.0f} MB)", js, parse)
    v2v = report.summary["voice_to_voice"]
    print(
        f"check: {report.counts['in_statistics']:,} turns in the statistics, "
        f"voice-to-voice p50 {v2v.p50:.1f} ms, {len(report.findings)} finding kinds, "
        f"terminal report {len(text.splitlines())} lines"
    )
    ratio = whole.cpu / parse.cpu
    print(
        f"goal: report <= 3x parse: {'yes' if ratio <= 3 else 'NO'} ({ratio:.2f}x CPU); "
        f"{args.turns:,}-turn report under 10 s: {'yes' if whole.wall < 10 else 'NO'} "
        f"({whole.wall:.2f} s wall, {whole.cpu:.2f} s CPU)"
    )
    if not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
