"""Findings: each detector finds its known, injected delay and costs it; clean turns are
left alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import with_attrs

from voiceaudit.analysis import KINDS, FindingRules, build_report
from voiceaudit.analysis.findings import TurnContext, detect
from voiceaudit.analysis.ledger import ledger_from_obs
from voiceaudit.analysis.synthetic import TurnSpec, turn_events, write_trace
from voiceaudit.analysis.turns import collect_events
from voiceaudit.model import Event

MS = 1_000_000
T0 = 10**12
CLEAN = TurnSpec()


def findings_of(spec: TurnSpec, *, extra: list[Event] | None = None, **rules: float):  # type: ignore[no-untyped-def]
    evs = turn_events(spec, "s0", 0, T0) + (extra or [])
    col = collect_events(evs)
    obs = col.turns[("s0", 0)]
    led = ledger_from_obs(obs)
    ctx = TurnContext(obs, led, FindingRules(**rules), col.sessions.get("s0"))
    return {f.kind: f for f in detect(ctx)}


def cost_ms(spec: TurnSpec, kind: str, **kw: object) -> float:
    got = findings_of(spec, **kw)  # type: ignore[arg-type]
    assert kind in got, f"{kind} not found; found {sorted(got)}"
    return got[kind].ns / MS


def test_a_clean_turn_has_no_findings() -> None:
    assert findings_of(CLEAN) == {}


def test_leading_silence() -> None:
    assert cost_ms(CLEAN.with_(onset_ms=300.0), "leading_silence") == pytest.approx(300.0)
    f = findings_of(CLEAN.with_(onset_ms=300.0))["leading_silence"]
    assert f.evidence["onset_ms"] == 300.0
    assert "leading_silence" not in findings_of(CLEAN.with_(onset_ms=30.0))


def test_leading_silence_without_playout_mark_uses_the_onset() -> None:
    spec = CLEAN.with_(onset_ms=240.0, drop=frozenset({"reply.playout_start"}))
    f = findings_of(spec)["leading_silence"]
    assert f.ns == 240 * MS
    assert f.evidence["measured_from"] == "reply.audible onset_ms"


def test_sentence_aggregation() -> None:
    # tts.request exactly 183 ms after llm.first_token, while the model is still talking
    assert cost_ms(CLEAN.with_(aggregation_ms=183.0), "sentence_aggregation") == 183.0
    got = findings_of(CLEAN.with_(aggregation_ms=183.0))
    assert "whole_result_handoff" not in got
    assert "sentence_aggregation" not in findings_of(CLEAN.with_(aggregation_ms=40.0))


def test_whole_result_handoff_model_to_synthesis() -> None:
    # synthesis starts only 5 ms after the model's last token (llm_total 400 ms)
    spec = CLEAN.with_(aggregation_ms=405.0, llm_total_ms=400.0, tts_request_chars=120)
    got = findings_of(spec)
    assert "sentence_aggregation" not in got
    f = got["whole_result_handoff"]
    assert f.ns == 405 * MS
    assert f.evidence["upstream"] == "model" and f.evidence["downstream"] == "synthesis"
    assert f.evidence["upstream_done_ms"] + 5.0 == pytest.approx(f.evidence["downstream_start_ms"])


def test_a_first_request_with_part_of_the_text_is_not_a_whole_result() -> None:
    # Requested after llm.done but with only part of the text: aggregation, not a whole
    # result (the text arrived faster than it was split).
    spec = CLEAN.with_(aggregation_ms=405.0, llm_total_ms=400.0, tts_request_chars=30)
    got = findings_of(spec)
    assert "whole_result_handoff" not in got
    assert got["sentence_aggregation"].ns == 405 * MS


def test_whole_result_handoff_synthesis_to_transport() -> None:
    # The first audio is sent only after synthesis finished (tts_total 300 ms).
    spec = CLEAN.with_(send_wait_ms=301.0, tts_total_ms=300.0, transport_ms=302.0)
    f = findings_of(spec)["whole_result_handoff"]
    assert f.evidence["upstream"] == "synthesis"
    assert f.ns == 300 * MS


def test_slow_first_token() -> None:
    assert cost_ms(CLEAN.with_(first_token_ms=950.0), "slow_first_token") == 950.0
    assert "slow_first_token" not in findings_of(CLEAN.with_(first_token_ms=250.0))


def test_slow_first_token_of_a_speech_to_speech_model() -> None:
    spec = CLEAN.with_(speech_to_speech=True, first_token_ms=720.0)
    f = findings_of(spec)["slow_first_token"]
    assert f.ns == 720 * MS and f.evidence["from"] == "response.created"


def test_connection_setup_inside_the_turn() -> None:
    spec = CLEAN.with_(connect_at_ms=320.0, connect_ms=250.0)
    f = findings_of(spec)["connection_setup"]
    assert f.ns == 250 * MS
    (conn,) = f.evidence["connections"]
    assert conn["what"] == "session" and conn["start_ms"] == pytest.approx(320.0)


def test_connection_setup_only_counts_the_part_inside_the_turn() -> None:
    # Starts 100 ms before speech end: only the 150 ms after it are on the path.
    spec = CLEAN.with_(connect_at_ms=-100.0, connect_ms=250.0)
    assert cost_ms(spec, "connection_setup") == pytest.approx(150.0)


def test_connection_set_up_before_the_turn_is_not_a_finding() -> None:
    assert "connection_setup" not in findings_of(
        CLEAN.with_(connect_at_ms=-900.0, connect_ms=250.0)
    )


def test_connection_setup_from_session_events_and_hop_attributes() -> None:
    evs = turn_events(CLEAN, "s0", 0, T0)
    speech_end = next(e.t_ns for e in evs if e.name == "input.speech_end")
    extra = [
        # a reconnect recorded at session level (turn null)
        Event("s0", None, speech_end + 50 * MS, "probe", "session", "session.connect_start"),
        Event("s0", None, speech_end + 90 * MS, "probe", "session", "session.connected"),
        # a cascade hop that says how long its connection took
        Event(
            "s0",
            0,
            speech_end + 400 * MS,
            "pipeline",
            "tts",
            "http.headers",
            {"connect_ns": 35 * MS},
        ),
    ]
    f = findings_of(CLEAN, extra=extra)["connection_setup"]
    assert f.ns == (40 + 35) * MS
    assert {c["what"] for c in f.evidence["connections"]} == {"session", "tts:http.headers connect"}


def test_large_audio_buffer_from_the_targets_send_time() -> None:
    spec = CLEAN.with_(first_chunk_ms=1000.0, send_wait_ms=612.0, transport_ms=613.0)
    f = findings_of(spec)["large_audio_buffer"]
    assert f.ns == 612 * MS
    assert f.evidence["first_chunk_audio_ms"] == 1000.0
    assert "large_audio_buffer" not in findings_of(CLEAN)


def test_large_audio_buffer_estimated_from_delivery_rate() -> None:
    # No send mark, arrival times only: 1000 ms first chunk, the rest arrives at 2x real
    # time, so filling the first chunk took about (1000 - 20) / 2 = 490 ms.
    spec = CLEAN.with_(first_chunk_ms=1000.0, chunk_ms=40.0, delivery_x=2.0, server_times=False)
    f = findings_of(spec)["large_audio_buffer"]
    assert f.ns / MS == pytest.approx(490.0, rel=0.01)
    assert f.evidence["delivery_rate_x_realtime"] == pytest.approx(2.0, rel=0.01)


def test_audio_underrun() -> None:
    spec = CLEAN.with_(underrun_gaps_ms=(120.0, 80.0))
    f = findings_of(spec)["audio_underrun"]
    assert f.ns == 200 * MS
    assert f.evidence["gaps"] == 2 and f.evidence["longest_ms"] == 120.0
    assert "audio_underrun" not in findings_of(CLEAN.with_(underrun_gaps_ms=(3.0,)))


def test_endpointing_wait() -> None:
    assert cost_ms(CLEAN.with_(endpointing_ms=1200.0), "endpointing_wait") == 1200.0
    assert "endpointing_wait" not in findings_of(CLEAN.with_(endpointing_ms=560.0))


def test_endpointing_wait_evidence_of_the_targets_own_wait() -> None:
    evs = turn_events(CLEAN.with_(endpointing_ms=1000.0), "s0", 0, T0)
    heard = {"speech_end_received_ns": lambda e: e.attrs["server_t_ns"] - 950 * MS}
    out = with_attrs(evs, "endpoint", heard)
    col = collect_events(out)
    obs = col.turns[("s0", 0)]
    led = ledger_from_obs(obs)
    (f,) = [
        f for f in detect(TurnContext(obs, led, FindingRules())) if f.kind == "endpointing_wait"
    ]
    assert f.evidence["target_wait_ms"] == 950.0


def test_encoding_overhead() -> None:
    # base64 in JSON: about 4/3 of the audio bytes plus the envelope
    spec = CLEAN.with_(wire_factor=1.37, chunk_ms=20.0, onset_ms=10.0)
    f = findings_of(spec)["encoding_overhead"]
    assert f.evidence["ratio"] == pytest.approx(1.37, abs=0.001)
    # the onset sample lies in the first 20 ms chunk: 960 audio bytes, 355 extra
    assert f.evidence["extra_bytes_before_audible"] == round(960 * 1.37) - 960
    assert f.ns == round(355 * 8 / 2_000_000 * 1e9)
    assert "encoding_overhead" not in findings_of(CLEAN)


def test_report_aggregates_findings_per_kind(tmp_path: Path) -> None:
    specs = [CLEAN.with_(aggregation_ms=183.0)] * 3 + [CLEAN] * 7
    rep = build_report([write_trace(tmp_path / "t.jsonl", specs)])
    (agg,) = rep.findings
    assert agg.kind == "sentence_aggregation"
    assert (agg.turns, agg.of) == (3, 10)
    assert agg.cost.p50 == 183.0
    assert agg.per_turn_ms == pytest.approx(3 * 183.0 / 10)
    doc = rep.to_dict()["findings"][0]
    assert doc["kind"] == "sentence_aggregation" and doc["turns"] == 3
    assert doc["description"] == KINDS["sentence_aggregation"]


def test_every_kind_is_described_and_detected_somewhere() -> None:
    specs = {
        "leading_silence": CLEAN.with_(onset_ms=300.0),
        "whole_result_handoff": CLEAN.with_(aggregation_ms=405.0, tts_request_chars=120),
        "sentence_aggregation": CLEAN.with_(aggregation_ms=183.0),
        "slow_first_token": CLEAN.with_(first_token_ms=950.0),
        "connection_setup": CLEAN.with_(connect_at_ms=10.0, connect_ms=100.0),
        "large_audio_buffer": CLEAN.with_(first_chunk_ms=500.0, send_wait_ms=50.0),
        "audio_underrun": CLEAN.with_(underrun_gaps_ms=(60.0,)),
        "endpointing_wait": CLEAN.with_(endpointing_ms=900.0),
        "encoding_overhead": CLEAN.with_(wire_factor=1.4),
    }
    assert set(specs) == set(KINDS)
    for kind, spec in specs.items():
        got = findings_of(spec)
        assert set(got) == {kind}, (kind, sorted(got))
