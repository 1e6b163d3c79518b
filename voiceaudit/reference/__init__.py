"""The reference voice pipeline: real, local, offline; the default target and test bench.

Endpointing (webrtcvad) → PocketSphinx streaming recognition (worker processes) → a
scripted responder that stands in for a language model (or a real one with ``--llm``) →
eSpeak NG synthesis, served over the OpenAI Realtime WebSocket, raw PCM WebSocket, WebRTC
and OpenAI-compatible HTTP protocols, and as the bot behind a phone carrier's media stream
(Twilio, Telnyx, Plivo, Exotel, Vonage), with fault injections and a ground-truth file.
See docs/reference-pipeline.md.

Layout: ``pipeline`` holds the stages (:class:`~voiceaudit.reference.pipeline.InputPipeline`:
VAD → recognition; ``run_reply``: responder → chunking → synthesis → pacing → a sink) and
the injections applied at each; ``session`` is the one session core every streaming
protocol shares (turn state, hearing, replies, barge-in, cancel/truncate, ground truth);
``pcm_ws``, ``realtime`` (+ ``realtime_events``, the protocol's shapes), ``webrtc``
(+ ``webrtc_signal``, its offer/answer routes; ``playout``, reply audio on a media clock)
and ``carrier`` (the carriers' media streams at ``/twilio``, ``/telnyx``, ``/plivo``,
``/exotel``, ``/vonage``, with the bot's own model of the carrier's buffer for the ground
truth) are thin protocol adapters over it; ``http_api`` serves the HTTP cascade endpoints;
``server`` builds the application.

A new streaming protocol is an adapter: a subclass of
:class:`~voiceaudit.reference.session.Session` that

- sets ``protocol`` (the ground truth's name) and ``id_prefix``, and ``output_rate``;
- opens its input with ``open_input(rate, silence_ms=…, prefix_padding_ms=…,
  threshold=…)`` and feeds it the decoded input audio (``self.input.feed(samples,
  arrival_ns)``; a manual commit is ``self.input.commit(now)``);
- tells its client what happened in the hooks it needs: ``speech_began``,
  ``speech_stopped``, ``recognised``, ``transcribed``, ``begin_reply`` (the reply starts),
  ``reply_text``/``reply_audio`` (the reply's text and audio, framed for the wire),
  ``reply_sent``, ``reply_cancelled``, ``turn_over`` (the turn's last events, after the
  core's ``settle_barge_in`` and ground-truth write);
- maps its client's control messages onto ``cancel_reply``, ``record_truncate`` and
  ``self.input.clear()``;
- serves its route (a WebSocket one with :func:`~voiceaudit.reference.wsutil.serve_websocket`)
  and calls ``close()`` when the connection ends.

Everything else — the turn records and their marks, the ``vad``/``asr``/``llm``/``tts``
stage delays and the other pipeline injections, barge-in and ``barge-in-delay``, one reply
at a time (``no-barge-in``), the default turn (hear, wait for the previous reply, answer
with the conversation so far), writing each turn, closing — is the core's. A protocol
whose replies are not started by the end of speech (Realtime's ``response.create``)
replaces ``speech_ended`` and starts them with ``start_response``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from voiceaudit.reference.config import Injections, ServerConfig, parse_injections
    from voiceaudit.reference.groundtruth import SCHEMA as GROUND_TRUTH_SCHEMA
    from voiceaudit.reference.groundtruth import read_ground_truth
    from voiceaudit.reference.server import ReferenceServer, start_reference_server

    ReferenceConfig = ServerConfig

# Imported on first use: the recognition workers import this package too, and need
# none of the server's dependencies.
_LAZY = {
    "GROUND_TRUTH_SCHEMA": ("voiceaudit.reference.groundtruth", "SCHEMA"),
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
