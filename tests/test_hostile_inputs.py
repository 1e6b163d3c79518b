"""Hostile and odd input files through the real command line (issue 22, "Hostile input").

Each bad file gives one line (and maybe a hint) with a documented exit code, 2 for a
config file (scenario, sweep) and 3 for an input file (trace, audio), never a traceback,
and nothing is measured; each odd but readable trace is read with a warning naming the
line, so the report never gives a figure from a nonsensical turn without saying so.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from voiceaudit.analysis.synthetic import TurnSpec, write_trace
from voiceaudit.cli import run
from voiceaudit.data import bundled_dir
from voiceaudit.errors import ExitCode

TEXT = b"hello, this is a text file and not a recording\nsecond line of it\n"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    rc = run(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


def _one_error(lines: list[str]) -> str:
    """The error line of a one-line error (and maybe a hint)."""
    assert lines and lines[0].startswith("error:"), lines
    assert len(lines) <= 2 and (len(lines) == 1 or lines[1].startswith("hint:")), lines
    return lines[0]


# -- traces ------------------------------------------------------------------------------


def _trace(tmp_path: Path, name: str = "trace.jsonl", turns: int = 3) -> tuple[Path, list[str]]:
    p = write_trace(tmp_path / name, [TurnSpec() for _ in range(turns)])
    return p, p.read_text().splitlines()


def _line_of(lines: list[str], name: str, turn: int | None = None, nth: int = 0) -> int:
    """0-based index of the nth line holding event ``name`` (of ``turn`` when given)."""
    found = [
        i
        for i, ln in enumerate(lines)
        if (d := json.loads(ln)).get("name") == name and (turn is None or d.get("turn") == turn)
    ]
    return found[nth]


def _report_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trace: Path
) -> tuple[int, dict[str, object], list[str]]:
    out = tmp_path / "report.json"
    rc, err = _cli(capsys, "report", str(trace), "--format", "json", "-o", str(out))
    return rc, (json.loads(out.read_text()) if out.exists() else {}), err


def _warnings_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], trace: Path, lines: list[str]
) -> list[str]:
    """The report's warnings on ``lines`` written to ``trace`` (the report must succeed)."""
    trace.write_text("\n".join(lines) + "\n")
    rc, doc, _ = _report_json(tmp_path, capsys, trace)
    assert rc == 0
    return doc["warnings"]  # type: ignore[return-value]


@pytest.mark.parametrize("shape", ["object", "array"])
def test_attributes_nested_100000_deep_are_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], shape: str
) -> None:
    p, lines = _trace(tmp_path)
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000 if shape == "object" else "[" * 100_000
    if shape == "array":
        deep += "]" * 100_000
    i = _line_of(lines, "input.speech_end", 1)
    lines[i] = lines[i].replace('"attrs":{', '"attrs":{"deep":' + deep + ",", 1)
    p.write_text("\n".join(lines) + "\n")
    for command in (["report", str(p)], ["report", str(tmp_path)], ["export", str(p)]):
        if command[0] == "export":
            command += ["--format", "perfetto", "-o", str(tmp_path / "x.json")]
        rc, err = _cli(capsys, *command)
        assert rc == ExitCode.BAD_INPUT, (command, err)
        assert _one_error(err) == f"error: {p}:{i + 1}: invalid record: nested too deeply to read"


def test_a_deeply_nested_first_line_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = tmp_path / "trace.jsonl"
    p.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    for target in (p, tmp_path):  # a directory looks at each file's first line too
        rc, err = _cli(capsys, "report", str(target))
        assert rc == ExitCode.BAD_INPUT, err
        assert _one_error(err).startswith(f"error: {p}:1: not a voiceaudit trace"), err


def test_a_turn_that_starts_twice_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, lines = _trace(tmp_path)
    i = _line_of(lines, "turn.start", 1)
    lines.insert(i + 2, lines[i])  # the same turn.start again, two lines on
    found = _warnings_of(tmp_path, capsys, p, lines)
    warnings = [w for w in found if "second time" in w]
    assert warnings == [
        f"{p}: line {i + 3}: session s0 turn 1 starts a second time (turn.start; the first "
        f"is on line {i + 1}): its figures are suspect"
    ], found


def test_a_turn_that_ends_twice_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, lines = _trace(tmp_path)
    i = _line_of(lines, "turn.end", 0)
    lines.insert(i + 1, lines[i])
    found = _warnings_of(tmp_path, capsys, p, lines)
    assert any(
        w.startswith(f"{p}: line {i + 2}: session s0 turn 0 ends a second time") for w in found
    ), found


def test_a_finished_turn_that_ends_before_it_starts_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, lines = _trace(tmp_path)
    s, e = _line_of(lines, "turn.start", 2), _line_of(lines, "turn.end", 2)
    start = json.loads(lines[s])
    end = json.loads(lines[e])
    assert end["attrs"]["ok"] is True
    end["t_ns"] = start["t_ns"] - 7_000_000  # 7 ms before its own start
    lines[e] = json.dumps(end)
    found = _warnings_of(tmp_path, capsys, p, lines)
    assert (
        f"{p}: line {e + 1}: session s0 turn 2 ends (turn.end, ok) 7.000 ms before it starts "
        f"(line {s + 1}): its figures are suspect"
    ) in found, found


def test_a_failed_turn_may_end_before_its_first_frame_deadline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """turn.start is stamped with the first frame's deadline, a few ms ahead; a turn that
    fails at once ends before it. That is no oddity (and gives no figure)."""
    p = write_trace(
        tmp_path / "trace.jsonl",
        [TurnSpec(), TurnSpec(ok=False, reason="timeout: no reply audio within 10 s")],
    )
    lines = p.read_text().splitlines()
    s, e = _line_of(lines, "turn.start", 1), _line_of(lines, "turn.end", 1)
    end = json.loads(lines[e])
    end["t_ns"] = json.loads(lines[s])["t_ns"] - 3_000_000
    lines[e] = json.dumps(end)
    found = _warnings_of(tmp_path, capsys, p, lines)
    assert not [w for w in found if "line" in w], found


@pytest.mark.parametrize(
    ("t_ns", "why"),
    [(-5, "is negative"), (10**18, "is +11574.1 days from the run's start anchor")],
)
def test_a_time_that_is_no_time_of_the_run_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], t_ns: int, why: str
) -> None:
    p, lines = _trace(tmp_path)
    i = _line_of(lines, "reply.audible", 1)
    ev = json.loads(lines[i])
    ev["t_ns"] = t_ns
    lines[i] = json.dumps(ev)
    j = _line_of(lines, "reply.audible", 2)
    ev = json.loads(lines[j])
    ev["t_ns"] = t_ns
    lines[j] = json.dumps(ev)
    found = _warnings_of(tmp_path, capsys, p, lines)
    odd = [w for w in found if "not a time of this run" in w]
    assert len(odd) == 1, found
    assert odd[0].startswith(f"{p}: line {i + 1}: reply.audible at t_ns {t_ns} {why}"), odd
    assert odd[0].endswith("figures from session s0 turn 1 are suspect (2 such lines in all)")


@pytest.mark.parametrize("key", ["samples", "bytes"])
@pytest.mark.parametrize("version", [1, 2])
def test_a_negative_chunk_size_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], version: int, key: str
) -> None:
    """A chunk of -480 samples would be a negative duration: refused, with its line."""
    p = write_trace(tmp_path / "trace.jsonl", [TurnSpec(), TurnSpec()], version=version)
    lines = p.read_text().splitlines()
    name = "reply.chunks" if version == 2 else "reply.chunk"
    i = _line_of(lines, name, 1, nth=1 if version == 1 else 0)
    ev = json.loads(lines[i])
    if version == 2:
        n = len(ev["attrs"]["dt_ns"])
        ev["attrs"].setdefault(key, [0] * n)[1] = -480
    else:
        ev["attrs"][key] = -480
    lines[i] = json.dumps(ev)
    p.write_text("\n".join(lines) + "\n")
    rc, err = _cli(capsys, "report", str(p))
    assert rc == ExitCode.BAD_INPUT, err
    line = _one_error(err)
    assert line.startswith(f"error: {p}:{i + 1}: invalid record: {name}: attrs.{key}"), line
    assert "negative" in line, line


def test_crlf_line_ends_are_read_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, lines = _trace(tmp_path)
    rc, plain, _ = _report_json(tmp_path, capsys, p)
    assert rc == 0
    crlf = tmp_path / "crlf" / "trace.jsonl"
    crlf.parent.mkdir()
    crlf.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    rc, doc, _ = _report_json(tmp_path, capsys, crlf)
    assert rc == 0
    assert f"{crlf}: line 1: CRLF line ends (a converted copy?); read as LF" in doc["warnings"]  # type: ignore[operator]
    # the same figures as the LF file
    assert doc["summary"] == plain["summary"] and doc["turns"] == plain["turns"]


def test_a_cut_short_last_line_is_still_dropped_quietly_after_crlf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A writer killed mid-line is normal: the cut line is dropped, with CRLF too."""
    p = write_trace(tmp_path / "trace.jsonl", [TurnSpec(), TurnSpec()], close=False)
    lines = p.read_text().splitlines()
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode() + lines[-1][:40].encode())
    rc, doc, _ = _report_json(tmp_path, capsys, p)
    assert rc == 0
    assert doc["counts"]["turns"] == 2  # type: ignore[index]
    assert any("cut short (writer stopped mid-line)" in w for w in doc["warnings"])  # type: ignore[union-attr]


# -- audio: what a scenario says and what run replays -------------------------------------


def _scenario(tmp_path: Path, say: str, name: str = "scenario.toml") -> Path:
    p = tmp_path / name
    p.write_text(f'[[session]]\n[[session.turn]]\nsay = "{say}"\n')
    return p


def _run_out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.mark.parametrize("say", ["notes.txt", "notes", "../../../../../../../../etc/passwd"])
def test_a_scenario_cannot_say_a_text_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], say: str
) -> None:
    (tmp_path / "notes.txt").write_bytes(TEXT)
    (tmp_path / "notes").write_bytes(TEXT)
    sc = _scenario(tmp_path, say)
    rc, err = _cli(capsys, "run", "--scenario", str(sc), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.BAD_INPUT, err
    line = _one_error(err)
    assert line == f"error: {sc}:3: audio {say!r}: not an audio file (format not recognised)"
    assert not _run_out(tmp_path).exists()  # nothing was measured


def test_a_scenario_says_headerless_pcm_by_its_name(tmp_path: Path) -> None:
    """Raw PCM only by an explicit suffix, read at the scenario's rate."""
    from voiceaudit.scenario import load_scenario

    pcm = (np.sin(np.arange(16_000) * 0.05) * 8000).astype("<i2").tobytes()
    (tmp_path / "clip.raw").write_bytes(pcm)
    sc = load_scenario(_scenario(tmp_path, "clip.raw"))
    clip = sc.sessions[0].turns[0].say.clip
    assert clip.rate == 16_000 and clip.n_samples == 16_000


def test_run_replays_only_audio(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_bytes(TEXT)
    rc, err = _cli(capsys, "run", str(tmp_path / "notes.txt"), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.BAD_INPUT, err
    assert (
        _one_error(err)
        == f"error: {tmp_path / 'notes.txt'}: not an audio file (format not recognised)"
    )
    assert not _run_out(tmp_path).exists()


@pytest.mark.parametrize("placeholder", [0, 0xFFFFFFFF])
def test_a_streaming_wav_placeholder_is_inspected_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], placeholder: int
) -> None:
    src = (bundled_dir() / "01_weather.wav").read_bytes()
    i = src.index(b"data")
    (size,) = struct.unpack("<I", src[i + 4 : i + 8])
    data = bytearray(src)
    struct.pack_into("<I", data, 4, placeholder)
    struct.pack_into("<I", data, i + 4, placeholder)
    (tmp_path / "stream.wav").write_bytes(bytes(data))
    rc = run(
        ["inspect", "--json", str(bundled_dir() / "01_weather.wav"), str(tmp_path / "stream.wav")]
    )
    out = capsys.readouterr().out
    assert rc == 0
    whole, streamed = json.loads(out)
    assert streamed["duration_ms"] == whole["duration_ms"] > 0
    assert streamed["speech_end_ms"] == whole["speech_end_ms"]
    del size


# -- config files: scenarios and sweeps ----------------------------------------------------


def test_a_scenario_with_no_session_names_its_first_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = tmp_path / "scenario.toml"
    sc.write_text("rate = 16000\n")
    rc, err = _cli(capsys, "run", "--scenario", str(sc), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == (
        f"error: {sc}:1: no [[session]]: a scenario needs at least one session"
    )


def test_a_scenario_that_is_not_utf8_names_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sc = tmp_path / "scenario.toml"
    sc.write_bytes(b'[[session]]\n[[session.turn]]\nsay = "caf\xe9"\n')
    rc, err = _cli(capsys, "run", "--scenario", str(sc), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == f"error: {sc}:3: not UTF-8 text (byte 0xe9 at column 11)"


URL = "ws://127.0.0.1:9/v1/realtime"


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        # the case: a misspelt target must not measure the built-in pipeline
        (
            f'[sweep]\npipelines = [{{ name = "prod", protocol = "realtime", targt = "{URL}" }}]\n'
            'networks = ["lan"]\n',
            2,
            "unknown key 'targt' in a pipeline (did you mean 'target'?)",
        ),
        (
            '[sweep]\npipelines = [\n  { name = "prod", protocol = "realtime" },\n]\n'
            'networks = ["lan"]\n',
            3,
            'a pipeline table needs target = "URL" (a string)',
        ),
        (
            '[sweep]\npipelines = [\n  "websocket",\n'
            f'  {{ protocol = "smoke", target = "{URL}" }},\n]\n'
            'networks = ["lan"]\n',
            4,
            "unknown protocol 'smoke'",
        ),
        (
            '[sweep]\npipelines = ["websocket",\n  "smoke"]\nnetworks = ["lan"]\n',
            3,
            "the built-in pipeline does not speak 'smoke'",
        ),
        (
            '[sweep]\npipelines = ["websocket"]\nnetworks = ["lan"]\nplayout = "magic"\n',
            4,
            "unknown playout model 'magic'",
        ),
        (
            '[sweep]\npipelines = ["websocket"]\nnetworks = ["lan"]\n\n[swep]\nrepeats = 2\n',
            5,
            "unknown key 'swep' in the sweep file (did you mean 'sweep'?)",
        ),
        ("# an empty sweep\n", 1, "a sweep file needs a [sweep] table"),
        (
            '[sweep]\npipelines = ["websocket"]\nnetworks = ["lan"]\ninject = ["bogus=1"]\n',
            4,
            "unknown injection 'bogus'",
        ),
        (
            f'[sweep]\npipelines = [{{ protocol = "realtime", target = "{URL}" }}]\n'
            'networks = ["lan"]\ninject = ["llm-ttft=100ms"]\n',
            4,
            "inject applies to the built-in pipeline only (no target)",
        ),
        (
            '[sweep]\npipelines = ["websocket", "websocket"]\nnetworks = ["lan"]\n',
            2,
            "two pipelines are named 'websocket'",
        ),
        (
            '[sweep]\npipelines = ["websocket"]\nnetworks = ["lan"]\n'
            "repeats = 9223372036854775807\n",
            4,
            "repeats must be a whole number in 1..1000",
        ),
    ],
)
def test_a_bad_sweep_file_is_exit_2_with_its_line_and_measures_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, line: int, message: str
) -> None:
    f = tmp_path / "sweep.toml"
    f.write_text(body)
    out = tmp_path / "sweep"
    rc, err = _cli(capsys, "sweep", "--file", str(f), "--out", str(out))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == f"error: {f}:{line}: {message}", err
    assert not out.exists()


@pytest.mark.parametrize("shape", ["array", "table"])
@pytest.mark.parametrize("kind", ["scenario", "sweep"])
def test_a_config_file_nested_too_deeply_is_exit_2_with_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str, shape: str
) -> None:
    f = tmp_path / "deep.toml"
    deep = (
        "[" * 100_000 + "]" * 100_000 if shape == "array" else "{a = " * 5_000 + "1" + "}" * 5_000
    )
    f.write_text(f"# a hostile file\n\nx = {deep}\n")
    out = tmp_path / "out"
    args = ["run", "--scenario"] if kind == "scenario" else ["sweep", "--file"]
    rc, err = _cli(capsys, *args, str(f), "--out", str(out))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == f"error: {f}:3: arrays or tables nested too deeply to read"
    assert not out.exists()


def test_a_sweep_target_of_an_unknown_protocol_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    rc, err = _cli(capsys, "sweep", "-p", "smoke", "-t", URL, "--network", "lan", "--out", str(out))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == "error: unknown protocol 'smoke'"
    assert not out.exists()


def test_a_batched_item_at_no_time_of_the_run_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p, lines = _trace(tmp_path)
    i = _line_of(lines, "reply.chunks", 1)
    ev = json.loads(lines[i])
    ev["attrs"]["dt_ns"][1] = -ev["t_ns"] - 1  # one chunk before the clock began
    lines[i] = json.dumps(ev)
    found = _warnings_of(tmp_path, capsys, p, lines)
    assert (
        f"{p}: line {i + 1}: an item of reply.chunks at -1 ns is negative: not a time of this "
        "run; figures from session s0 turn 1 are suspect"
    ) in found, found


@pytest.mark.parametrize(
    ("index", "message"),
    [
        ("{bad json\n", ":1: not valid JSON: Expecting property name enclosed in double quotes"),
        ("[" * 100_000 + "]" * 100_000, ": cannot read the texts index (nested too deeply)"),
        ('["01_weather.wav"]', ': not a texts index: it must be a JSON object {"file.wav"'),
    ],
)
def test_a_broken_texts_index_beside_the_audio_is_exit_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], index: str, message: str
) -> None:
    audio = tmp_path / "audio"
    audio.mkdir()
    (audio / "01_weather.wav").write_bytes((bundled_dir() / "01_weather.wav").read_bytes())
    (audio / "texts.json").write_text(index)
    rc, err = _cli(capsys, "run", str(audio), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.BAD_INPUT, err
    assert _one_error(err).startswith(f"error: {audio / 'texts.json'}{message}"), err
    assert not _run_out(tmp_path).exists()


def test_a_scenario_of_a_trillion_turns_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each repeat is within its bound; their product would never finish being built."""
    sc = tmp_path / "scenario.toml"
    sc.write_text(
        "[[session]]\ncount = 10000\nrepeat = 10000\n\n"
        '[[session.turn]]\nsay = "01_weather"\nrepeat = 10000\n'
    )
    rc, err = _cli(capsys, "run", "--scenario", str(sc), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.USAGE, err
    assert _one_error(err) == (
        f"error: {sc}:1: the scenario has 1000000000000 turns by session 'session-1' "
        "(count x repeat x turns and their repeats); at most 1000000"
    )


def test_hours_of_pauses_in_one_turn_are_refused_at_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pauses = ",\n".join(f"  {{ at_ms = {10 * k}, ms = 60000 }}" for k in range(1, 101))
    sc = tmp_path / "scenario.toml"
    sc.write_text(f'[[session]]\n[[session.turn]]\nsay = "01_weather"\npause = [\n{pauses}\n]\n')
    rc, err = _cli(capsys, "run", "--scenario", str(sc), "--out", str(_run_out(tmp_path)))
    assert rc == ExitCode.USAGE, err
    # the eleventh pause (line 15) takes the turn past 600,000 ms
    assert _one_error(err) == (
        f"error: {sc}:15: the pauses of this turn add up to 660000 ms; at most 600000"
    )
