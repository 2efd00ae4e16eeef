"""The gateway half of the fake Discord: HELLO, IDENTIFY/READY, RESUME, heartbeats, dispatches.

Frames are plain JSON text frames (discord.py asks for ``compress=zlib-stream`` but only
decompresses binary frames).

Several connections at once are sharded as Discord shards them: each IDENTIFY may carry
``shard: [shard_id, shard_count]``, and a guild's events go only to the connection of shard
``(guild_id >> 22) % shard_count``, events without a guild (DMs) to shard 0. A connection
identified without ``shard`` gets every event, as shard 0 of 1. When several connections could
take an event, the one identified (or resumed) last does, as a single bot's newest connection
takes over from its previous one.
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

from .discord_models import shard_of

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
CLOSE_INVALID_SHARD = 4010


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

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(shard_id, shard_count)`` as identified; None: identified without ``shard``."""
        shard = self.identify.get("shard")
        return None if shard is None else (int(shard[0]), int(shard[1]))

    @property
    def shard_id(self) -> int | None:
        return None if self.shard is None else self.shard[0]

    def receives(self, guild_id: int | None) -> bool:
        """Whether this session's shard carries the events of `guild_id` (None: a DM)."""
        if self.shard is None:
            return True
        shard_id, shard_count = self.shard
        return shard_of(guild_id, shard_count) == shard_id

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
        # Sessions in the order they were identified or last resumed: the newest last.
        self._activated: list[GatewaySession] = []
        # Shards whose IDENTIFY and RESUME go unanswered (`close_shard(hold=True)`), and the
        # connections left waiting for an answer meanwhile.
        self._held_shards: dict[int, list[web.WebSocketResponse]] = {}
        self.received: list[dict[str, Any]] = []
        self.connect_queries: list[dict[str, str]] = []
        self.ready = asyncio.Event()
        self.refusing = False  # True: connections are turned away (503), as in an outage
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def active(self) -> GatewaySession | None:
        """The session identified or resumed last."""
        return self._activated[-1] if self._activated else None

    def _activate(self, session: GatewaySession) -> None:
        if session in self._activated:
            self._activated.remove(session)
        self._activated.append(session)

    def session_for(self, guild_id: int | None) -> GatewaySession | None:
        """The session that gets `guild_id`'s events (None: a DM's), connected or not."""
        return next((s for s in reversed(self._activated) if s.receives(guild_id)), None)

    async def close(self) -> None:
        self._held_shards.clear()
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
        self._sockets.clear()

    async def close_shard(self, shard_id: int, *, hold: bool = False) -> None:
        """Close the connections of the sessions identified as shard `shard_id` (1001, going
        away: the bot resumes). With `hold`, that shard's IDENTIFY and RESUME then go
        unanswered until `release_shard`: the shard stays down, the others stay up."""
        if hold:
            self._held_shards.setdefault(shard_id, [])
        for session in list(self.sessions.values()):
            if session.shard_id == shard_id and session.ws is not None:
                await session.ws.close(code=WSCloseCode.GOING_AWAY, message=b"shard closed")

    async def release_shard(self, shard_id: int) -> None:
        """Answer shard `shard_id`'s IDENTIFY and RESUME again. The connections that waited
        for an answer meanwhile are closed (1001), so the bot tries again and is answered."""
        for ws in self._held_shards.pop(shard_id, []):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shard released")

    def _held(self, ws: web.WebSocketResponse, shard_id: int | None) -> bool:
        """Whether `shard_id` is held; if so `ws` waits, unanswered, until it is released."""
        if shard_id is None or shard_id not in self._held_shards:
            return False
        self._held_shards[shard_id].append(ws)
        return True

    async def dispatch(
        self, event: str, data: Mapping[str, Any], *, guild_id: int | None
    ) -> GatewaySession:
        """Send an event of `guild_id` (None: no guild) on the connection of its shard;
        returns the session that got it."""
        session = self.session_for(guild_id)
        if session is None or not session.connected:
            raise ConnectionError("the bot is not connected to the gateway")
        await session.dispatch(event, data)
        return session

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
            if not _valid_shard(data.get("shard", [0, 1])):
                await ws.close(code=CLOSE_INVALID_SHARD, message=b"Invalid shard.")
                return None
            session = GatewaySession(session_id=secrets.token_hex(16), identify=data, ws=ws)
            if self._held(ws, session.shard_id):
                return None
            self.sessions[session.session_id] = session
            self._activate(session)
            await session.dispatch("READY", self._ready_payload(session))
            for guild in self._guild_payloads():
                if session.receives(int(guild["id"])):
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
            if self._held(ws, resumed.shard_id):
                return None
            resumed.ws = ws
            self._activate(resumed)
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


def _valid_shard(shard: Any) -> bool:
    """``[shard_id, shard_count]`` with 0 <= shard_id < shard_count, as Discord requires."""
    return (
        isinstance(shard, list)
        and len(shard) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in shard)
        and 0 <= shard[0] < shard[1]
    )
