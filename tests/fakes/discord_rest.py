"""The REST half of the fake Discord: routes, state (messages, interactions, commands, files)
and Discord's answers, including its refusals."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .discord_models import (
    CREATE_FLAGS,
    EDIT_FLAGS,
    EPHEMERAL,
    LOADING,
    DiscordError,
    FakeAttachment,
    FakeInteraction,
    FakeMessage,
    RestCall,
    SnowflakeFactory,
    Upload,
    form_errors,
    guess_content_type,
)
from .discord_payloads import World

__all__ = ["Answer", "Request", "RestApi"]

log = logging.getLogger(__name__)

_TRUE = ("1", "true", "True")


@dataclass
class Request:
    call: RestCall
    params: dict[str, str]
    body: Any
    uploads: list[Upload]


@dataclass
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Route:
    method: str
    pattern: re.Pattern[str]
    handler: str
    bot_auth: bool


def _routes() -> list[_Route]:
    snowflake = r"\d+"
    token = r"[^/]+"
    webhook = rf"/webhooks/(?P<app_id>{snowflake})/(?P<token>{token})"
    webhook_message = rf"{webhook}/messages/(?P<message_id>@original|{snowflake})"
    channel = rf"/channels/(?P<channel_id>{snowflake})"
    callback = rf"/interactions/(?P<interaction_id>{snowflake})/(?P<token>{token})/callback"
    table = [
        ("GET", r"/users/@me", "get_me", True),
        ("GET", r"/oauth2/applications/@me", "get_application", True),
        ("GET", r"/gateway", "get_gateway", False),
        ("GET", r"/gateway/bot", "get_gateway_bot", True),
        ("POST", callback, "post_callback", False),
        ("POST", webhook, "post_followup", False),
        ("GET", webhook_message, "get_webhook_message", False),
        ("PATCH", webhook_message, "patch_webhook_message", False),
        ("DELETE", webhook_message, "delete_webhook_message", False),
        ("GET", channel, "get_channel", True),
        ("POST", f"{channel}/messages", "post_channel_message", True),
    ]
    for method in ("GET", "PATCH", "DELETE"):
        handler = f"{method.lower()}_channel_message"
        table.append((method, rf"{channel}/messages/(?P<message_id>{snowflake})", handler, True))
    for scope in ("", rf"/guilds/(?P<guild_id>{snowflake})"):
        commands = rf"/applications/(?P<app_id>{snowflake}){scope}/commands"
        table.append(("GET", commands, "get_commands", True))
        table.append(("PUT", commands, "put_commands", True))
        table.append(("POST", commands, "post_command", True))
    return [_Route(m, re.compile(p), h, a) for m, p, h, a in table]


class RestApi:
    """Discord's REST behaviour over the fake's state. Handlers raise ``DiscordError``."""

    def __init__(
        self,
        world: World,
        *,
        bot_token: str,
        attachment_size_limit: int,
        snowflakes: SnowflakeFactory,
        base_url: Callable[[], str],
        gateway_url: Callable[[], str],
    ) -> None:
        self.world = world
        self.bot_token = bot_token
        self.attachment_size_limit = attachment_size_limit
        self.snowflakes = snowflakes
        self._base_url = base_url
        self._gateway_url = gateway_url
        self.messages: dict[int, FakeMessage] = {}
        self.interactions: dict[int, FakeInteraction] = {}
        self.by_token: dict[str, FakeInteraction] = {}
        self.expired_tokens: set[str] = set()
        self.commands: dict[int | None, list[dict[str, Any]]] = {}
        self.files: dict[int, FakeAttachment] = {}
        self._unregistered_command_ids: dict[str, int] = {}
        self._nonces: dict[str, int] = {}
        self._routes = _routes()

    # ------------------------------------------------------------------ plumbing

    def handle(
        self, call: RestCall, authorization: str | None, body: Any, uploads: list[Upload]
    ) -> Answer:
        path_known = False
        for route in self._routes:
            match = route.pattern.fullmatch(call.path)
            if match is None:
                continue
            path_known = True
            if route.method != call.method:
                continue
            if route.bot_auth and authorization != f"Bot {self.bot_token}":
                raise DiscordError.unauthorized()
            handler: Callable[[Request], Answer] = getattr(self, route.handler)
            return handler(Request(call, match.groupdict(), body, uploads))
        if path_known:
            raise DiscordError.method_not_allowed()
        log.warning("fake Discord has no route for %s %s", call.method, call.path)
        raise DiscordError.not_found()

    def register(self, interaction: FakeInteraction) -> None:
        self.interactions[interaction.id] = interaction
        self.by_token[interaction.token] = interaction

    def command_for(self, name: str, guild_id: int | None) -> tuple[int, int | None]:
        """The id of the chat command ``name`` and its guild if it is a guild command."""
        scopes: list[int | None] = [guild_id, None] if guild_id is not None else [None]
        for scope in scopes:
            for command in self.commands.get(scope, []):
                if command["name"] == name and command.get("type", 1) == 1:
                    return int(command["id"]), scope
        if name not in self._unregistered_command_ids:
            self._unregistered_command_ids[name] = self.snowflakes.make()
        return self._unregistered_command_ids[name], None

    def store_file(
        self,
        filename: str,
        data: bytes,
        *,
        description: str | None = None,
        ephemeral: bool = False,
    ) -> FakeAttachment:
        attachment_id = self.snowflakes.make()
        stamp = int(datetime.now(UTC).timestamp())
        url = (
            f"{self._base_url()}/attachments/{attachment_id}/{filename}"
            f"?ex={stamp + 86400:x}&is={stamp:x}&hm={attachment_id:x}&"
        )
        attachment = FakeAttachment(
            id=attachment_id,
            filename=filename,
            data=data,
            content_type=guess_content_type(filename, data),
            url=url,
            proxy_url=url,
            description=description,
            ephemeral=ephemeral,
        )
        self.files[attachment_id] = attachment
        return attachment

    # ------------------------------------------------------------------ messages

    def _new_message(
        self,
        channel_id: int,
        guild_id: int | None,
        *,
        kind: int = 0,
        interaction: FakeInteraction | None = None,
    ) -> FakeMessage:
        message = FakeMessage(
            id=self.snowflakes.make(),
            channel_id=channel_id,
            guild_id=guild_id,
            author=self.world.bot_user(),
            timestamp=datetime.now(UTC),
            type=kind,
        )
        if interaction is not None:
            message.webhook_id = self.world.application_id
            message.application_id = self.world.application_id
            message.interaction_id = interaction.id
        return message

    def _apply(
        self,
        message: FakeMessage,
        payload: Mapping[str, Any] | None,
        uploads: list[Upload],
        *,
        size_limit: int,
        creating: bool,
        error_prefix: tuple[str, ...] = (),
    ) -> None:
        """Apply a create/edit body to ``message``; raises DiscordError (and leaves the message
        untouched) when Discord would refuse it."""
        body = dict(payload or {})
        if sum(len(u.data) for u in uploads) > size_limit:
            raise DiscordError.too_large()
        problems = form_errors(body, error_prefix)
        if problems is not None:
            raise DiscordError.invalid_form(problems)

        content = (body.get("content") or "") if "content" in body else message.content
        embeds = message.embeds
        if "embeds" in body:
            embeds = [dict(e) for e in body["embeds"] or []]
        components = message.components
        if "components" in body:
            components = [dict(c) for c in body["components"] or []]

        by_index = {u.index: u for u in uploads}
        referenced: set[int] = set()
        attachments = list(message.attachments)
        if body.get("attachments") is not None:
            # v10: the list names every attachment to keep (by id) and every new upload
            # (by the n of its files[n] part); the others are dropped.
            existing = {a.id: a for a in message.attachments}
            attachments = []
            for i, item in enumerate(body["attachments"]):
                ref = int(item["id"])
                if ref in existing and not creating:
                    attachments.append(existing[ref])
                elif ref in by_index:
                    referenced.add(ref)
                    filename = item.get("filename") or by_index[ref].filename
                    description = item.get("description")
                    data = by_index[ref].data
                    attachments.append(self.store_file(filename, data, description=description))
                else:
                    raise DiscordError.field_error(
                        [*error_prefix, "attachments", str(i), "id"],
                        "ATTACHMENT_NOT_FOUND",
                        "Unknown attachment",
                    )
        for upload in uploads:
            if upload.index not in referenced:
                attachments.append(self.store_file(upload.filename, upload.data))

        if not (content or embeds or attachments or components or body.get("poll")):
            raise DiscordError.empty_message()

        flags = message.flags & ~LOADING
        requested = body.get("flags")
        if isinstance(requested, int):
            allowed = CREATE_FLAGS if creating else EDIT_FLAGS
            flags = (flags & ~allowed) | (requested & allowed)
        if creating:
            message.tts = bool(body.get("tts", False))
        else:
            if not message.loading:
                message.edited_timestamp = datetime.now(UTC)
            message.edits += 1
        message.content = content
        message.embeds = embeds
        message.components = components
        message.attachments = attachments
        message.flags = flags
        if "allowed_mentions" in body:
            message.allowed_mentions = body["allowed_mentions"]
        if body.get("message_reference"):
            message.message_reference = dict(body["message_reference"])

    # ------------------------------------------------------------------ identity, gateway

    def get_me(self, req: Request) -> Answer:
        return Answer(200, self.world.me())

    def get_application(self, req: Request) -> Answer:
        return Answer(200, self.world.application())

    def get_gateway(self, req: Request) -> Answer:
        return Answer(200, {"url": self._gateway_url()})

    def get_gateway_bot(self, req: Request) -> Answer:
        """The gateway and how many shards Discord recommends (one per 1,000 guilds, at
        least one), with the session start limit, as Discord documents it."""
        limit = {"total": 1000, "remaining": 999, "reset_after": 86_400_000, "max_concurrency": 1}
        shards = max(1, -(-len(self.world.guild_channels()) // 1000))
        body = {"url": self._gateway_url(), "shards": shards, "session_start_limit": limit}
        return Answer(200, body)

    # ------------------------------------------------------------------ interactions

    def _interaction_for_webhook(self, app_id: str, token: str) -> FakeInteraction:
        if int(app_id) != self.world.application_id:
            raise DiscordError.unknown_webhook()
        interaction = self.by_token.get(token)
        if interaction is None or token in self.expired_tokens or interaction.token_expired():
            raise DiscordError.invalid_webhook_token()
        return interaction

    def post_callback(self, req: Request) -> Answer:
        interaction = self.interactions.get(int(req.params["interaction_id"]))
        token = req.params["token"]
        if interaction is None or interaction.token != token or token in self.expired_tokens:
            raise DiscordError.unknown_interaction()
        if interaction.callback_type is not None:
            raise DiscordError.already_acknowledged()
        body = req.body if isinstance(req.body, dict) else {}
        kind = body.get("type")
        data = body.get("data") or {}
        allowed = {2: (4, 5, 9), 3: (4, 5, 6, 7, 9)}.get(interaction.type, ())
        if kind not in allowed:
            raise DiscordError.field_error(
                ["type"],
                "INTERACTION_RESPONSE_TYPE_INVALID",
                "Interaction response type is invalid for this interaction.",
            )
        limit = interaction.attachment_size_limit
        message: FakeMessage | None = None
        if kind in (4, 5):
            message_type = 20 if interaction.type == 2 else 0
            message = self._new_message(
                interaction.channel_id,
                interaction.guild_id,
                kind=message_type,
                interaction=interaction,
            )
            if kind == 4:
                self._apply(
                    message,
                    data,
                    req.uploads,
                    size_limit=limit,
                    creating=True,
                    error_prefix=("data",),
                )
            else:
                ephemeral = EPHEMERAL if (data.get("flags") or 0) & EPHEMERAL else 0
                message.flags = LOADING | ephemeral
        elif kind in (6, 7):
            message = self.messages.get(interaction.component_message_id or 0)
            if message is None:
                raise DiscordError.unknown_message()
            if kind == 7:
                self._apply(
                    message,
                    data,
                    req.uploads,
                    size_limit=limit,
                    creating=False,
                    error_prefix=("data",),
                )
        else:
            interaction.modal = dict(data)

        interaction.callback_type = kind
        interaction.callback_at = req.call.at
        if message is not None:
            interaction.message_id = message.id
            if kind in (4, 5):
                message.interaction_metadata = interaction.metadata()
                message.interaction = interaction.legacy_interaction()
                self.messages[message.id] = message
        if req.call.query.get("with_response") not in _TRUE:
            return Answer(204)
        summary: dict[str, Any] = {"id": str(interaction.id), "type": interaction.type}
        if message is not None:
            summary["response_message_id"] = str(message.id)
            summary["response_message_loading"] = message.loading
            summary["response_message_ephemeral"] = message.ephemeral
        answer: dict[str, Any] = {"interaction": summary}
        if message is not None and kind in (4, 7):
            answer["resource"] = {"type": kind, "message": message.to_payload()}
        return Answer(200, answer)

    def _webhook_message(self, interaction: FakeInteraction, message_id: str) -> FakeMessage:
        if message_id == "@original":
            target = interaction.message_id
        else:
            target = int(message_id)
            if target not in {interaction.message_id, *interaction.followup_ids}:
                raise DiscordError.unknown_message()
        message = self.messages.get(target) if target is not None else None
        if message is None:
            raise DiscordError.unknown_message()
        return message

    def get_webhook_message(self, req: Request) -> Answer:
        interaction = self._interaction_for_webhook(req.params["app_id"], req.params["token"])
        message = self._webhook_message(interaction, req.params["message_id"])
        return Answer(200, message.to_payload())

    def patch_webhook_message(self, req: Request) -> Answer:
        interaction = self._interaction_for_webhook(req.params["app_id"], req.params["token"])
        message = self._webhook_message(interaction, req.params["message_id"])
        limit = interaction.attachment_size_limit
        self._apply(message, req.body, req.uploads, size_limit=limit, creating=False)
        return Answer(200, message.to_payload())

    def delete_webhook_message(self, req: Request) -> Answer:
        interaction = self._interaction_for_webhook(req.params["app_id"], req.params["token"])
        message = self._webhook_message(interaction, req.params["message_id"])
        del self.messages[message.id]
        return Answer(204)

    def post_followup(self, req: Request) -> Answer:
        interaction = self._interaction_for_webhook(req.params["app_id"], req.params["token"])
        if interaction.callback_type is None:
            raise DiscordError.unknown_webhook()
        limit = interaction.attachment_size_limit
        original = self.messages.get(interaction.message_id or 0)
        if original is not None and original.loading and interaction.callback_type == 5:
            # The first followup after a deferred reply replaces the "thinking" placeholder
            # (and keeps its ephemeral flag).
            self._apply(original, req.body, req.uploads, size_limit=limit, creating=False)
            message = original
        else:
            message = self._new_message(
                interaction.channel_id, interaction.guild_id, interaction=interaction
            )
            self._apply(message, req.body, req.uploads, size_limit=limit, creating=True)
            message.interaction_metadata = interaction.metadata(followup=True)
            self.messages[message.id] = message
            interaction.followup_ids.append(message.id)
        if req.call.query.get("wait") not in _TRUE:
            return Answer(204)
        return Answer(200, message.to_payload())

    # ------------------------------------------------------------------ channels

    def _check_channel(self, channel_id: str) -> int:
        if self.world.guild_of_channel(int(channel_id)) is None:
            raise DiscordError.unknown_channel()
        return int(channel_id)

    def _channel_message(self, channel_id: int, message_id: str) -> FakeMessage:
        message = self.messages.get(int(message_id))
        if message is None or message.channel_id != channel_id or message.ephemeral:
            raise DiscordError.unknown_message()
        return message

    def get_channel(self, req: Request) -> Answer:
        channel_id = self._check_channel(req.params["channel_id"])
        guild_id = self.world.guild_of_channel(channel_id) or self.world.guild_id
        return Answer(200, self.world.channel(channel_id, guild_id))

    def post_channel_message(self, req: Request) -> Answer:
        channel_id = self._check_channel(req.params["channel_id"])
        body = req.body if isinstance(req.body, dict) else {}
        nonce = body.get("nonce")
        if body.get("enforce_nonce") and nonce is not None:
            # Discord answers a repeated nonce with the message it already created.
            earlier = self.messages.get(self._nonces.get(str(nonce), 0))
            if earlier is not None:
                return Answer(200, earlier.to_payload())
        kind = 19 if body.get("message_reference") else 0
        guild_id = self.world.guild_of_channel(channel_id) or self.world.guild_id
        message = self._new_message(channel_id, guild_id, kind=kind)
        limit = self.attachment_size_limit
        self._apply(message, body, req.uploads, size_limit=limit, creating=True)
        message.flags &= ~EPHEMERAL
        self.messages[message.id] = message
        if nonce is not None:
            self._nonces[str(nonce)] = message.id
        return Answer(200, message.to_payload())

    def get_channel_message(self, req: Request) -> Answer:
        channel_id = self._check_channel(req.params["channel_id"])
        return Answer(200, self._channel_message(channel_id, req.params["message_id"]).to_payload())

    def patch_channel_message(self, req: Request) -> Answer:
        channel_id = self._check_channel(req.params["channel_id"])
        message = self._channel_message(channel_id, req.params["message_id"])
        limit = self.attachment_size_limit
        self._apply(message, req.body, req.uploads, size_limit=limit, creating=False)
        return Answer(200, message.to_payload())

    def delete_channel_message(self, req: Request) -> Answer:
        channel_id = self._check_channel(req.params["channel_id"])
        message = self._channel_message(channel_id, req.params["message_id"])
        del self.messages[message.id]
        return Answer(204)

    # ------------------------------------------------------------------ application commands

    def _command_scope(self, req: Request) -> int | None:
        if int(req.params["app_id"]) != self.world.application_id:
            raise DiscordError.unknown_application()
        guild = req.params.get("guild_id")
        if guild is None:
            return None
        if int(guild) not in self.world.guild_channels():
            raise DiscordError.missing_access()
        return int(guild)

    def _command_record(self, scope: int | None, body: Mapping[str, Any]) -> dict[str, Any]:
        kind = body.get("type", 1)
        previous = next(
            (
                c
                for c in self.commands.get(scope, [])
                if c["name"] == body.get("name") and c["type"] == kind
            ),
            None,
        )
        record: dict[str, Any] = {
            # Overwriting keeps the id of a command with the same name and type.
            "id": previous["id"] if previous else str(self.snowflakes.make()),
            "application_id": str(self.world.application_id),
            "version": str(self.snowflakes.make()),
            "default_member_permissions": body.get("default_member_permissions"),
            "type": kind,
            "name": body.get("name"),
            "description": body.get("description") or "",
            "dm_permission": body.get("dm_permission", True),
            "contexts": body.get("contexts"),
            "integration_types": body.get("integration_types") or [0],
            "nsfw": bool(body.get("nsfw", False)),
        }
        for key in ("name_localizations", "description_localizations", "options"):
            if body.get(key):
                record[key] = body[key]
        if scope is not None:
            record["guild_id"] = str(scope)
            del record["dm_permission"]
        return record

    def get_commands(self, req: Request) -> Answer:
        return Answer(200, self.commands.get(self._command_scope(req), []))

    def put_commands(self, req: Request) -> Answer:
        scope = self._command_scope(req)
        records = [self._command_record(scope, body) for body in req.body or []]
        self.commands[scope] = records
        return Answer(200, records)

    def post_command(self, req: Request) -> Answer:
        scope = self._command_scope(req)
        record = self._command_record(scope, req.body or {})
        current = self.commands.setdefault(scope, [])
        for i, command in enumerate(current):
            if command["id"] == record["id"]:
                current[i] = record
                return Answer(200, record)
        current.append(record)
        return Answer(201, record)
