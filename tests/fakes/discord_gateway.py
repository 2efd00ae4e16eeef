"""The gateway half of the fake Discord: HELLO, IDENTIFY/READY, RESUME, heartbeats, dispatches.

Frames are plain JSON text frames (discord.py asks for ``compress=zlib-stream`` but only
decompresses binary frames).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

__all__ = ["FakeGateway", "GatewaySession"]

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE_UPDATE = 3
OP_VOICE_STATE_UPDATE = 4
OP_RESUME = 6
OP_REQUEST_GUILD_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_UNKNOWN_OPCODE = 4001
CLOSE_DECODE_ERROR = 4002
CLOSE_NOT_AUTHENTICATED = 4003
CLOSE_AUTHENTICATION_FAILED = 4004
CLOSE_ALREADY_AUTHENTICATED = 4005


@dataclass
class GatewaySession:
    """An identified gateway session; survives its socket so that it can be resumed."""

    session_id: str
    identify: dict[str, Any]
    seq: int = 0
    ws: web.WebSocketResponse | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def connected(self) -> bool:
        return self.ws is not None and not self.ws.closed

    async def dispatch(self, event: str, data: Mapping[str, Any]) -> int:
        async with self.lock:
            if self.ws is None or self.ws.closed:
                raise ConnectionError("the bot is not connected to the gateway")
            self.seq += 1
            frame = {"op": OP_DISPATCH, "t": event, "s": self.seq, "d": data}
            await self.ws.send_str(json.dumps(frame, separators=(",", ":")))
            return self.seq


class FakeGateway:
    """Serves ``/gateway``; ``ready_payload`` and ``guild_payloads`` come from the fake."""

    def __init__(
        self,
        *,
        token: str,
        ready_payload: Callable[[GatewaySession], dict[str, Any]],
        guild_payloads: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self._token = token
        self._ready_payload = ready_payload
        self._guild_payloads = guild_payloads
        self.sessions: dict[str, GatewaySession] = {}
        self.active: GatewaySession | None = None
        self.received: list[dict[str, Any]] = []
        self.connect_queries: list[dict[str, str]] = []
        self.ready = asyncio.Event()
        self.refusing = False  # True: connections are turned away (503), as in an outage
        self._sockets: set[web.WebSocketResponse] = set()

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        self._sockets.clear()

    async def dispatch(self, event: str, data: Mapping[str, Any]) -> int:
        session = self.active
        if session is None or not session.connected:
            raise ConnectionError("the bot is not connected to the gateway")
        return await session.dispatch(event, data)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if self.refusing:
            return web.Response(status=503, text="gateway unavailable")
        ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        self.connect_queries.append(dict(request.query))
        log.debug("gateway connection with %s", dict(request.query))
        session: GatewaySession | None = None
        try:
            await self._send(
                ws, {"op": OP_HELLO, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}}
            )
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    log.warning("gateway got a %s frame; closing", msg.type)
                    await ws.close(
                        code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload."
                    )
                    break
                try:
                    payload = json.loads(msg.data)
                    op = payload["op"]
                except (ValueError, KeyError, TypeError):
                    await ws.close(
                        code=CLOSE_DECODE_ERROR, message=b"Error while decoding payload."
                    )
                    break
                self.received.append(payload)
                session = await self._on_payload(ws, session, op, payload.get("d"))
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            log.debug("gateway connection closed (code %s)", ws.close_code)
        return ws

    async def _send(self, ws: web.WebSocketResponse, frame: dict[str, Any]) -> None:
        frame = {"op": frame["op"], "d": frame.get("d"), "s": None, "t": None}
        await ws.send_str(json.dumps(frame, separators=(",", ":")))

    async def _on_payload(
        self,
        ws: web.WebSocketResponse,
        session: GatewaySession | None,
        op: int,
        data: Any,
    ) -> GatewaySession | None:
        if op == OP_HEARTBEAT:
            await self._send(ws, {"op": OP_HEARTBEAT_ACK})
            return session
        if op == OP_IDENTIFY:
            if session is not None:
                await ws.close(code=CLOSE_ALREADY_AUTHENTICATED, message=b"Already authenticated.")
                return session
            if not isinstance(data, dict) or data.get("token") != self._token:
                await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
                return None
            session = GatewaySession(session_id=secrets.token_hex(16), identify=data, ws=ws)
            self.sessions[session.session_id] = session
            self.active = session
            await session.dispatch("READY", self._ready_payload(session))
            for guild in self._guild_payloads():
                await session.dispatch("GUILD_CREATE", guild)
            self.ready.set()
            return session
        if op == OP_RESUME:
            if not isinstance(data, dict) or data.get("token") != self._token:
                await ws.close(code=CLOSE_AUTHENTICATION_FAILED, message=b"Authentication failed.")
                return None
            resumed = self.sessions.get(str(data.get("session_id")))
            if resumed is None:
                await self._send(ws, {"op": OP_INVALID_SESSION, "d": False})
                return None
            resumed.ws = ws
            self.active = resumed
            await resumed.dispatch("RESUMED", {})
            return resumed
        if session is None:
            await ws.close(code=CLOSE_NOT_AUTHENTICATED, message=b"Not authenticated.")
            return None
        if op in (OP_PRESENCE_UPDATE, OP_VOICE_STATE_UPDATE, OP_REQUEST_GUILD_MEMBERS):
            log.debug("gateway op %s ignored", op)
            return session
        await ws.close(code=CLOSE_UNKNOWN_OPCODE, message=b"Unknown opcode.")
        return session
