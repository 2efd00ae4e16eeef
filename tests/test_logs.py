"""No token in any log line: the redaction filter on records shaped like discord.py's, and the
real bot at DEBUG through a whole /music job."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from bot.logs import RedactSecrets, configure_logging
from bot.settings import Settings
from tests.harness import bot_settings, fakes, is_final_edit, spawn_bot, to_options, wait_for

APP_ID = 1_100_000_000_000_000_001
TOKEN = "aW50ZXJhY3Rpb246MTEwMDAwMDAwMDAwMDAwMDUwMDpxZ3Rva2VuLXNlY3JldC12YWx1ZQ"
PLAIN_TOKEN = "qN3x8ZQe-some-interaction-token-without-the-usual-prefix_0123456789"
BOT_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.GhIjKl.bot-token-secret-part-0123456789"
R8_TOKEN = "r8_replicate_secret_0123456789"
WEBHOOK = f"https://discord.com/api/v10/webhooks/{APP_ID}/{PLAIN_TOKEN}/messages/@original"
CALLBACK = f"https://discord.com/api/v10/interactions/1100000000000000500/{PLAIN_TOKEN}/callback"


def record(name: str, msg: str, *args: Any, exc_info: Any = None) -> logging.LogRecord:
    return logging.LogRecord(name, logging.DEBUG, __file__, 1, msg, args, exc_info)


def shown(rec: logging.LogRecord) -> str:
    """The line the handler would write, after the filter has run."""
    assert RedactSecrets([BOT_TOKEN, R8_TOKEN]).filter(rec)
    return logging.Formatter("%(name)s: %(message)s").format(rec)


def interaction_event(token: str) -> dict[str, Any]:
    return {
        "t": "INTERACTION_CREATE",
        "s": 3,
        "op": 0,
        "d": {
            "type": 2,
            "token": token,
            "id": "1100000000000000500",
            "application_id": str(APP_ID),
            "data": {"name": "music", "options": [{"name": "prompt", "value": "warm lofi"}]},
        },
    }


@pytest.mark.parametrize("token", [TOKEN, PLAIN_TOKEN])
def test_a_gateway_event_dump_loses_its_token(token: str) -> None:
    # discord/gateway.py: _log.debug('For Shard ID %s: WebSocket Event: %s', shard_id, msg)
    line = shown(
        record(
            "discord.gateway",
            "For Shard ID %s: WebSocket Event: %s",
            None,
            interaction_event(token),
        )
    )
    assert token not in line
    assert "'token': '[redacted]'" in line and "INTERACTION_CREATE" in line and "warm lofi" in line


def test_a_json_payload_loses_its_token() -> None:
    line = shown(
        record(
            "discord.http", "%s %s has received %s", "POST", "/x", '{"token":"' + PLAIN_TOKEN + '"}'
        )
    )
    assert PLAIN_TOKEN not in line and '{"token":"[redacted]"}' in line


@pytest.mark.parametrize(
    ("msg", "args"),
    [
        # discord/http.py
        ("%s %s with %s has returned %s", ("PATCH", WEBHOOK, '{"content": "done"}', 200)),
        ("%s %s has received %s", ("POST", CALLBACK, {"type": 5})),
        # discord/webhook/async_.py
        ("Webhook ID %s with %s %s has returned status code %s", (APP_ID, "PATCH", WEBHOOK, 200)),
    ],
)
def test_webhook_and_interaction_urls_lose_their_token(msg: str, args: tuple[Any, ...]) -> None:
    line = shown(record("discord.http", msg, *args))
    assert PLAIN_TOKEN not in line
    assert (
        f"/webhooks/{APP_ID}/[redacted]/" in line
        or "/interactions/1100000000000000500/[redacted]/" in line
    )


def test_an_exception_quoting_a_webhook_url_is_scrubbed() -> None:
    try:
        raise RuntimeError(f"PATCH {WEBHOOK} failed with Authorization: Bot {BOT_TOKEN}")
    except RuntimeError:
        rec = record("bot.chat.delivery", "delivery failed", exc_info=sys.exc_info())
    line = shown(rec)
    assert "Traceback" in line and "RuntimeError" in line
    assert PLAIN_TOKEN not in line and BOT_TOKEN not in line


@pytest.mark.parametrize(
    "text",
    [
        f"headers {{'Authorization': 'Bot {BOT_TOKEN}'}}",
        "headers {'Authorization': 'Bearer r8_other_token_0123456789abcdef'}",
        "Authorization: Bearer r8_other_token_0123456789abcdef",
        f"the token is {R8_TOKEN}",
        f"DISCORD_TOKEN={BOT_TOKEN}",
    ],
)
def test_authorization_values_and_configured_secrets_are_scrubbed(text: str) -> None:
    line = shown(record("httpx", "%s", text))
    assert BOT_TOKEN not in line and R8_TOKEN not in line
    assert "r8_other_token" not in line and "[redacted]" in line


def test_ordinary_lines_are_left_alone() -> None:
    text = "Bot ready; jambot ready to take /music (database jambot.db) token bucket 3/5"
    assert shown(record("bot.chat.app", "%s", text)) == f"bot.chat.app: {text}"


def test_a_malformed_call_is_logged_not_raised() -> None:
    assert shown(record("bot", "%s and %s", "only one")) == "bot: %s and %s"


@pytest.fixture
def installed() -> Iterator[io.StringIO]:
    """configure_logging on a string stream, undone afterwards."""
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        log_level="DEBUG",
        discord_token=SecretStr(BOT_TOKEN),
        replicate_api_token=SecretStr(R8_TOKEN),
    )
    configure_logging(settings)  # a second call replaces the first handler
    handler = configure_logging(settings, stream)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
    logging.getLogger("httpx").setLevel(logging.NOTSET)


def test_the_handler_scrubs_records_propagated_from_any_logger(installed: io.StringIO) -> None:
    handlers = logging.getLogger().handlers
    scrubbed = [h for h in handlers if any(isinstance(f, RedactSecrets) for f in h.filters)]
    assert len(scrubbed) == 1  # the second configure_logging replaced the first
    logging.getLogger("discord.gateway").debug(
        "For Shard ID %s: WebSocket Event: %s", None, interaction_event(TOKEN)
    )
    logging.getLogger("discord.webhook.async_").debug(
        "Webhook ID %s with %s %s has returned status code %s", APP_ID, "PATCH", WEBHOOK, 200
    )
    logging.getLogger("bot.cli").info("using %s and %s", BOT_TOKEN, R8_TOKEN)
    text = installed.getvalue()
    assert "DEBUG    discord.gateway: For Shard ID None" in text
    assert "discord.webhook.async_: Webhook ID" in text
    for secret in (TOKEN, PLAIN_TOKEN, BOT_TOKEN, R8_TOKEN):
        assert secret not in text
    assert len(text.splitlines()) == 3


async def test_no_interaction_token_in_the_bots_debug_log(tmp_path: Path) -> None:
    """`jambot run` at LOG_LEVEL=DEBUG through one whole /music job: discord.py logs the
    INTERACTION_CREATE payload and every webhook URL, and none of them shows the token."""
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "jambot.db", log_level="DEBUG")
        child = await spawn_bot(settings, discord, tmp_path)
        try:
            interaction = await discord.send_interaction(
                "music", to_options({"prompt": "quiet logs", "duration": 1})
            )
            final = await discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
            assert final.files
        finally:
            assert await child.terminate() == 0, child.log
    log = child.log
    assert "DEBUG    discord.gateway: For Shard ID None: WebSocket Event:" in log
    assert "INTERACTION_CREATE" in log and "'token': '[redacted]'" in log
    assert f"/webhooks/{discord.application_id}/[redacted]/messages/@original" in log
    assert interaction.token not in log
    assert interaction.token[16:48] not in log  # not even a piece of it
    assert f"/webhooks/{discord.application_id}/{interaction.token}" not in log
    assert discord.bot_token not in log and replicate.token not in log


def test_json_lines_carry_the_text_formats_fields_scrubbed() -> None:
    stream = io.StringIO()
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        log_format="json",
        discord_token=SecretStr(BOT_TOKEN),
        replicate_api_token=SecretStr(R8_TOKEN),
    )
    root = logging.getLogger()
    level = root.level
    handler = configure_logging(settings, stream)
    try:
        logging.getLogger("discord.webhook.async_").warning(
            "Webhook %s with %s answered\nstatus %s", WEBHOOK, BOT_TOKEN, 404
        )
        try:
            raise RuntimeError(f"POST {CALLBACK} failed")
        except RuntimeError:
            logging.getLogger("bot.chat").exception("could not defer (token %s)", TOKEN)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        logging.getLogger("httpx").setLevel(logging.NOTSET)
    text = stream.getvalue()
    first, second = (json.loads(line) for line in text.splitlines())  # one object per line
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "WARNING" and first["logger"] == "discord.webhook.async_"
    assert first["message"].endswith("answered\nstatus 404")
    assert datetime.fromisoformat(first["time"]).utcoffset() == timedelta(0)
    assert second["level"] == "ERROR" and "RuntimeError: POST" in second["exception"]
    assert "/interactions/1100000000000000500/[redacted]/callback" in second["exception"]
    for secret in (TOKEN, PLAIN_TOKEN, BOT_TOKEN, R8_TOKEN):
        assert secret not in text


async def test_the_bots_json_log_parses_line_by_line_without_a_token(tmp_path: Path) -> None:
    """`jambot run` with LOG_FORMAT=json at DEBUG through a whole /music job: every line of its
    log is one JSON object, and none holds a token, even where discord.py dumps payloads."""
    async with fakes() as (discord, replicate):
        settings = bot_settings(
            discord, replicate, tmp_path / "jambot.db", log_level="DEBUG", log_format="json"
        )
        child = await spawn_bot(settings, discord, tmp_path)
        try:
            interaction = await discord.send_interaction(
                "music", to_options({"prompt": "json logs", "duration": 1})
            )
            final = await discord.wait_for_call(lambda c: is_final_edit(c, interaction), 20)
            assert final.files
            await wait_for(lambda: ": delivered (seed" in child.log, 10)
        finally:
            assert await child.terminate() == 0, child.log
    entries = [json.loads(line) for line in child.log.splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(entry) for entry in entries)
    events = [e for e in entries if e["message"].startswith("For Shard ID None: WebSocket Event")]
    assert any("INTERACTION_CREATE" in e["message"] for e in events)
    assert any(e["logger"] == "bot.jobs.scheduler" and "delivered" in e["message"] for e in entries)
    for secret in (interaction.token, interaction.token[16:48], discord.bot_token, replicate.token):
        assert secret not in child.log
