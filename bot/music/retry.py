"""When and how long to wait before trying again.

Only `TransientError`s are retried; everything else is raised at once, because each create at
Replicate is a billed prediction and a permanent error would only repeat (and cost) itself.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from bot.music.errors import TransientError

log = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]

MAX_RETRY_AFTER = 120.0


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, honouring Retry-After, never past a deadline.

    `deadline` values are `loop.time()` instants (monotonic seconds).
    """

    max_attempts: int = 3
    base_delay: float = 1.0
    max_delay: float = 30.0
    jitter: float = 0.5
    sleep: Sleep = field(default=asyncio.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def delay(self, attempt: int, error: TransientError) -> float:
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), MAX_RETRY_AFTER)
        backoff = self.base_delay * 2.0 ** (attempt - 1)
        spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter)
        return min(backoff * spread, self.max_delay)

    async def backoff(self, attempt: int, error: TransientError, deadline: float | None) -> None:
        """Wait before attempt `attempt + 1`, or re-raise `error` if no attempt is left.

        An attempt that could only start after the deadline is not worth waiting for.
        """
        if attempt >= self.max_attempts:
            raise error
        wait = self.delay(attempt, error)
        if deadline is not None and asyncio.get_running_loop().time() + wait >= deadline:
            raise error
        log.info("attempt %d failed (%s); retrying in %.2fs", attempt, error.detail, wait)
        await self.sleep(wait)

    async def call(self, fn: Callable[[], Awaitable[T]], *, deadline: float | None = None) -> T:
        """Run `fn` until it succeeds, retrying transient failures."""
        attempt = 0
        while True:
            attempt += 1
            try:
                return await fn()
            except TransientError as exc:
                await self.backoff(attempt, exc, deadline)
