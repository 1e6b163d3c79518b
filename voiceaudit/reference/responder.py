"""The "language model" stage: a scripted stand-in, or a real OpenAI-compatible server.

:class:`ScriptedResponder` is **not a language model**. It answers every utterance with a
fixed script built from the transcript ("You said: … .") and streams it token by token
with a configured time to first token and token rate, so the latency it adds is known
exactly. ``--llm URL`` swaps in :class:`ChatCompletionsResponder`, which streams a real
``/v1/chat/completions`` answer.

:class:`TextChunker` decides when text is handed to synthesis: at each phrase boundary
(the default, like streaming TTS front ends), at sentence ends (``sentence-aggregation``)
or only at the end (``whole-result-handoff``).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from voiceaudit.errors import TargetError

#: The reply's fixed second sentence: it says what the responder is.
SCRIPT_TAIL = "This is a scripted stand-in for a language model."
SCRIPT_EMPTY = "I did not catch that."

_TOKEN = re.compile(r"\s*[\w']+|\s*[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Split text into word/punctuation tokens that keep their leading space, like an LLM's."""
    return _TOKEN.findall(text)


def script_reply(transcript: str) -> str:
    said = " ".join(transcript.split())
    if not said:
        return f"{SCRIPT_EMPTY} {SCRIPT_TAIL}"
    return f"You said: {said}. {SCRIPT_TAIL}"


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


class Responder(Protocol):
    """Streams the reply to a conversation, one text token at a time."""

    name: str

    def stream(self, messages: Sequence[Message], *, extra_ttft_ns: int = 0) -> AsyncIterator[str]:
        """Yield tokens. ``extra_ttft_ns`` is added before the first token (injections)."""
        ...


class ScriptedResponder:
    """A deterministic script with a known time to first token and token rate."""

    name = "scripted"

    def __init__(self, *, ttft_ms: float, token_rate: float) -> None:
        self.ttft_ns = round(ttft_ms * 1_000_000)
        self.interval_ns = round(1e9 / token_rate)

    def reply_text(self, messages: Sequence[Message]) -> str:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        return script_reply(last_user)

    async def stream(
        self, messages: Sequence[Message], *, extra_ttft_ns: int = 0
    ) -> AsyncIterator[str]:
        tokens = tokenize(self.reply_text(messages))
        start = time.monotonic_ns()
        first_at = start + self.ttft_ns + extra_ttft_ns
        for i, tok in enumerate(tokens):
            # Absolute deadlines, so sleep overshoot does not accumulate.
            due = first_at + i * self.interval_ns
            wait = due - time.monotonic_ns()
            if wait > 0:
                await asyncio.sleep(wait / 1e9)
            yield tok


class ChatCompletionsResponder:
    """Streams from a real OpenAI-compatible ``/v1/chat/completions`` (``stream: true``)."""

    name = "llm"

    def __init__(self, url: str, *, model: str, api_key_env: str = "OPENAI_API_KEY") -> None:
        url = url.rstrip("/")
        if not url.endswith("/chat/completions"):
            url = url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")
        self.url = url
        self.model = model
        self._api_key_env = api_key_env
        self._session: Any = None

    async def _client(self) -> Any:
        import aiohttp

        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        return self._session

    async def stream(
        self, messages: Sequence[Message], *, extra_ttft_ns: int = 0
    ) -> AsyncIterator[str]:
        import aiohttp

        if extra_ttft_ns > 0:
            await asyncio.sleep(extra_ttft_ns / 1e9)
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self._api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = {
            "model": self.model,
            "stream": True,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
        }
        session = await self._client()
        try:
            async with session.post(self.url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    raise TargetError(f"the language model at {self.url} answered {resp.status}")
                buf = b""
                async for data in resp.content.iter_any():
                    buf += data
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        line = line.strip()
                        if not line.startswith(b"data:"):
                            continue
                        payload = line[5:].strip()
                        if payload == b"[DONE]":
                            return
                        try:
                            chunk = json.loads(payload)
                            delta = chunk["choices"][0].get("delta") or {}
                        except (ValueError, KeyError, IndexError, TypeError):
                            continue
                        content = delta.get("content")
                        if content:
                            yield str(content)
        except aiohttp.ClientError as exc:
            raise TargetError(f"the language model at {self.url} failed: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


_PHRASE_END = (",", ";", ":", ".", "!", "?")
_SENTENCE_END = (".", "!", "?")
#: A phrase without punctuation is handed over after this many words anyway.
MAX_PHRASE_WORDS = 12


class TextChunker:
    """Collects tokens and releases text for synthesis at the configured boundaries."""

    def __init__(self, mode: str) -> None:
        if mode not in ("phrase", "sentence", "whole"):
            raise ValueError(f"unknown chunking mode {mode!r}")
        self.mode = mode
        self._buf = ""

    def push(self, token: str) -> str | None:
        self._buf += token
        if self.mode == "whole":
            return None
        ends = _PHRASE_END if self.mode == "phrase" else _SENTENCE_END
        text = self._buf.rstrip()
        too_long = self.mode == "phrase" and len(text.split()) >= MAX_PHRASE_WORDS
        if (text.endswith(ends) or too_long) and text.strip():
            self._buf = ""
            return text.strip()
        return None

    def flush(self) -> str | None:
        text = self._buf.strip()
        self._buf = ""
        return text or None
