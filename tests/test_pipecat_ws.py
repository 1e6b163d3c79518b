"""The pipecat-websocket target's wire format, checked against Pipecat's own serializer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from voiceaudit.errors import UsageError
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.pipecat_ws import (
    PipecatWebSocketSession,
    PipecatWebSocketTarget,
    WireError,
    decode_frame,
    encode_audio_frame,
    encode_message_frame,
    parse_fields,
)

pipecat = pytest.importorskip("pipecat", reason="pipecat-ai is a test dependency")


class Sink:
    def __init__(self) -> None:
        self.marks: list[tuple[str, str, dict[str, Any]]] = []
        self.audio: list[tuple[bytes, int, int]] = []
        self.done = 0
        self.failures: list[str] = []

    def mark(self, name: str, stage: str, t_ns: int, attrs: dict[str, Any] | None = None) -> None:
        self.marks.append((name, stage, attrs or {}))

    def reply_audio(self, t_ns: int, pcm16: bytes, rate: int, wire_bytes: int) -> None:
        self.audio.append((pcm16, rate, wire_bytes))

    def reply_done(self, t_ns: int) -> None:
        self.done += 1

    def fail(self, reason: str) -> None:
        self.failures.append(reason)


def session(**options: str) -> tuple[PipecatWebSocketSession, Sink]:
    sink = Sink()
    cfg = TargetConfig(url="ws://127.0.0.1:1/", protocol="pipecat-websocket", options=options)
    s = PipecatWebSocketTarget(cfg).session(sink)
    assert isinstance(s, PipecatWebSocketSession)
    return s, sink


def serialize(frame: Any) -> bytes:
    from pipecat.serializers.protobuf import ProtobufFrameSerializer

    out = asyncio.run(ProtobufFrameSerializer().serialize(frame))
    assert isinstance(out, bytes)
    return out


def test_audio_frames_round_trip_with_pipecat() -> None:
    from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
    from pipecat.serializers.protobuf import ProtobufFrameSerializer

    pcm = bytes(range(256)) * 5
    # what we send, Pipecat reads as input audio
    frame = asyncio.run(ProtobufFrameSerializer().deserialize(encode_audio_frame(pcm, 16000)))
    assert isinstance(frame, InputAudioRawFrame)
    assert frame.audio == pcm and frame.sample_rate == 16000 and frame.num_channels == 1
    # what Pipecat sends, we read as reply audio
    data = serialize(OutputAudioRawFrame(audio=pcm, sample_rate=24000, num_channels=1))
    f = decode_frame(data)
    assert f.kind == "audio" and f.fields["audio"] == pcm and f.fields["sample_rate"] == 24000
    s, sink = session()
    s._on_frame(1, data)
    assert sink.audio == [(pcm, 24000, len(data))]


def test_stereo_reply_is_downmixed() -> None:
    import numpy as np
    from pipecat.frames.frames import OutputAudioRawFrame

    lr = np.array([[100, 300], [-200, -400]], dtype="<i2").tobytes()
    s, sink = session()
    s._on_frame(1, serialize(OutputAudioRawFrame(audio=lr, sample_rate=16000, num_channels=2)))
    assert np.frombuffer(sink.audio[0][0], "<i2").tolist() == [200, -300]


def rtvi(kind: str, data: dict[str, Any] | None = None) -> bytes:
    from pipecat.frames.frames import OutputTransportMessageUrgentFrame

    msg: dict[str, Any] = {"label": "rtvi-ai", "type": kind}
    if data is not None:
        msg["data"] = data
    return serialize(OutputTransportMessageUrgentFrame(message=msg))


def test_rtvi_messages_become_marks() -> None:
    s, sink = session()
    for kind, data in [
        ("bot-ready", {"version": "1.0.0"}),
        ("vad-user-started-speaking", None),
        ("user-started-speaking", None),
        ("vad-user-stopped-speaking", None),
        ("user-transcription", {"text": "hel", "final": False}),
        ("user-transcription", {"text": "hello", "final": True}),
        ("user-stopped-speaking", None),
        ("bot-llm-started", None),
        ("bot-llm-text", {"text": "Hi"}),
        ("bot-llm-text", {"text": " there"}),
        ("bot-tts-started", None),
        ("metrics", {"ttfb": [{"processor": "TTS#0", "model": "m", "value": 0.05}]}),
        ("bot-started-speaking", None),
        ("bot-llm-stopped", None),
        ("bot-tts-stopped", None),
        ("bot-tts-text", {"text": "Hi"}),
        ("bot-stopped-speaking", None),
        ("some-new-message", None),
        ("error", {"error": "rate limited", "fatal": False}),
    ]:
        s._on_frame(1, rtvi(kind, data))
    names = [m[0] for m in sink.marks]
    assert names == [
        "speech_started",
        "user_turn.started",
        "endpoint",
        "transcript.partial",
        "transcript.final",
        "committed",
        "llm.request",
        "llm.first_token",
        "tts.request",
        "framework.metrics",
        "bot.started_speaking",
        "llm.done",
        "tts.done",
        "bot.stopped_speaking",
        "unknown_event",
        "error",
    ]
    assert s._bot_ready.is_set()
    assert sink.done == 1 and not sink.failures
    final = next(m for m in sink.marks if m[0] == "transcript.final")
    assert final[1] == "transcription" and final[2]["text"] == "hello"
    metrics = next(m for m in sink.marks if m[0] == "framework.metrics")
    assert metrics[2]["ttfb"] == [{"processor": "TTS#0", "model": "m", "value": 0.05}]
    s._on_frame(1, rtvi("error", {"error": "boom", "fatal": True}))
    assert sink.failures == ["target error: boom"]


def test_done_on_idle_and_option_errors() -> None:
    s, sink = session(done_on="idle")
    s._on_frame(1, rtvi("bot-stopped-speaking"))
    assert sink.done == 0 and sink.marks[-1][0] == "bot.stopped_speaking"
    with pytest.raises(UsageError, match="rtvi"):
        session(rtvi="maybe")
    with pytest.raises(UsageError, match="done_on"):
        session(done_on="never")


def test_other_frames_and_garbage() -> None:
    from pipecat.frames.frames import InterruptionFrame, TextFrame, TranscriptionFrame

    s, sink = session()
    s._on_frame(1, serialize(TextFrame(text="a")))
    s._on_frame(1, serialize(TextFrame(text="b")))
    s._on_frame(1, serialize(TranscriptionFrame(text="hi", user_id="u", timestamp="t")))
    s._on_frame(1, serialize(InterruptionFrame()))
    s._on_frame(1, encode_message_frame({"hello": "world"}))  # not RTVI
    assert [m[0] for m in sink.marks] == [
        "reply_text.first",
        "transcript.final",
        "interrupted",
        "transport.message",
    ]
    s._on_frame(1, b"\xff\xff\xff")
    assert sink.failures and "not a pipecat protobuf frame" in sink.failures[0]


@pytest.mark.parametrize(
    "data",
    [b"", b"\x0a", b"\x0a\x05ab", b"\x08", b"\x12\x02\x08", b"\x30\x01", b"\x0b", b"\x07"],
)
def test_wire_errors(data: bytes) -> None:
    with pytest.raises(WireError):
        decode_frame(data)


def test_parse_fields_matches_protobuf() -> None:
    from pipecat.frames.protobufs import frames_pb2

    msg = frames_pb2.Frame()
    msg.audio.id = 2**40 + 7
    msg.audio.name = "x" * 300
    msg.audio.audio = b"\x01" * 1000
    msg.audio.sample_rate = 48000
    msg.audio.num_channels = 1
    msg.audio.pts = 123456789
    f = decode_frame(msg.SerializeToString())
    assert f.fields["id"] == 2**40 + 7 and f.fields["pts"] == 123456789
    assert f.fields["name"] == b"x" * 300 and f.fields["sample_rate"] == 48000
    parsed = frames_pb2.Frame.FromString(encode_message_frame({"a": 1}))
    assert json.loads(parsed.message.data) == {"a": 1}
    assert parse_fields(b"\x08\x96\x01") == [(1, 150)]


def test_codec_agrees_with_protobuf_on_any_audio() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st
    from pipecat.frames.protobufs import frames_pb2

    @settings(max_examples=200, deadline=None)
    @given(
        pcm=st.binary(max_size=4000),
        rate=st.integers(min_value=1, max_value=2**32 - 1),
        channels=st.integers(min_value=1, max_value=8),
    )
    def check(pcm: bytes, rate: int, channels: int) -> None:
        data = encode_audio_frame(pcm, rate, channels)
        msg = frames_pb2.Frame.FromString(data)
        assert msg.WhichOneof("frame") == "audio"
        assert (msg.audio.audio, msg.audio.sample_rate, msg.audio.num_channels) == (
            pcm,
            rate,
            channels,
        )
        f = decode_frame(msg.SerializeToString())
        assert f.fields.get("audio", b"") == pcm and f.fields["sample_rate"] == rate

    check()
