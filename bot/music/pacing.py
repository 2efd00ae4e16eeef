"""Pacing of prediction polls, so that many jobs in flight stay under Replicate's rate limit.

Replicate allows 3,000 non-create requests a minute per account. Each job polling on its own
every 0.5 s (and every 50 ms as its end nears) would pass that with about 25 jobs in flight,
and `MAX_CONCURRENT_GENERATIONS` allows more. A 429 on a poll costs nothing but time, yet it
also throttles the cancels, downloads and uploads that share the same limit, so every one of
them is kept under a budget of jambot's own instead, with headroom left below Replicate's.

`PollPacer` is that budget, shared by every request of one backend (one per process) but its
creates (which have a limit of their own). A download, cancel or upload takes a token first
(`errand`), ahead of the polls: at a high rate of finished tracks, the downloads leave fewer
tokens to the polls, never more requests in all. Each poll asks for a turn right before its
GET:

- A token bucket (capacity `POLL_BURST`, refilled so that a full bucket plus one minute of
  refill is `POLL_BUDGET_PER_MINUTE`) bounds the polls in *any* 60 s window by the budget.
- With N predictions in flight, each waits at least N / rate since its own last turn, so the
  budget is shared out evenly and no prediction can take more than its share.
- A prediction whose ETA is shorter than that fair interval would finish before its next
  turn: it is exempt from the floor and goes first, so finished tracks are still delivered
  within the caller's fast near-end polling.
- Waiting polls are served earliest-due first, which no later arrival can overtake for ever
  (a served poll's next due time moves past the others'), so none is starved.

Several processes polling for one account each take a share of the budget (`set_share`):
their share of the predictions running in all of them, told at each heartbeat of the
scheduler, so that all of them together stay within it.

Under light load (one or two in flight) every turn is granted at once, without suspending, so
polling is exactly what the caller's own interval makes it. Waiting costs one timer for the
whole pacer (only for the first poll in line) and one future per waiting poll: no busy loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]

# Replicate's limit for non-create requests is 3,000 a minute per account; jambot's polls,
# downloads, cancels and uploads together keep to 80% of it, leaving the rest as headroom
# (retries, another tool using the same token).
POLL_BUDGET_PER_MINUTE = 2_400
# Polls that may go back to back after a quiet spell (two jobs' near-end polls can coincide).
POLL_BURST = 10
# A token refilled in floats can fall an ulp short of whole; it counts as whole, or the
# timer would be set again for an ulp, over and over (costing the budget a billionth a poll).
_WHOLE = 1.0 - 1e-9


@dataclass(eq=False)
class PollTicket:
    """One prediction in flight: when it last had a turn (None: never)."""

    last_turn: float | None = None


@dataclass(order=True)
class _Waiter:
    due: float
    seq: int
    ticket: PollTicket = field(compare=False)
    granted: asyncio.Future[None] = field(compare=False)
    floored: bool = field(default=False, compare=False)  # waits out the fair interval


class PollPacer:
    """Gives turns to polls so that all of them together stay within a per-minute budget.

    `clock` and `sleep` are injectable (monotonic seconds, like `loop.time()`), so tests can
    run minutes of polling in simulated time.
    """

    def __init__(
        self,
        per_minute: float = POLL_BUDGET_PER_MINUTE,
        *,
        burst: int = POLL_BURST,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if burst < 1 or per_minute <= burst:
            raise ValueError("the budget must exceed the burst, and the burst be at least 1")
        self.per_minute = per_minute
        self.burst = burst
        self._full_burst = burst
        self.rate = (per_minute - burst) / 60.0  # refill per second: burst + 60 s <= budget
        self._clock = clock
        self._sleep = sleep
        self._tickets: set[PollTicket] = set()
        self._tokens = float(burst)
        self._refilled_at: float | None = None
        self._queue: list[_Waiter] = []
        self._seq = itertools.count()
        self._timer: asyncio.Task[None] | None = None
        self._timer_at = 0.0

    def set_share(self, fraction: float) -> None:
        """Take only `fraction` (0 < fraction <= 1) of the budget: the rest belongs to other
        processes polling predictions of the same account. The burst shrinks with it, so that
        the bucket's burst plus a minute's refill stays within the share."""
        if not 0 < fraction <= 1:
            raise ValueError("the share must be above 0 and at most 1")
        budget = self.per_minute * fraction
        self.burst = max(1, min(self._full_burst, int(budget // 10)))
        self.rate = max(budget - self.burst, budget / 2) / 60.0
        self._tokens = min(self._tokens, float(self.burst))
        # the polls waiting out a fair interval wait out the new one instead (a share that
        # grew must not leave them waiting for the small one's long interval)
        fair = self.fair_interval()
        for waiter in self._queue:
            if waiter.floored and waiter.ticket.last_turn is not None:
                waiter.due = waiter.ticket.last_turn + fair
        heapq.heapify(self._queue)
        self._schedule()

    @property
    def in_flight(self) -> int:
        return len(self._tickets)

    def fair_interval(self) -> float:
        """The least time between two turns of one prediction: N in flight share the rate."""
        return len(self._tickets) / self.rate

    @contextlib.contextmanager
    def polling(self) -> Iterator[PollTicket]:
        """Count one prediction in flight for as long as the block runs, however it ends."""
        ticket = PollTicket()
        self._tickets.add(ticket)
        try:
            yield ticket
        finally:
            self._tickets.discard(ticket)

    async def turn(self, ticket: PollTicket, eta: float | None = None) -> None:
        """Return when `ticket` may send its next poll. `eta`: seconds the logs say are left."""
        now = self._clock()
        due = now if ticket.last_turn is None else ticket.last_turn
        fair = self.fair_interval()
        floored = ticket.last_turn is not None and (eta is None or eta > fair)
        if floored:
            due += fair
        self._refill(now)
        if not self._queue and due <= now and self._tokens >= _WHOLE:
            self._grant(ticket, now)
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, _Waiter(due, next(self._seq), ticket, granted, floored))
        self._schedule()
        try:
            await granted
        finally:
            if not granted.done():  # cancelled while waiting: let the next one in line go
                granted.cancel()
                self._schedule()

    async def errand(self) -> None:
        """Return when one other request to Replicate (a download, a cancel, an upload) may
        go: it takes a token from the same budget, ahead of every waiting poll (a finished
        track's download is what a user waits for), but no turn of any prediction's."""
        now = self._clock()
        self._refill(now)
        if self._tokens >= _WHOLE:
            self._tokens -= 1.0
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, _Waiter(-math.inf, next(self._seq), PollTicket(), granted))
        self._schedule()
        try:
            await granted
        finally:
            if not granted.done():
                granted.cancel()
                self._schedule()

    def _refill(self, now: float) -> None:
        if self._refilled_at is not None:
            if now <= self._refilled_at:  # a timer's `at` may be a hair ahead of the clock
                return
            self._tokens = min(self.burst, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now

    def _grant(self, ticket: PollTicket, now: float) -> None:
        self._tokens -= 1.0
        ticket.last_turn = now

    def _release(self, now: float) -> None:
        """Grant every turn that is due at `now` and has a token, earliest-due first."""
        self._refill(now)
        while self._queue:
            head = self._queue[0]
            if head.granted.done():
                heapq.heappop(self._queue)
                continue
            if head.due > now or self._tokens < _WHOLE:
                break
            heapq.heappop(self._queue)
            self._grant(head.ticket, now)
            head.granted.set_result(None)

    def _schedule(self) -> None:
        """Keep one timer, set for when the first poll in line may go."""
        while self._queue and self._queue[0].granted.done():
            heapq.heappop(self._queue)
        if not self._queue:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        now = self._clock()
        self._refill(now)
        token_at = now if self._tokens >= _WHOLE else now + (1.0 - self._tokens) / self.rate
        at = max(self._queue[0].due, token_at)
        if self._timer is not None and not self._timer.done() and self._timer_at <= at:
            return  # it fires first and looks again
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = asyncio.get_running_loop().create_task(self._fire(at, at - now))

    async def _fire(self, at: float, delay: float) -> None:
        await self._sleep(max(delay, 0.0))
        self._timer = None
        # A timer may run a hair early (float rounding, the loop's clock resolution): it
        # stands for `at`, or it would be set again for a few ulps, over and over.
        self._release(max(self._clock(), at))
        self._schedule()
