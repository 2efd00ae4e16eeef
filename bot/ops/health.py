"""Whether the bot can do its work right now: the answer `GET /healthz` gives.

Healthy means both halves of a `/music` work: commands can arrive (the gateway's websocket
is connected) and become jobs that are recorded (the job store answers, and takes writes).
Anything else is a short reason in plain words, for the one who reads the probe's output.

The gateway is followed through discord.py's public events (`on_connect`, `on_resumed`,
`on_disconnect`) rather than its websocket object: discord.py reconnects on its own, and
between a drop and the resume nothing arrives, though `is_ready()` still says True. A sharded
bot follows each shard it holds (`on_shard_connect`, `on_shard_resumed`, `on_shard_disconnect`)
and is healthy only while every one of them is connected: a shard that is down loses the
commands of all its guilds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from discord import AutoShardedClient
from discord.ext import commands

from bot.chat.services import Services
from bot.jobs.store import StoreError

__all__ = ["HealthCheck"]

STORE_WITHIN = 1.0
"""Seconds the store has to answer. Much less than its own busy timeout (5 s): a probe must
answer before the prober's own timeout, and a store that makes jobs wait that long is sick."""


class HealthCheck:
    """Follows the gateway from the moment it's built; `problem()` says what's wrong, if any."""

    def __init__(self, bot: commands.Bot, services: Callable[[], Services | None]) -> None:
        self._bot = bot
        self._services = services
        # The shards connected now; None stands for the one connection of an unsharded bot.
        self._connected: set[int | None] = set()
        if isinstance(bot, AutoShardedClient):
            bot.add_listener(self._shard_up, "on_shard_connect")
            bot.add_listener(self._shard_up, "on_shard_resumed")
            bot.add_listener(self._shard_down, "on_shard_disconnect")
        else:
            bot.add_listener(self._up, "on_connect")
            bot.add_listener(self._up, "on_resumed")
            bot.add_listener(self._down, "on_disconnect")

    async def _up(self) -> None:
        self._connected.add(None)

    async def _down(self) -> None:
        self._connected.discard(None)

    async def _shard_up(self, shard_id: int) -> None:
        self._connected.add(shard_id)

    async def _shard_down(self, shard_id: int) -> None:
        self._connected.discard(shard_id)

    def _gateway_problem(self) -> str | None:
        """None while every connection this process holds is up, else which are down."""
        bot = self._bot
        if not isinstance(bot, AutoShardedClient):
            return None if None in self._connected else "not connected to Discord's gateway"
        if bot.shard_count is None:  # not launched yet: it learns the count when it connects
            return "not connected to Discord's gateway"
        held = bot.shard_ids or range(bot.shard_count)
        down = [str(shard) for shard in held if shard not in self._connected]
        if not down:
            return None
        which = f"shard {down[0]}" if len(down) == 1 else f"shards {', '.join(down)}"
        return f"not connected to Discord's gateway: {which} of {bot.shard_count}"

    async def problem(self) -> str | None:
        """None when healthy, else why not (the first thing found wrong)."""
        if self._bot.is_closed():
            return "shutting down"
        if (gateway := self._gateway_problem()) is not None:
            return gateway
        services = self._services()
        if services is None:
            return "starting: the job store isn't open yet"
        health = services.scheduler.health()
        if not health.ok:
            return health.reason
        return await self._store_problem(services)

    async def _store_problem(self, services: Services) -> str | None:
        try:
            async with asyncio.timeout(STORE_WITHIN):
                await services.store.get(0)  # the store's own connection answers a read
        except TimeoutError:
            return f"job store busy: no answer within {STORE_WITHIN:.0f}s"
        except StoreError as exc:
            return f"job store {exc.kind}: {exc.detail}"
        except RuntimeError:
            return "job store closed"
        # a writer must get the database's write lock: see the engine's write_lock_problem
        return await services.store.database.write_lock_problem(STORE_WITHIN)
