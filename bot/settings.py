"""All of jambot's configuration in one place, read from the environment and `.env`.

Every field maps to the upper-case environment variable of the same name. The names are part
of the public interface: operators script against them, so they never change silently.
"""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "meta/musicgen:671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"


class ConfigError(Exception):
    """A setting is missing or malformed; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Every knob of the bot. Built once in the entry point and passed down."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    discord_token: SecretStr | None = None
    replicate_api_token: SecretStr | None = None
    replicate_base_url: str = "https://api.replicate.com"
    replicate_model: str = Field(DEFAULT_MODEL, pattern=r"^[\w.-]+/[\w.-]+(:[0-9a-f]{64})?$")
    replicate_poll_interval: float = Field(0.5, gt=0, le=30)
    replicate_cost_per_second: float = Field(0.0014, ge=0)
    max_download_bytes: int = Field(100 * 1024 * 1024, gt=0)
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg"
    database_url: str = Field("sqlite:///jambot.db", pattern=r"^sqlite:///.+")
    max_concurrent_generations: int = Field(2, ge=1, le=64)
    user_cooldown_seconds: float = Field(10.0, ge=0)
    daily_quota_per_user: int = Field(20, ge=0)
    max_queued_per_user: int = Field(3, ge=1)
    max_duration_seconds: int = Field(30, ge=1, le=300)
    generation_timeout_seconds: float = Field(300.0, gt=0)
    max_attempts: int = Field(3, ge=1, le=10)
    retry_base_delay_seconds: float = Field(1.0, ge=0)
    log_level: str = Field("INFO", pattern=r"^(?i:debug|info|warning|error|critical)$")

    def require(self, *names: str) -> None:
        """Stop with a ConfigError naming the first of `names` that is unset or empty."""
        for name in names:
            value = getattr(self, name.lower())
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if not value:
                raise ConfigError(f"{name} is not set: copy .env.example to .env and fill it in.")

    @property
    def database_path(self) -> str:
        """The SQLite file named by DATABASE_URL (``sqlite:///jambot.db`` → ``jambot.db``)."""
        return self.database_url.removeprefix("sqlite:///")
