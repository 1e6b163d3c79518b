"""The reference voice pipeline: real, local, offline; the default target and test bench.

Endpointing (webrtcvad) → PocketSphinx streaming recognition (worker processes) → a
scripted responder that stands in for a language model (or a real one with ``--llm``) →
eSpeak NG synthesis, served over the OpenAI Realtime WebSocket, raw PCM WebSocket and
OpenAI-compatible HTTP protocols, with fault injections and a ground-truth file.
See docs/reference-pipeline.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voiceaudit.reference.config import Injections, ServerConfig, parse_injections
    from voiceaudit.reference.groundtruth import read_ground_truth
    from voiceaudit.reference.server import ReferenceServer, start_reference_server

    ReferenceConfig = ServerConfig

GROUND_TRUTH_SCHEMA = "voiceaudit.groundtruth/1"

# Imported on first use: the recognition workers import this package too, and need
# none of the server's dependencies.
_LAZY = {
    "Injections": ("voiceaudit.reference.config", "Injections"),
    "ServerConfig": ("voiceaudit.reference.config", "ServerConfig"),
    #: The name ``voiceaudit run`` uses for :class:`ServerConfig`.
    "ReferenceConfig": ("voiceaudit.reference.config", "ServerConfig"),
    "parse_injections": ("voiceaudit.reference.config", "parse_injections"),
    "read_ground_truth": ("voiceaudit.reference.groundtruth", "read_ground_truth"),
    "ReferenceServer": ("voiceaudit.reference.server", "ReferenceServer"),
    "start_reference_server": ("voiceaudit.reference.server", "start_reference_server"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'voiceaudit.reference' has no attribute {name!r}")


__all__ = [
    "GROUND_TRUTH_SCHEMA",
    "Injections",
    "ReferenceConfig",
    "ReferenceServer",
    "ServerConfig",
    "parse_injections",
    "read_ground_truth",
    "start_reference_server",
]
