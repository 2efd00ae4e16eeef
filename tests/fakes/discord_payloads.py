"""Discord objects of the fake's world: bot user, application, guild, channel, member, READY."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .discord_models import iso, shard_of, user_payload

__all__ = ["MEMBER_PERMISSIONS", "World"]

# Permissions of a member with every permission but administrator.
MEMBER_PERMISSIONS = "2248473465835073"


@dataclass(frozen=True)
class World:
    """The ids of the one bot, its guild and text channel and the default user the fake knows,
    and of the further guilds (each with one text channel) a test adds."""

    application_id: int
    bot_user_id: int
    guild_id: int
    channel_id: int
    user_id: int
    started_at: datetime
    more_guilds: dict[int, int] = field(default_factory=dict)  # guild id → its channel id

    def guild_channels(self) -> dict[int, int]:
        """Every guild the bot is in, with its text channel: the first guild first."""
        return {self.guild_id: self.channel_id} | self.more_guilds

    def channel_of(self, guild_id: int) -> int:
        """The text channel of a known guild (the first guild's for an unknown one)."""
        return self.guild_channels().get(guild_id, self.channel_id)

    def guild_of_channel(self, channel_id: int) -> int | None:
        """The guild of a known text channel, None for an unknown channel."""
        return next((g for g, c in self.guild_channels().items() if c == channel_id), None)

    def guild_ids_on_shard(self, shard: Any) -> list[int]:
        """The guilds whose events go to a connection identified with ``shard``
        (``[shard_id, shard_count]``; None: all of them)."""
        guilds = list(self.guild_channels())
        if shard is None:
            return guilds
        return [g for g in guilds if shard_of(g, shard[1]) == shard[0]]

    def bot_user(self) -> dict[str, Any]:
        return user_payload(self.bot_user_id, "jambot", bot=True)

    def user(self, user_id: int) -> dict[str, Any]:
        name = "tester" if user_id == self.user_id else f"user{user_id % 100000}"
        return user_payload(user_id, name)

    def me(self) -> dict[str, Any]:
        """``GET /users/@me`` for the bot."""
        return self.bot_user() | {
            "mfa_enabled": False,
            "locale": "en-US",
            "premium_type": 0,
            "email": None,
            "verified": True,
            "bio": "",
        }

    def channel(self, channel_id: int, guild_id: int) -> dict[str, Any]:
        return {
            "id": str(channel_id),
            "type": 0,
            "last_message_id": None,
            "flags": 0,
            "guild_id": str(guild_id),
            "name": "general",
            "parent_id": None,
            "rate_limit_per_user": 0,
            "topic": None,
            "position": 0,
            "permission_overwrites": [],
            "nsfw": False,
        }

    def member(self, user: dict[str, Any]) -> dict[str, Any]:
        return {
            "user": user,
            "roles": [],
            "premium_since": None,
            "pending": False,
            "nick": None,
            "mute": False,
            "deaf": False,
            "joined_at": iso(self.started_at),
            "flags": 0,
            "communication_disabled_until": None,
            "unusual_dm_activity_until": None,
            "banner": None,
            "avatar": None,
        }

    def guild(self, guild_id: int | None = None) -> dict[str, Any]:
        """The GUILD_CREATE payload of a guild (the first one by default): enough for
        discord.py to cache the guild and its channel."""
        guild_id = self.guild_id if guild_id is None else guild_id
        channel_id = self.channel_of(guild_id)
        everyone = {
            "id": str(guild_id),
            "name": "@everyone",
            "permissions": MEMBER_PERMISSIONS,
            "position": 0,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        return {
            "id": str(guild_id),
            "name": "Jam Session" if guild_id == self.guild_id else f"Jam Session {guild_id}",
            "icon": None,
            "description": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "features": [],
            "owner_id": str(self.user_id),
            "application_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "system_channel_id": str(channel_id),
            "system_channel_flags": 0,
            "widget_enabled": False,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "vanity_url_code": None,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "incidents_data": None,
            "roles": [everyone],
            "emojis": [],
            "stickers": [],
            "joined_at": iso(self.started_at),
            "large": False,
            "unavailable": False,
            "member_count": 2,
            "lazy": True,
            "voice_states": [],
            "members": [self.member(self.bot_user())],
            "channels": [self.channel(channel_id, guild_id)],
            "threads": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def ready(self, session_id: str, gateway_url: str, shard: Any = None) -> dict[str, Any]:
        """READY for a new session: its shard's guilds, all unavailable until GUILD_CREATE;
        ``shard`` is echoed as the connection identified with it."""
        guilds = self.guild_ids_on_shard(shard)
        data: dict[str, Any] = {
            "v": 10,
            "user": self.bot_user() | {"verified": True, "mfa_enabled": False, "email": None},
            "user_settings": {},
            "guilds": [{"id": str(g), "unavailable": True} for g in guilds],
            "session_id": session_id,
            "session_type": "normal",
            "resume_gateway_url": gateway_url,
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": ["local"],
            "auth": {},
            "application": {"id": str(self.application_id), "flags": 0},
        }
        if shard is not None:
            data["shard"] = shard
        return data

    def application(self) -> dict[str, Any]:
        """``GET /oauth2/applications/@me``."""
        return {
            "id": str(self.application_id),
            "name": "jambot",
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "bot": self.bot_user(),
            "bot_public": False,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": 0,
            "flags_new": "0",
            "hook": True,
            "is_monetized": False,
            "is_verified": False,
            "is_discoverable": False,
            "storefront_available": False,
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "event_webhooks_url": None,
            "event_webhooks_status": 1,
            "owner": self.user(self.user_id),
            "approximate_guild_count": 1,
            "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0,
            "explicit_content_filter": 0,
            "team": None,
            "eligible_oauth2_scopes": [],
            "integration_types_config": {"0": {}},
            "tags": [],
        }

    def interaction(
        self,
        *,
        interaction_id: int,
        token: str,
        kind: int,
        data: dict[str, Any],
        user: dict[str, Any],
        guild_id: int | None,
        channel_id: int,
        locale: str,
        attachment_size_limit: int,
        message: dict[str, Any] | None = None,
        permissions: str = MEMBER_PERMISSIONS,
    ) -> dict[str, Any]:
        """An INTERACTION_CREATE payload as Discord sends it for a guild text channel.

        `permissions` are the member's (a bit set as a decimal string)."""
        owners = {"0": str(guild_id)} if guild_id is not None else {"1": user["id"]}
        channel = self.channel(channel_id, guild_id or self.guild_id)
        payload: dict[str, Any] = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "channel": channel | {"permissions": MEMBER_PERMISSIONS},
            "channel_id": str(channel_id),
            "token": token,
            "version": 1,
            "app_permissions": MEMBER_PERMISSIONS,
            "locale": locale,
            "entitlements": [],
            "authorizing_integration_owners": owners,
            "context": 0 if guild_id is not None else 1,
            "attachment_size_limit": attachment_size_limit,
        }
        if guild_id is not None:
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["guild_id"] = str(guild_id)
            payload["guild_locale"] = "en-US"
            payload["member"] = self.member(user) | {"permissions": permissions}
        else:
            payload["user"] = user
        if message is not None:
            payload["message"] = message
        return payload
