"""One registry of target adapters; built-ins and third-party plugins alike.

Built-in protocols are in :data:`BUILTINS` (``name -> "module:Class"``, imported only when
used). An installed package adds a protocol through the entry-point group
``voiceaudit.targets`` (:data:`ENTRY_POINT_GROUP`): the entry point's name is the protocol
(the ``--protocol`` name) and its value a :class:`~voiceaudit.targets.base.Target`
subclass, e.g. in the package's ``pyproject.toml``::

    [project.entry-points."voiceaudit.targets"]
    echo-plugin = "voiceaudit_echo_target:EchoTarget"

The earlier group ``voiceaudit.targets.v1`` is still read (:data:`LEGACY_GROUPS`); where
a package registers the same name in both, the documented group's entry is used.

A plugin is a target like any other: the same ``-o NAME=VALUE`` options (its
``Target.options``, checked in its ``__init__``), the same trace events (the probe writes
them from what the session reports) and the same errors. What can go wrong with one is
said in one line on stderr (``warning: target plugin …``), once per process, never as a
traceback, and the tool goes on without it:

- it fails to import, or its entry point names something that is not a Target subclass:
  the protocol is listed as unavailable (with the reason), and ``--protocol`` with its name
  is a usage error saying why;
- its name is a built-in protocol's: the built-in is used, and the warning says which
  package's plugin was not;
- two installed packages claim the same name: the first found is used, and the warning
  names the other.

:func:`protocols` describes every protocol (``voiceaudit targets`` prints it);
:func:`get_target_class` is what ``voiceaudit run --protocol`` uses.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any
from urllib.parse import urlsplit

from voiceaudit.errors import UsageError
from voiceaudit.targets.base import Target

#: the documented entry-point group through which installed packages add protocols
ENTRY_POINT_GROUP = "voiceaudit.targets"
#: earlier groups, still read (after :data:`ENTRY_POINT_GROUP`)
LEGACY_GROUPS: tuple[str, ...] = ("voiceaudit.targets.v1",)

#: built-in protocols: name -> "module:Class" (imported lazily)
BUILTINS: dict[str, str] = {
    "realtime": "voiceaudit.targets.realtime:RealtimeTarget",
    "websocket": "voiceaudit.targets.websocket:PcmWebSocketTarget",
    "cascade": "voiceaudit.targets.cascade:CascadeTarget",
    "python": "voiceaudit.targets.python:PythonTarget",
    "webrtc": "voiceaudit.targets.webrtc:WebRTCTarget",
    "pipecat-websocket": "voiceaudit.targets.pipecat_ws:PipecatWebSocketTarget",
    "twilio": "voiceaudit.targets.carrier:TwilioTarget",
    "telnyx": "voiceaudit.targets.carrier:TelnyxTarget",
    "plivo": "voiceaudit.targets.carrier:PlivoTarget",
    "exotel": "voiceaudit.targets.carrier:ExotelTarget",
    "vonage": "voiceaudit.targets.carrier:VonageTarget",
    "gemini-live": "voiceaudit.targets.gemini:GeminiLiveTarget",
    "deepgram-agent": "voiceaudit.targets.deepgram:DeepgramAgentTarget",
    "elevenlabs-agent": "voiceaudit.targets.elevenlabs:ElevenLabsAgentTarget",
}

#: warnings already shown in this process (each is said once)
_warned: set[str] = set()


def _warn(message: str) -> None:
    """Say ``message`` on stderr as one line, once per process."""
    line = " ".join(message.split())
    if line in _warned:
        return
    _warned.add(line)
    print(f"warning: {line}", file=sys.stderr, flush=True)


def _reason(exc: BaseException) -> str:
    """One line naming an exception: its type and its message's first line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass(frozen=True)
class Plugin:
    """One installed package's entry point under the group (or a legacy group)."""

    name: str
    value: str
    group: str
    #: ``name version`` of the distribution that declares it ("" when unknown)
    distribution: str
    entry_point: EntryPoint = field(compare=False, repr=False)

    def origin(self) -> str:
        """Where it comes from, for messages: ``plugin <dist> (<module:Class>)``."""
        dist = f"{self.distribution} " if self.distribution else ""
        return f"plugin {dist}({self.value})"


def _distribution(ep: EntryPoint) -> str:
    dist: Any = getattr(ep, "dist", None)
    if dist is None:
        return ""
    try:
        return f"{dist.name} {dist.version}"
    except Exception:  # a broken metadata directory: the name is all we lose
        return ""


#: :func:`plugins` by ``sys.path`` (a lookup reads every installed distribution's metadata)
_found: dict[tuple[str, ...], dict[str, list[Plugin]]] = {}


def plugins() -> dict[str, list[Plugin]]:
    """Every installed plugin entry point, by name: the one that is used first, then any
    others claiming the same name (duplicates of one entry, as when a package is on the
    path twice or registers under both groups with the same value, are dropped). Read once
    per ``sys.path``."""
    key = tuple(sys.path)
    if key not in _found:
        _found[key] = _plugins()
    return {name: list(claims) for name, claims in _found[key].items()}


def _plugins() -> dict[str, list[Plugin]]:
    out: dict[str, list[Plugin]] = {}
    for group in (ENTRY_POINT_GROUP, *LEGACY_GROUPS):
        try:
            found = list(entry_points(group=group))
        except Exception as exc:  # unreadable metadata of some installed package
            _warn(f"cannot read the entry points of group {group}: {_reason(exc)}")
            continue
        for ep in found:
            seen = out.setdefault(ep.name, [])
            if any(p.value == ep.value for p in seen):
                continue
            seen.append(Plugin(ep.name, ep.value, group, _distribution(ep), ep))
    return out


@dataclass
class ProtocolInfo:
    """What is known about one protocol, for ``voiceaudit targets``."""

    name: str
    #: ``built-in`` or ``plugin``
    source: str
    #: ``module:Class``
    spec: str
    #: the plugin's distribution (``name version``); "" for a built-in
    distribution: str = ""
    #: the entry-point group a plugin came from
    group: str = ""
    cls: type[Target] | None = None
    #: why it cannot be used (None: it can)
    unavailable: str | None = None
    #: plugins of the same name that are not used, and why
    ignored: list[str] = field(default_factory=list)

    @property
    def description(self) -> str:
        return self.cls.description if self.cls is not None else ""

    @property
    def path(self) -> str:
        return self.cls.path if self.cls is not None else ""

    @property
    def options(self) -> dict[str, str]:
        return dict(self.cls.options) if self.cls is not None else {}

    @property
    def schemes(self) -> tuple[str, ...]:
        return tuple(self.cls.schemes) if self.cls is not None else ()

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description."""
        out: dict[str, Any] = {
            "name": self.name,
            "source": self.source,
            "spec": self.spec,
            "available": self.unavailable is None,
            "description": self.description,
            "path": self.path,
            "schemes": list(self.schemes),
            "options": self.options,
        }
        if self.source == "plugin":
            out["distribution"] = self.distribution
            out["group"] = self.group
        if self.unavailable is not None:
            out["unavailable"] = self.unavailable
        if self.ignored:
            out["ignored"] = list(self.ignored)
        return out


def _load(spec: str) -> type[Target]:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise TypeError(f"{spec} is not a voiceaudit Target subclass")
    return cls


def _load_plugin(plugin: Plugin) -> type[Target]:
    cls = plugin.entry_point.load()
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise TypeError(f"{plugin.value} is not a voiceaudit Target subclass")
    return cls


def _info(name: str, found: dict[str, list[Plugin]], load: bool) -> ProtocolInfo | None:
    claims = list(found.get(name, ()))
    if name in BUILTINS:
        info = ProtocolInfo(name, "built-in", BUILTINS[name])
        for p in claims:
            note = f"{p.origin()} is not used: {name!r} is a built-in protocol"
            info.ignored.append(note)
            _warn(f"target {note}")
        if load:
            try:
                info.cls = _load(info.spec)
            except Exception as exc:  # a module not installed (yet), or broken
                info.unavailable = _reason(exc)
        return info
    if not claims:
        return None
    used, others = claims[0], claims[1:]
    info = ProtocolInfo(name, "plugin", used.value, used.distribution, used.group)
    for p in others:
        note = f"{p.origin()} is not used: {used.origin()} has the name {name!r}"
        info.ignored.append(note)
        _warn(f"target {note}")
    if load:
        try:
            info.cls = _load_plugin(used)
        except Exception as exc:  # a broken plugin must not crash the tool
            info.unavailable = _reason(exc)
            _warn(
                f"target {used.origin()} for protocol {name!r} failed to load: {info.unavailable}"
            )
    return info


def protocols(load: bool = True) -> list[ProtocolInfo]:
    """Every protocol: the built-ins (in :data:`BUILTINS` order), then the plugins by name.
    With ``load``, each class is imported; one that cannot be is marked unavailable (with
    the reason), never raised."""
    found = plugins()
    names = list(BUILTINS) + sorted(n for n in found if n not in BUILTINS)
    return [info for n in names if (info := _info(n, found, load)) is not None]


def protocol_info(name: str) -> ProtocolInfo:
    """One protocol's :class:`ProtocolInfo` (loaded); UsageError naming the known ones for
    an unknown name."""
    info = _info(name, plugins(), load=True)
    if info is None:
        raise UsageError(
            f"unknown protocol {name!r}",
            hint="known protocols: " + ", ".join(sorted(available())),
        )
    return info


def available() -> dict[str, str]:
    """Protocol name -> where it comes from (built-in spec or plugin entry point)."""
    out = dict(BUILTINS)
    for name, claims in plugins().items():
        out.setdefault(name, claims[0].value)
    return out


def get_target_class(protocol: str) -> type[Target]:
    """The Target class of ``protocol``; UsageError for an unknown protocol or one that
    cannot be loaded (the reason in the message)."""
    info = protocol_info(protocol)
    if info.cls is None:
        raise UsageError(
            f"protocol {protocol!r} is unavailable: {info.unavailable}",
            hint="voiceaudit targets lists every protocol and whether it can be used",
        )
    return info.cls


def infer_protocol(url: str) -> str:
    """The protocol a URL implies, where that is unambiguous."""
    parts = urlsplit(url)
    if parts.scheme == "python":
        return "python"
    if parts.scheme in ("ws", "wss"):
        if parts.path.rstrip("/").endswith("/realtime"):
            return "realtime"
        if parts.path.rstrip("/").endswith("/pcm"):
            return "websocket"
    if parts.scheme in ("http", "https") and parts.path.rstrip("/") in ("", "/v1"):
        return "cascade"
    raise UsageError(
        f"cannot tell the protocol of {url!r}",
        hint="say it with --protocol (" + ", ".join(sorted(available())) + ")",
    )
