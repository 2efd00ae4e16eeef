"""`jambot run` with timestamps, for diagnosing where an acknowledgement's time goes.

The same entry point as `python -m bot run` (`bot.cli.main`), with three observers added from
outside the bot's code: the moment discord.py starts handling each INTERACTION_CREATE frame it
read from the gateway; for each interaction callback it sends over HTTP, when the request was
started, whether it needed a new connection, and when its headers were written; and every
garbage-collector pass (`gc.callbacks`), with its generation and how long it held the process.
Times are `time.monotonic()` (CLOCK_MONOTONIC, shared by every process on the machine), one
line per event in the file named by `JAMBOT_BENCH_TRACE`:

    frame <interaction id> <read at>
    callback <interaction id> <started at> <new connection: 0|1> <headers sent at>
    gc <generation> <started at> <ended at>

Used by `python -m bench.defer_latency --trace`; the figures of record come from the untraced
child.
"""

from __future__ import annotations

import gc
import os
import re
import sys
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
from discord import gateway, http

from bot.cli import main

_FRAME = re.compile(r'"t":"INTERACTION_CREATE".*?"d":\{"id":"(\d+)"')
_CALLBACK = re.compile(r"/interactions/(\d+)/[^/]+/callback")
_out = open(os.environ["JAMBOT_BENCH_TRACE"], "a", buffering=1, encoding="utf-8")  # noqa: SIM115


def _write(line: str) -> None:
    _out.write(line + "\n")


_received_message = gateway.DiscordWebSocket.received_message


async def _traced_received_message(self: gateway.DiscordWebSocket, msg: Any, /) -> None:
    read_at = time.monotonic()
    if isinstance(msg, str) and (found := _FRAME.search(msg, 0, 300)):
        _write(f"frame {found.group(1)} {read_at:.6f}")
    await _received_message(self, msg)


async def _on_request_start(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: aiohttp.TraceRequestStartParams
) -> None:
    ctx.started = time.monotonic()
    ctx.new_connection = 0


async def _on_connection_create_start(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    ctx.new_connection = 1


async def _on_request_headers_sent(
    session: aiohttp.ClientSession,
    ctx: SimpleNamespace,
    params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    sent_at = time.monotonic()
    found = _CALLBACK.search(params.url.path)
    if found and params.method == "POST":
        _write(f"callback {found.group(1)} {ctx.started:.6f} {ctx.new_connection} {sent_at:.6f}")


def _trace_config() -> aiohttp.TraceConfig:
    config = aiohttp.TraceConfig()
    config.on_request_start.append(_on_request_start)
    config.on_connection_create_start.append(_on_connection_create_start)
    config.on_request_headers_sent.append(_on_request_headers_sent)
    return config


_gc_started = 0.0


def _on_gc(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    now = time.monotonic()
    if phase == "start":
        _gc_started = now
    else:
        _write(f"gc {info['generation']} {_gc_started:.6f} {now:.6f}")


_http_client_init = http.HTTPClient.__init__


def _traced_http_client_init(self: http.HTTPClient, *args: Any, **kwargs: Any) -> None:
    _http_client_init(self, *args, **kwargs)
    if self.http_trace is None:
        self.http_trace = _trace_config()


gateway.DiscordWebSocket.received_message = _traced_received_message  # type: ignore[method-assign]
http.HTTPClient.__init__ = _traced_http_client_init  # type: ignore[method-assign]
gc.callbacks.append(_on_gc)

if __name__ == "__main__":
    sys.exit(main())
