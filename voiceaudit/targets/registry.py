"""One registry of target adapters; built-ins and third-party plugins alike.

Third parties register a :class:`~voiceaudit.targets.base.Target` subclass under the
versioned entry-point group ``voiceaudit.targets.v1`` (name = protocol). A plugin that
fails to import is a warning, never a crash.
"""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import entry_points
from urllib.parse import urlsplit

from voiceaudit.errors import UsageError
from voiceaudit.targets.base import Target

ENTRY_POINT_GROUP = "voiceaudit.targets.v1"

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


def _load(spec: str) -> type[Target]:
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise TypeError(f"{spec} is not a voiceaudit Target")
    return cls


def available() -> dict[str, str]:
    """Protocol name -> where it comes from (built-in spec or plugin entry point)."""
    out = dict(BUILTINS)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        out.setdefault(ep.name, ep.value)
    return out


def get_target_class(protocol: str) -> type[Target]:
    if protocol in BUILTINS:
        return _load(BUILTINS[protocol])
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == protocol:
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not crash the tool
                warnings.warn(f"target plugin {ep.value} failed to load: {exc}", stacklevel=2)
                break
            if isinstance(cls, type) and issubclass(cls, Target):
                return cls
            warnings.warn(f"target plugin {ep.value} is not a Target subclass", stacklevel=2)
            break
    raise UsageError(
        f"unknown protocol {protocol!r}",
        hint="known protocols: " + ", ".join(sorted(available())),
    )


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
