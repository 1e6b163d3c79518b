"""How long `voiceaudit report` takes on a large trace, against just parsing it.

Writes a synthetic trace of N turns (default 100,000) shaped like a real run: every
probe and pipeline event of the documented vocabulary once per turn (the marks),
transcript partials, and the reply audio as reply.chunk events; optionally one
input.frame event per 20 ms of input audio (``--frames``: about 150 per turn here).
Stage durations vary per turn and 1 % of turns fail, so the statistics have work to do.

Then, in one process, it times:

* parse: reading the file and decoding every line with the stdlib ``json`` module;
* report: ``build_report`` (read, ledgers, findings, statistics) plus rendering the
  terminal report, then the JSON report separately.

    .venv/bin/python bench/report_speed.py [--turns 100000] [--frames] [--chunk-ms 100]
        [--dir DIR] [--keep]

Goal (issue 5): report <= 3x parse time, and a 100,000-turn report in under 10 s.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

from voiceaudit.analysis import build_report
from voiceaudit.analysis.synthetic import TurnSpec, write_trace_fast
from voiceaudit.report import Format, render


def specs(n: int, *, frames: bool, chunk_ms: float, seed: int = 1) -> Iterator[TurnSpec]:
    rng = random.Random(seed)
    base = TurnSpec(frames=frames, chunk_ms=chunk_ms)
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


def time_parse(path: Path) -> tuple[float, int]:
    t = time.perf_counter()
    n = 0
    with path.open(encoding="utf-8") as f:
        for line in f:
            json.loads(line)
            n += 1
    return time.perf_counter() - t, n


def row(what: str, seconds: float, parse_s: float) -> None:
    print(f"{what:<52} {seconds:7.2f} s  {seconds / parse_s:5.2f}x parse")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--turns", type=int, default=100_000)
    ap.add_argument("--frames", action="store_true", help="write one input.frame per 20 ms")
    ap.add_argument("--chunk-ms", type=float, default=100.0, help="reply audio per reply.chunk")
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where to write the trace")
    ap.add_argument("--keep", action="store_true", help="reuse the trace if it exists")
    args = ap.parse_args()

    name = (
        f"voiceaudit-bench-{args.turns}{'-frames' if args.frames else ''}-{args.chunk_ms:g}.jsonl"
    )
    path = args.dir / name
    if not (args.keep and path.exists()):
        path.unlink(missing_ok=True)
        t = time.perf_counter()
        write_trace_fast(
            path, specs(args.turns, frames=args.frames, chunk_ms=args.chunk_ms), sessions=8
        )
        print(f"wrote {path} in {time.perf_counter() - t:.1f} s")
    size = path.stat().st_size

    gc.collect()
    parse_s, lines = time_parse(path)
    per_turn = lines / args.turns
    print(
        f"trace: {args.turns:,} turns, {lines:,} lines ({per_turn:.0f} per turn), "
        f"{size / 1e6:.0f} MB"
    )
    row("parse (stdlib json, every line)", parse_s, parse_s)

    gc.collect()
    t = time.perf_counter()
    report = build_report([path])
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    text = render(report, Format.TERMINAL)
    term_s = time.perf_counter() - t
    row(f"report (build {build_s:.2f} s + terminal {term_s:.2f} s)", build_s + term_s, parse_s)
    t = time.perf_counter()
    js = render(report, Format.JSON)
    json_s = time.perf_counter() - t
    row(f"  JSON of all {len(report.turns):,} turns ({len(js) / 1e6:.0f} MB)", json_s, parse_s)
    row("report + JSON", build_s + term_s + json_s, parse_s)
    v2v = report.summary["voice_to_voice"]
    print(
        f"check: {report.counts['in_statistics']:,} turns in the statistics, "
        f"voice-to-voice p50 {v2v.p50:.1f} ms, {len(report.findings)} finding kinds, "
        f"terminal report {len(text.splitlines())} lines"
    )
    if not args.keep:
        path.unlink()


if __name__ == "__main__":
    main()
