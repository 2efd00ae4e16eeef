"""A local fake of Discord (REST API v10 + gateway) for end-to-end tests of the real bot.

One aiohttp app on 127.0.0.1 serves the REST API under ``/api/v10``, the gateway websocket at
``/gateway`` and uploaded files under ``/attachments``. A real ``discord.Client`` talks to it after
``patch_discord_py()`` (or with the bot's API base / gateway URL settings pointed at it).

Answers follow Discord's: status codes, error bodies (``{"message", "code"}``), message objects
and ``Content-Type: application/json`` exactly (discord.py parses JSON only with that exact
value). Every request is recorded (``calls``) on arrival and its body is validated against
Discord's OpenAPI spec (``violations``); the fake's own JSON answers are validated too
(``response_violations``).

Usage::

    async with FakeDiscord() as fake:
        with fake.patch_discord_py():
            task = asyncio.create_task(bot.start(fake.bot_token))
            await fake.wait_ready()
            interaction = await fake.send_interaction("music", [{"name": "prompt", ...}])
            await fake.wait_for_call(lambda c: c.method == "PATCH")
            ...
            await bot.close()
            await task

Pass ``guild_ready_timeout=0.05`` (or similar) to the client in tests: discord.py waits that
long (2 s by default) after the last GUILD_CREATE before it fires ``on_ready``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import yarl
from aiohttp import BodyPartReader, web

from .discord_gateway import FakeGateway, GatewaySession
from .discord_models import (
    DiscordError,
    FakeAttachment,
    FakeInteraction,
    FakeMessage,
    RestCall,
    SnowflakeFactory,
    Upload,
    monotonic,
    new_token,
)
from .discord_openapi import DiscordOpenAPI
from .discord_payloads import World
from .discord_rest import Answer, RestApi

__all__ = [
    "FakeAttachment",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMessage",
    "RestCall",
]

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
_FILES_FIELD = re.compile(r"files\[(\d+)\]")


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    status: int
    body: dict[str, Any]
    headers: dict[str, str]
    when: Callable[[RestCall], bool] | None = None

    def matches(self, call: RestCall) -> bool:
        return (
            self.method == call.method
            and self.path.search(call.path) is not None
            and (self.when is None or self.when(call))
        )


@dataclass
class _Hold:
    method: str
    path: re.Pattern[str]
    when: Callable[[RestCall], bool] | None
    release: asyncio.Event

    def matches(self, call: RestCall) -> bool:
        return (
            self.method == call.method
            and self.path.search(call.path) is not None
            and (self.when is None or self.when(call))
        )


class FakeDiscord:
    """A fake Discord for one bot, one guild and one text channel."""

    def __init__(
        self,
        *,
        bot_token: str = "discord-test-token",
        application_id: int = 1_100_000_000_000_000_001,
        bot_user_id: int = 1_100_000_000_000_000_001,
        guild_id: int = 1_100_000_000_000_000_100,
        channel_id: int = 1_100_000_000_000_000_200,
        user_id: int = 1_100_000_000_000_000_300,
        attachment_size_limit: int = 10 * 1024 * 1024,
        integer_snowflakes_ok: bool = True,
    ) -> None:
        self.bot_token = bot_token
        self.application_id = application_id
        self.bot_user_id = bot_user_id
        self.guild_id = guild_id
        self.channel_id = channel_id
        self.user_id = user_id
        self.attachment_size_limit = attachment_size_limit
        # Integer snowflakes where the spec wants strings (discord.py does this for new
        # uploads) go to ``tolerated_violations`` instead of ``violations`` when True.
        self.integer_snowflakes_ok = integer_snowflakes_ok

        self.calls: list[RestCall] = []
        self.violations: list[str] = []
        self.tolerated_violations: list[str] = []
        self.response_violations: list[str] = []
        self.sent_interactions: list[FakeInteraction] = []

        self._snowflakes = SnowflakeFactory()
        self._world = World(
            application_id=application_id,
            bot_user_id=bot_user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            user_id=user_id,
            started_at=datetime.now(UTC),
        )
        self._rest = RestApi(
            self._world,
            bot_token=bot_token,
            attachment_size_limit=attachment_size_limit,
            snowflakes=self._snowflakes,
            base_url=lambda: self.base_url,
            gateway_url=lambda: self.gateway_url,
        )
        self._gateway = FakeGateway(
            token=bot_token,
            ready_payload=self._ready_payload,
            guild_payloads=lambda: [self._world.guild(g) for g in self._world.guild_channels()],
        )
        self._openapi = DiscordOpenAPI.load()
        self._faults: list[_Fault] = []
        self._holds: list[_Hold] = []
        self._all_holds: list[_Hold] = []  # released when the fake closes
        self._waiters: list[tuple[Callable[[RestCall], bool], asyncio.Future[RestCall]]] = []
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("GET", "/gateway", self._gateway.handle)
        app.router.add_route(
            "GET", r"/attachments/{attachment_id:\d+}/{filename}", self._serve_file
        )
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._serve_api)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
            await web.SockSite(self._runner, sock).start()
        except BaseException:
            sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise
        self._base_url = f"http://127.0.0.1:{port}"
        log.debug("fake Discord listening on %s", self._base_url)

    async def close(self) -> None:
        for hold in self._all_holds:
            hold.release.set()
        for _, future in self._waiters:
            future.cancel()
        self._waiters.clear()
        await self._gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if self._base_url is None:
            raise RuntimeError("FakeDiscord is not started")
        return self._base_url

    @property
    def api_base_url(self) -> str:
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://", 1) + "/gateway"

    @contextlib.contextmanager
    def patch_discord_py(self) -> Iterator[None]:
        """Point discord.py's REST base and default gateway at this fake while active."""
        from discord.gateway import DiscordWebSocket
        from discord.http import Route

        old_base, old_gateway = Route.BASE, DiscordWebSocket.DEFAULT_GATEWAY
        Route.BASE = self.api_base_url
        DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield
        finally:
            Route.BASE = old_base
            DiscordWebSocket.DEFAULT_GATEWAY = old_gateway

    async def drop_gateway(self) -> None:
        """Cut the bot off the gateway: close its connection (1001, going away) and turn away
        its reconnections (503) until `restore_gateway()`. Its session stays resumable."""
        self._gateway.refusing = True
        await self._gateway.close()

    def restore_gateway(self) -> None:
        """Accept gateway connections again: the bot's next try resumes its session."""
        self._gateway.refusing = False

    async def close_shard(self, shard_id: int, *, hold: bool = False) -> None:
        """Close the connection of shard `shard_id` (1001, going away); the bot resumes it.
        With `hold`, the shard's IDENTIFY and RESUME go unanswered until `release_shard`, so
        it stays down while the other shards stay up."""
        await self._gateway.close_shard(shard_id, hold=hold)

    async def release_shard(self, shard_id: int) -> None:
        """Let shard `shard_id` connect again after `close_shard(..., hold=True)`."""
        await self._gateway.release_shard(shard_id)

    async def add_guild(self, guild_id: int, channel_id: int | None = None) -> int:
        """Put the bot in one more guild, with one text channel (a new id unless given), and
        return the channel's id. As when a bot joins a server, the connection of the guild's
        shard (if one is up) gets its GUILD_CREATE; later connections get it at READY.
        Interactions sent with ``guild_id=`` this guild come from its channel."""
        channel = channel_id if channel_id is not None else self._snowflakes.make()
        self._world.more_guilds[guild_id] = channel
        session = self._gateway.session_for(guild_id)
        if session is not None and session.connected:
            await session.dispatch("GUILD_CREATE", self._world.guild(guild_id))
        return channel

    async def wait_ready(self, timeout: float = 10) -> None:
        """Wait until the bot identified and was sent READY and its GUILD_CREATE."""
        await asyncio.wait_for(self._gateway.ready.wait(), timeout)

    # ------------------------------------------------------------------ state

    @property
    def messages(self) -> dict[int, FakeMessage]:
        """Messages that exist now (interaction responses, followups, channel messages)."""
        return self._rest.messages

    @property
    def commands(self) -> list[dict[str, Any]]:
        """Registered application commands, global ones first; the last write wins per scope."""
        scopes = sorted(self._rest.commands.items(), key=lambda kv: (kv[0] is not None, kv[0] or 0))
        return [command for _, scope in scopes for command in scope]

    @property
    def gateway_received(self) -> list[dict[str, Any]]:
        """Every gateway payload the bot sent (IDENTIFY, heartbeats, RESUME...)."""
        return self._gateway.received

    @property
    def gateway_sessions(self) -> dict[str, GatewaySession]:
        return self._gateway.sessions

    @property
    def gateway_queries(self) -> list[dict[str, str]]:
        """The query of every gateway connection (``v``, ``encoding``, ``compress``)."""
        return self._gateway.connect_queries

    def calls_for(self, interaction: FakeInteraction) -> list[RestCall]:
        """REST calls on this interaction's token (callback, webhook edits and followups)."""
        return [c for c in self.calls if f"/{interaction.token}" in c.path]

    async def wait_for_call(
        self,
        predicate: Callable[[RestCall], bool],
        timeout: float = 10,
    ) -> RestCall:
        """The first answered call, past or future, for which ``predicate`` is true.

        Answered means the fake's state already reflects it (the bot may not have read the
        answer yet)."""
        for call in self.calls:
            if call.status is not None and predicate(call):
                return call
        future: asyncio.Future[RestCall] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def expire_token(self, token: str) -> None:
        """From now on the token's webhook routes answer 401 50027 and its callback 404 10062."""
        self._rest.expired_tokens.add(token)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
        *,
        when: Callable[[RestCall], bool] | None = None,
    ) -> None:
        """Answer the next request whose method matches and whose path (without ``/api/v10``)
        matches ``path_regex`` (``re.search``) with this status, body and headers, once.
        ``when`` narrows it further (e.g. only a request that uploads files).

        The request is recorded and validated but has no other effect. For a 429 that
        discord.py retries, give ``{"Via": "1.1 google"}`` and a body with ``retry_after``
        and ``global``; without ``Via`` it takes the 429 for a Cloudflare ban and raises."""
        pattern = re.compile(path_regex)
        fault = _Fault(method.upper(), pattern, status, body, dict(headers or {}), when)
        self._faults.append(fault)

    def hold_next(
        self, method: str, path_regex: str, *, when: Callable[[RestCall], bool] | None = None
    ) -> asyncio.Event:
        """Carry out the next matching request at once but hold back its answer until the
        returned event is set: a bot killed meanwhile never learns that it succeeded."""
        hold = _Hold(method.upper(), re.compile(path_regex), when, asyncio.Event())
        self._holds.append(hold)
        self._all_holds.append(hold)
        return hold.release

    # ------------------------------------------------------------------ interactions

    async def send_interaction(
        self,
        name: str = "music",
        options: list[dict[str, Any]] | None = None,
        *,
        user_id: int | None = None,
        attachments: Mapping[str, bytes | tuple[str, bytes]] | None = None,
        subcommand: str | None = None,
        created_at: datetime | None = None,
        attachment_size_limit: int | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        locale: str = "en-US",
        permissions: str | None = None,
    ) -> FakeInteraction:
        """Dispatch an INTERACTION_CREATE for a slash command, shaped like Discord's.

        ``subcommand`` may be ``"sub"`` or ``"group sub"``; ``options`` then go to the
        innermost level. ``attachments`` maps an option name to the uploaded bytes (or to
        ``(filename, bytes)``), giving an option of type 11 and ``data.resolved.attachments``;
        the files are served by this fake. ``created_at`` sets the interaction id's timestamp
        (the token dies 15 minutes after it). ``data.guild_id`` and ``data.id`` follow the
        commands the bot registered (a guild command carries ``data.guild_id``).
        ``permissions`` (a decimal bit set) replaces the member's default ones, e.g. with
        Manage Server (``1 << 5``) added for a server's admin.
        """
        guild = guild_id if guild_id is not None else self.guild_id
        channel = channel_id if channel_id is not None else self._world.channel_of(guild)
        opts = [dict(o) for o in options or []]
        resolved: dict[str, Any] = {}
        for option_name, upload in (attachments or {}).items():
            filename, blob = upload if isinstance(upload, tuple) else (f"{option_name}.bin", upload)
            attachment = self._rest.store_file(filename, blob, ephemeral=True)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.to_payload()
            opts.append({"name": option_name, "type": 11, "value": str(attachment.id)})
        if subcommand:
            parts = subcommand.split()
            inner: dict[str, Any] = {"name": parts[-1], "type": 1, "options": opts}
            opts = (
                [{"name": parts[0], "type": 2, "options": [inner]}] if len(parts) == 2 else [inner]
            )
        command_id, command_guild = self._rest.command_for(name, guild)
        data: dict[str, Any] = {"id": str(command_id), "name": name, "type": 1}
        if opts:
            data["options"] = opts
        if resolved:
            data["resolved"] = resolved
        if command_guild is not None:
            data["guild_id"] = str(command_guild)
        return await self._dispatch_interaction(
            2,
            name,
            data,
            user_id,
            created_at,
            attachment_size_limit,
            guild,
            channel,
            locale,
            permissions=permissions,
        )

    async def send_component(
        self,
        custom_id: str,
        *,
        message_id: int,
        component_type: int = 2,
        values: list[str] | None = None,
        user_id: int | None = None,
        created_at: datetime | None = None,
        attachment_size_limit: int | None = None,
        locale: str = "en-US",
        permissions: str | None = None,
    ) -> FakeInteraction:
        """Dispatch an INTERACTION_CREATE of type 3: a click on a component of a message.

        `permissions` (a decimal bit set) replaces the member's default ones, e.g. "0" for a
        member without Manage Messages."""
        message = self.messages.get(message_id)
        if message is None:
            raise KeyError(f"no message {message_id}")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component_type}
        if values is not None:
            data["values"] = values
        return await self._dispatch_interaction(
            3,
            custom_id,
            data,
            user_id,
            created_at,
            attachment_size_limit,
            message.guild_id,
            message.channel_id,
            locale,
            message=message,
            permissions=permissions,
        )

    def _ready_payload(self, session: GatewaySession) -> dict[str, Any]:
        shard = session.identify.get("shard")
        return self._world.ready(session.session_id, self.gateway_url, shard)

    async def _dispatch_interaction(
        self,
        kind: int,
        name: str,
        data: dict[str, Any],
        user_id: int | None,
        created_at: datetime | None,
        attachment_size_limit: int | None,
        guild_id: int | None,
        channel_id: int,
        locale: str,
        message: FakeMessage | None = None,
        permissions: str | None = None,
    ) -> FakeInteraction:
        moment = created_at or datetime.now(UTC)
        uid = user_id if user_id is not None else self.user_id
        user = self._world.user(uid)
        limit = attachment_size_limit or self.attachment_size_limit
        interaction_id = self._snowflakes.make(moment)
        token = new_token()
        payload = self._world.interaction(
            interaction_id=interaction_id,
            token=token,
            kind=kind,
            data=data,
            user=user,
            guild_id=guild_id,
            channel_id=channel_id,
            locale=locale,
            attachment_size_limit=limit,
            message=message.to_payload() if message is not None else None,
            **({"permissions": permissions} if permissions is not None else {}),
        )
        interaction = FakeInteraction(
            id=interaction_id,
            token=token,
            application_id=self.application_id,
            type=kind,
            name=name,
            created_at=moment,
            user_id=uid,
            user=user,
            guild_id=guild_id,
            channel_id=channel_id,
            attachment_size_limit=limit,
            payload=payload,
            component_message_id=message.id if message is not None else None,
        )
        self._rest.register(interaction)
        self.sent_interactions.append(interaction)
        session = await self._gateway.dispatch("INTERACTION_CREATE", payload, guild_id=guild_id)
        interaction.session_id, interaction.shard_id = session.session_id, session.shard_id
        return interaction

    # ------------------------------------------------------------------ HTTP plumbing

    @staticmethod
    def _respond(answer: Answer) -> web.Response:
        if answer.status == 204 or answer.body is None:
            return web.Response(status=answer.status, headers=answer.headers)
        raw = json.dumps(answer.body, separators=(",", ":")).encode()
        # Exactly "application/json": with a charset suffix discord.py reads the body as text.
        headers = {**answer.headers, "Content-Type": "application/json"}
        return web.Response(status=answer.status, body=raw, headers=headers)

    @staticmethod
    async def _read_body(request: web.Request) -> tuple[Any, list[Upload]]:
        if request.content_type == "multipart/form-data":
            body: Any = None
            uploads: list[Upload] = []
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                name = part.name or ""
                if name == "payload_json":
                    body = json.loads(await part.text())
                elif match := _FILES_FIELD.fullmatch(name):
                    raw = bytes(await part.read())
                    filename = part.filename or f"file{match.group(1)}"
                    kind = part.headers.get("Content-Type", "application/octet-stream")
                    uploads.append(Upload(int(match.group(1)), filename, raw, kind))
                else:
                    log.warning("unexpected multipart field %r", name)
            return body, uploads
        raw = await request.read()
        if not raw:
            return None, []
        if request.content_type != "application/json":
            log.warning("request body with content type %r", request.content_type)
        return json.loads(raw), []

    def _validate(self, method: str, path: str, body: Any) -> None:
        if self._openapi.find_operation(method, path) is None:
            return
        check = self._openapi.validate_request(method, path, body)
        if check.ok:
            return
        if check.integer_snowflakes_only and self.integer_snowflakes_ok:
            self.tolerated_violations.extend(check.errors)
            return
        for error in check.errors:
            log.warning("OpenAPI violation: %s", error)
        self.violations.extend(check.errors)

    def _check_answer(self, method: str, path: str, answer: Answer) -> None:
        if answer.status == 204 and answer.body is None:
            return
        checked = answer.body
        if isinstance(checked, dict) and "errors" in checked:
            # Discord's field errors carry string codes ("BASE_TYPE_MAX_LENGTH") where the
            # spec's InnerErrors says integer: that tree is left out of the check.
            checked = {k: v for k, v in checked.items() if k != "errors"}
        self.response_violations.extend(
            self._openapi.validate_response(method, path, answer.status, checked)
        )

    def _finish(self, call: RestCall, answer: Answer) -> None:
        call.status = answer.status
        call.response = answer.body
        for predicate, future in list(self._waiters):
            if not future.done() and predicate(call):
                future.set_result(call)

    async def _serve_api(self, request: web.Request) -> web.StreamResponse:
        path = "/" + request.match_info["tail"]
        call = RestCall(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
            at=monotonic(),
        )
        self.calls.append(call)
        try:
            body, uploads = await self._read_body(request)
        except ValueError:
            answer = Answer(400, {"message": "400: Bad Request", "code": 0})
            self._finish(call, answer)
            return self._respond(answer)
        call.json = body
        call.files = [(u.filename, u.data, u.content_type) for u in uploads]
        self._validate(request.method, path, body)

        fault = next((f for f in self._faults if f.matches(call)), None)
        if fault is not None:
            self._faults.remove(fault)
            answer = Answer(fault.status, fault.body, fault.headers)
        else:
            try:
                authorization = request.headers.get("Authorization")
                answer = self._rest.handle(call, authorization, body, uploads)
            except DiscordError as error:
                answer = Answer(error.status, error.body, error.headers)
            except Exception as exc:
                # A bug of the fake itself. Not a 5xx: discord.py would retry it for ~25 s.
                log.exception("fake Discord failed on %s %s", request.method, path)
                self.violations.append(f"fake Discord crashed on {request.method} {path}: {exc!r}")
                answer = Answer(400, {"message": f"fake Discord crashed: {exc!r}", "code": 0})
            self._check_answer(request.method, path, answer)
        self._finish(call, answer)
        hold = next((h for h in self._holds if h.matches(call)), None)
        if hold is not None:
            self._holds.remove(hold)
            await hold.release.wait()
        return self._respond(answer)

    async def _serve_file(self, request: web.Request) -> web.StreamResponse:
        call = RestCall(
            request.method, request.path, dict(request.query), dict(request.headers), monotonic()
        )
        self.calls.append(call)
        attachment = self._rest.files.get(int(request.match_info["attachment_id"]))
        if attachment is None or attachment.filename != request.match_info["filename"]:
            self._finish(call, Answer(404))
            return web.Response(status=404, text="Not Found")
        self._finish(call, Answer(200))
        return web.Response(body=attachment.data, headers={"Content-Type": attachment.content_type})
