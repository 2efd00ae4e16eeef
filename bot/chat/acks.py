"""Acknowledgements first: a burst of commands gets every defer out before any follow-up work.

It changes global state on purpose, and says so: while a defer is in flight the process's
garbage collector is disabled (see `AckGate`), and enabled again as soon as none is.

It also times each acknowledgement for `jambot_ack_latency_seconds`, from the moment Discord
created the interaction (the timestamp in its id) to the moment the defer's callback returned:
that is the wait Discord's 3-second limit counts, gateway delivery included. It reads the
host's clock against Discord's, so a host clock off by a second is off by as much here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import AsyncIterator
from datetime import datetime

from bot.clock import utc_now
from bot.ops.metrics import NO_METRICS, JobMetrics


class AckGate:
    """Acknowledgements first: nothing else gets in the way of defers that are going out.

    Discord gives each command 3 seconds to be acknowledged. In a burst, the validation,
    limits and job inserts of the first commands would otherwise run between the defers of
    the later ones and delay them: follow-up work starts once no defer has begun for a short
    quiet period (a burst's frames arrive over a few milliseconds), or after `limit` at most.
    And while any defer is in flight the garbage collector waits, since one of its full
    passes stalls the event loop for tens of milliseconds.
    """

    QUIET = 0.02
    MAX_GC_HOLD = 1.0  # under steady traffic, let the collector run at least this often

    def __init__(self, metrics: JobMetrics = NO_METRICS) -> None:
        self._metrics = metrics
        self._pending = 0
        self._started = 0
        self._gc_held_since: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.asynccontextmanager
    async def acknowledging(self, created_at: datetime | None = None) -> AsyncIterator[None]:
        """Around one defer; `created_at` (the interaction's) times it once it succeeded."""
        self._hold_gc()
        self._pending += 1
        self._started += 1
        self._idle.clear()
        try:
            yield
            if created_at is not None:
                self._metrics.acknowledged((utc_now() - created_at).total_seconds())
        finally:
            self._pending -= 1
            if self._pending == 0:
                self._release_gc()
                self._idle.set()

    def _hold_gc(self) -> None:
        now = time.monotonic()
        if self._gc_held_since is None:
            self._gc_held_since = now
            gc.disable()
        elif now - self._gc_held_since > self.MAX_GC_HOLD:
            gc.enable()  # no quiet gap for a while: collect between these defers after all

    def _release_gc(self) -> None:
        self._gc_held_since = None
        gc.enable()

    async def wait_until_quiet(self, limit: float = 1.0) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                while True:
                    await self._idle.wait()
                    started = self._started
                    await asyncio.sleep(self.QUIET)
                    if self._started == started and self._idle.is_set():
                        return
