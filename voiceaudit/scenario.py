"""Scenario files: a scripted conversation per session, for turn-taking measurements.

A scenario is TOML (docs/scenarios.md). Each ``[[session]]`` holds ``[[session.turn]]``
tables; a turn says an utterance (a bundled utterance name or an audio file), optionally
with silences inserted inside it (``pause``), and optionally does something while the
reply plays: speaks over it (``interrupt``: a barge-in, which opens the next user turn)
or makes a short sound that should *not* stop it (``sound``: a backchannel or noise
burst, for false-interruption tests). ``repeat`` repeats a turn, ``[[session]]``'s
``repeat`` its whole turn list, and ``count`` runs that many independent sessions.

The file is checked against the schema before anything runs; every error is one line
naming the file and line (``scenario.toml:12: pause.at_ms 5000 is past the end of
02_table.wav (2823 ms)``), and exits 2 (:class:`ScenarioError`, a
:class:`~voiceaudit.errors.UsageError`); an audio file that is missing or unreadable
exits 3 (:class:`ScenarioAudioError`, an :class:`~voiceaudit.errors.InputError`), also
with the line that names it.

**The model** (what :func:`load_scenario` / :func:`parse_scenario` return) is plain frozen
dataclasses with every audio clip loaded, every pause inserted and every time in samples
at :attr:`Scenario.rate` (and in ns). How a probe executes it, per :class:`Session` (the
expanded ``count`` copies are separate sessions; ``turns`` already holds every repeat):

1. For each :class:`Turn` in order: send ``turn.say.samples`` at real-time pace (the
   microphone sends silence whenever nothing is being said). ``turn.say.speech_end`` is
   the ground-truth end of the caller's speech (sample index into those samples);
   ``turn.say.pauses`` are where the inserted silences lie, so a reply whose first audible
   sample falls while the caller is inside one (or before ``speech_end``) is a *cut-in*,
   with ``pause.length`` the pause that triggered it.
2. When the reply's first audible sample is heard (in the playout model's clock), start
   each :class:`Overlap` of ``turn.during_reply`` at that moment plus
   ``overlap.after_reply`` samples (``after_reply_ns`` in time): send its ``samples``
   instead of silence. ``overlap.kind`` is ``"interrupt"`` (a barge-in: the reply should
   stop; barge-in stop latency runs from the overlap's speech onset,
   ``overlap.speech_start``, to the last audible reply sample; the interrupting speech
   opens the next user turn, whose reply is "the response to the interruption", with
   its speech end at ``overlap.speech_end``), or ``"sound"`` (the reply should go on: if
   it stops, that is a false interruption).
3. Then wait for the reply to end (or be cut), then ``turn.gap`` samples of silence.

:meth:`Session.steps` flattens this into a list of :class:`Say`, :class:`Overlap` and
:class:`Wait` steps for a simple executor. Resample a clip to a target's rate with
:func:`voiceaudit.audio.resample` and map a position ``p`` with ``p * rate // self.rate``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from voiceaudit.errors import AudioError, InputError, LocatedError, UsageError
from voiceaudit.tomlpos import Path as KeyPath
from voiceaudit.tomlpos import TomlChecker, parse_toml, read_text

F32 = npt.NDArray[np.float32]

SCHEMA_VERSION = 1
DEFAULT_RATE = 16_000
RATES = (8_000, 16_000, 22_050, 24_000, 44_100, 48_000)
DEFAULT_GAP_MS = 500
MAX_REPEAT = 10_000
#: turns in a whole scenario, every count, repeat and session included
MAX_TURNS = 1_000_000
#: silence inserted into one turn's utterance, all its pauses together
MAX_PAUSE_MS = 600_000

_TOP_KEYS = ("version", "rate", "gap_ms", "seed", "greeting_wait_ms", "session")
_SESSION_KEYS = ("name", "count", "repeat", "gap_ms", "turn")
_TURN_KEYS = ("say", "dtmf", "pause", "interrupt", "sound", "repeat", "gap_ms")
#: the keys of a key-press turn (``dtmf``): DTMF digits, one after another
DTMF_DIGITS = "0123456789*#ABCD"
#: a key-press turn presses its keys this far apart
DTMF_SPACING_MS = 200
_PAUSE_KEYS = ("at_ms", "ms")
_INTERRUPT_KEYS = ("after_reply_ms", "say")
_SOUND_KEYS = ("after_reply_ms", "kind", "ms", "hz", "level_dbfs", "say")
SOUND_KINDS = ("tone", "noise", "audio")


class ScenarioError(LocatedError, UsageError):
    """A scenario file that does not fit the schema (exit 2); names the file and line."""


class ScenarioAudioError(InputError):
    """An audio file a scenario names is missing or unreadable (exit 3)."""


# --- the model ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One piece of audio, loaded: a bundled utterance, a file, or a generated sound."""

    #: what the scenario called it (``01_weather``, ``clips/cough.wav``, ``tone 440 Hz``)
    name: str
    #: ``bundled``, ``file``, ``tone`` or ``noise``
    source: str
    path: Path | None
    rate: int
    samples: F32 = field(compare=False, repr=False)
    #: first speech sample and one past the last (None for generated sounds)
    speech_start: int | None
    speech_end: int | None

    @property
    def n_samples(self) -> int:
        return int(self.samples.size)

    @property
    def duration_ms(self) -> float:
        return self.n_samples * 1000 / self.rate


@dataclass(frozen=True)
class Pause:
    """Silence inserted inside an utterance, as sent: ``[at, at + length)``."""

    at: int
    length: int
    #: as written: milliseconds into the original clip, and the pause's length
    at_ms: int
    ms: int


@dataclass(frozen=True)
class Say:
    """The caller says ``samples``: the clip with every pause inserted."""

    clip: Clip
    samples: F32 = field(compare=False, repr=False)
    pauses: tuple[Pause, ...]
    #: speech start/end as sample indexes into ``samples`` (pauses included)
    speech_start: int | None
    speech_end: int | None
    line: int | None = None

    @property
    def n_samples(self) -> int:
        return int(self.samples.size)


@dataclass(frozen=True)
class Overlap:
    """Something the caller does while the reply plays, ``after_reply`` samples after the
    reply's first audible sample: ``interrupt`` (barge-in speech; opens the next user turn)
    or ``sound`` (a backchannel or noise that should not stop the reply)."""

    kind: str
    after_reply: int
    after_reply_ns: int
    clip: Clip
    #: speech onset and end inside ``clip.samples`` (a generated sound: 0 and its length)
    speech_start: int
    speech_end: int
    line: int | None = None

    @property
    def samples(self) -> F32:
        return self.clip.samples

    @property
    def expect_stop(self) -> bool:
        """Whether the reply should stop (a sound that stops it is a false interruption)."""
        return self.kind == "interrupt"


@dataclass(frozen=True)
class Wait:
    """Wait for the reply (and the reply to an interruption) to end, then ``gap`` samples."""

    gap: int
    gap_ns: int


@dataclass(frozen=True)
class Turn:
    """One caller turn: what is said, what happens during the reply, the gap after it."""

    index: int
    say: Say
    during_reply: tuple[Overlap, ...]
    gap: int
    gap_ns: int
    line: int | None = None
    #: a key-press turn (``dtmf = "1"``): the keys pressed, ``DTMF_SPACING_MS`` apart, instead
    #: of speech (``say`` is then silence, its speech end the last press); None: a spoken turn
    dtmf: str | None = None


@dataclass(frozen=True)
class Session:
    name: str
    #: which of ``count`` copies this is (0-based)
    copy: int
    turns: tuple[Turn, ...]
    line: int | None = None

    def steps(self) -> list[Say | Overlap | Wait]:
        """The session as a flat list: for each turn its Say, its Overlaps, then a Wait."""
        out: list[Say | Overlap | Wait] = []
        for t in self.turns:
            out.append(t.say)
            out.extend(t.during_reply)
            out.append(Wait(t.gap, t.gap_ns))
        return out


@dataclass(frozen=True)
class Scenario:
    path: Path | None
    rate: int
    seed: int
    sessions: tuple[Session, ...]
    #: how long each session waits for the target's greeting before its first turn (ms);
    #: None: as ``run`` decides (``--greeting-wait``, else the protocol's default)
    greeting_wait_ms: int | None = None


# --- loading ------------------------------------------------------------------------------


def load_scenario(path: Path, *, bundled: Path | None = None) -> Scenario:
    """Read and check a scenario file; audio paths are relative to its directory."""
    text = read_text(path, error=ScenarioError, what="scenario file", unreadable=ScenarioAudioError)
    return parse_scenario(text, path=path, base_dir=path.parent, bundled=bundled)


def parse_scenario(
    text: str,
    *,
    path: Path | None = None,
    base_dir: Path | None = None,
    bundled: Path | None = None,
) -> Scenario:
    """Parse scenario TOML ``text``; ``base_dir`` resolves relative audio paths (default:
    the current directory), ``bundled`` is the directory of bundled utterances."""
    shown = path or Path("<scenario>")
    doc, lines = parse_toml(text, path=shown, error=ScenarioError)
    if bundled is None:
        from voiceaudit.data import bundled_dir

        bundled = bundled_dir()
    parser = _Parser(shown, lines, base_dir or Path.cwd(), bundled)
    return parser.scenario(doc, path)


class _Parser(TomlChecker):
    def __init__(self, path: Path, lines: dict[KeyPath, int], base: Path, bundled: Path) -> None:
        super().__init__(path, lines, ScenarioError)
        self.base = base
        self.bundled = bundled
        self.rate = DEFAULT_RATE
        self.seed = 0
        self._clips: dict[str, Clip] = {}
        self._sounds = 0
        self._turns = 0

    # -- values (fail(), line(), table() and check_keys() are TomlChecker's) ---------------

    def integer(
        self, table: dict[str, Any], key: str, at: KeyPath, *, lo: int, hi: int, default: int | None
    ) -> int:
        if key not in table:
            if default is None:
                self.fail(at, f"{_name(at)} needs {key!r}")
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int):
            self.fail((*at, key), f"{_name((*at, key))} must be an integer, not {self.kind(v)}")
        if not lo <= v <= hi:
            self.fail((*at, key), f"{_name((*at, key))} {v} is outside {lo}..{hi}")
        return v

    def number(
        self, table: dict[str, Any], key: str, at: KeyPath, *, lo: float, hi: float, default: float
    ) -> float:
        if key not in table:
            return default
        v = table[key]
        if isinstance(v, bool) or not isinstance(v, int | float):
            self.fail((*at, key), f"{_name((*at, key))} must be a number, not {self.kind(v)}")
        if not lo <= float(v) <= hi:
            self.fail((*at, key), f"{_name((*at, key))} {v:g} is outside {lo:g}..{hi:g}")
        return float(v)

    def string(self, table: dict[str, Any], key: str, at: KeyPath) -> str:
        if key not in table:
            self.fail(at, f"{_name(at)} needs {key!r}")
        v = table[key]
        if not isinstance(v, str) or not v.strip():
            self.fail((*at, key), f"{_name((*at, key))} must be a non-empty string")
        return v

    def samples(self, ms: int) -> int:
        return ms * self.rate // 1000

    # -- document -------------------------------------------------------------------------

    def scenario(self, doc: dict[str, Any], path: Path | None) -> Scenario:
        self.check_keys(doc, (), _TOP_KEYS, what="top-level key")
        version = self.integer(doc, "version", (), lo=1, hi=SCHEMA_VERSION, default=1)
        del version
        if "rate" in doc:
            rate = doc["rate"]
            if isinstance(rate, bool) or rate not in RATES:
                self.fail(("rate",), f"rate {rate!r} is not one of {', '.join(map(str, RATES))}")
            self.rate = int(rate)
        self.seed = self.integer(doc, "seed", (), lo=0, hi=2**31 - 1, default=0)
        greeting_wait_ms = (
            self.integer(doc, "greeting_wait_ms", (), lo=0, hi=600_000, default=0)
            if "greeting_wait_ms" in doc
            else None
        )
        gap_ms = self.integer(doc, "gap_ms", (), lo=0, hi=600_000, default=DEFAULT_GAP_MS)
        raw = doc.get("session")
        if raw is None:
            # Nothing to point at: the error names the file's first line.
            raise ScenarioError(
                "no [[session]]: a scenario needs at least one session",
                path=self.path,
                line=1,
                hint="add a [[session]] table with at least one [[session.turn]]",
            )
        if not isinstance(raw, list) or not raw:
            self.fail(("session",), "session must be an array of tables ([[session]])")
        sessions: list[Session] = []
        for i, s in enumerate(raw):
            sessions.extend(self.session(s, ("session", i), i, gap_ms))
        return Scenario(path, self.rate, self.seed, tuple(sessions), greeting_wait_ms)

    def session(self, raw: Any, at: KeyPath, i: int, gap_ms: int) -> list[Session]:
        s = self.table(raw, at, "a session")
        self.check_keys(s, at, _SESSION_KEYS, what="session key")
        name = s.get("name", f"session-{i + 1}")
        if not isinstance(name, str) or not name:
            self.fail((*at, "name"), "session.name must be a non-empty string")
        count = self.integer(s, "count", at, lo=1, hi=MAX_REPEAT, default=1)
        repeat = self.integer(s, "repeat", at, lo=1, hi=MAX_REPEAT, default=1)
        gap_ms = self.integer(s, "gap_ms", at, lo=0, hi=600_000, default=gap_ms)
        raw_turns = s.get("turn")
        if raw_turns is None:
            self.fail(at, f"session {name!r} has no turns ([[session.turn]])")
        if not isinstance(raw_turns, list) or not raw_turns:
            self.fail((*at, "turn"), "session.turn must be an array of tables ([[session.turn]])")
        parsed = [self.turn(t, (*at, "turn", j), gap_ms) for j, t in enumerate(raw_turns)]
        # Each bound alone is modest; their product is not (10,000^3 turns would never
        # finish being built): the whole scenario has at most MAX_TURNS turns.
        self._turns += count * repeat * sum(r for r, _ in parsed)
        if self._turns > MAX_TURNS:
            self.fail(
                at,
                f"the scenario has {self._turns} turns by session {name!r} (count x repeat "
                f"x turns and their repeats); at most {MAX_TURNS}",
            )
        script: list[tuple[Say, tuple[Overlap, ...], int, int | None, str | None]] = []
        for _ in range(repeat):
            for turn_repeat, item in parsed:
                script.extend([item] * turn_repeat)
        out: list[Session] = []
        for copy in range(count):
            turns = tuple(
                Turn(k, say, overlaps, gap, gap * 1_000_000_000 // self.rate, line, dtmf)
                for k, (say, overlaps, gap, line, dtmf) in enumerate(script)
            )
            out.append(Session(name, copy, turns, self.line(at)))
        return out

    def turn(
        self, raw: Any, at: KeyPath, gap_ms: int
    ) -> tuple[int, tuple[Say, tuple[Overlap, ...], int, int | None, str | None]]:
        t = self.table(raw, at, "a turn")
        self.check_keys(t, at, _TURN_KEYS, what="turn key")
        dtmf: str | None = None
        if "dtmf" in t:
            if "say" in t:
                self.fail((*at, "dtmf"), "a turn either says something or presses keys (dtmf)")
            if "pause" in t:
                self.fail((*at, "pause"), "a key-press turn (dtmf) has no speech to pause")
            dtmf = self.dtmf(t["dtmf"], (*at, "dtmf"))
            clip = self._presses(dtmf)
        else:
            clip = self.clip(self.string(t, "say", at), (*at, "say"))
        pauses = self.pauses(t.get("pause"), (*at, "pause"), clip) if "pause" in t else ()
        say = self.say(clip, pauses, self.line(at))
        overlaps: list[Overlap] = []
        if "interrupt" in t:
            overlaps.append(self.interrupt(t["interrupt"], (*at, "interrupt")))
        if "sound" in t:
            raw_sounds = t["sound"]
            items = raw_sounds if isinstance(raw_sounds, list) else [raw_sounds]
            for k, item in enumerate(items):
                sub = (*at, "sound", k) if isinstance(raw_sounds, list) else (*at, "sound")
                overlaps.append(self.sound(item, sub))
        overlaps.sort(key=lambda o: o.after_reply)
        barge = next((o for o in overlaps if o.kind == "interrupt"), None)
        if barge is not None and overlaps[-1] is not barge:
            self.fail(
                (*at, "sound"),
                f"a sound at {overlaps[-1].after_reply_ns // 1_000_000} ms comes after the "
                f"interrupt at {barge.after_reply_ns // 1_000_000} ms: the reply it was meant "
                "for is cut by then",
            )
        repeat = self.integer(t, "repeat", at, lo=1, hi=MAX_REPEAT, default=1)
        gap = self.samples(self.integer(t, "gap_ms", at, lo=0, hi=600_000, default=gap_ms))
        return repeat, (say, tuple(overlaps), gap, self.line(at), dtmf)

    def dtmf(self, v: Any, at: KeyPath) -> str:
        if not isinstance(v, str) or not 1 <= len(v) <= 32:
            self.fail(at, 'dtmf must be a string of 1 to 32 keys, e.g. "1" or "123#"')
        bad = sorted({c for c in v if c not in DTMF_DIGITS})
        if bad:
            self.fail(at, f"dtmf {v!r}: {''.join(bad)!r} is not a key (keys: {DTMF_DIGITS})")
        return v

    def _presses(self, digits: str) -> Clip:
        """A key-press turn's audio: silence, the keys ``DTMF_SPACING_MS`` apart from its
        start; its "speech" ends at the last press (the probe sends the key events)."""
        last = self.samples(DTMF_SPACING_MS * (len(digits) - 1))
        n = last + self.samples(DTMF_SPACING_MS)
        return Clip(f"dtmf {digits}", "dtmf", None, self.rate, np.zeros(n, np.float32), 0, last + 1)

    def say(self, clip: Clip, pauses: tuple[Pause, ...], line: int | None) -> Say:
        if not pauses:
            return Say(clip, clip.samples, (), clip.speech_start, clip.speech_end, line)
        parts: list[F32] = []
        prev = 0
        shifted: list[Pause] = []
        inserted = 0
        for p in pauses:
            parts.append(clip.samples[prev : p.at])
            parts.append(np.zeros(p.length, dtype=np.float32))
            shifted.append(Pause(p.at + inserted, p.length, p.at_ms, p.ms))
            inserted += p.length
            prev = p.at
        parts.append(clip.samples[prev:])

        def shift(i: int | None) -> int | None:
            if i is None:
                return None
            return i + sum(p.length for p in pauses if p.at < i)

        return Say(
            clip,
            np.concatenate(parts).astype(np.float32),
            tuple(shifted),
            shift(clip.speech_start),
            shift(clip.speech_end),
            line,
        )

    def pauses(self, raw: Any, at: KeyPath, clip: Clip) -> tuple[Pause, ...]:
        items = raw if isinstance(raw, list) else [raw]
        out: list[Pause] = []
        total = 0
        for k, item in enumerate(items):
            sub = (*at, k) if isinstance(raw, list) else at
            p = self.table(item, sub, "pause")
            self.check_keys(p, sub, _PAUSE_KEYS, what="pause key")
            at_ms = self.integer(p, "at_ms", sub, lo=0, hi=3_600_000, default=None)
            ms = self.integer(p, "ms", sub, lo=1, hi=60_000, default=None)
            if self.samples(at_ms) >= clip.n_samples:
                self.fail(
                    (*sub, "at_ms"),
                    f"pause.at_ms {at_ms} is past the end of {clip.name} "
                    f"({clip.duration_ms:.0f} ms)",
                )
            if out and at_ms <= out[-1].at_ms:
                self.fail(
                    (*sub, "at_ms"),
                    f"pause.at_ms {at_ms} is not after the previous pause's ({out[-1].at_ms})",
                    hint="list the pauses of a turn in order of at_ms",
                )
            out.append(Pause(self.samples(at_ms), self.samples(ms), at_ms, ms))
            total += ms
            if total > MAX_PAUSE_MS:
                # thousands of one-minute pauses would be hours of audio held in memory
                self.fail(
                    (*sub, "ms"),
                    f"the pauses of this turn add up to {total} ms; at most {MAX_PAUSE_MS}",
                )
        return tuple(out)

    def interrupt(self, raw: Any, at: KeyPath) -> Overlap:
        t = self.table(raw, at, "interrupt")
        self.check_keys(t, at, _INTERRUPT_KEYS, what="interrupt key")
        after = self.integer(t, "after_reply_ms", at, lo=0, hi=600_000, default=None)
        clip = self.clip(self.string(t, "say", at), (*at, "say"))
        if clip.speech_start is None or clip.speech_end is None:
            self.fail((*at, "say"), f"the interrupt's audio {clip.name} holds no speech")
        return Overlap(
            "interrupt",
            self.samples(after),
            after * 1_000_000,
            clip,
            clip.speech_start,
            clip.speech_end,
            self.line(at),
        )

    def sound(self, raw: Any, at: KeyPath) -> Overlap:
        t = self.table(raw, at, "sound")
        self.check_keys(t, at, _SOUND_KEYS, what="sound key")
        after = self.integer(t, "after_reply_ms", at, lo=0, hi=600_000, default=None)
        kind = t.get("kind", "tone" if "say" not in t else "audio")
        if kind not in SOUND_KINDS:
            self.fail(
                (*at, "kind"), f"unknown sound kind {kind!r}", f"kinds: {', '.join(SOUND_KINDS)}"
            )
        if kind == "audio":
            for key in ("ms", "hz", "level_dbfs"):
                if key in t:
                    self.fail(
                        (*at, key), f"sound.{key} is for generated sounds, not kind = 'audio'"
                    )
            clip = self.clip(self.string(t, "say", at), (*at, "say"))
        else:
            if "say" in t:
                self.fail((*at, "say"), f"a {kind} sound is generated: it takes no 'say'")
            ms = self.integer(t, "ms", at, lo=10, hi=5_000, default=200)
            level = self.number(t, "level_dbfs", at, lo=-90.0, hi=0.0, default=-20.0)
            hz = self.number(t, "hz", at, lo=20.0, hi=self.rate / 2 - 1, default=440.0)
            if kind == "noise" and "hz" in t:
                self.fail((*at, "hz"), "sound.hz is for tones, not noise")
            clip = self._generated(kind, ms, hz, level)
        start = clip.speech_start if clip.speech_start is not None else 0
        end = clip.speech_end if clip.speech_end is not None else clip.n_samples
        return Overlap(
            "sound", self.samples(after), after * 1_000_000, clip, start, end, self.line(at)
        )

    # -- audio ----------------------------------------------------------------------------

    def clip(self, ref: str, at: KeyPath) -> Clip:
        if ref in self._clips:
            return self._clips[ref]
        bundled_names = sorted(p.name for p in self.bundled.glob("*.wav"))
        name = ref if ref.endswith(".wav") else ref + ".wav"
        if "/" not in ref and name in bundled_names:
            path, source = self.bundled / name, "bundled"
        else:
            path = Path(ref).expanduser()
            if not path.is_absolute():
                path = self.base / path
            source = "file"
            if not path.is_file():
                close = difflib.get_close_matches(name, bundled_names, n=1, cutoff=0.6)
                hint = (
                    f"did you mean the bundled {close[0].removesuffix('.wav')!r}?"
                    if close
                    else "bundled utterances: "
                    + ", ".join(n.removesuffix(".wav") for n in bundled_names)
                )
                raise ScenarioAudioError(
                    f"no such audio file {ref!r} ({path})",
                    path=str(self.path),
                    line=self.line(at),
                    hint=hint,
                )
        from voiceaudit.audio import read_audio, speech_info_cached

        try:
            # guess_pcm=False: the scenario's rate is the rate wanted, not the user's word
            # that a file with no header is PCM; only a .raw/.pcm/.s16 name says that.
            audio = read_audio(path, rate=self.rate, guess_pcm=False)
            info = speech_info_cached(path, rate=self.rate)
        except AudioError as exc:
            why = exc.message.removeprefix(f"{exc.path}: ")
            raise ScenarioAudioError(
                f"audio {ref!r}: {why}",
                path=str(self.path),
                line=self.line(at),
                hint="a turn says audio 'voiceaudit inspect' accepts: WAV, FLAC, …, or "
                "16-bit PCM named *.raw, *.pcm or *.s16 (read at the scenario's rate)",
            ) from None
        samples = np.ascontiguousarray(np.asarray(audio.samples, dtype=np.float32))
        if samples.size == 0:
            raise ScenarioAudioError(
                f"audio {ref!r} is empty", path=str(self.path), line=self.line(at)
            )
        clip = Clip(ref, source, path, self.rate, samples, info.speech_start, info.speech_end)
        self._clips[ref] = clip
        return clip

    def _generated(self, kind: str, ms: int, hz: float, level_dbfs: float) -> Clip:
        """A tone or a noise burst, ``ms`` long, peak ``level_dbfs``, 5 ms raised-cosine
        fades (no click); noise is seeded by the scenario's ``seed`` and its order."""
        n = self.samples(ms)
        amp = 10.0 ** (level_dbfs / 20.0)
        if kind == "tone":
            t = np.arange(n, dtype=np.float64) / self.rate
            x = np.sin(2 * np.pi * hz * t)
            name = f"tone {hz:g} Hz {ms} ms {level_dbfs:g} dBFS"
        else:
            rng = np.random.default_rng([self.seed, self._sounds])
            x = rng.uniform(-1.0, 1.0, n)
            name = f"noise {ms} ms {level_dbfs:g} dBFS"
        self._sounds += 1
        fade = min(n // 2, self.rate // 200)
        if fade > 0:
            ramp = 0.5 - 0.5 * np.cos(np.pi * np.arange(fade) / fade)
            x[:fade] *= ramp
            x[n - fade :] *= ramp[::-1]
        samples = (amp * x).astype(np.float32)
        return Clip(name, kind, None, self.rate, samples, None, None)


def _name(at: KeyPath) -> str:
    """``("session", 0, "turn", 1, "pause", "ms")`` → ``pause.ms``; a turn → ``turn``."""
    keys = [k for k in at if isinstance(k, str)]
    if not keys:
        return "the scenario"
    if keys[-1] in ("session", "turn"):
        return keys[-1]
    keys = [k for k in keys if k not in ("session", "turn")]
    return ".".join(keys[-2:])
