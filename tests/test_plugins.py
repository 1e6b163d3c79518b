"""Target plugins: a package installed with pip adds a protocol through the entry-point group
``voiceaudit.targets``, and voiceaudit lists it and runs it like a built-in.

The example plugin (examples/voiceaudit-echo-target) is really installed: ``pip install
--no-deps --no-build-isolation --no-index --target DIR`` of a copy of it (its build
backend is its own, standard library only, so this works offline with the venv as it is),
and DIR is put on PYTHONPATH of the ``voiceaudit`` subprocesses. Its echo server runs as a
subprocess too and records, per turn, when it handed each reply frame to its socket: the
voice-to-voice the probe measures through the plugin is checked against that truth, with a
known delay injected in the server.

Broken, shadowing and duplicate plugins are installed as what pip leaves behind: a
``.dist-info`` directory with an ``entry_points.txt``.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from voiceaudit.model import unbatch
from voiceaudit.targets import registry
from voiceaudit.trace_io import read_trace

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "voiceaudit-echo-target"
MS = 1_000_000


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, installed by pip into a directory of its own."""
    base = tmp_path_factory.mktemp("plugin")
    src = base / "src"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = base / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
         "--no-index", "--disable-pip-version-check", "--quiet", "--target", str(target),
         str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (target / "voiceaudit_echo_target-0.1.0.dist-info" / "entry_points.txt").exists()
    return target


def _env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    env["COLUMNS"] = "200"
    return env


def voiceaudit(*args: str, paths: tuple[Path, ...] = (), timeout: float = 300) -> Any:
    """``python -m voiceaudit ARGS`` with ``paths`` on PYTHONPATH."""
    return subprocess.run(
        [sys.executable, "-m", "voiceaudit", *args],
        capture_output=True, text=True, env=_env(*paths), timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def fake_dist(base: Path, name: str, entry_points: str) -> Path:
    """What pip leaves for an installed distribution: ``NAME-1.0.dist-info`` with METADATA
    and ``entry_points.txt``; returns ``base`` (the directory to put on the path)."""
    info = base / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    return base


# --- the example plugin, installed ----------------------------------------------------


def test_the_installed_plugin_is_listed_with_its_options(plugin_dir: Path) -> None:
    text = voiceaudit("targets", paths=(plugin_dir,))
    assert text.returncode == 0, text.stderr
    assert "Traceback" not in text.stderr
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("echo-plugin "))
    assert "[websocket] plugin example plugin" in line
    listed = voiceaudit("targets", "--json", paths=(plugin_dir,))
    infos = {i["name"]: i for i in json.loads(listed.stdout)}
    assert set(registry.BUILTINS) < set(infos)
    echo = infos["echo-plugin"]
    assert echo["source"] == "plugin" and echo["available"]
    assert echo["distribution"] == "voiceaudit-echo-target 0.1.0"
    assert echo["group"] == "voiceaudit.targets"
    assert echo["spec"] == "voiceaudit_echo_target:EchoTarget"
    assert set(echo["options"]) == {"rate", "commit"}
    one = voiceaudit("targets", "echo-plugin", paths=(plugin_dir,))
    assert one.returncode == 0
    assert "voiceaudit-echo-target 0.1.0" in one.stdout
    assert any(ln.split()[:1] == ["commit"] for ln in one.stdout.splitlines())
    # without the package on the path, the protocol is not there
    bare = voiceaudit("targets", "echo-plugin")
    assert bare.returncode == 2 and "unknown protocol 'echo-plugin'" in bare.stderr


class EchoServer:
    """``python -m voiceaudit_echo_target.server`` as a subprocess."""

    def __init__(self, plugin: Path, truth: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "voiceaudit_echo_target.server", "--truth", str(truth), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(plugin),
        )  # fmt: skip
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 60
        self.url = ""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if sel.select(timeout=0.2):
                line = self.proc.stdout.readline()
                if line.startswith("echo-server listening "):
                    self.url = line.split()[-1]
                    break
        assert self.url, "the echo server did not start"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def echo_server(plugin_dir: Path, tmp_path: Path) -> Iterator[Any]:
    servers: list[EchoServer] = []

    def start(*args: str) -> EchoServer:
        s = EchoServer(plugin_dir, tmp_path / f"truth{len(servers)}.jsonl", *args)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


UTTERANCES = ("01_weather.wav", "03_lights.wav", "06_thanks.wav")
DELAY_MS = 300


def test_a_run_through_the_plugin_recovers_the_servers_truth(
    plugin_dir: Path, echo_server: Any, tmp_path: Path
) -> None:
    """Three turns (about 12 s of real time: the speech is replayed and echoed at pace)."""
    from voiceaudit.data import bundled_dir

    server = echo_server("--delay-ms", str(DELAY_MS))
    audio = [str(bundled_dir() / u) for u in UTTERANCES]
    out = tmp_path / "run"
    proc = voiceaudit(
        "run", *audio, "--target", server.url, "--protocol", "echo-plugin",
        "-o", "rate=16000", "--out", str(out), paths=(plugin_dir,),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    tr = read_trace(out / "trace.jsonl")
    truth = [json.loads(ln) for ln in (tmp_path / "truth0.jsonl").read_text().splitlines()]
    finished = tr.finished_turns()
    assert len(finished) == len(UTTERANCES) == len(truth)
    errors = []
    for (session, turn), record in zip(finished, truth, strict=True):
        evs: dict[str, Any] = {}
        for e in sorted(
            (u for e in tr.turn_events(session, turn) for u in unbatch(e)), key=lambda e: e.t_ns
        ):
            evs.setdefault(e.name, e)
        end = evs["turn.end"].attrs
        assert end["ok"], end
        # the plugin's marks are in the trace as a built-in's are
        assert {"committed", "response.created", "response.done"} <= set(evs)
        onset = evs["reply.audible"].attrs["sample"]
        frame, rate = record["frame_samples"], record["rate"]
        j = onset // frame
        heard = record["audio_sent_ns"][j] + (onset - j * frame) * 1_000_000_000 // rate
        speech_end = evs["input.speech_end"].t_ns
        truth_v2v = heard - speech_end
        measured = end["voice_to_voice_ns"]
        assert measured == evs["reply.audible"].t_ns - speech_end
        # the injected delay is in the truth and in the figure (never less)
        assert truth_v2v >= DELAY_MS * MS and measured >= DELAY_MS * MS
        errors.append(measured - truth_v2v)
    print("probe - server truth (ms):", [round(e / MS, 3) for e in errors])
    # a reply frame cannot arrive before the server sent it; loopback adds a little
    assert min(errors) > -1 * MS, errors
    assert sorted(errors)[len(errors) // 2] <= 5 * MS, [e / MS for e in errors]
    header = json.loads((out / "trace.jsonl").read_text().splitlines()[0])
    assert header["target"]["protocol"] == "echo-plugin"
    assert header["target"]["path"] == "websocket"


def test_a_plugin_option_error_is_a_usage_error(plugin_dir: Path, echo_server: Any) -> None:
    server = echo_server()
    bad = voiceaudit(
        "run", "--target", server.url, "--protocol", "echo-plugin", "-o", "speed=2",
        "--out", "/nonexistent/never", paths=(plugin_dir,),
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr
    assert "unknown target option 'speed' for echo-plugin" in bad.stderr
    assert "known: rate, commit" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_a_plugin_target_error_fails_the_turn_with_the_reason(
    plugin_dir: Path, echo_server: Any, tmp_path: Path
) -> None:
    from voiceaudit.data import bundled_dir

    server = echo_server("--error")
    out = tmp_path / "run"
    proc = voiceaudit(
        "run", str(bundled_dir() / "06_thanks.wav"), "--target", server.url,
        "--protocol", "echo-plugin", "--out", str(out), paths=(plugin_dir,),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # every turn failed
    assert "Traceback" not in proc.stderr
    ends = [e for e in read_trace(out / "trace.jsonl").events if e.name == "turn.end"]
    assert ends and not any(e.attrs["ok"] for e in ends)
    assert any("target error: echo refused (--error)" in json.dumps(e.attrs) for e in ends)


# --- broken, shadowing and duplicate plugins -----------------------------------------


def test_a_broken_plugin_is_one_warning_line_never_a_traceback(tmp_path: Path) -> None:
    site = fake_dist(
        tmp_path / "site", "broken-plugin",
        "[voiceaudit.targets]\nbroken = no_such_module_anywhere:Target\n"
        "notatarget = json:dumps\n",
    )  # fmt: skip
    listed = voiceaudit("targets", paths=(site,))
    assert listed.returncode == 0, listed.stderr
    assert "Traceback" not in listed.stderr
    warnings = [ln for ln in listed.stderr.splitlines() if ln.startswith("warning: target")]
    assert len(warnings) == 2, listed.stderr
    assert any(
        ln.startswith("warning: target plugin broken-plugin 1.0 (no_such_module_anywhere:Target)")
        and "failed to load: ModuleNotFoundError" in ln
        for ln in warnings
    ), warnings
    assert any("json:dumps is not a voiceaudit Target subclass" in ln for ln in warnings)
    rows = {ln.split()[0]: ln for ln in listed.stdout.splitlines() if ln and ln[0] != " "}
    assert "plugin unavailable: ModuleNotFoundError" in rows["broken"]
    assert "realtime" in rows  # the rest is listed as ever
    run = voiceaudit("run", "--target", "ws://127.0.0.1:9/x", "--protocol", "broken", paths=(site,))
    assert run.returncode == 2
    assert "protocol 'broken' is unavailable: ModuleNotFoundError" in run.stderr
    assert "Traceback" not in run.stderr


def test_a_plugin_cannot_shadow_a_built_in_silently(
    tmp_path: Path, plugin_dir: Path, echo_server: Any
) -> None:
    site = fake_dist(
        tmp_path / "site", "sneaky",
        "[voiceaudit.targets]\nrealtime = voiceaudit_echo_target:EchoTarget\n",
    )  # fmt: skip
    one = voiceaudit("targets", "realtime", "--json", paths=(site, plugin_dir))
    assert one.returncode == 0
    info = json.loads(one.stdout)
    assert info["source"] == "built-in"
    assert info["spec"] == "voiceaudit.targets.realtime:RealtimeTarget"
    assert info["ignored"] == [
        "plugin sneaky 1.0 (voiceaudit_echo_target:EchoTarget) is not used: "
        "'realtime' is a built-in protocol"
    ]
    said = [ln for ln in one.stderr.splitlines() if ln.startswith("warning: target")]
    assert said == ["warning: target " + info["ignored"][0]], one.stderr


def test_duplicates_and_the_legacy_group(tmp_path: Path, plugin_dir: Path) -> None:
    """The ``.v1`` group is still read; a second package claiming a name is named, not used;
    the same entry in both groups (a package keeping compatibility) is one protocol."""
    site = tmp_path / "site"
    fake_dist(
        site, "old-style", "[voiceaudit.targets.v1]\nold-echo = voiceaudit_echo_target:EchoTarget\n"
    )
    fake_dist(
        site, "both-groups",
        "[voiceaudit.targets]\nboth = voiceaudit_echo_target:EchoTarget\n"
        "[voiceaudit.targets.v1]\nboth = voiceaudit_echo_target:EchoTarget\n",
    )  # fmt: skip
    fake_dist(
        site,
        "copycat",
        "[voiceaudit.targets.v1]\necho-plugin = voiceaudit_echo_target:EchoSession\n",
    )
    listed = voiceaudit("targets", "--json", paths=(site, plugin_dir))
    assert listed.returncode == 0, listed.stderr
    infos = {i["name"]: i for i in json.loads(listed.stdout)}
    assert infos["old-echo"]["group"] == "voiceaudit.targets.v1" and infos["old-echo"]["available"]
    assert infos["both"]["group"] == "voiceaudit.targets" and "ignored" not in infos["both"]
    echo = infos["echo-plugin"]
    assert echo["distribution"] == "voiceaudit-echo-target 0.1.0" and echo["available"]
    assert echo["ignored"] == [
        "plugin copycat 1.0 (voiceaudit_echo_target:EchoSession) is not used: "
        "plugin voiceaudit-echo-target 0.1.0 (voiceaudit_echo_target:EchoTarget) has the name "
        "'echo-plugin'"
    ]
    said = [ln for ln in listed.stderr.splitlines() if ln.startswith("warning: target")]
    assert said == ["warning: target " + echo["ignored"][0]], listed.stderr


def test_unavailable_built_ins_are_listed_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built-in whose module is missing (or broken) does not break the listing."""
    monkeypatch.setitem(registry.BUILTINS, "missing", "voiceaudit.targets.not_written_yet:X")
    monkeypatch.setitem(registry.BUILTINS, "wrong", "voiceaudit.targets.base:TargetConfig")
    infos = {i.name: i for i in registry.protocols()}
    assert infos["missing"].unavailable == (
        "ModuleNotFoundError: No module named 'voiceaudit.targets.not_written_yet'"
    )
    assert infos["wrong"].unavailable == (
        "TypeError: voiceaudit.targets.base:TargetConfig is not a voiceaudit Target subclass"
    )
    assert infos["realtime"].unavailable is None
    from voiceaudit.errors import UsageError

    with pytest.raises(UsageError, match="protocol 'missing' is unavailable"):
        registry.get_target_class("missing")
