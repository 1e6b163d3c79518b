"""Targets: the pipelines under test, each reached through a protocol adapter.

The interface is :mod:`voiceaudit.targets.base`; the adapters are found by protocol name in
:mod:`voiceaudit.targets.registry` (built-ins, and plugins under the entry-point group
``voiceaudit.targets``, docs/targets.md). Built in, over :mod:`voiceaudit.targets.wsbase`:
``realtime`` (OpenAI Realtime, and Azure Voice Live as its dialect), ``websocket`` (raw
PCM), ``pipecat-websocket`` (Pipecat's protobuf frames), the phone carriers' media streams
(``twilio``, ``telnyx``, ``plivo``, ``exotel``, ``vonage``: :mod:`voiceaudit.targets.carrier`,
voiceaudit playing the carrier), ``gemini-live``, ``deepgram-agent`` and
``elevenlabs-agent``; and ``webrtc`` (aiortc), ``cascade`` (ASR -> LLM -> TTS over HTTP) and
``python`` (an in-process pipeline). ``voiceaudit targets`` lists them with their options.

The adapter contract
--------------------

An adapter is two classes. A :class:`~voiceaudit.targets.base.Target` subclass names it:
``protocol`` (the ``--protocol`` name), ``schemes`` (URL schemes that imply it),
``description``, and ``session_class`` (or its own ``session(sink)`` when a session needs
more than the config and the sink); its ``__init__`` may check the options, raising
:class:`~voiceaudit.errors.UsageError` before anything connects. A
:class:`~voiceaudit.targets.base.TargetSession` subclass is one connection:

- must implement ``open()`` (connect and get ready for audio; TargetError on failure),
  ``send_audio(pcm16)`` (one frame of 16-bit mono PCM at ``input_rate``, written before its
  first await: the probe calls it at each frame's deadline, so the probe's pacer is the
  send pacing), ``close()`` (idempotent), and set ``input_rate`` (default 24000);
- reports what it observes through ``self.sink``: ``mark(name, stage, t_ns, attrs)``,
  ``reply_audio(t_ns, pcm16, rate, wire_bytes)``, ``reply_done(t_ns)`` and ``fail(reason)``
  (the reason's first words say the failure kind); times are monotonic ns at the arrival
  of what is reported; it never writes the trace and never decides turn boundaries;
- may implement the hooks ``start_turn``, ``speech_ended``, ``end_turn``, ``truncate``,
  ``connection`` and ``stream_fill_samples``, and set ``warm_up_first`` to have the probe
  pay its first-use costs before ``open``.

A new streaming-WebSocket protocol (the telephony media streams among them) subclasses
:class:`~voiceaudit.targets.wsbase.WebSocketSession` instead, which does the connecting,
the receive-thread stamping of every message (:mod:`voiceaudit.targets.rxstamp`), the
warm-up flag, JSON and base64 helpers and the close; the adapter writes ``send_audio`` and
``on_text``/``on_binary``. Its docstring has the details and a worked example. In short::

    class EchoSession(WebSocketSession):
        input_rate = 16000

        async def send_audio(self, pcm16: bytes) -> None:
            await self.live().send_bytes(pcm16)

        def on_binary(self, t_ns: int, data: bytes) -> None:
            self.sink.reply_audio(t_ns, data, self.input_rate, len(data))


    class EchoTarget(Target):
        protocol = "echo"
        schemes = ("ws",)
        description = "raw PCM echoed back"
        session_class = EchoSession

Register it in :data:`~voiceaudit.targets.registry.BUILTINS` (``"echo":
"voiceaudit.targets.echo:EchoTarget"``) or, from another package, under the entry-point
group.
"""
