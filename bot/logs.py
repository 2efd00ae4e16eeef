"""Logging for every `jambot` command: one handler on the root logger, scrubbed of secrets.

At DEBUG, discord.py logs every gateway event as a dict (an INTERACTION_CREATE carries the
interaction's `token`) and every REST and webhook URL (``/webhooks/<app id>/<token>/...``,
``/interactions/<id>/<token>/callback``). Whoever holds such a token can edit the bot's replies
for 15 minutes, so no log line may show one, at any level.

The filter sits on the handler, not on a logger: a logger's filters only see records logged on
that logger itself, never those propagated from its children (``discord.gateway``,
``discord.http``...), while a handler's filters see every record it is about to write.

``LOG_FORMAT=json`` writes the same fields as one JSON object per line, for log shippers that
would otherwise cut a traceback into lines of its own. The handler filters before it formats,
so the JSON holds the scrubbed text too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

from bot.settings import Settings

__all__ = ["FORMAT", "JsonLines", "RedactSecrets", "configure_logging"]

FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"
REDACTED = "[redacted]"

# Each pattern keeps its first group (the part that says what was there) and hides the rest.
_PATTERNS = [
    # webhook and interaction routes: the id stays, the token goes
    re.compile(r"(/(?:webhooks|interactions)/\d+/)[^/\s?\"'#]+"),
    # "token": "...", 'token': '...', "access_token":"..." in dumped payloads and dicts
    re.compile(r"""(["'][\w-]*token["']\s*:\s*["'])[^"']*(?=["'])""", re.IGNORECASE),
    # an Authorization header shown as a dict entry
    re.compile(r"""(["']authorization["']\s*:\s*["'])[^"']*(?=["'])""", re.IGNORECASE),
    # the header's value anywhere else: "Bot <token>", "Bearer <token>", "Token <token>"
    re.compile(r"(\b(?:Bot|Bearer|Token)\s+)[\w.~+/-]{16,}=*"),
    # an interaction token on its own: base64 of "interaction:<id>:...", so it always starts so
    re.compile(r"()aW50ZXJhY3Rpb246[\w-]+"),
]


class RedactSecrets(logging.Filter):
    """Rewrite each record so that no token, webhook URL or configured secret is left in it.

    The message is formatted once and stored back (``args`` cleared), and the exception text
    is formatted and scrubbed too: an exception's message may quote a URL with a token in it.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # longest first, so that a secret containing another is hidden whole
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(rf"\g<1>{REDACTED}", text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.scrub(_message(record))
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = self.scrub(record.stack_info)
        return True


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a malformed call must not take the caller down, nor leak its args
        return str(record.msg)


class JsonLines(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``,
    and ``exception`` (the traceback's text) or ``stack`` when the record has one.

    JSON escapes the newlines of a traceback, so a record is always exactly one line.
    """

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry)


class _JambotHandler(logging.StreamHandler[TextIO]):
    """The handler `configure_logging` installs, told apart from anyone else's."""


def configure_logging(settings: Settings, stream: TextIO | None = None) -> logging.Handler:
    """Install the one scrubbed handler (on stderr by default) at LOG_LEVEL, writing lines
    of LOG_FORMAT (text, or JSON objects); returns it.

    Calling it again replaces the handler it installed before, so it is safe to call twice.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _JambotHandler)]:
        root.removeHandler(old)
    handler = _JambotHandler(stream or sys.stderr)
    json_lines = settings.log_format.lower() == "json"
    handler.setFormatter(JsonLines() if json_lines else logging.Formatter(FORMAT))
    handler.addFilter(RedactSecrets(_secrets(settings)))
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise
    return handler


def _secrets(settings: Settings) -> list[str]:
    tokens = (settings.discord_token, settings.replicate_api_token)
    return [token.get_secret_value() for token in tokens if token is not None]
