"""Settings: the public names, their defaults, secrets that stay secret, one-line errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bot.cli import load_settings
from bot.settings import ConfigError, Settings

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
    assert message.startswith("REPLICATE_MODEL is invalid") and "\n" not in message
    assert "r8_leak" not in message
