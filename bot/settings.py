"""All of jambot's configuration in one place, read from the environment and `.env`.

Every field maps to the upper-case environment variable of the same name. The names are part
of the public interface: operators script against them, so they never change silently.
"""

from __future__ import annotations

import re
from typing import Self

from pydantic import Field, SecretStr, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.music.rejections import describe_bounds

DEFAULT_MODEL = "meta/musicgen:671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"
HTTP_URL = r"^https?://[^\s/]+\S*$"
WEBSOCKET_URL = r"^wss?://[^\s/]+\S*$"
ONE_DAY = 86_400
ONE_HOUR = 3_600
GIB = 1024**3


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of the bot. Built once in the entry point and passed down.

    Every number has an upper bound as well as a lower one: an absurd value (``inf``, a
    cooldown of years) would otherwise pass here and overflow deep inside the bot.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        allow_inf_nan=False,
    )

    discord_token: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = Field("https://api.replicate.com", pattern=HTTP_URL)
    replicate_model: str = Field(DEFAULT_MODEL, pattern=r"^[\w.-]+/[\w.-]+(:[0-9a-f]{64})?$")
    replicate_poll_interval: float = Field(0.5, gt=0, le=30)
    replicate_cost_per_second: float = Field(0.0014, ge=0, le=1)
    max_download_bytes: int = Field(100 * 1024 * 1024, ge=1, le=GIB)
    discord_api_base_url: str = Field("https://discord.com/api/v10", pattern=HTTP_URL)
    discord_gateway_url: str = Field("wss://gateway.discord.gg", pattern=WEBSOCKET_URL)
    database_url: str = Field(
        "sqlite:///jambot.db", pattern=r"^(sqlite:///.+|postgres(ql)?://\S+)$", repr=False
    )
    max_concurrent_generations: int = Field(2, ge=1, le=200)
    job_lease_seconds: float = Field(30.0, ge=5, le=ONE_HOUR)
    replicate_creates_per_minute: int = Field(540, ge=1, le=100_000)
    shard_count: int = Field(0, ge=0, le=4096)
    shard_ids: str = Field("", pattern=r"^\s*(\d+\s*(,\s*\d+\s*)*)?$")
    user_cooldown_seconds: float = Field(10.0, ge=0, le=ONE_DAY)
    daily_quota_per_user: int = Field(20, ge=0, le=1_000_000)
    max_queued_per_user: int = Field(3, ge=1, le=10_000)
    max_duration_seconds: int = Field(30, ge=1, le=300)
    generation_timeout_seconds: float = Field(300.0, gt=0, le=ONE_HOUR)
    max_attempts: int = Field(3, ge=1, le=10)
    max_job_crashes: int = Field(3, ge=1, le=20)
    retry_base_delay_seconds: float = Field(1.0, ge=0, le=60)
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error)$")
    log_format: str = Field("text", pattern=r"^(?i:text|json)$")
    guild_daily_budget_usd: float = Field(0.0, ge=0, le=100_000)
    daily_budget_usd: float = Field(0.0, ge=0, le=1_000_000)
    metrics_port: int = Field(0, ge=0, le=65_535)
    metrics_host: str = Field("127.0.0.1", pattern=r"^[A-Za-z0-9.:\[\]-]{1,253}$")

    def require(self, *names: str) -> None:
        """Stop with a ConfigError naming the first of `names` that is unset or empty."""
        for name in names:
            value = getattr(self, name.lower())
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                raise ConfigError(f"{name} is not set: copy .env.example to .env and fill it in.")

    @model_validator(mode="after")
    def _shard_ids_fit_shard_count(self) -> Self:
        """SHARD_IDS only means something as some of SHARD_COUNT's shards.

        A ConfigError, not a ValueError: pydantic would turn a ValueError into a model-level
        error, which `describe_setting_error` can only call "a setting is malformed" (it never
        repeats a message that could quote a value). This sentence names the variables.
        """
        ids = self.shard_id_list
        if ids is None:
            return self
        if not self.shard_count:
            raise ConfigError(
                "SHARD_IDS needs SHARD_COUNT (the total number of shards) to be set: "
                "see .env.example."
            )
        if ids[-1] >= self.shard_count:
            raise ConfigError(
                f"SHARD_IDS must be shard numbers below SHARD_COUNT (0 to {self.shard_count - 1}): "
                "see .env.example."
            )
        return self

    @property
    def shard_id_list(self) -> list[int] | None:
        """SHARD_IDS as sorted shard numbers (``"1, 0"`` → ``[0, 1]``), or None for an empty
        SHARD_IDS (this process then holds all SHARD_COUNT shards)."""
        ids = sorted({int(part) for part in self.shard_ids.split(",") if part.strip()})
        return ids or None

    @property
    def database_path(self) -> str:
        """The SQLite file named by DATABASE_URL (``sqlite:///jambot.db`` → ``jambot.db``)."""
        return self.database_url.removeprefix("sqlite:///")

    @property
    def uses_postgres(self) -> bool:
        """Whether DATABASE_URL names a PostgreSQL server (else a SQLite file)."""
        return not self.database_url.startswith("sqlite:///")

    @property
    def database_label(self) -> str:
        """DATABASE_URL as it may be logged: the file, or the server without its password."""
        if not self.uses_postgres:
            return self.database_path
        return redact_database_url(self.database_url)


def redact_database_url(url: str) -> str:
    """A database URL without its password, wherever it is written: after the user name
    (``postgresql://jam:***@db:5432/jambot``) or as a ``password=`` parameter."""
    scheme, sep, rest = url.partition("://")
    location, question, query = rest.partition("?")
    credentials, at, host = location.rpartition("@")
    if at and ":" in credentials:
        location = f"{credentials.partition(':')[0]}:***@{host}"
    if question:
        query = re.sub(r"(?i)(^|&)(password|passfile)=[^&]*", r"\1\2=***", query)
    return f"{scheme}{sep}{location}{question}{query}"


# What a well-formed value of each text setting looks like, in words: pydantic's own message
# would show the regular expression.
_SHAPES = {
    "replicate_base_url": "must be an http:// or https:// URL",
    "replicate_model": "must look like owner/name or owner/name:<64-hex version id>",
    "discord_api_base_url": "must be an http:// or https:// URL",
    "discord_gateway_url": "must be a ws:// or wss:// URL",
    "database_url": (
        "must look like sqlite:///path/to/jambot.db or postgresql://user:password@host:5432/db"
    ),
    "shard_ids": "must be a comma-separated list of shard numbers, such as 0,1",
    "log_level": "must be one of DEBUG, INFO, WARNING, ERROR",
    "log_format": "must be text or json",
    "metrics_host": "must be a host name or an IP address, such as 127.0.0.1",
}


def describe_setting_error(error: ErrorDetails) -> str:
    """One line naming the variable and what it must be, never its value (it may be a secret)."""
    field = str(error["loc"][0]) if error["loc"] else ""
    if field not in Settings.model_fields:
        return "A setting is malformed: see .env.example."
    rule = _SHAPES.get(field) or _number_rule(field) or "is malformed"
    return f"{field.upper()} {rule}: see .env.example."


def _number_rule(field: str) -> str | None:
    info = Settings.model_fields[field]
    if info.annotation not in (int, float):
        return None
    kind = "a whole number" if info.annotation is int else "a number"
    bounds = describe_bounds(info)
    return f"must be {kind} {bounds}" if bounds else None
