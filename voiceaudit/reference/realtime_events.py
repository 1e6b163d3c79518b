"""The OpenAI Realtime protocol's shapes for the reference server (GA and beta).

What :mod:`voiceaudit.reference.realtime` says and reads besides the session plumbing:
audio formats and their codecs, the session's settings (``session.update`` parsing, the
``session`` object of ``session.created``/``updated``), event names in either dialect,
and the response, item and usage objects. No I/O here.
"""

from __future__ import annotations

import base64
import binascii
import time
from dataclasses import dataclass, field
from typing import Any

from voiceaudit.reference.config import ServerConfig
from voiceaudit.reference.dsp import (
    F32,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)

PCM_RATE = 24_000
G711_RATE = 8_000
#: Audio tokens counted per second of audio in ``usage`` (the reference's own convention).
AUDIO_TOKENS_PER_S = 10

GA_FORMATS = {"audio/pcm": PCM_RATE, "audio/pcmu": G711_RATE, "audio/pcma": G711_RATE}
_BETA_FORMATS = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
BETA_NAMES = {v: k for k, v in _BETA_FORMATS.items()}
#: GA event names the beta protocol spells differently.
_BETA_EVENTS = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
}

CLIENT_EVENTS = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
    "transcription_session.update",
)


class ProtocolError(Exception):
    """A client event the server refuses: answered with an ``error`` event."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


def event_name(ga: str, beta: bool) -> str:
    """A server event's name in the client's dialect."""
    return _BETA_EVENTS.get(ga, ga) if beta else ga


def decode_audio(fmt: str, data: bytes) -> F32:
    """Input audio in ``fmt`` as float samples."""
    if fmt == "audio/pcm":
        if len(data) % 2:
            raise ProtocolError(
                "invalid_value",
                "audio/pcm must be 16-bit samples: the decoded audio has an odd number of bytes",
                "audio",
            )
        return pcm16_to_float(data)
    if fmt == "audio/pcmu":
        return ulaw_decode(data)
    return alaw_decode(data)


def decode_append(event: dict[str, Any], fmt: str) -> F32:
    """The audio of an ``input_audio_buffer.append`` (base64 in ``fmt``) as float samples."""
    audio = event.get("audio")
    if not isinstance(audio, str):
        raise ProtocolError(
            "missing_required_parameter", "Missing required parameter: 'audio'.", "audio"
        )
    try:
        data = base64.b64decode(audio, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(
            "invalid_value", "Invalid 'audio': it is not valid base64.", "audio"
        ) from None
    return decode_audio(fmt, data)


def unknown_event(etype: str) -> ProtocolError:
    """The error for a client event the server does not handle."""
    if etype in CLIENT_EVENTS:
        return ProtocolError(
            "unsupported_event",
            f"'{etype}' is not supported by the voiceaudit reference pipeline.",
            "type",
        )
    return ProtocolError(
        "invalid_value",
        f"Invalid value: '{etype}'. Supported values are: "
        + ", ".join(f"'{e}'" for e in CLIENT_EVENTS)
        + ".",
        "type",
    )


def parse_truncate(event: dict[str, Any]) -> tuple[str, int]:
    """The item id and ``audio_end_ms`` of a ``conversation.item.truncate``."""
    item_id = event.get("item_id")
    content_index = event.get("content_index", 0)
    end_ms = event.get("audio_end_ms")
    if not isinstance(item_id, str):
        raise ProtocolError(
            "missing_required_parameter", "Missing required parameter: 'item_id'.", "item_id"
        )
    if isinstance(end_ms, bool) or not isinstance(end_ms, int):
        raise ProtocolError(
            "missing_required_parameter",
            "Missing required parameter: 'audio_end_ms' (an integer).",
            "audio_end_ms",
        )
    if isinstance(content_index, bool) or content_index != 0:
        raise ProtocolError(
            "invalid_value", "Invalid 'content_index': only 0 is valid.", "content_index"
        )
    return item_id, end_ms


def encode_audio(fmt: str, samples: F32) -> bytes:
    """Float samples as reply audio in ``fmt``."""
    if fmt == "audio/pcm":
        return float_to_pcm16(samples)
    if fmt == "audio/pcmu":
        return ulaw_encode(samples)
    return alaw_encode(samples)


def format_object(name: str) -> dict[str, Any]:
    """A GA audio format object."""
    return {"type": name, "rate": PCM_RATE} if name == "audio/pcm" else {"type": name}


def default_turn_detection(cfg: ServerConfig) -> dict[str, Any]:
    """The server VAD settings a session starts with (from the server's configuration)."""
    return {
        "type": "server_vad",
        "threshold": cfg.vad_threshold,
        "prefix_padding_ms": cfg.prefix_padding_ms,
        "silence_duration_ms": cfg.silence_ms,
        "create_response": True,
        "interrupt_response": True,
        "idle_timeout_ms": None,
    }


def parse_format(value: Any, param: str) -> str:
    """An audio format of ``session.update`` (a GA object or a beta name) as a GA name."""
    if isinstance(value, str):
        if value in _BETA_FORMATS:
            return _BETA_FORMATS[value]
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: '{value}'. Supported values are: 'pcm16', 'g711_ulaw', "
            "and 'g711_alaw'.",
            param,
        )
    if not isinstance(value, dict):
        raise ProtocolError("invalid_type", f"{param} must be an object", param)
    ftype = value.get("type", "audio/pcm")
    if ftype not in GA_FORMATS:
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: '{ftype}'. Supported values are: 'audio/pcm', 'audio/pcmu', "
            "and 'audio/pcma'.",
            f"{param}.type",
        )
    rate = value.get("rate")
    if ftype == "audio/pcm" and rate is not None and rate != PCM_RATE:
        raise ProtocolError(
            "invalid_value",
            f"Invalid value: {rate}. audio/pcm supports only a rate of 24000.",
            f"{param}.rate",
        )
    return str(ftype)


@dataclass
class RealtimeSettings:
    """A session's settings, as ``session.update`` sets them."""

    cfg: ServerConfig
    input_format: str = "audio/pcm"
    output_format: str = "audio/pcm"
    voice: str = "alloy"
    speed: float = 1.0
    instructions: str = ""
    output_modalities: list[str] = field(default_factory=lambda: ["audio"])
    transcription: dict[str, Any] | None = None
    turn_detection: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.turn_detection = default_turn_detection(self.cfg)

    def vad(self) -> dict[str, Any]:
        """The input pipeline's settings (``open_input``) for these settings."""
        td, cfg = self.turn_detection, self.cfg
        return {
            "silence_ms": int(td["silence_duration_ms"]) if td else cfg.silence_ms,
            "prefix_padding_ms": int(td["prefix_padding_ms"]) if td else cfg.prefix_padding_ms,
            "threshold": float(td["threshold"]) if td else cfg.vad_threshold,
            "vad_enabled": td is not None,
        }

    def session_object(self, session_id: str, model: str, beta: bool) -> dict[str, Any]:
        """The ``session`` of ``session.created`` / ``session.updated``."""
        expires = int(time.time()) + 3600
        if beta:
            td = dict(self.turn_detection) if self.turn_detection else None
            if td is not None:
                td.pop("idle_timeout_ms", None)
            return {
                "id": session_id,
                "object": "realtime.session",
                "model": model,
                "expires_at": expires,
                "modalities": ["text", "audio"] if "audio" in self.output_modalities else ["text"],
                "instructions": self.instructions,
                "voice": self.voice,
                "input_audio_format": BETA_NAMES[self.input_format],
                "output_audio_format": BETA_NAMES[self.output_format],
                "input_audio_transcription": self.transcription,
                "turn_detection": td,
                "tools": [],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": "inf",
                "speed": self.speed,
            }

        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": session_id,
            "model": model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "expires_at": expires,
            "include": None,
            "audio": {
                "input": {
                    "format": format_object(self.input_format),
                    "transcription": self.transcription,
                    "noise_reduction": None,
                    "turn_detection": self.turn_detection,
                },
                "output": {
                    "format": format_object(self.output_format),
                    "voice": self.voice,
                    "speed": self.speed,
                },
            },
        }

    def parse_turn_detection(self, value: Any, param: str) -> dict[str, Any] | None:
        """``turn_detection`` of ``session.update``, over the current settings."""
        if value is None:
            return None
        if not isinstance(value, dict):
            raise ProtocolError("invalid_type", f"{param} must be an object or null", param)
        kind = value.get("type", "server_vad")
        if kind == "semantic_vad":
            raise ProtocolError(
                "unsupported_value",
                "semantic_vad is not available in the voiceaudit reference pipeline; "
                "use server_vad",
                f"{param}.type",
            )
        if kind != "server_vad":
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: 'server_vad' and 'semantic_vad'.",
                f"{param}.type",
            )
        base = dict(self.turn_detection or {}) or default_turn_detection(self.cfg)
        checks: dict[str, tuple[bool, float, float]] = {
            "threshold": (False, 0.0, 1.0),
            "prefix_padding_ms": (True, 0, 5000),
            "silence_duration_ms": (True, 10, 10000),
        }
        for key, (integral, lo, hi) in checks.items():
            if key in value and value[key] is not None:
                v = value[key]
                ok = isinstance(v, int) or (not integral and isinstance(v, float))
                if isinstance(v, bool) or not ok or not lo <= float(v) <= hi:
                    raise ProtocolError(
                        "invalid_value", f"Invalid value for {key}: {v!r}", f"{param}.{key}"
                    )
                base[key] = v
        for key in ("create_response", "interrupt_response"):
            if key in value and value[key] is not None:
                base[key] = bool(value[key])
        if "idle_timeout_ms" in value:
            base["idle_timeout_ms"] = value["idle_timeout_ms"]
        base["type"] = "server_vad"
        return base

    def update(self, event: dict[str, Any]) -> tuple[bool, bool]:
        """Apply a ``session.update`` (GA or beta shape; nothing changes when it is refused).
        Returns whether the input format changed and whether turn detection was set."""
        session = event.get("session")
        if not isinstance(session, dict):
            raise ProtocolError("missing_required_parameter", "Missing 'session'.", "session")
        stype = session.get("type")
        if stype not in (None, "realtime"):
            raise ProtocolError(
                "invalid_value",
                f"Invalid value: '{stype}'. The reference pipeline serves 'realtime' sessions.",
                "session.type",
            )
        new_in, new_out = self.input_format, self.output_format
        td = self.turn_detection
        td_set = False
        voice, speed = self.voice, self.speed
        modalities = self.output_modalities
        transcription = self.transcription
        audio = session.get("audio")
        if audio is not None:
            if not isinstance(audio, dict):
                raise ProtocolError(
                    "invalid_type", "session.audio must be an object", "session.audio"
                )
            inp = audio.get("input") or {}
            out = audio.get("output") or {}
            if "format" in inp:
                new_in = parse_format(inp["format"], "session.audio.input.format")
            if "turn_detection" in inp:
                td = self.parse_turn_detection(
                    inp["turn_detection"], "session.audio.input.turn_detection"
                )
                td_set = True
            if "transcription" in inp:
                transcription = inp["transcription"]
            if "format" in out:
                new_out = parse_format(out["format"], "session.audio.output.format")
            if "voice" in out:
                v = out["voice"]
                voice = v.get("id", "alloy") if isinstance(v, dict) else str(v)
            if "speed" in out and out["speed"] is not None:
                speed = float(out["speed"])
        # Beta shape (also accepted from GA clients).
        if "input_audio_format" in session:
            new_in = parse_format(session["input_audio_format"], "session.input_audio_format")
        if "output_audio_format" in session:
            new_out = parse_format(session["output_audio_format"], "session.output_audio_format")
        if "turn_detection" in session:
            td = self.parse_turn_detection(session["turn_detection"], "session.turn_detection")
            td_set = True
        if "input_audio_transcription" in session:
            transcription = session["input_audio_transcription"]
        if "voice" in session:
            voice = str(session["voice"])
        if "speed" in session and session["speed"] is not None:
            speed = float(session["speed"])
        mods = session.get("output_modalities", session.get("modalities"))
        if mods is not None:
            if not isinstance(mods, list) or not set(mods) <= {"text", "audio"} or not mods:
                raise ProtocolError(
                    "invalid_value",
                    "output_modalities must be ['audio'] or ['text']",
                    "session.output_modalities",
                )
            modalities = ["audio"] if "audio" in mods else ["text"]
        if not 0.25 <= speed <= 1.5:
            raise ProtocolError(
                "invalid_value", f"Invalid speed {speed}", "session.audio.output.speed"
            )
        if "instructions" in session and isinstance(session["instructions"], str):
            self.instructions = session["instructions"]
        rebuild = new_in != self.input_format
        self.input_format, self.output_format = new_in, new_out
        self.voice, self.speed, self.output_modalities = voice, speed, modalities
        self.transcription = transcription if isinstance(transcription, dict) else None
        if td_set:
            self.turn_detection = td
        return rebuild, td_set

    def response_object(self, resp_id: str, conversation_id: str, beta: bool) -> dict[str, Any]:
        """The ``response`` of ``response.created`` (in progress)."""
        head: dict[str, Any] = {
            "object": "realtime.response",
            "id": resp_id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
        }
        if beta:
            return head | {
                "usage": None,
                "metadata": None,
                "modalities": ["text", "audio"] if "audio" in self.output_modalities else ["text"],
                "voice": self.voice,
                "output_audio_format": BETA_NAMES[self.output_format],
            }
        audio = {"output": {"format": format_object(self.output_format), "voice": self.voice}}
        return head | {
            "conversation_id": conversation_id,
            "output_modalities": list(self.output_modalities),
            "max_output_tokens": "inf",
            "audio": audio,
            "usage": None,
            "metadata": None,
        }


def message_item(item_id: str, role: str, status: str, content: list[Any]) -> dict[str, Any]:
    """A conversation message item."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": role,
        "content": content,
    }


def usage(in_audio_tokens: int, text_tokens: int, out_audio_tokens: int) -> dict[str, Any]:
    """A response's ``usage`` (audio counted at :data:`AUDIO_TOKENS_PER_S`)."""
    return {
        "total_tokens": in_audio_tokens + text_tokens + out_audio_tokens,
        "input_tokens": in_audio_tokens,
        "output_tokens": text_tokens + out_audio_tokens,
        "input_token_details": {
            "text_tokens": 0,
            "audio_tokens": in_audio_tokens,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_tokens, "audio_tokens": out_audio_tokens},
    }


def finished_item(
    item: dict[str, Any], text: str, status: str, audio: bool, beta: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A reply item as it ends (``status`` of its response), and its content part."""
    item_status = "completed" if status == "completed" else "incomplete"
    if audio:
        content = [{"type": "audio" if beta else "output_audio", "transcript": text}]
        part = {"type": "audio", "transcript": text}
    else:
        content = [{"type": "text" if beta else "output_text", "text": text}]
        part = {"type": "text", "text": text}
    return dict(item, status=item_status, content=content), part


def finished_response(
    response: dict[str, Any],
    status: str,
    item: dict[str, Any],
    reason: str | None,
    error: str | None,
) -> dict[str, Any]:
    """The ``response`` of ``response.done`` (``usage`` still to be set)."""
    final = dict(response, status=status, output=[item])
    if status != "completed":
        final["status_details"] = {
            "type": status,
            "reason": reason,
            "error": {"type": "server_error", "code": None, "message": error}
            if status == "failed"
            else None,
        }
    return final
