"""What every telemetry importer produces, before and after clock alignment.

An importer reads a framework's own telemetry and turns it into :class:`Telemetry`:
intervals and instants on the *framework's* wall clock, grouped per conversation, plus
the numbers the framework itself reported (:class:`Measure`). Alignment (``align.py``)
then maps them onto a probe trace's monotonic clock and onto its sessions and turns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from voiceaudit.errors import InputError


class TelemetryError(InputError):
    """A telemetry file that cannot be imported (malformed, unrelated, or unsupported)."""


#: Attributes that carry what people said or what the bot answered. Dropped unless the
#: user asks to keep content, so imported traces are as safe to share as probe traces.
CONTENT_KEYS = frozenset(
    {
        "transcript",
        "text",
        "input",
        "output",
        "text_output",
        "gen_ai.system_instructions",
        "gen_ai.input.messages",
        "gen_ai.output.messages",
        "gen_ai.prompt",
        "gen_ai.completion",
        "lk.user_input",
        "lk.user_transcript",
        "lk.response.text",
        "lk.response.function_calls",
        "lk.chat_ctx",
        "lk.input_text",
        "lk.instructions",
        "lk.function_tool.arguments",
        "lk.function_tool.output",
        "delta",
        "audio",
        "instructions",
    }
)


def is_content_key(key: str) -> bool:
    return key in CONTENT_KEYS or ".pii." in key or key.startswith("lk.pii")


def strip_content(attrs: dict[str, Any], keep: bool) -> tuple[dict[str, Any], int]:
    """(attributes without content keys, how many were dropped)."""
    if keep:
        return dict(attrs), 0
    out = {k: v for k, v in attrs.items() if not is_content_key(k)}
    return out, len(attrs) - len(out)


def seconds_to_ns(value: Any) -> int | None:
    """A duration in (float) seconds as integer ns; None for anything that is not one."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")):  # NaN, inf
        return None
    return round(value * 1_000_000_000)


_ISO_FRACTION = re.compile(r"^(?P<head>[^.]+)(?:\.(?P<frac>\d+))?(?P<tz>Z|[+-]\d\d:?\d\d)?$")


def parse_iso_ns(text: str) -> int:
    """ISO 8601 (what ``span.to_json()`` writes) to Unix ns, keeping every fraction digit."""
    m = _ISO_FRACTION.match(text.strip())
    if m is None:
        raise ValueError(f"not an ISO 8601 time: {text!r}")
    tz = m.group("tz") or "Z"
    head = m.group("head")
    base = datetime.fromisoformat(head + ("+00:00" if tz == "Z" else tz))
    frac = (m.group("frac") or "")[:9].ljust(9, "0")
    return int(base.timestamp()) * 1_000_000_000 + int(frac)


def epoch_to_ns(value: Any) -> int | None:
    """A Unix time given as seconds (float), ms, µs or ns (told apart by magnitude), or ISO."""
    if isinstance(value, str):
        try:
            return parse_iso_ns(value)
        except ValueError:
            try:
                value = float(value)
            except ValueError:
                return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    if v <= 0:
        return None
    if v < 1e11:  # seconds (until the year 5138)
        return round(value * 1_000_000_000)
    if v < 1e14:  # milliseconds
        return round(value * 1_000_000)
    if v < 1e17:  # microseconds
        return round(value * 1_000)
    return int(value)


@dataclass(frozen=True, slots=True)
class Item:
    """One interval (``end_ns > start_ns``) or instant (equal) the framework reported.

    Times are the framework's wall clock (Unix ns). ``anchor_ns`` is the moment used to
    decide which exchange (and later which probe turn) the item belongs to. ``kind`` is
    ``span`` (a span record in the output) or ``event`` (a derived mark).
    """

    kind: str
    conversation: str
    start_ns: int
    end_ns: int
    stage: str
    name: str
    attrs: dict[str, Any]
    anchor_ns: int
    #: the framework's own turn key, when it has one (turn span id, LiveKit speech_id)
    group: str | None = None
    #: False for session-wide records (a conversation span): they get no turn
    per_turn: bool = True


@dataclass(frozen=True, slots=True)
class Measure:
    """A number the framework reported about one of its turns (a duration, in ns)."""

    framework: str
    conversation: str
    metric: str
    value_ns: int
    #: where it came from, e.g. ``turn.user_bot_latency_seconds`` on span ``turn``
    label: str
    anchor_ns: int
    group: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Constraint:
    """A framework instant that must fall inside a probe turn's causal window.

    ``after_speech_end``: it happened after the caller's last speech frame left the probe
    (the server cannot react to speech it has not received). ``before_reply``: it happened
    before the first reply byte reached the probe.
    """

    conversation: str
    t_ns: int
    kind: str  # "after_speech_end" | "before_reply"
    what: str
    #: the instant that decides which exchange it belongs to (default: ``t_ns``)
    anchor_ns: int | None = None

    @property
    def anchor(self) -> int:
        return self.t_ns if self.anchor_ns is None else self.anchor_ns


@dataclass
class Telemetry:
    """Everything one file said, on the framework's wall clock."""

    framework: str
    format: str
    items: list[Item] = field(default_factory=list)
    measures: list[Measure] = field(default_factory=list)
    constraints: list[Constraint] = field(default_factory=list)
    #: per conversation, (instant, group) at which the framework began each reply
    replies: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    #: per conversation, extra facts (e.g. the conversation id attribute)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    dropped_content: int = 0

    def add_conversation(self, key: str, **facts: Any) -> None:
        """Note a conversation (and facts about it) the first time or again."""
        self.conversations.setdefault(key, {}).update(facts)
        self.replies.setdefault(key, [])

    def add_span(
        self,
        conv: str,
        start_ns: int,
        end_ns: int,
        stage: str,
        name: str,
        attrs: dict[str, Any],
        anchor_ns: int,
        group: str | None = None,
        *,
        per_turn: bool = True,
    ) -> None:
        """An interval that becomes a span record."""
        self.items.append(
            Item("span", conv, start_ns, end_ns, stage, name, attrs, anchor_ns, group, per_turn)
        )

    def add_mark(
        self,
        conv: str,
        t_ns: int,
        stage: str,
        name: str,
        attrs: dict[str, Any],
        anchor_ns: int,
        group: str | None = None,
    ) -> None:
        """An instant that becomes an event record."""
        self.items.append(Item("event", conv, t_ns, t_ns, stage, name, attrs, anchor_ns, group))

    def add_measure(
        self,
        conv: str,
        metric: str,
        value_ns: int,
        label: str,
        anchor_ns: int,
        group: str | None = None,
        note: str | None = None,
    ) -> None:
        """A number this framework reported."""
        self.measures.append(
            Measure(self.framework, conv, metric, value_ns, label, anchor_ns, group, note)
        )

    def add_reply(self, conv: str, t_ns: int, what: str, group: str | None = None) -> None:
        """The framework began a reply at ``t_ns``: after the caller's speech ended and
        before the reply reached the probe (``what`` names the instant)."""
        self.replies[conv].append((t_ns, group))
        self.add_window(conv, t_ns, what)

    def add_window(self, conv: str, t_ns: int, what: str) -> None:
        """An instant after the caller's speech ended and before the reply arrived."""
        self.constraints.append(Constraint(conv, t_ns, "after_speech_end", what))
        self.constraints.append(Constraint(conv, t_ns, "before_reply", what))

    def add_first_byte(self, conv: str, t_ns: int, anchor_ns: int) -> None:
        """The synthesis's first byte, which came before the reply reached the probe."""
        self.constraints.append(Constraint(conv, t_ns, "before_reply", "tts first byte", anchor_ns))


def obj_at(d: dict[str, Any], key: str) -> dict[str, Any]:
    """``d[key]`` when it is a JSON object, else an empty one."""
    v = d.get(key)
    return v if isinstance(v, dict) else {}
