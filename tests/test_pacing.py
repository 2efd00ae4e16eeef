"""The poll pacer: the account's budget holds in any minute, no prediction starves, and light
load polls exactly as before. Minutes of polling run in simulated time."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools

import pytest

from bot.music.pacing import POLL_BUDGET_PER_MINUTE, PollPacer
from bot.music.request import MusicRequest
from tests.conftest import make_backend
from tests.fakes.replicate import FakeReplicate

SETTLE_YIELDS = 50


class VirtualTime:
    """A clock and a `sleep` that jump straight to the next timer once every task waits."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._seq), future))
        await future

    async def run_until(self, end: float) -> None:
        while True:
            # Let every runnable task run: each yield runs all callbacks ready at that moment,
            # so a few dozen cover any chain of wake-ups one virtual instant can cause.
            for _ in range(SETTLE_YIELDS):
                await asyncio.sleep(0)
            while self._timers and self._timers[0][2].done():  # cancelled sleeps
                heapq.heappop(self._timers)
            if not self._timers or self._timers[0][0] > end:
                self.now = end
                return
            when, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            future.set_result(None)


def simulate(
    count: int, seconds: float, interval: float = 0.5, eta: float | None = None
) -> dict[int, list[float]]:
    """`count` predictions polling through one pacer for `seconds`: each one's poll times."""
    vt = VirtualTime()
    pacer = PollPacer(clock=vt.clock, sleep=vt.sleep)
    polls: dict[int, list[float]] = {n: [] for n in range(count)}

    async def prediction(n: int) -> None:
        with pacer.polling() as ticket:
            while True:
                await pacer.turn(ticket, eta)
                polls[n].append(vt.now)
                await vt.sleep(interval)

    async def main() -> None:
        tasks = [asyncio.create_task(prediction(n)) for n in range(count)]
        await vt.run_until(seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert pacer.in_flight == 0  # cancellation unregisters

    asyncio.run(main())
    return polls


def busiest_minute(polls: dict[int, list[float]]) -> int:
    """The most polls in any window [t, t + 60 s)."""
    times = sorted(t for ts in polls.values() for t in ts)
    return max((bisect.bisect_left(times, t + 60.0) - i for i, t in enumerate(times)), default=0)


def longest_gap(times: list[float], end: float) -> float:
    return max(b - a for a, b in itertools.pairwise([0.0, *times, end]))


@pytest.mark.parametrize("count", [60, 200])
def test_many_predictions_stay_within_the_budget_and_none_starves(count: int) -> None:
    seconds = 150.0
    polls = simulate(count, seconds)
    assert busiest_minute(polls) <= POLL_BUDGET_PER_MINUTE
    assert busiest_minute(polls) >= 0.95 * POLL_BUDGET_PER_MINUTE  # the budget is used
    fair = count / ((POLL_BUDGET_PER_MINUTE - 10) / 60)
    for times in polls.values():
        assert longest_gap(times, seconds) <= 2 * fair + 0.5


def test_near_the_end_the_budget_still_holds_and_none_starves() -> None:
    """All of them claim to be about to finish and poll every 50 ms: the bucket decides."""
    seconds = 130.0
    polls = simulate(64, seconds, interval=0.05, eta=0.0)
    assert busiest_minute(polls) <= POLL_BUDGET_PER_MINUTE
    for times in polls.values():
        assert longest_gap(times, seconds) <= 2 * 64 / 40 + 0.5


@pytest.mark.parametrize("interval", [0.5, 0.05])
def test_one_prediction_polls_at_its_own_interval(interval: float) -> None:
    polls = simulate(1, 20.0, interval=interval, eta=0.1 if interval < 0.5 else None)
    times = polls[0]
    assert times[0] == 0.0
    assert [round(b - a, 9) for a, b in itertools.pairwise(times)] == [interval] * (len(times) - 1)


def test_two_predictions_poll_at_their_own_interval() -> None:
    polls = simulate(2, 20.0, interval=0.5)
    for times in polls.values():
        assert {round(b - a, 9) for a, b in itertools.pairwise(times)} == {0.5}


def test_a_prediction_about_to_finish_goes_first() -> None:
    """With the budget shared by 100, one whose ETA is short is not held to the fair share."""
    vt = VirtualTime()
    pacer = PollPacer(clock=vt.clock, sleep=vt.sleep)
    near_end: list[float] = []

    async def main() -> None:
        tickets = [pacer.polling() for _ in range(100)]
        held = [ticket.__enter__() for ticket in tickets]
        with pacer.polling() as ticket:
            for _ in range(5):
                await pacer.turn(ticket, eta=0.2)
                near_end.append(vt.now)
                await vt.sleep(0.05)
        for context in tickets:
            context.__exit__(None, None, None)
        assert held and pacer.in_flight == 0

    async def run() -> None:
        task = asyncio.create_task(main())
        await vt.run_until(10.0)
        await task

    asyncio.run(run())
    assert len(near_end) == 5 and near_end[-1] <= 0.3  # not 2.5 s apart, as the floor would be


async def test_ten_concurrent_generations_complete_with_one_create_each(
    replicate_fake: FakeReplicate,
) -> None:
    backend = make_backend(replicate_fake)
    try:
        prompt = {"prompt": "warm lofi beat", "duration": 2}
        tracks = await asyncio.gather(
            *(backend.generate(MusicRequest.parse(prompt)) for _ in range(10))
        )
    finally:
        await backend.aclose()
    assert len({track.prediction_id for track in tracks}) == 10
    assert len(replicate_fake.creates) == 10
    assert all(track.data for track in tracks)
    assert backend._pacer.in_flight == 0


async def flat_out(pacer: PollPacer, vt: VirtualTime, polls: list[float]) -> None:
    """A prediction that would poll every 50 ms if the pacer let it: its turns in `polls`."""
    with pacer.polling() as ticket:
        while True:
            await pacer.turn(ticket)
            polls.append(vt.now)
            await vt.sleep(0.05)


def test_downloads_and_cancels_share_the_budget_and_go_ahead_of_polls() -> None:
    """64 predictions polling flat out, and a finished track's download every 50 ms (1,200 a
    minute): all requests together keep to the budget, the downloads never wait long, and the
    polls get what is left."""
    vt = VirtualTime()
    pacer = PollPacer(clock=vt.clock, sleep=vt.sleep)
    polls: list[float] = []
    errands: list[tuple[float, float]] = []  # (asked, granted)

    async def downloads() -> None:
        while True:
            asked = vt.now
            await pacer.errand()
            errands.append((asked, vt.now))
            await vt.sleep(0.05)

    async def main() -> None:
        tasks = [asyncio.create_task(flat_out(pacer, vt, polls)) for _ in range(64)]
        tasks.append(asyncio.create_task(downloads()))
        await vt.run_until(180)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    granted = sorted([*polls, *(at for _, at in errands)])
    assert busiest_minute({0: granted}) <= POLL_BUDGET_PER_MINUTE
    assert len(errands) > 1_000 and max(at - asked for asked, at in errands) < 0.1
    polls_in_last_minute = len([t for t in polls if t >= 120])
    assert 0 < polls_in_last_minute <= POLL_BUDGET_PER_MINUTE - 1_000


def test_a_share_of_the_budget_holds_in_any_minute() -> None:
    """A process told it runs a quarter of the account's jobs polls within a quarter."""
    vt = VirtualTime()
    pacer = PollPacer(clock=vt.clock, sleep=vt.sleep)
    polls: list[float] = []

    async def main() -> None:
        pacer.set_share(0.25)
        tasks = [asyncio.create_task(flat_out(pacer, vt, polls)) for _ in range(50)]
        await vt.run_until(120)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
    assert busiest_minute({0: polls}) <= POLL_BUDGET_PER_MINUTE / 4
    assert busiest_minute({0: polls}) >= 0.9 * POLL_BUDGET_PER_MINUTE / 4  # and uses it
    with pytest.raises(ValueError):
        pacer.set_share(0)


def test_polls_waiting_on_a_small_share_are_let_go_when_the_share_grows() -> None:
    """A process told it runs 1 job of 200 while it polls 50 (the count was stale): each poll
    it grants meanwhile waits a fair interval of minutes. Once its real share is known, those
    must wait the new, short interval, not the old one."""
    vt = VirtualTime()
    pacer = PollPacer(clock=vt.clock, sleep=vt.sleep)
    polls: dict[int, list[float]] = {n: [] for n in range(50)}

    async def main() -> None:
        pacer.set_share(1 / 200)
        tasks = [asyncio.create_task(flat_out(pacer, vt, polls[n])) for n in polls]
        await vt.run_until(60)
        slowed = [n for n, times in polls.items() if times]  # their next turn: minutes away
        pacer.set_share(50 / 200)  # the next look at the store
        await vt.run_until(75)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert slowed
        # a quarter of 2,400 a minute for 50 polls: each every 5 s
        assert all(any(60 < t <= 75 for t in polls[n]) for n in polls)

    asyncio.run(main())
