"""Scenario files (voiceaudit.scenario): the model a probe executes, and every kind of bad
file as a one-line error naming its line, exit 2 (schema) or 3 (audio)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voiceaudit.audio import read_audio
from voiceaudit.data import bundled_dir
from voiceaudit.errors import ExitCode
from voiceaudit.scenario import (
    Overlap,
    Say,
    ScenarioAudioError,
    ScenarioError,
    Wait,
    load_scenario,
    parse_scenario,
)

GOOD = """\
# a turn-taking scenario
rate = 24000
gap_ms = 400
seed = 7

[[session]]
name = "turn-taking"
count = 2

[[session.turn]]
say = "01_weather"
interrupt = { after_reply_ms = 800, say = "03_lights" }

[[session.turn]]
say = "02_table"
pause = { at_ms = 1200, ms = 400 }
repeat = 2
gap_ms = 1000

[[session.turn]]
say = "clips/mine.wav"
sound = [
  { after_reply_ms = 1500, kind = "noise", ms = 80, level_dbfs = -30 },
  { after_reply_ms = 500, kind = "tone", ms = 150, hz = 300 },
]

[[session]]
repeat = 3

[[session.turn]]
say = "06_thanks.wav"
pause = [{ at_ms = 500, ms = 200 }, { at_ms = 1000, ms = 300 }]
"""


def _write(tmp: Path, text: str, name: str = "s.toml") -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def clips(tmp_path: Path) -> Path:
    """A scenario directory with an audio file of its own (a bundled one, copied)."""
    (tmp_path / "clips").mkdir()
    x = read_audio(bundled_dir() / "05_joke.wav").samples
    sf.write(tmp_path / "clips" / "mine.wav", np.asarray(x), 16_000, subtype="PCM_16")
    return tmp_path


def test_a_good_file_is_a_model_with_exact_sample_timing(clips: Path) -> None:
    sc = load_scenario(_write(clips, GOOD))
    assert sc.rate == 24_000 and sc.seed == 7
    # count = 2 copies of the first session, then the second session
    assert [(s.name, s.copy, len(s.turns)) for s in sc.sessions] == [
        ("turn-taking", 0, 4),
        ("turn-taking", 1, 4),
        ("session-2", 0, 3),
    ]
    first = sc.sessions[0]
    assert [t.index for t in first.turns] == [0, 1, 2, 3]
    assert first.line == 6 and first.turns[0].line == 10 and first.turns[1].line == 14

    # turn 0: an interrupt 800 ms (19200 samples at 24 kHz) after the first audible reply
    barge = first.turns[0].during_reply
    assert len(barge) == 1 and barge[0].kind == "interrupt" and barge[0].expect_stop
    assert barge[0].after_reply == 19_200 and barge[0].after_reply_ns == 800_000_000
    assert barge[0].clip.source == "bundled" and barge[0].clip.name == "03_lights"
    assert 0 < barge[0].speech_start < barge[0].speech_end <= barge[0].clip.n_samples
    assert first.turns[0].gap == 400 * 24 and first.turns[0].gap_ns == 400_000_000

    # turns 1 and 2: the paused utterance, repeated; the silence is exactly where asked
    paused = first.turns[1].say
    assert first.turns[2].say is paused and first.turns[1].gap == 24_000
    clip = paused.clip
    assert paused.n_samples == clip.n_samples + 400 * 24
    (pause,) = paused.pauses
    assert (pause.at, pause.length, pause.at_ms, pause.ms) == (28_800, 9_600, 1200, 400)
    assert np.array_equal(paused.samples[:28_800], clip.samples[:28_800])
    assert not paused.samples[28_800 : 28_800 + 9_600].any()
    assert np.array_equal(paused.samples[28_800 + 9_600 :], clip.samples[28_800:])
    assert clip.speech_start is not None and clip.speech_end is not None
    assert paused.speech_start == clip.speech_start  # before the pause: unmoved
    assert paused.speech_end == clip.speech_end + 9_600  # after it: later by the pause

    # turn 3: an audio file relative to the scenario, and two generated sounds, in order
    mine = first.turns[3]
    assert mine.say.clip.source == "file" and mine.say.clip.path == clips / "clips" / "mine.wav"
    tone, noise = mine.during_reply
    assert (tone.kind, tone.clip.source, tone.after_reply) == ("sound", "tone", 12_000)
    assert not tone.expect_stop and tone.clip.n_samples == 150 * 24
    assert abs(float(np.abs(tone.samples).max()) - 10 ** (-20 / 20)) < 1e-3  # -20 dBFS peak
    assert tone.samples[0] == 0.0  # faded in: no click
    assert noise.clip.source == "noise" and noise.clip.n_samples == 80 * 24
    assert float(np.abs(noise.samples).max()) <= 10 ** (-30 / 20) + 1e-6
    assert (tone.speech_start, tone.speech_end) == (0, tone.clip.n_samples)

    # the copies are the same script; the noise is reproducible from the seed
    again = load_scenario(_write(clips, GOOD, "again.toml"))
    assert np.array_equal(again.sessions[0].turns[3].during_reply[1].samples, noise.samples)

    # the flat view for a simple executor
    steps = first.steps()
    assert [type(s).__name__ for s in steps] == [
        "Say", "Overlap", "Wait", "Say", "Wait", "Say", "Wait", "Say", "Overlap", "Overlap", "Wait",
    ]  # fmt: skip
    assert isinstance(steps[0], Say) and isinstance(steps[1], Overlap)
    assert isinstance(steps[2], Wait) and steps[2].gap == 400 * 24

    # two pauses, each shifting what comes after it; repeat = 3 repeats the turn list
    second = sc.sessions[2]
    say = second.turns[0].say
    assert [(p.at, p.length) for p in say.pauses] == [(12_000, 4_800), (24_000 + 4_800, 7_200)]
    assert say.n_samples == say.clip.n_samples + 12_000


def test_defaults_and_a_minimal_file() -> None:
    sc = parse_scenario('[[session]]\n[[session.turn]]\nsay = "05_joke"\n')
    assert sc.rate == 16_000 and len(sc.sessions) == 1
    (turn,) = sc.sessions[0].turns
    assert turn.during_reply == () and turn.gap == 500 * 16 and turn.say.pauses == ()
    assert turn.say.samples is turn.say.clip.samples


BAD = [
    # (file text, line, fragment of the message)
    ('[[session]]\n[[session.turn]]\nsay = "05_joke\n', 3, "not valid TOML"),
    ("rate = 16000\n", 1, "no [[session]]"),  # nothing to point at: the first line
    ("rat = 16000\n[[session]]\n", 1, "unknown top-level key 'rat' (did you mean 'rate'?)"),
    ("rate = 11025\n[[session]]\n", 1, "rate 11025 is not one of"),
    ('[[session]]\nname = "a"\n', 1, "session 'a' has no turns"),
    ("[[session]]\ncount = 0\n[[session.turn]]\nsay = 'x'\n", 2, "count 0 is outside"),
    ("[[session]]\n\n[[session.turn]]\nrepeat = 2\n", 3, "turn needs 'say'"),
    ("[[session]]\n[[session.turn]]\nsay = 3\n", 3, "say must be a non-empty string"),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\ninterupt = {}\n",
        4,
        "unknown turn key 'interupt' (did you mean 'interrupt'?)",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\npause = { at_ms = 500 }\n",
        4,
        "pause needs 'ms'",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\npause = { at_ms = 500, ms = '4' }\n",
        4,
        "pause.ms must be an integer, not a string",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n\npause = { at_ms = 5000, ms = 400 }\n",
        5,
        "pause.at_ms 5000 is past the end of 05_joke",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\npause = [\n"
        "  { at_ms = 900, ms = 100 },\n  { at_ms = 400, ms = 100 },\n]\n",
        6,
        "is not after the previous pause's (900)",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\npause = 400\n",
        4,
        "pause must be a table, not an integer",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\ninterrupt = { say = '03_lights' }\n",
        4,
        "interrupt needs 'after_reply_ms'",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "interrupt = { after_reply_ms = -5, say = '03_lights' }\n",
        4,
        "interrupt.after_reply_ms -5 is outside 0..600000",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "sound = { after_reply_ms = 100, kind = 'cough' }\n",
        4,
        "unknown sound kind 'cough'",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "sound = { after_reply_ms = 100, kind = 'noise', hz = 300 }\n",
        4,
        "sound.hz is for tones, not noise",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "sound = { after_reply_ms = 100, ms = 5 }\n",
        4,
        "sound.ms 5 is outside 10..5000",
    ),
    (
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "interrupt = { after_reply_ms = 800, say = '03_lights' }\n"
        "sound = { after_reply_ms = 900 }\n",
        5,
        "comes after the interrupt",
    ),
    ("[[session]]\n[[session.turn]]\nsay = '05_joke'\nrepeat = 0\n", 4, "repeat 0 is outside"),
    ("version = 2\n[[session]]\n", 1, "version 2 is outside 1..1"),
    ("session = 3\n", 1, "session must be an array of tables"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD)
def test_bad_files_are_one_line_errors_with_their_line(
    tmp_path: Path, text: str, line: int | None, fragment: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    err = info.value
    assert err.exit_code == ExitCode.USAGE
    assert "\n" not in err.message
    assert err.line == line, err.message
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert err.message.startswith(where), err.message
    assert fragment in err.message, err.message


def test_missing_audio_is_exit_3_with_the_line(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n\n[[session.turn]]\nsay = '01_wether'\n",
    )
    with pytest.raises(ScenarioAudioError) as info:
        load_scenario(path)
    err = info.value
    assert err.exit_code == ExitCode.BAD_INPUT
    assert err.message.startswith(f"{path}:6: no such audio file '01_wether'"), err.message
    assert err.hint is not None and "01_weather" in err.hint  # the bundled name it resembles

    # an interrupt's audio, relative to the scenario's directory
    path = _write(
        tmp_path,
        "[[session]]\n[[session.turn]]\nsay = '05_joke'\n"
        "interrupt = { after_reply_ms = 800, say = 'clips/none.wav' }\n",
    )
    with pytest.raises(ScenarioAudioError) as info:
        load_scenario(path)
    assert info.value.line == 4 and str(tmp_path / "clips" / "none.wav") in info.value.message


def test_unreadable_audio_is_exit_3_with_the_line(tmp_path: Path) -> None:
    (tmp_path / "notaudio.wav").write_bytes(b"RIFF....this is not a wave file")
    path = _write(tmp_path, "[[session]]\n[[session.turn]]\nsay = 'notaudio.wav'\n")
    with pytest.raises(ScenarioAudioError) as info:
        load_scenario(path)
    err = info.value
    assert err.exit_code == ExitCode.BAD_INPUT and err.line == 3
    assert err.message.startswith(f"{path}:3: audio 'notaudio.wav': "), err.message
    assert "\n" not in err.message


def test_a_missing_scenario_file_is_exit_3(tmp_path: Path) -> None:
    with pytest.raises(ScenarioAudioError) as info:
        load_scenario(tmp_path / "nope.toml")
    assert info.value.exit_code == ExitCode.BAD_INPUT


def test_docs_examples_parse(clips: Path) -> None:
    """Every ```toml block of docs/scenarios.md is a valid scenario (the files it names
    exist beside it)."""
    (clips / "recordings").mkdir()
    (clips / "recordings" / "long-question.wav").write_bytes(
        (clips / "clips" / "mine.wav").read_bytes()
    )
    doc = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"
    blocks = doc.read_text(encoding="utf-8").split("```toml\n")[1:]
    assert blocks, "docs/scenarios.md has no toml examples"
    for block in blocks:
        text = block.split("```", 1)[0]
        if "[[session]]" not in text:
            continue  # a fragment
        sc = parse_scenario(text, base_dir=clips)
        assert sc.sessions
