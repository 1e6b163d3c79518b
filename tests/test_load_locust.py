"""voiceaudit sessions as Locust users (voiceaudit.load.locust), all real: a Locust master
and two workers (real processes on loopback, headless) drive sessions against the real
reference pipeline (``voiceaudit serve`` in a subprocess); Locust's own CSV statistics
carry the voice-to-voice and first-byte entries, and ``voiceaudit report DIR`` (the CLI)
merges the workers' traces into one report. A worker killed with SIGKILL mid-run leaves
its finished turns readable, and the report says which trace was cut short.

The reference pipeline holds about 4 concurrent sessions on this 2-core machine
(docs/reference-pipeline.md, capacity), so the runs use a handful of users, not hundreds:
the point is the plumbing (events, statistics, traces, merging), not the pipeline's
capacity. Nothing here bounds a latency: counts and structure only.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import free_port, serve

# Only look for it: importing locust here would gevent-monkey-patch this whole pytest
# process (threads become greenlets), breaking every later test that uses threads.
if importlib.util.find_spec("locust") is None:
    pytest.skip(
        "the 'load' extra is not installed (make setup installs it)", allow_module_level=True
    )

pytestmark = pytest.mark.slow

LEADING_SILENCE_MS = 200
LOCUSTFILE = "from voiceaudit.load.locust import VoiceauditUser  # noqa: F401\n"


@pytest.fixture(scope="module")
def reference() -> Iterator[str]:
    """The reference pipeline's Realtime URL, served by ``voiceaudit serve``, with 200 ms
    of silence before every reply's speech: voice-to-voice (first audible sample) is then
    at least 200 ms more than first-byte (first reply byte) in every turn, by the audio."""
    with serve(
        "--inject",
        f"leading-silence={LEADING_SILENCE_MS}ms",
        asr_workers=None,
        timeout=120,
        stop_s=30,
    ) as server:
        yield server.realtime


class Swarm:
    """A Locust master and its workers, as processes."""

    def __init__(self, tmp: Path, target: str, *, users: int, seconds: int, workers: int = 2):
        self.tmp = tmp
        self.out = tmp / "traces"
        self.csv = tmp / "stats"
        locustfile = tmp / "locustfile.py"
        locustfile.write_text(LOCUSTFILE)
        port = free_port()
        common = [sys.executable, "-m", "locust", "-f", str(locustfile)]
        self.master = self._spawn(
            "master",
            [*common, "--master", "--headless", "-u", str(users), "-r", str(users),
             "-t", f"{seconds}s", "--expect-workers", str(workers),
             "--master-bind-host", "127.0.0.1", "--master-bind-port", str(port),
             "--csv", str(self.csv), "--only-summary",
             "--va-target", target, "--va-out", str(self.out), "--va-timeout", "25",
             "--va-gap-ms", "300"],
        )  # fmt: skip
        self.workers = [
            self._spawn(
                f"worker{i}",
                [*common, "--worker", "--master-host", "127.0.0.1", "--master-port", str(port)],
            )
            for i in range(workers)
        ]

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[str]:
        log = open(self.tmp / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=self.tmp)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text()

    def wait(self, timeout: float = 240) -> int:
        try:
            rc = self.master.wait(timeout=timeout)
            for w in self.workers:
                w.wait(timeout=60)
        finally:
            for p in [self.master, *self.workers]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return rc

    def stats(self) -> dict[str, dict[str, str]]:
        with open(f"{self.csv}_stats.csv", newline="") as f:
            return {row["Name"]: row for row in csv.DictReader(f)}

    def failures(self) -> list[dict[str, str]]:
        with open(f"{self.csv}_failures.csv", newline="") as f:
            return list(csv.DictReader(f))


def _turn_ends(path: Path) -> list[dict[str, Any]]:
    """The turn.end records on disk (a cut-short last line is not a record)."""
    out = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("type") == "event" and rec.get("name") == "turn.end":
            out.append(rec)
    return out


def _report(directory: Path) -> tuple[dict[str, Any], str]:
    run = subprocess.run(
        [sys.executable, "-m", "voiceaudit", "report", str(directory), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return json.loads(run.stdout), run.stderr


#: a target nothing listens on
NOWHERE = "ws://127.0.0.1:9/v1/realtime"


def _locust_headless(
    tmp_path: Path, *args: str, exit_codes: tuple[int, ...], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``locust -f locustfile.py --headless ARGS`` in ``tmp_path`` (voiceaudit's locustfile
    written there), its output captured; it must exit with one of ``exit_codes`` and
    print no traceback."""
    (tmp_path / "locustfile.py").write_text(LOCUSTFILE)
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", "locustfile.py", "--headless", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert run.returncode in exit_codes, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    return run


def _error_lines(run: subprocess.CompletedProcess[str]) -> list[str]:
    """The ``error: voiceaudit:`` lines of its stderr."""
    return [ln for ln in run.stderr.splitlines() if "error: voiceaudit:" in ln]


def _no_tracebacks(swarm: Swarm, names: list[str]) -> None:
    for name in names:
        text = swarm.log(name)
        assert "Traceback" not in text, f"{name}:\n{text[-3000:]}"


def test_master_two_workers_stats_and_one_report(tmp_path: Path, reference: str) -> None:
    users = 6
    swarm = Swarm(tmp_path, reference, users=users, seconds=40)
    rc = swarm.wait()
    # Locust exits 1 when any request failed (a turn that timed out on a busy machine)
    assert rc in (0, 1), swarm.log("master")
    _no_tracebacks(swarm, ["master", "worker0", "worker1"])

    # Each worker wrote its traces under its own directory: DIR/w0, DIR/w1.
    workers = sorted(p.name for p in swarm.out.iterdir())
    assert workers == ["w0", "w1"], workers
    traces = sorted(swarm.out.rglob("*.jsonl"))
    assert len(traces) >= users, traces  # a trace per call, a call (at least) per user
    ends = {t: _turn_ends(t) for t in traces}
    finished = sum(len(v) for v in ends.values())
    assert finished >= users  # every user got through at least one turn

    report, _ = _report(swarm.out)
    # One report over both workers: every session of both, every finished turn.
    assert len(report["sources"]) == users
    assert all(s["complete"] for s in report["sources"]), report["sources"]
    sessions = {t["session"] for t in report["turns"]}
    on_disk = {e["session"] for v in ends.values() for e in v}
    assert sessions == on_disk
    assert {s.split("-")[0] for s in sessions} == {"w0", "w1"}
    assert len({s.rsplit("-", 1)[0] for s in sessions}) == users  # w<i>-u<n>: unique
    assert report["counts"]["turns"] == finished
    assert len(report["turns"]) == finished

    # Locust's own statistics (the CSV the web UI's figures come from).
    stats = swarm.stats()
    assert "voice-to-voice" in stats, stats.keys()
    v2v = stats["voice-to-voice"]
    assert v2v["Type"] == "voiceaudit"
    requests, failures = int(v2v["Request Count"]), int(v2v["Failure Count"])
    ok_locust = requests - failures
    # Turns the report counts: ok ones, and failed ones other than those cut by the stop.
    ok_report = report["counts"]["ok"]
    failed_report = [t for t in report["failed_turns"] if t["reason"] != "interrupted"]
    # Locust saw no turn the traces lack; it may miss the last seconds' turns of a worker
    # whose final statistics report came after the master stopped listening.
    assert 1 <= requests <= ok_report + len(failed_report)
    assert ok_locust <= ok_report
    assert failures <= len(failed_report)
    assert requests >= (ok_report + len(failed_report)) // 2
    if ok_report:
        assert "first-byte" in stats
        fb = stats["first-byte"]
        assert int(fb["Failure Count"]) == 0
        assert int(fb["Request Count"]) >= ok_locust
        # Two measures, not one figure twice: every ok turn's audible reply starts after
        # the injected silence that follows its first byte.
        if ok_locust:
            fb_min = float(fb["Min Response Time"])
            assert float(v2v["Min Response Time"]) >= fb_min + LEADING_SILENCE_MS - 1
    for row in swarm.failures():
        assert row["Name"] == "voice-to-voice"
        assert row["Error"] and "TurnFailed" not in row["Error"]


def test_worker_killed_mid_run_leaves_its_finished_turns(tmp_path: Path, reference: str) -> None:
    # The run time only bounds the test: the master is stopped once the worker is killed.
    swarm = Swarm(tmp_path, reference, users=4, seconds=150)
    victim: subprocess.Popen[str] | None = None
    seen: dict[Path, int] = {}
    try:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline:
            time.sleep(0.2)
            for trace in sorted(swarm.out.rglob("*.jsonl")) if swarm.out.exists() else []:
                if _turn_ends(trace):
                    header = json.loads(trace.read_text().splitlines()[0])
                    pid = header["config"]["locust"]["pid"]
                    victim = next(w for w in swarm.workers if w.pid == pid)
                    break
        assert victim is not None, "no worker finished a turn"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        killed_dir = trace.parent
        seen = {t: len(_turn_ends(t)) for t in killed_dir.glob("*.jsonl")}
        time.sleep(2)  # the survivor runs on
        swarm.master.send_signal(signal.SIGTERM)  # Locust's master shuts down as at its end
    finally:
        rc = swarm.wait()
    assert victim.returncode == -signal.SIGKILL
    assert rc in (0, 1), swarm.log("master")
    _no_tracebacks(swarm, ["master", "worker0", "worker1"])

    report, stderr = _report(swarm.out)
    cut = {Path(s["path"]).resolve() for s in report["sources"] if not s["complete"]}
    assert cut == {t.resolve() for t in seen}, (cut, seen)
    # The report says so, naming each trace that lost its closing record ...
    for t in seen:
        assert any(
            str(t.name) in w and "no closing record" in w and "finished turns are kept" in w
            for w in report["warnings"]
        ), report["warnings"]
    assert "no closing record" in stderr
    # ... and uses every turn the killed worker finished.
    prefix = killed_dir.name + "-"
    killed_turns = [t for t in report["turns"] if t["session"].startswith(prefix)]
    assert len(killed_turns) == sum(seen.values()) >= 1
    # The surviving worker's traces are whole.
    assert all(s["complete"] for s in report["sources"] if Path(s["path"]).resolve() not in cut)


def test_bad_arguments_one_line_exit_2(tmp_path: Path) -> None:
    args = ("-u", "1", "-t", "1s", "--va-target", NOWHERE, "--va-protocol", "nope")
    run = _locust_headless(tmp_path, *args, exit_codes=(2,))
    lines = _error_lines(run)
    assert len(lines) == 1 and "unknown protocol 'nope'" in lines[0], run.stderr


def test_api_key_is_an_environment_variable_name(tmp_path: Path) -> None:
    args = ("-u", "1", "-t", "1s", "--va-target", NOWHERE, "--va-api-key-env", "sk-not-a-name/123")
    run = _locust_headless(tmp_path, *args, exit_codes=(2,))
    assert "NAME of an environment variable" in run.stderr


def test_import_without_locust_says_which_extra() -> None:
    code = (
        "import sys; sys.modules['locust'] = None\n"
        "try:\n"
        "    import voiceaudit.load.locust\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, getattr(exc, 'exit_code', None), exc, sep='|')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    name, code_, message = run.stdout.strip().split("|")
    assert name == "LocustMissing"
    assert code_ == "7"  # ExitCode.ENVIRONMENT: an optional extra the machine lacks
    assert "\n" not in message
    assert "'locust' is not installed" in message and "voiceaudit[load]" in message


def test_audio_missing_on_a_worker_one_line(tmp_path: Path) -> None:
    """An argument that fails only where users run (here: the audio file): one line, the
    documented exit code (3, an input file), no traceback, no users."""
    run = _locust_headless(
        tmp_path,
        *(
            "-u",
            "2",
            "-t",
            "3s",
            "--va-target",
            NOWHERE,
            "--va-audio",
            str(tmp_path / "missing.wav"),
        ),
        *("--va-out", str(tmp_path / "traces")),
        exit_codes=(3,),
    )
    lines = _error_lines(run)
    assert len(lines) == 1 and "missing.wav: no such file" in lines[0], run.stderr
    assert not list(tmp_path.rglob("*.jsonl"))


def test_api_key_never_reaches_a_trace_or_log(tmp_path: Path, reference: str) -> None:
    key = "sk-voiceaudit-locust-test-0123456789abcdef"
    out = tmp_path / "traces"
    run = _locust_headless(
        tmp_path,
        *("-u", "1", "-t", "6s", "--va-target", reference, "--va-api-key-env", "VA_TEST_KEY"),
        *("--va-out", str(out), "--csv", str(tmp_path / "stats"), "--loglevel", "DEBUG"),
        exit_codes=(0, 1),
        env={**os.environ, "VA_TEST_KEY": key},
    )
    assert key not in run.stdout + run.stderr
    (trace,) = out.rglob("*.jsonl")
    text = trace.read_text()
    assert '"session.connected"' in text  # the key went to the target on a real connection
    header = json.loads(text.splitlines()[0])
    assert header["target"]["api_key_env"] == "VA_TEST_KEY"
    for f in tmp_path.rglob("*"):
        if f.is_file():
            assert key not in f.read_text(errors="replace"), f
