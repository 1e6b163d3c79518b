"""Scenario files: key-press turns (``dtmf``) and the greeting wait (``greeting_wait_ms``)."""

from __future__ import annotations

import pytest

from voiceaudit.scenario import DTMF_SPACING_MS, ScenarioError, parse_scenario


def test_a_key_press_turn_is_silence_ending_at_its_last_key() -> None:
    sc = parse_scenario('rate = 8000\n[[session]]\n[[session.turn]]\ndtmf = "12#"\n')
    (turn,) = sc.sessions[0].turns
    assert turn.dtmf == "12#"
    assert sc.greeting_wait_ms is None
    step = 8000 * DTMF_SPACING_MS // 1000
    assert turn.say.speech_start == 0
    assert turn.say.speech_end == 2 * step + 1
    assert turn.say.n_samples == 3 * step
    assert not turn.say.samples.any()


def test_greeting_wait_is_read() -> None:
    sc = parse_scenario(
        'greeting_wait_ms = 2500\n[[session]]\n[[session.turn]]\nsay = "06_thanks"\n'
    )
    assert sc.greeting_wait_ms == 2500
    assert sc.sessions[0].turns[0].dtmf is None


@pytest.mark.parametrize(
    ("turn", "message"),
    [
        ('dtmf = "1"\nsay = "06_thanks"', "either says something or presses keys"),
        ('dtmf = "1x"', "'x' is not a key"),
        ("dtmf = 1", "dtmf must be a string"),
        ('dtmf = ""', "dtmf must be a string"),
        ('dtmf = "1"\npause = {at_ms = 10, ms = 100}', "has no speech to pause"),
    ],
)
def test_bad_key_press_turns_name_their_line(turn: str, message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        parse_scenario(f"[[session]]\n[[session.turn]]\n{turn}\n")
    assert message in str(err.value.message)
    assert err.value.line is not None and err.value.line >= 2
