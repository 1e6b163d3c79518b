"""WebRTC signalling for the reference pipeline (``POST /v1/webrtc/offer``, ``/api/offer``).

Signalling: the client POSTs ``{"sdp": …, "type": "offer"}`` (JSON) or the bare SDP
(``Content-Type: application/sdp``) to ``/v1/webrtc/offer``; the answer comes back the same
way. ``/api/offer`` speaks Pipecat's runner signalling (``pipecat.runner.run``,
SmallWebRTC): ``POST`` a ``SmallWebRTCRequest`` (``sdp``, ``type``, optional ``pc_id``,
``restart_pc``, ``request_data``/``requestData``; other keys ignored), answered with
``{"sdp", "type": "answer", "pc_id"}``; a ``pc_id`` of a live connection renegotiates on
it, with ``restart_pc`` it is replaced by a new connection (new ``pc_id``); ``PATCH`` a
``SmallWebRTCPatchRequest`` (``pc_id``, ``candidates``: ``candidate``, ``sdp_mid``,
``sdp_mline_index``) to trickle the client's ICE candidates, answered with
``{"status": "success"}`` (404 for an unknown ``pc_id``); errors are FastAPI's
``{"detail": …}`` (422 for a body that is not such a request). Both routes run the same
session. The server's own ICE candidates are gathered without trickle (aiortc gathers in
``setLocalDescription``), so they are all in the answer. On a loopback-only host the
answerer, like the probe, must gather a host candidate on 127.0.0.1 (see
voiceaudit.targets.webrtc.allow_loopback_ice): the server does that when it listens on a
loopback address.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from voiceaudit.reference.groundtruth import now_ns
from voiceaudit.reference.pipeline import CTX_KEY, ServerContext
from voiceaudit.reference.stages import wants_stages
from voiceaudit.reference.webrtc import OutTrack, WebRTCSession

#: The server's live WebRTC sessions by id (the ``pc_id`` of Pipecat's signalling); the
#: server puts an empty dict here when it builds its application.
SESSIONS_KEY = web.AppKey("voiceaudit_webrtc_sessions", dict[str, "WebRTCSession"])


class _Refused(Exception):
    """An offer the server cannot answer (the message says why)."""


def _error(exc: type[web.HTTPException], message: str, *, pipecat: bool) -> web.HTTPException:
    """An error response: ``{"error": {"message"}}``, or FastAPI's ``{"detail"}`` on
    Pipecat's routes."""
    body = {"detail": message} if pipecat else {"error": {"message": message}}
    return exc(text=json.dumps(body), content_type="application/json")


def _need_aiortc(*, pipecat: bool = False) -> None:
    try:
        import aiortc  # noqa: F401
    except ImportError:
        raise _error(
            web.HTTPNotImplemented,
            "WebRTC needs aiortc: pip install 'voiceaudit[webrtc]'",
            pipecat=pipecat,
        ) from None


def _registry(app: web.Application) -> dict[str, WebRTCSession]:
    found = app.get(SESSIONS_KEY)
    if found is None:  # an application not built by build_app
        found = app.setdefault(SESSIONS_KEY, {})
    return found


async def _drop(app: web.Application, session: WebRTCSession) -> None:
    _registry(app).pop(session.id, None)
    await session.close()


async def _answer_new(request: web.Request, sdp: str) -> WebRTCSession:
    """A new peer connection answering ``sdp``; its session lives until it closes."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    ctx: ServerContext = request.app[CTX_KEY]
    app = request.app
    host = request.transport.get_extra_info("sockname")[0] if request.transport else ""
    if host.startswith("127.") or host == "::1":
        from voiceaudit.targets.webrtc import allow_loopback_ice

        allow_loopback_ice()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    session = WebRTCSession(ctx, pc)
    _registry(app)[session.id] = session
    session.stage_events = wants_stages(request.headers)
    pc.addTrack(OutTrack.create(session))

    @pc.on("track")
    def _on_track(track: Any) -> None:
        if track.kind == "audio":
            session.spawn(session.consume(track))

    @pc.on("datachannel")
    def _on_channel(channel: Any) -> None:
        session.channel = channel
        channel.on("message", session.on_client_event)

    @pc.on("connectionstatechange")
    async def _on_state() -> None:
        if pc.connectionState == "connected":
            session.install_rtp_faults()
            if ctx.injections.greeting_ns is not None:
                # greeting=MS: the bot speaks first, MS after the media is up
                session.greet_on_connect(now_ns())
        elif pc.connectionState in ("failed", "closed"):
            await _drop(app, session)

    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        answer = await pc.createAnswer()
        await pc.setLocalDescription(answer)
    except Exception as exc:  # a malformed offer: refuse it, keep serving
        await _drop(app, session)
        raise _Refused(f"cannot answer this offer: {exc}") from None
    return session


async def _renegotiate(session: WebRTCSession, sdp: str) -> None:
    """A new offer on an existing peer connection (Pipecat's ``pc_id`` without
    ``restart_pc``): answered on the same connection, the session goes on."""
    from aiortc import RTCSessionDescription

    pc = session.pc
    try:
        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
    except Exception as exc:
        raise _Refused(f"cannot renegotiate with this offer: {exc}") from None


async def webrtc_offer(request: web.Request) -> web.StreamResponse:
    """Answer one WebRTC offer; the session lives until the peer connection closes."""
    _need_aiortc()
    ctype = request.headers.get("Content-Type", "")
    body = await request.text()
    as_json = "json" in ctype
    try:
        sdp = json.loads(body)["sdp"] if as_json else body
        if not isinstance(sdp, str) or "v=0" not in sdp:
            raise ValueError
    except (ValueError, KeyError, TypeError):
        raise _error(web.HTTPBadRequest, "expected an SDP offer", pipecat=False) from None
    try:
        session = await _answer_new(request, sdp)
    except _Refused as exc:
        raise _error(web.HTTPBadRequest, str(exc), pipecat=False) from None
    local = session.pc.localDescription.sdp
    if as_json:
        return web.json_response({"sdp": local, "type": "answer", "session_id": session.id})
    return web.Response(text=local, content_type="application/sdp", status=201)


async def _json_object(request: web.Request, shape: str) -> dict[str, Any]:
    """The request's JSON object, else 422 as FastAPI answers a body that does not fit."""
    try:
        data = json.loads(await request.text())
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise _error(web.HTTPUnprocessableEntity, f"expected a JSON {shape}", pipecat=True)
    return data


async def pipecat_offer(request: web.Request) -> web.StreamResponse:
    """``POST /api/offer`` as Pipecat's runner serves it (``SmallWebRTCRequest``).

    The body is ``{"sdp", "type", "pc_id"?, "restart_pc"?, "request_data"? (or
    "requestData")}``, other keys ignored; the answer is ``{"sdp", "type": "answer",
    "pc_id"}``. A ``pc_id`` of a live connection renegotiates on it (``restart_pc``: the
    old connection is closed and a new one answers, with a new ``pc_id``); an unknown
    ``pc_id`` gets a new connection, as in Pipecat.
    """
    _need_aiortc(pipecat=True)
    data = await _json_object(request, 'SmallWebRTCRequest {"sdp": ..., "type": "offer"}')
    sdp, kind = data.get("sdp"), data.get("type")
    pc_id, restart = data.get("pc_id"), data.get("restart_pc")
    if not (
        isinstance(sdp, str)
        and isinstance(kind, str)
        and (pc_id is None or isinstance(pc_id, str))
        and (restart is None or isinstance(restart, bool))
    ):
        raise _error(
            web.HTTPUnprocessableEntity,
            'expected a SmallWebRTCRequest: {"sdp": str, "type": str, "pc_id": str | null, '
            '"restart_pc": bool | null, "request_data": any}',
            pipecat=True,
        )
    if kind != "offer" or "v=0" not in sdp:
        raise _error(web.HTTPBadRequest, "expected an SDP offer (type 'offer')", pipecat=True)
    by_pc_id = _registry(request.app)
    existing = by_pc_id.get(pc_id) if pc_id else None
    try:
        if existing is not None and not restart:
            await _renegotiate(existing, sdp)
            session = existing
        else:
            if existing is not None:
                await _drop(request.app, existing)
            session = await _answer_new(request, sdp)
    except _Refused as exc:
        raise _error(web.HTTPBadRequest, str(exc), pipecat=True) from None
    local = session.pc.localDescription
    return web.json_response({"sdp": local.sdp, "type": local.type, "pc_id": session.id})


async def pipecat_ice_candidates(request: web.Request) -> web.StreamResponse:
    """``PATCH /api/offer`` as Pipecat's runner serves it (``SmallWebRTCPatchRequest``):
    ``{"pc_id", "candidates": [{"candidate", "sdp_mid", "sdp_mline_index"}]}`` trickled
    to the connection; an empty ``candidate`` is end-of-candidates. Answers
    ``{"status": "success"}``, 404 for an unknown ``pc_id``. (The server's own candidates
    are all in its answer: aiortc gathers them before answering.)"""
    _need_aiortc(pipecat=True)
    shape = (
        'SmallWebRTCPatchRequest {"pc_id": str, "candidates": [{"candidate": str, '
        '"sdp_mid": str, "sdp_mline_index": int}]}'
    )
    data = await _json_object(request, shape)
    pc_id, candidates = data.get("pc_id"), data.get("candidates")
    if not (
        isinstance(pc_id, str)
        and isinstance(candidates, list)
        and all(
            isinstance(c, dict)
            and isinstance(c.get("candidate"), str)
            and isinstance(c.get("sdp_mid"), str)
            and isinstance(c.get("sdp_mline_index"), int)
            for c in candidates
        )
    ):
        raise _error(web.HTTPUnprocessableEntity, f"expected a {shape}", pipecat=True)
    by_pc_id = _registry(request.app)
    session = by_pc_id.get(pc_id)
    if session is None:
        raise _error(web.HTTPNotFound, "Peer connection not found", pipecat=True)
    from aiortc.sdp import candidate_from_sdp

    for c in candidates:
        text = c["candidate"].removeprefix("candidate:")
        try:
            if text:
                candidate = candidate_from_sdp(text)
                candidate.sdpMid = c["sdp_mid"]
                candidate.sdpMLineIndex = c["sdp_mline_index"]
            else:
                candidate = None  # RFC 8840 end-of-candidates
            await session.pc.addIceCandidate(candidate)
        except Exception as exc:
            raise _error(
                web.HTTPBadRequest,
                f"cannot add the ICE candidate {c['candidate']!r}: {exc or type(exc).__name__}",
                pipecat=True,
            ) from None
    return web.json_response({"status": "success"})


async def close_webrtc_sessions(app: web.Application) -> None:
    """On shutdown: close every peer connection still open."""
    sessions = app.get(SESSIONS_KEY, {})
    for session in list(sessions.values()):
        await session.close()
    sessions.clear()
