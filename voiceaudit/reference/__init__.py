"""The reference voice pipeline: real, local, offline; the default target and test bench.

Endpointing (webrtcvad) → PocketSphinx streaming recognition (worker processes) → a
scripted responder that stands in for a language model (or a real one with ``--llm``) →
eSpeak NG synthesis, served over the OpenAI Realtime WebSocket, raw PCM WebSocket and
OpenAI-compatible HTTP protocols, with fault injections and a ground-truth file.
See docs/reference-pipeline.md.
"""

from __future__ import annotations

from voiceaudit.reference.config import Injections, ServerConfig, parse_injections
from voiceaudit.reference.groundtruth import SCHEMA as GROUND_TRUTH_SCHEMA
from voiceaudit.reference.groundtruth import read_ground_truth
from voiceaudit.reference.server import ReferenceServer, start_reference_server

#: The name ``voiceaudit run`` uses for :class:`ServerConfig`.
ReferenceConfig = ServerConfig

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
