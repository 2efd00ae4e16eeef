"""State and payload shapes of the fake Discord: snowflakes, messages, interactions, errors."""

from __future__ import annotations

import mimetypes
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "DISCORD_EPOCH_MS",
    "EPHEMERAL",
    "LOADING",
    "TOKEN_LIFETIME",
    "DiscordError",
    "FakeAttachment",
    "FakeInteraction",
    "FakeMessage",
    "RestCall",
    "SnowflakeFactory",
    "Upload",
    "form_errors",
    "guess_content_type",
    "iso",
    "monotonic",
    "new_token",
    "shard_of",
    "snowflake_time",
    "user_payload",
]

DISCORD_EPOCH_MS = 1_420_070_400_000
TOKEN_LIFETIME = timedelta(minutes=15)

# Message flags.
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
IS_COMPONENTS_V2 = 1 << 15
CREATE_FLAGS = SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | IS_COMPONENTS_V2
EDIT_FLAGS = SUPPRESS_EMBEDS | IS_COMPONENTS_V2


def iso(moment: datetime) -> str:
    """Discord's timestamp format: ``2024-05-01T12:00:00.123000+00:00``."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def snowflake_time(snowflake: int) -> datetime:
    return datetime.fromtimestamp(((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000, tz=UTC)


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard whose connection carries a guild's events, as Discord routes them:
    ``(guild_id >> 22) % shard_count``. Events without a guild (DMs) go to shard 0."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


class SnowflakeFactory:
    """Unique snowflakes whose embedded timestamp is the given moment (default: now)."""

    def __init__(self) -> None:
        self._increment = 0

    def make(self, at: datetime | None = None) -> int:
        moment = at if at is not None else datetime.now(UTC)
        millis = int(moment.timestamp() * 1000) - DISCORD_EPOCH_MS
        self._increment = (self._increment + 1) & 0xFFF
        return (millis << 22) | (1 << 17) | (1 << 12) | self._increment


class DiscordError(Exception):
    """An error answer, shaped like Discord's: ``{"message": ..., "code": ...}``."""

    def __init__(
        self,
        status: int,
        message: str,
        code: int,
        errors: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {message} ({code})")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors is not None:
            self.body["errors"] = dict(errors)
        self.headers = dict(headers or {})

    @classmethod
    def unauthorized(cls) -> DiscordError:
        return cls(401, "401: Unauthorized", 0)

    @classmethod
    def not_found(cls) -> DiscordError:
        return cls(404, "404: Not Found", 0)

    @classmethod
    def method_not_allowed(cls) -> DiscordError:
        return cls(405, "405: Method Not Allowed", 0)

    @classmethod
    def unknown_interaction(cls) -> DiscordError:
        return cls(404, "Unknown interaction", 10062)

    @classmethod
    def already_acknowledged(cls) -> DiscordError:
        return cls(400, "Interaction has already been acknowledged.", 40060)

    @classmethod
    def invalid_webhook_token(cls) -> DiscordError:
        return cls(401, "Invalid Webhook Token", 50027)

    @classmethod
    def unknown_webhook(cls) -> DiscordError:
        return cls(404, "Unknown Webhook", 10015)

    @classmethod
    def unknown_message(cls) -> DiscordError:
        return cls(404, "Unknown Message", 10008)

    @classmethod
    def unknown_channel(cls) -> DiscordError:
        return cls(404, "Unknown Channel", 10003)

    @classmethod
    def unknown_application(cls) -> DiscordError:
        return cls(404, "Unknown Application", 10002)

    @classmethod
    def missing_access(cls) -> DiscordError:
        return cls(403, "Missing Access", 50001)

    @classmethod
    def too_large(cls) -> DiscordError:
        return cls(413, "Request entity too large", 40005)

    @classmethod
    def empty_message(cls) -> DiscordError:
        return cls(400, "Cannot send an empty message", 50006)

    @classmethod
    def invalid_form(cls, errors: Mapping[str, Any]) -> DiscordError:
        return cls(400, "Invalid Form Body", 50035, errors)

    @classmethod
    def field_error(cls, path: Sequence[str], code: str, message: str) -> DiscordError:
        node: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
        for key in reversed(path):
            node = {key: node}
        return cls.invalid_form(node)


@dataclass
class RestCall:
    """One HTTP request the bot made to the fake, recorded on arrival."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    json: Any = None
    files: list[tuple[str, bytes, str]] = field(default_factory=list)
    status: int | None = None
    response: Any = None


@dataclass(frozen=True)
class Upload:
    """A ``files[n]`` part of a multipart request."""

    index: int
    filename: str
    data: bytes
    content_type: str


# Python's built-in table only (not the host's mime.types): the same answer everywhere.
_MIME_TYPES = mimetypes.MimeTypes()


def guess_content_type(filename: str, data: bytes = b"") -> str:
    """What Discord reports as an attachment's content type (by name, then by magic bytes)."""
    guessed, _ = _MIME_TYPES.guess_type(filename)
    if guessed is None:
        magic = {
            b"RIFF": "audio/x-wav",
            b"fLaC": "audio/flac",
            b"OggS": "audio/ogg",
            b"ID3": "audio/mpeg",
            b"\x89PNG": "image/png",
            b"\xff\xd8\xff": "image/jpeg",
        }
        guessed = next((kind for head, kind in magic.items() if data.startswith(head)), None)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/"):
        return f"{guessed}; charset=utf-8"
    return guessed


@dataclass
class FakeAttachment:
    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    proxy_url: str
    description: str | None = None
    ephemeral: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.proxy_url,
            "content_type": self.content_type,
            "content_scan_version": 0,
        }
        if self.description is not None:
            payload["description"] = self.description
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


def user_payload(user_id: int, username: str, *, bot: bool = False) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "id": str(user_id),
        "username": username,
        "avatar": None,
        "discriminator": "4821" if bot else "0",
        "public_flags": 0,
        "flags": 0,
        "banner": None,
        "accent_color": None,
        "global_name": None if bot else username.title(),
        "avatar_decoration_data": None,
        "collectibles": None,
        "primary_guild": None,
    }
    if bot:
        payload["bot"] = True
    return payload


def _with_component_ids(components: list[Any], counter: list[int]) -> list[Any]:
    """Discord numbers every component of a message it returns (``id``)."""
    result: list[Any] = []
    for component in components:
        if not isinstance(component, dict):
            result.append(component)
            continue
        copy = dict(component)
        if copy.get("id") is None:
            counter[0] += 1
            copy["id"] = counter[0]
        if isinstance(copy.get("components"), list):
            copy["components"] = _with_component_ids(copy["components"], counter)
        if isinstance(copy.get("accessory"), dict):
            copy["accessory"] = _with_component_ids([copy["accessory"]], counter)[0]
        result.append(copy)
    return result


def _embed_response(embed: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in embed.items() if v is not None}
    out.setdefault("type", "rich")
    if isinstance(out.get("fields"), list):
        out["fields"] = [
            {
                "name": f.get("name", ""),
                "value": f.get("value", ""),
                "inline": bool(f.get("inline")),
            }
            for f in out["fields"]
        ]
    return out


@dataclass
class FakeMessage:
    """A message that exists in the fake (interaction responses, followups, channel messages)."""

    id: int
    channel_id: int
    guild_id: int | None
    author: dict[str, Any]
    timestamp: datetime
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[FakeAttachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    flags: int = 0
    allowed_mentions: dict[str, Any] | None = None
    type: int = 0
    tts: bool = False
    edits: int = 0
    edited_timestamp: datetime | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None
    interaction: dict[str, Any] | None = None
    message_reference: dict[str, Any] | None = None

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & LOADING)

    def to_payload(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "type": self.type,
            "content": self.content,
            "mentions": [],
            "mention_roles": [],
            "attachments": [a.to_payload() for a in self.attachments],
            "embeds": [_embed_response(e) for e in self.embeds],
            "timestamp": iso(self.timestamp),
            "edited_timestamp": iso(self.edited_timestamp) if self.edited_timestamp else None,
            "flags": self.flags,
            "components": _with_component_ids(self.components, [0]),
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author,
            "pinned": False,
            "mention_everyone": False,
            "tts": self.tts,
        }
        if self.webhook_id is not None:
            payload["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            payload["application_id"] = str(self.application_id)
        if self.interaction_metadata is not None:
            payload["interaction_metadata"] = self.interaction_metadata
        if self.interaction is not None:
            payload["interaction"] = self.interaction
        if self.message_reference is not None:
            payload["message_reference"] = self.message_reference
        return payload


@dataclass
class FakeInteraction:
    """An interaction the fake dispatched to the bot, and what the bot did with it."""

    id: int
    token: str
    application_id: int
    type: int
    name: str
    created_at: datetime
    user_id: int
    user: dict[str, Any]
    guild_id: int | None
    channel_id: int
    attachment_size_limit: int
    payload: dict[str, Any] = field(repr=False)
    message_id: int | None = None
    callback_type: int | None = None
    callback_at: float | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: dict[str, Any] | None = None
    component_message_id: int | None = None
    # The gateway connection it was dispatched on: its session, and the shard that session
    # identified as (None: identified without ``shard``, so it gets every event).
    session_id: str | None = None
    shard_id: int | None = None

    @property
    def expires_at(self) -> datetime:
        return self.created_at + TOKEN_LIFETIME

    def token_expired(self, now: datetime | None = None) -> bool:
        return (now or datetime.now(UTC)) >= self.expires_at

    def metadata(self, *, followup: bool = False) -> dict[str, Any]:
        """``interaction_metadata`` of the messages this interaction created."""
        data: dict[str, Any] = {
            "id": str(self.id),
            "type": self.type,
            "user": self.user,
            "authorizing_integration_owners": self.payload["authorizing_integration_owners"],
        }
        if self.type == 2:
            data["name"] = self.name
            data["command_type"] = 1
        if followup and self.message_id is not None:
            data["original_response_message_id"] = str(self.message_id)
        if self.type == 3 and self.component_message_id is not None:
            data["interacted_message_id"] = str(self.component_message_id)
        return data

    def legacy_interaction(self) -> dict[str, Any]:
        """The deprecated ``interaction`` field Discord still sends on messages."""
        return {"id": str(self.id), "type": self.type, "name": self.name, "user": self.user}


def new_token() -> str:
    return "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(96)


def _too_long(path: list[str], limit: int) -> dict[str, Any]:
    node: dict[str, Any] = {
        "_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}
        ]
    }
    for key in reversed(path):
        node = {key: node}
    return node


def _merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if key in into and isinstance(into[key], dict) and isinstance(value, Mapping):
            _merge(into[key], value)
        else:
            into[key] = value


def _embed_text_length(embed: Mapping[str, Any]) -> int:
    total = len(embed.get("title") or "") + len(embed.get("description") or "")
    total += len((embed.get("footer") or {}).get("text") or "")
    total += len((embed.get("author") or {}).get("name") or "")
    for f in embed.get("fields") or []:
        total += len(f.get("name") or "") + len(f.get("value") or "")
    return total


def _component_errors(components: Any, path: list[str], errors: dict[str, Any]) -> None:
    if not isinstance(components, list):
        return
    for i, component in enumerate(components):
        if not isinstance(component, Mapping):
            continue
        here = [*path, str(i)]
        custom_id = component.get("custom_id")
        if isinstance(custom_id, str) and len(custom_id) > 100:
            _merge(errors, _too_long([*here, "custom_id"], 100))
        label = component.get("label")
        if isinstance(label, str) and len(label) > 80:
            _merge(errors, _too_long([*here, "label"], 80))
        _component_errors(component.get("components"), [*here, "components"], errors)


def form_errors(payload: Mapping[str, Any], prefix: Sequence[str] = ()) -> dict[str, Any] | None:
    """Discord's length limits on a message body, as a 50035 ``errors`` tree (None if fine)."""
    errors: dict[str, Any] = {}
    base = list(prefix)
    content = payload.get("content")
    if isinstance(content, str) and len(content) > 2000:
        _merge(errors, _too_long([*base, "content"], 2000))
    embeds = payload.get("embeds")
    if isinstance(embeds, list):
        if len(embeds) > 10:
            _merge(errors, _too_long([*base, "embeds"], 10))
        limits = {"title": 256, "description": 4096}
        for i, embed in enumerate(embeds):
            if not isinstance(embed, Mapping):
                continue
            here = [*base, "embeds", str(i)]
            for key, limit in limits.items():
                if len(embed.get(key) or "") > limit:
                    _merge(errors, _too_long([*here, key], limit))
            if len((embed.get("footer") or {}).get("text") or "") > 2048:
                _merge(errors, _too_long([*here, "footer", "text"], 2048))
            if len((embed.get("author") or {}).get("name") or "") > 256:
                _merge(errors, _too_long([*here, "author", "name"], 256))
            fields = embed.get("fields") or []
            if len(fields) > 25:
                _merge(errors, _too_long([*here, "fields"], 25))
            for j, f in enumerate(fields):
                if len(f.get("name") or "") > 256:
                    _merge(errors, _too_long([*here, "fields", str(j), "name"], 256))
                if len(f.get("value") or "") > 1024:
                    _merge(errors, _too_long([*here, "fields", str(j), "value"], 1024))
        if not errors and sum(_embed_text_length(e) for e in embeds) > 6000:
            node: dict[str, Any] = {
                "_errors": [
                    {
                        "code": "MAX_EMBED_SIZE_EXCEEDED",
                        "message": "Embed size exceeds maximum size of 6000",
                    }
                ]
            }
            for key in reversed([*base, "embeds"]):
                node = {key: node}
            _merge(errors, node)
    _component_errors(payload.get("components"), [*base, "components"], errors)
    return errors or None


def monotonic() -> float:
    return time.monotonic()
