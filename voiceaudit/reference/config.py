"""Configuration of the reference pipeline and its fault-injection switches.

Everything here is a frozen dataclass: the server reads it, never changes it. Injections
are parsed from ``NAME=VALUE`` strings (the ``--inject`` option); each one adds a known,
hidden delay that real voice pipelines have, and the amounts land in the ground-truth
file so tests can check what the report finds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from voiceaudit.errors import UsageError

NS_PER_MS = 1_000_000

#: Stages that ``stage-delay=STAGE:DURATION`` can slow down.
STAGES = ("vad", "asr", "llm", "tts")

#: Every injection, with an example of its spec (``voiceaudit serve --help`` lists these;
#: a test parses each one).
INJECTION_EXAMPLES: dict[str, str] = {
    "leading-silence": "leading-silence=300ms",
    "llm-ttft": "llm-ttft=400ms",
    "whole-result-handoff": "whole-result-handoff",
    "sentence-aggregation": "sentence-aggregation=on",
    "small-writes": "small-writes",
    "audio-chunk": "audio-chunk=1000ms",
    "connect-delay": "connect-delay=200ms",
    "jitter": "jitter=20ms",
    "slow-audio": "slow-audio=0.8",
    "stage-delay": "stage-delay=asr:150ms",
    "rtp-jitter": "rtp-jitter=20ms",
    "rtp-loss": "rtp-loss=5%",
    "barge-in-delay": "barge-in-delay=300ms",
    "no-barge-in": "no-barge-in",
    "endpointing-silence": "endpointing-silence=200ms",
    "burst": "burst=10x",
    "no-clear": "no-clear",
    "greeting": "greeting=800ms",
    "no-greeting": "no-greeting",
    "mark-early": "mark-early",
}
INJECTION_NAMES: tuple[str, ...] = tuple(INJECTION_EXAMPLES)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s)?\s*$")
_UNIT_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": NS_PER_MS, "s": 1_000_000_000}


def parse_duration_ns(text: str, *, what: str) -> int:
    """``300ms``, ``0.3s``, ``1500us`` (a bare number is milliseconds) to nanoseconds."""
    m = _DURATION.match(text)
    if m is None:
        raise UsageError(
            f"{what}: {text!r} is not a duration", hint="write it like 300ms, 0.3s or 1500us"
        )
    unit = m.group(2) or "ms"
    return round(float(m.group(1)) * _UNIT_NS[unit])


def _parse_switch(text: str | None, *, what: str) -> bool:
    if text is None or text.strip().lower() in ("", "on", "true", "yes", "1"):
        return True
    if text.strip().lower() in ("off", "false", "no", "0"):
        return False
    raise UsageError(f"{what}: {text!r} is not on/off", hint=f"write {what} or {what}=off")


@dataclass(frozen=True, slots=True)
class Injections:
    """The hidden delays the reference pipeline adds on purpose (all off by default)."""

    #: Silence prepended to the audio of every synthesis request.
    leading_silence_ns: int = 0
    #: Extra time before the responder's first token (on top of ``ttft_ms``).
    llm_ttft_ns: int = 0
    #: Synthesis waits for the whole response text instead of the first phrase.
    whole_result_handoff: bool = False
    #: Synthesis waits for the end of each sentence instead of each phrase.
    sentence_aggregation: bool = False
    #: TCP_NODELAY off and reply audio written to the socket in pieces of this many bytes.
    small_writes_bytes: int | None = None
    #: Reply audio buffered into messages of this duration (instead of ``audio_chunk_ms``).
    audio_chunk_ns: int | None = None
    #: Delay before a new connection's first response (HTTP response or WebSocket upgrade).
    connect_delay_ns: int = 0
    #: Up to this much random (seeded, uniform) extra delay before each reply audio message.
    jitter_ns: int = 0
    #: Reply audio released at this fraction of real time (below 1: the caller hears gaps).
    slow_audio: float | None = None
    #: Extra processing time per stage (``vad``, ``asr``, ``llm``, ``tts``).
    stage_delay_ns: Mapping[str, int] = field(default_factory=dict)
    #: WebRTC only: random extra delay (uniform 0..this) per outgoing RTP packet, order kept.
    rtp_jitter_ns: int = 0
    #: WebRTC only: fraction of outgoing RTP packets dropped at random (seeded).
    rtp_loss: float = 0.0
    #: Barge-in: reply audio keeps going out for this long after the VAD heard the caller.
    barge_in_delay_ns: int = 0
    #: Barge-in off: the caller's speech never stops a reply (nor does the next turn).
    no_barge_in: bool = False
    #: Endpointing silence forced on every session (overrides ``--silence-ms`` and what a
    #: client asks for: ``silence_duration_ms``, ``?silence_ms=``); None leaves it alone.
    endpointing_silence_ns: int | None = None
    #: Carrier paths: replies (and the greeting) sent this many times faster than real
    #: time (None: at real time, like Pipecat's output transport).
    burst: float | None = None
    #: Carrier paths: no ``clear`` on barge-in (the carrier plays what it has queued).
    no_clear: bool = False
    #: The greeting's first audio this long after the call's media began (carrier:
    #: ``start`` received); also makes every other streaming protocol greet.
    greeting_ns: int | None = None
    #: Carrier paths: no greeting (the bot waits for the caller).
    no_greeting: bool = False
    #: Carrier paths: each reply's mark sent before the reply's audio, not after it.
    mark_early: bool = False

    @property
    def small_writes(self) -> bool:
        return self.small_writes_bytes is not None

    def stage_delay(self, stage: str) -> int:
        return int(self.stage_delay_ns.get(stage, 0))

    def active(self) -> bool:
        return self != Injections()

    def to_dict(self) -> dict[str, Any]:
        """The ground-truth form: every switch, with amounts in integer nanoseconds."""
        return {
            "leading_silence_ns": self.leading_silence_ns,
            "llm_ttft_ns": self.llm_ttft_ns,
            "whole_result_handoff": self.whole_result_handoff,
            "sentence_aggregation": self.sentence_aggregation,
            "small_writes": self.small_writes,
            "small_write_bytes": self.small_writes_bytes,
            "audio_chunk_ns": self.audio_chunk_ns,
            "connect_delay_ns": self.connect_delay_ns,
            "jitter_ns": self.jitter_ns,
            "slow_audio": self.slow_audio,
            "stage_delay_ns": {s: int(self.stage_delay_ns[s]) for s in sorted(self.stage_delay_ns)},
            "rtp_jitter_ns": self.rtp_jitter_ns,
            "rtp_loss": self.rtp_loss,
            "barge_in_delay_ns": self.barge_in_delay_ns,
            "no_barge_in": self.no_barge_in,
            "endpointing_silence_ns": self.endpointing_silence_ns,
            "burst": self.burst,
            "no_clear": self.no_clear,
            "greeting_ns": self.greeting_ns,
            "no_greeting": self.no_greeting,
            "mark_early": self.mark_early,
        }

    def describe(self) -> list[str]:
        """Human-readable ``NAME=VALUE`` lines, one per active injection."""
        out: list[str] = []
        if self.leading_silence_ns:
            out.append(f"leading-silence={self.leading_silence_ns / NS_PER_MS:g}ms")
        if self.llm_ttft_ns:
            out.append(f"llm-ttft={self.llm_ttft_ns / NS_PER_MS:g}ms")
        if self.whole_result_handoff:
            out.append("whole-result-handoff")
        if self.sentence_aggregation:
            out.append("sentence-aggregation=on")
        if self.small_writes_bytes is not None:
            out.append(f"small-writes={self.small_writes_bytes}")
        if self.audio_chunk_ns is not None:
            out.append(f"audio-chunk={self.audio_chunk_ns / NS_PER_MS:g}ms")
        if self.connect_delay_ns:
            out.append(f"connect-delay={self.connect_delay_ns / NS_PER_MS:g}ms")
        if self.jitter_ns:
            out.append(f"jitter={self.jitter_ns / NS_PER_MS:g}ms")
        if self.slow_audio is not None:
            out.append(f"slow-audio={self.slow_audio:g}")
        for stage in sorted(self.stage_delay_ns):
            out.append(f"stage-delay={stage}:{self.stage_delay_ns[stage] / NS_PER_MS:g}ms")
        if self.rtp_jitter_ns:
            out.append(f"rtp-jitter={self.rtp_jitter_ns / NS_PER_MS:g}ms")
        if self.rtp_loss:
            out.append(f"rtp-loss={self.rtp_loss * 100:g}%")
        if self.barge_in_delay_ns:
            out.append(f"barge-in-delay={self.barge_in_delay_ns / NS_PER_MS:g}ms")
        if self.no_barge_in:
            out.append("no-barge-in")
        if self.endpointing_silence_ns is not None:
            out.append(f"endpointing-silence={self.endpointing_silence_ns / NS_PER_MS:g}ms")
        if self.burst is not None:
            out.append(f"burst={self.burst:g}x")
        if self.no_clear:
            out.append("no-clear")
        if self.greeting_ns is not None:
            out.append(f"greeting={self.greeting_ns / NS_PER_MS:g}ms")
        if self.no_greeting:
            out.append("no-greeting")
        if self.mark_early:
            out.append("mark-early")
        return out

    def endpointing_silence_ms(self, asked_ms: int) -> int:
        """The endpointing silence a session uses when ``asked_ms`` is what it asked for."""
        if self.endpointing_silence_ns is None:
            return asked_ms
        return max(1, round(self.endpointing_silence_ns / NS_PER_MS))


#: Default piece size for ``small-writes`` (bytes per socket write).
DEFAULT_SMALL_WRITE_BYTES = 64


def apply_injection(inj: Injections, spec: str) -> Injections:
    """Return ``inj`` with one ``NAME=VALUE`` (or bare ``NAME``) switch applied."""
    name, sep, value = spec.partition("=")
    name = name.strip().lower()
    val: str | None = value.strip() if sep else None
    what = f"--inject {name}"

    def need() -> str:
        if val is None or val == "":
            raise UsageError(f"{what} needs a value", hint=f"write {name}=VALUE")
        return val

    if name == "leading-silence":
        return replace(inj, leading_silence_ns=parse_duration_ns(need(), what=what))
    if name == "llm-ttft":
        return replace(inj, llm_ttft_ns=parse_duration_ns(need(), what=what))
    if name == "whole-result-handoff":
        return replace(inj, whole_result_handoff=_parse_switch(val, what=name))
    if name == "sentence-aggregation":
        return replace(inj, sentence_aggregation=_parse_switch(val, what=name))
    if name == "small-writes":
        if val is not None and re.fullmatch(r"\d+\s*[bB]?", val):
            n = int(val.rstrip("bB ").strip())
            if n < 1:
                raise UsageError(f"{what}: the piece size must be at least 1 byte")
            return replace(inj, small_writes_bytes=n)
        on = _parse_switch(val, what=name)
        return replace(inj, small_writes_bytes=DEFAULT_SMALL_WRITE_BYTES if on else None)
    if name == "audio-chunk":
        ns = parse_duration_ns(need(), what=what)
        if ns < NS_PER_MS:
            raise UsageError(f"{what}: a chunk must be at least 1ms")
        return replace(inj, audio_chunk_ns=ns)
    if name == "connect-delay":
        return replace(inj, connect_delay_ns=parse_duration_ns(need(), what=what))
    if name == "jitter":
        return replace(inj, jitter_ns=parse_duration_ns(need(), what=what))
    if name == "slow-audio":
        try:
            factor = float(need())
        except ValueError:
            raise UsageError(
                f"{what}: {val!r} is not a number", hint="slow-audio=0.8 releases audio at 0.8x"
            ) from None
        if not 0.05 <= factor <= 20.0:
            raise UsageError(f"{what}: {factor:g} is outside 0.05..20")
        return replace(inj, slow_audio=factor)
    if name == "stage-delay":
        delays = dict(inj.stage_delay_ns)
        for part in need().split(","):
            stage, colon, dur = part.partition(":")
            stage = stage.strip().lower()
            if not colon or stage not in STAGES:
                raise UsageError(
                    f"{what}: {part!r} is not STAGE:DURATION",
                    hint=f"stages are {', '.join(STAGES)}; e.g. stage-delay=asr:150ms",
                )
            delays[stage] = parse_duration_ns(dur, what=what)
        return replace(inj, stage_delay_ns=delays)
    if name == "rtp-jitter":
        return replace(inj, rtp_jitter_ns=parse_duration_ns(need(), what=what))
    if name == "rtp-loss":
        raw = need().rstrip("%").strip()
        try:
            pct = float(raw)
        except ValueError:
            raise UsageError(f"{what}: {val!r} is not a percentage", hint="rtp-loss=5%") from None
        if not 0 <= pct <= 100:
            raise UsageError(f"{what}: {pct:g}% is outside 0..100%")
        return replace(inj, rtp_loss=pct / 100)
    if name == "barge-in-delay":
        return replace(inj, barge_in_delay_ns=parse_duration_ns(need(), what=what))
    if name == "no-barge-in":
        return replace(inj, no_barge_in=_parse_switch(val, what=name))
    if name == "endpointing-silence":
        ns = parse_duration_ns(need(), what=what)
        if not 10 * NS_PER_MS <= ns <= 10_000 * NS_PER_MS:
            raise UsageError(f"{what}: {ns / NS_PER_MS:g}ms is outside 10ms..10s")
        return replace(inj, endpointing_silence_ns=ns)
    if name == "burst":
        raw = need().lower().rstrip("x").strip()
        try:
            factor = float(raw)
        except ValueError:
            raise UsageError(
                f"{what}: {val!r} is not a factor", hint="burst=10x sends 10x real time"
            ) from None
        if not 1.0 <= factor <= 1000.0:
            raise UsageError(f"{what}: {factor:g}x is outside 1x..1000x")
        return replace(inj, burst=factor)
    if name == "no-clear":
        return replace(inj, no_clear=_parse_switch(val, what=name))
    if name == "greeting":
        ns = parse_duration_ns(need(), what=what)
        if ns > 60_000 * NS_PER_MS:
            raise UsageError(f"{what}: {ns / NS_PER_MS:g}ms is outside 0..60s")
        return replace(inj, greeting_ns=ns)
    if name == "no-greeting":
        return replace(inj, no_greeting=_parse_switch(val, what=name))
    if name == "mark-early":
        return replace(inj, mark_early=_parse_switch(val, what=name))
    raise UsageError(
        f"unknown injection {name!r}", hint="known injections: " + ", ".join(INJECTION_NAMES)
    )


def parse_injections(specs: Iterable[str]) -> Injections:
    """The injections ``specs`` (``NAME=VALUE`` strings) switch on, in order."""
    inj = Injections()
    for spec in specs:
        inj = apply_injection(inj, spec)
    if inj.no_greeting and inj.greeting_ns is not None:
        raise UsageError(
            "--inject greeting and no-greeting contradict each other", hint="give one of them"
        )
    return inj


#: The server settings' valid ranges, in the order they are checked: field, low, high
#: (None: no upper limit) and the message when the value is outside them.
_LIMITS: tuple[tuple[str, float, float | None, str], ...] = (
    ("port", 0, 65535, "--port {} is outside 0..65535"),
    ("silence_ms", 10, 10_000, "--silence-ms {} is outside 10..10000"),
    ("prefix_padding_ms", 0, 5_000, "prefix padding {} ms is outside 0..5000"),
    ("vad_threshold", 0.0, 1.0, "VAD threshold {} is outside 0..1"),
    ("ttft_ms", 0, None, "--ttft-ms cannot be negative"),
    ("token_rate", 0.1, 10_000, "--token-rate {} is outside 0.1..10000 tokens/s"),
    ("asr_workers", 1, 64, "--asr-workers {} is outside 1..64"),
    ("audio_chunk_ms", 5, 10_000, "audio chunk {} ms is outside 5..10000"),
    ("words_per_minute", 80, 450, "--wpm {} is outside 80..450"),
)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything ``voiceaudit serve`` needs; the library API takes the same object."""

    host: str = "127.0.0.1"
    #: 0 picks a free port.
    port: int = 0
    injections: Injections = field(default_factory=Injections)
    #: Where to write the per-turn ground truth (JSON Lines); None keeps it in memory only.
    ground_truth_path: Path | None = None
    #: Endpointing: trailing silence that ends a turn.
    silence_ms: int = 500
    #: Audio kept before the detected speech start (``prefix_padding_ms``).
    prefix_padding_ms: int = 300
    #: VAD threshold in 0..1, mapped onto webrtcvad's aggressiveness 0..3.
    vad_threshold: float = 0.5
    #: Scripted responder: time to first token and tokens per second.
    ttft_ms: float = 200.0
    token_rate: float = 50.0
    #: A real OpenAI-compatible server to use instead of the scripted responder.
    llm_url: str | None = None
    llm_model: str = "gpt-4o-mini"
    #: Name of the environment variable holding the API key for ``llm_url`` (never logged).
    llm_api_key_env: str = "OPENAI_API_KEY"
    #: Speech recognition worker processes (model loaded once each, kept warm).
    asr_workers: int = 2
    #: eSpeak NG voice and words per minute.
    voice: str = "en-us"
    words_per_minute: int = 175
    #: Reply audio message size when no ``audio-chunk`` injection is active.
    audio_chunk_ms: int = 20
    #: Seed for the jitter injection's random delays.
    seed: int = 0

    def __post_init__(self) -> None:
        for name, lo, hi, message in _LIMITS:
            value = getattr(self, name)
            if (value < lo) if hi is None else not lo <= value <= hi:
                raise UsageError(message.format(value))

    @classmethod
    def from_injections(cls, specs: Iterable[str], **overrides: Any) -> ServerConfig:
        """A configuration with ``--inject`` strings applied (and any other field set)."""
        return cls(injections=parse_injections(specs), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as recorded in the ground-truth header (no secrets)."""
        return {
            "silence_ms": self.silence_ms,
            "prefix_padding_ms": self.prefix_padding_ms,
            "vad_threshold": self.vad_threshold,
            "ttft_ms": self.ttft_ms,
            "token_rate": self.token_rate,
            "responder": "llm" if self.llm_url else "scripted",
            "llm_model": self.llm_model if self.llm_url else None,
            "asr_workers": self.asr_workers,
            "voice": self.voice,
            "words_per_minute": self.words_per_minute,
            "audio_chunk_ms": self.audio_chunk_ms,
            "seed": self.seed,
        }
