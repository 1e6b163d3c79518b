"""How fast `voiceaudit.analysis.recording.read_call` reads a long call recording.

Builds a long stereo 16 kHz 16-bit WAV (default one hour; left: the caller, right: the
agent) from real speech: the LibriVox clips in ``../shared/realdata/speech`` (or under
``$VOICEAUDIT_REALDATA``) laid out as a call with a greeting, turns with gaps, a cut-in, a
barge-in, dead air and a long wait (tests/test_recording.py's call), repeated; with
``--snr DB`` seeded pink noise is added to both channels (``--noisy caller``: the
caller's only, as when a caller phones from the street and the agent's audio is clean).
Then it runs the analysis in a fresh Python process (start-up and imports included, as
``voiceaudit report CALL.wav`` would pay them) and prints the wall-clock and CPU time,
the ratio to real time (goal: >= 360x, one hour in 10 s), the turns found and the peak
memory of that process.

    .venv/bin/python bench/recording_speed.py [--minutes 60] [--snr none|10]
        [--noisy both|caller] [--dir DIR] [--wav PATH] [--noisy-rate HZ]

``--wav PATH`` keeps the built call there and, when the file exists already, reads it
instead of building it again (the caller must give the same ``--minutes``, ``--snr``
and ``--noisy`` it was built with: they only name it in the output).
``--noisy-rate HZ`` runs the analysis with
``voiceaudit.analysis.recording.NOISY_RATE`` set to HZ (the rate the noise-robust
detector reads a noisy channel at; default: the module's).

CPU time says more than wall-clock time on a shared machine: the ratio is printed for
both.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
RATE = 16_000

_CHILD = """
import json, sys, resource
import voiceaudit.analysis.recording as rec
if len(sys.argv) > 2:
    rec.NOISY_RATE = int(sys.argv[2])
t = rec.read_call(sys.argv[1])
ends = [e for e in t.events if e.name == "turn.end"]
print(json.dumps({
    "turns": len(ends),
    "ok": sum(1 for e in ends if e.attrs.get("ok")),
    "detector": t.header.config["recording"]["detector"],
    "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
}))
"""


def build(
    path: Path, minutes: float, snr: float | None, sides: str = "both", *, write: bool = True
) -> tuple[float, int]:
    """Write the call (unless not ``write``); (its duration in s, the turns laid out)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import realdata_path  # type: ignore[import-not-found]
    from test_recording import build_call, with_noise  # type: ignore[import-not-found]

    call = build_call(realdata_path() / "speech")
    one = np.stack([call.caller, call.agent], axis=1)
    reps = max(1, round(minutes * 60 * RATE / one.shape[0]))
    if not write:
        return reps * one.shape[0] / RATE, reps * len(call.latencies_s)
    rng = np.random.default_rng(7)
    with sf.SoundFile(str(path), "w", RATE, 2, subtype="PCM_16") as f:
        for k in range(reps):
            block = one
            if snr is not None:
                agent = one[:, 1]
                if sides == "both":
                    agent = with_noise(agent, snr, int(rng.integers(1 << 30)))
                block = np.stack(
                    [with_noise(one[:, 0], snr, int(rng.integers(1 << 30))), agent], axis=1
                )
            f.write(block)
            del k
    return reps * one.shape[0] / RATE, reps * len(call.latencies_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--snr", default="none", help="pink noise SNR in dB, or none")
    ap.add_argument(
        "--noisy", choices=("both", "caller"), default="both", help="which sides get the noise"
    )
    ap.add_argument("--dir", type=Path, default=None, help="where to write the WAV")
    ap.add_argument("--wav", type=Path, default=None, help="keep the WAV here; reuse it if there")
    ap.add_argument("--noisy-rate", type=int, default=None, help="NOISY_RATE for the analysis")
    args = ap.parse_args()
    snr = None if args.snr == "none" else float(args.snr)
    tmp = None
    if args.wav is None:
        tmp = Path(tempfile.mkdtemp(dir=args.dir))
        wav = tmp / "call.wav"
    else:
        wav = args.wav
    reuse = args.wav is not None and wav.exists()
    t0 = time.perf_counter()
    duration, laid = build(wav, args.minutes, snr, args.noisy, write=not reuse)
    print(
        f"{'reused' if reuse else 'built'} {duration / 60:.1f} min stereo {RATE} Hz, "
        f"snr {args.snr} "
        f"({args.noisy if snr is not None else 'no noise'}), "
        f"{laid} turns laid out, in {time.perf_counter() - t0:.1f} s"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(wav),
            *([] if args.noisy_rate is None else [str(args.noisy_rate)]),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"read_call (fresh process, start-up included): {res['turns']} turns "
        f"({res['ok']} ok), detectors {res['detector']}"
        + ("" if args.noisy_rate is None else f", NOISY_RATE {args.noisy_rate}")
    )
    print(
        f"wall {wall:.2f} s = {duration / wall:.0f}x real time; cpu {cpu:.2f} s = "
        f"{duration / cpu:.0f}x real time (goal >= 360x)"
    )
    print(f"peak RSS {res['maxrss_kib'] / 1024:.0f} MiB")
    if tmp is not None:
        wav.unlink()
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
