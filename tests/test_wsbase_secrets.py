"""A WebSocket target that cannot connect says why without quoting a secret: aiohttp's
handshake errors quote the whole URL, query included."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from servers import HandlerServer

from voiceaudit.errors import TargetError
from voiceaudit.targets.base import TargetConfig
from voiceaudit.targets.websocket import PcmWebSocketTarget


async def _refuse(request: web.Request) -> web.StreamResponse:
    return web.Response(status=403, text="forbidden")


def test_a_refused_handshake_names_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VA_TEST_KEY", "sk-planted-4711")

    async def main() -> str:
        server = HandlerServer(_refuse, "/pcm")
        url = await server.start()
        cfg = TargetConfig(
            url=url + "?token=tok-planted-0815", protocol="websocket", api_key_env="VA_TEST_KEY"
        )
        session = PcmWebSocketTarget(cfg).session(object())  # type: ignore[arg-type]
        try:
            with pytest.raises(TargetError) as err:
                await session.open()
        finally:
            await server.stop()
        return err.value.message

    message = asyncio.run(main())
    assert "403" in message
    assert "tok-planted-0815" not in message and "sk-planted-4711" not in message
