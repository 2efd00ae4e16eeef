"""Settings: the public names, their defaults, secrets that stay secret, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.cli import load_settings
from bot.settings import ConfigError, Settings, redact_database_url

ROOT = Path(__file__).resolve().parents[1]


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


def test_defaults_match_the_documented_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    s = settings()
    assert s.replicate_base_url == "https://api.replicate.com"
    assert s.replicate_model == (
        "meta/musicgen:671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"
    )
    assert s.discord_api_base_url == "https://discord.com/api/v10"
    assert s.discord_gateway_url == "wss://gateway.discord.gg"
    assert s.database_url == "sqlite:///jambot.db" and s.database_path == "jambot.db"
    assert (s.max_duration_seconds, s.max_attempts) == (30, 3)


def test_every_setting_is_documented() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    for name in Settings.model_fields:
        assert re.search(rf"^{name.upper()}=", example, re.MULTILINE), name
        assert f"`{name.upper()}`" in readme, name


def test_secrets_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCORD_TOKEN", "discord-secret-value")
    monkeypatch.setenv("REPLICATE_API_TOKEN", "r8_secret_value")
    s = load_settings(_env_file=None)
    shown = f"{s!r} {s} {s.model_dump()}"
    assert "discord-secret-value" not in shown and "r8_secret_value" not in shown
    assert s.replicate_api_token is not None
    assert s.replicate_api_token.get_secret_value() == "r8_secret_value"


def test_require_names_the_missing_variable() -> None:
    with pytest.raises(ConfigError, match=r"^DISCORD_TOKEN is not set: copy \.env\.example"):
        settings().require("DISCORD_TOKEN")
    settings(discord_token="x").require("DISCORD_TOKEN")


def test_a_malformed_value_is_one_line_without_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPLICATE_MODEL", "not a model ref r8_leak")
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    message = str(caught.value)
    assert message == (
        "REPLICATE_MODEL must look like owner/name or owner/name:<64-hex version id>: "
        "see .env.example."
    )
    assert "r8_leak" not in message


def rejection(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as caught:
        load_settings(_env_file=None)
    return str(caught.value)


NUMBERS = {
    "REPLICATE_POLL_INTERVAL": "a number greater than 0 and at most 30",
    "REPLICATE_COST_PER_SECOND": "a number between 0 and 1",
    "MAX_DOWNLOAD_BYTES": "a whole number between 1 and 1073741824",
    "MAX_CONCURRENT_GENERATIONS": "a whole number between 1 and 200",
    "USER_COOLDOWN_SECONDS": "a number between 0 and 86400",
    "DAILY_QUOTA_PER_USER": "a whole number between 0 and 1000000",
    "MAX_QUEUED_PER_USER": "a whole number between 1 and 10000",
    "MAX_DURATION_SECONDS": "a whole number between 1 and 300",
    "GENERATION_TIMEOUT_SECONDS": "a number greater than 0 and at most 3600",
    "MAX_ATTEMPTS": "a whole number between 1 and 10",
    "MAX_JOB_CRASHES": "a whole number between 1 and 20",
    "GUILD_DAILY_BUDGET_USD": "a number between 0 and 100000",
    "DAILY_BUDGET_USD": "a number between 0 and 1000000",
    "METRICS_PORT": "a whole number between 0 and 65535",
    "RETRY_BASE_DELAY_SECONDS": "a number between 0 and 60",
    "JOB_LEASE_SECONDS": "a number between 5 and 3600",
    "REPLICATE_CREATES_PER_MINUTE": "a whole number between 1 and 100000",
    "SHARD_COUNT": "a whole number between 0 and 4096",
}


def test_every_number_setting_has_bounds() -> None:
    numeric = {n.upper() for n, f in Settings.model_fields.items() if f.annotation in (int, float)}
    assert numeric == set(NUMBERS)


@pytest.mark.parametrize("name", sorted(NUMBERS))
@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "1e300", "-1", "99999999999", "many"])
def test_a_number_out_of_bounds_is_refused_in_words(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    message = rejection(monkeypatch, name, value)
    assert message == f"{name} must be {NUMBERS[name]}: see .env.example."


@pytest.mark.parametrize(
    ("name", "value", "limit"),
    [
        ("USER_COOLDOWN_SECONDS", 86_400, 86_401),
        ("GENERATION_TIMEOUT_SECONDS", 3_600, 3_601),
        ("REPLICATE_COST_PER_SECOND", 1, 1.01),
    ],
)
def test_upper_bounds_are_inclusive(
    monkeypatch: pytest.MonkeyPatch, name: str, value: float, limit: float
) -> None:
    monkeypatch.setenv(name, str(value))
    assert getattr(load_settings(_env_file=None), name.lower()) == value
    assert rejection(monkeypatch, name, str(limit)).startswith(f"{name} must be a number")


TEXTS = {
    "REPLICATE_BASE_URL": "must be an http:// or https:// URL",
    "REPLICATE_MODEL": "must look like owner/name or owner/name:<64-hex version id>",
    "DISCORD_API_BASE_URL": "must be an http:// or https:// URL",
    "DISCORD_GATEWAY_URL": "must be a ws:// or wss:// URL",
    "DATABASE_URL": (
        "must look like sqlite:///path/to/jambot.db or postgresql://user:password@host:5432/db"
    ),
    "LOG_LEVEL": "must be one of DEBUG, INFO, WARNING, ERROR",
    "LOG_FORMAT": "must be text or json",
    "METRICS_HOST": "must be a host name or an IP address, such as 127.0.0.1",
}


@pytest.mark.parametrize("name", sorted(TEXTS))
def test_a_malformed_text_setting_is_described_not_shown_as_a_pattern(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    message = rejection(monkeypatch, name, "r8_secret value")
    assert message == f"{name} {TEXTS[name]}: see .env.example."
    assert "r8_secret" not in message


@pytest.mark.parametrize("level", ["debug", "INFO", "Warning", "ERROR"])
def test_log_levels_are_case_insensitive(monkeypatch: pytest.MonkeyPatch, level: str) -> None:
    monkeypatch.setenv("LOG_LEVEL", level)
    assert load_settings(_env_file=None).log_level == level


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://jam:s3cret@db:5432/jambot", "postgresql://jam:***@db:5432/jambot"),
        ("postgres://jam:p@ss@db/jambot", "postgres://jam:***@db/jambot"),
        (
            "postgresql://jam@db/jambot?sslmode=require&password=s3cret",
            "postgresql://jam@db/jambot?sslmode=require&password=***",
        ),
        ("postgresql://db/jambot?PASSWORD=s3cret", "postgresql://db/jambot?PASSWORD=***"),
        ("postgresql://jam@db/jambot", "postgresql://jam@db/jambot"),
    ],
)
def test_a_database_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_database_url(url) == shown
    settings = Settings(_env_file=None, database_url=url)  # type: ignore[call-arg]
    assert settings.database_label == shown
    assert "s3cret" not in repr(settings) and "s3cret" not in settings.database_label


def test_a_sqlite_database_is_shown_as_its_file() -> None:
    settings = Settings(_env_file=None, database_url="sqlite:///data/jambot.db")  # type: ignore[call-arg]
    assert settings.database_label == "data/jambot.db" and not settings.uses_postgres
