"""`voiceaudit serve`: run the reference voice pipeline by itself.

Prints one machine-readable line on stdout once the port is listening::

    voiceaudit-serve listening http://127.0.0.1:PORT

and serves until Ctrl-C or SIGTERM. Everything else goes to stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import typer

from voiceaudit.reference.config import INJECTION_EXAMPLES

LISTENING_PREFIX = "voiceaudit-serve listening "


def register(app: typer.Typer) -> None:
    @app.command(
        "serve",
        help="Run the built-in reference voice pipeline (real VAD, PocketSphinx, eSpeak NG) "
        "on one port: OpenAI Realtime WebSocket /v1/realtime, raw PCM WebSocket /v1/pcm, "
        "OpenAI-compatible /v1/audio/transcriptions, /v1/chat/completions, "
        "/v1/audio/speech, WebRTC at /v1/webrtc/offer and /api/offer (Pipecat's runner "
        "signalling), and phone carriers' media streams as a bot at /twilio, /telnyx, /plivo, "
        "/exotel and /vonage. Prints 'voiceaudit-serve listening URL' on stdout when ready.",
    )
    def serve_(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(0, "--port", help="Port (0 picks a free one)."),
        inject: list[str] = typer.Option(
            [],
            "--inject",
            metavar="NAME=VALUE",
            help="Add a known hidden delay or fault (repeatable): "
            + ", ".join(INJECTION_EXAMPLES.values())
            + ". See docs/reference-pipeline.md.",
        ),
        ground_truth: Path | None = typer.Option(
            None,
            "--ground-truth",
            metavar="PATH",
            help="Write per-turn ground truth (JSON Lines): injections and stage times.",
        ),
        llm: str | None = typer.Option(
            None,
            "--llm",
            metavar="URL",
            help="Use a real OpenAI-compatible /v1/chat/completions instead of the scripted "
            "responder (API key from $OPENAI_API_KEY, or --llm-key-env).",
        ),
        llm_model: str = typer.Option("gpt-4o-mini", "--llm-model", help="Model for --llm."),
        llm_key_env: str = typer.Option(
            "OPENAI_API_KEY", "--llm-key-env", help="Environment variable holding the --llm key."
        ),
        silence_ms: int = typer.Option(
            500, "--silence-ms", help="Endpointing: silence that ends a turn (ms)."
        ),
        prefix_padding_ms: int = typer.Option(
            300, "--prefix-padding-ms", help="Audio kept before detected speech (ms)."
        ),
        ttft_ms: float = typer.Option(
            200.0, "--ttft-ms", help="Scripted responder: time to first token (ms)."
        ),
        token_rate: float = typer.Option(
            50.0, "--token-rate", help="Scripted responder: tokens per second."
        ),
        asr_workers: int = typer.Option(
            2, "--asr-workers", help="Speech recognition worker processes."
        ),
        voice: str = typer.Option("en-us", "--voice", help="eSpeak NG voice."),
        wpm: int = typer.Option(175, "--wpm", help="eSpeak NG speaking rate (words/minute)."),
        audio_chunk_ms: int = typer.Option(
            20, "--audio-chunk-ms", help="Reply audio message size (ms)."
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for the jitter injection."),
    ) -> None:
        from voiceaudit.reference.config import ServerConfig, parse_injections

        config = ServerConfig(
            host=host,
            port=port,
            injections=parse_injections(inject),
            ground_truth_path=ground_truth,
            silence_ms=silence_ms,
            prefix_padding_ms=prefix_padding_ms,
            ttft_ms=ttft_ms,
            token_rate=token_rate,
            llm_url=llm,
            llm_model=llm_model,
            llm_api_key_env=llm_key_env,
            asr_workers=asr_workers,
            voice=voice,
            words_per_minute=wpm,
            audio_chunk_ms=audio_chunk_ms,
            seed=seed,
        )
        asyncio.run(_serve(config))


async def _serve(config: object) -> None:
    from voiceaudit.cli.console import err_console
    from voiceaudit.errors import EnvironmentProblem
    from voiceaudit.reference.config import ServerConfig
    from voiceaudit.reference.server import start_reference_server

    assert isinstance(config, ServerConfig)
    try:
        server = await start_reference_server(config)
    except OSError as exc:
        raise EnvironmentProblem(
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}",
            hint="pick another --port, or --port 0 for a free one",
        ) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        print(LISTENING_PREFIX + server.url, flush=True)
        err = err_console()
        err.print(f"reference pipeline on {server.url}", highlight=False)
        err.print(
            f"  realtime  {server.realtime_url}\n"
            f"  raw PCM   {server.pcm_url}?rate=16000\n"
            f"  HTTP      {server.url}/v1/audio/transcriptions · /v1/chat/completions · "
            "/v1/audio/speech\n"
            f"  WebRTC    {server.url}/v1/webrtc/offer (SDP offer/answer)\n"
            f"            {server.url}/api/offer (Pipecat's runner: POST offer, PATCH ICE)\n"
            f"  phone     {server.url_for('twilio').rsplit('/', 1)[0]}"
            "/{twilio,telnyx,plivo,exotel,vonage} (carrier media streams; the bot)",
            highlight=False,
        )
        responder = "LLM at --llm URL" if config.llm_url else "scripted stand-in for an LLM"
        err.print(f"  responder {responder}", highlight=False)
        injected = config.injections.describe()
        err.print(f"  injections {', '.join(injected) if injected else 'none'}", highlight=False)
        if config.ground_truth_path is not None:
            err.print(f"  ground truth → {config.ground_truth_path}", highlight=False)
        await stop.wait()
    finally:
        await server.close()
        sys.stdout.flush()
