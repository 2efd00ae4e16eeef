"""The fair line and the promises to several processes, at the store level.

Each test runs on both engines where that means something: ``[sqlite]`` (one file; a second
store on it is a second connection) and ``[postgres]`` (one database; two stores on it stand for
two bot processes). Admission locks and cross-process notifications are PostgreSQL's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.jobs.store import Job, JobStore
from tests.clock import Clock
from tests.test_store import new_job

LEASE = 30.0
BIG_CAP = 1000  # when the cap is not what a test is about

# Advisory locks some other connection is waiting for, in the current database.
LOCK_WAITERS_SQL = (
    "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class Processes:
    """Opens stores on one database (each one a process of its own) and closes them all."""

    def __init__(self, target: str, clock: Clock) -> None:
        self.target = target
        self.clock = clock
        self._opened: list[JobStore] = []

    async def open(self) -> JobStore:
        store = await JobStore.open(self.target, now=self.clock)
        self._opened.append(store)
        return store

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.gather(*(store.close() for store in self._opened))


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each engine (PostgreSQL: one of this test's own)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jambot.db'}"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def processes(target: str, clock: Clock) -> AsyncIterator[Processes]:
    async with Processes(target, clock) as opened:
        yield opened


@pytest.fixture
async def store(processes: Processes) -> JobStore:
    return await processes.open()


@pytest.fixture
async def other(processes: Processes, store: JobStore) -> JobStore:
    """A second store on the same database: another process."""
    return await processes.open()


@pytest.fixture
async def pg_processes(pg_url: str, clock: Clock) -> AsyncIterator[Processes]:
    async with Processes(pg_url, clock) as opened:
        yield opened


@pytest.fixture
async def monitor(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection that watches the locks from outside the stores."""
    conn = await asyncpg.connect(pg_url)
    try:
        yield conn
    finally:
        await conn.close()


async def add(store: JobStore, user_id: int) -> int:
    return (await store.add(new_job(user_id=user_id))).id


async def claim(
    store: JobStore, owner: str = "one", *, cap: int = BIG_CAP, per_minute: int | None = None
) -> Job | None:
    return await store.claim_next(owner, cap=cap, lease_seconds=LEASE, starts_per_minute=per_minute)


async def claim_all(store: JobStore) -> list[int]:
    """Claim until the line is empty; the ids in the order claimed."""
    claimed = []
    while (job := await claim(store)) is not None:
        claimed.append(job.id)
    return claimed


async def line_ids(store: JobStore) -> list[int]:
    return [job.id for job in await store.line()]


def started(claims: list[Job | None]) -> list[Job]:
    return [job for job in claims if job is not None]


# -- the fair order -----------------------------------------------------------------------


async def test_users_take_turns(store: JobStore, other: JobStore) -> None:
    a, b, c = 10, 20, 30
    ids = [await add(store, user) for user in (a, a, a, b, c, b)]  # jobs 1..6
    expected = [ids[0], ids[3], ids[4], ids[1], ids[5], ids[2]]  # 1, 4, 5, 2, 6, 3
    assert await line_ids(store) == expected
    assert await line_ids(other) == expected  # one line for every process

    claimed = []
    for turn in range(len(ids)):  # the two processes take jobs alternately
        job = await claim(store if turn % 2 else other, f"owner-{turn % 2}")
        assert job is not None
        claimed.append(job.id)
    assert claimed == expected
    assert await claim(store) is None
    assert await store.line() == []


async def test_a_user_just_served_waits_for_users_not_yet_served(
    store: JobStore, other: JobStore
) -> None:
    first = await add(store, 1)
    job = await claim(store)
    assert job is not None and job.id == first  # user 1 has had a turn
    later_1 = await add(other, 1)
    later_2 = await add(store, 1)
    newcomer = await add(other, 2)  # arrives last, but user 2 hasn't been served yet
    assert await line_ids(store) == [newcomer, later_1, later_2]
    assert await claim_all(other) == [newcomer, later_1, later_2]


async def test_the_user_served_longest_ago_goes_first(store: JobStore) -> None:
    for user in (1, 2, 3):
        await add(store, user)
    assert len(await claim_all(store)) == 3  # turns: user 1, then 2, then 3
    ids = {user: await add(store, user) for user in (3, 2, 1)}
    assert await claim_all(store) == [ids[1], ids[2], ids[3]]


async def test_a_job_started_out_of_line_uses_its_users_turn(store: JobStore) -> None:
    first, second = await add(store, 1), await add(store, 1)
    third = await add(store, 2)
    assert await store.start(first) is not None  # outside the line's order
    assert await line_ids(store) == [third, second]
    assert await claim_all(store) == [third, second]


async def test_a_requeued_job_keeps_its_place_by_id(store: JobStore) -> None:
    first, second = await add(store, 1), await add(store, 2)
    job = await claim(store)
    assert job is not None and job.id == first
    assert await store.requeue(first)
    # user 1 had the last turn: user 2 first, then user 1's job again
    assert await line_ids(store) == [second, first]
    assert await claim_all(store) == [second, first]


class FairLine:
    """The line as the old in-memory FairQueue kept it: the model the store's SQL must follow.

    The next job is the first waiting job of the user whose last turn is the oldest (never
    served: oldest of all), ties broken by that user's first waiting job.
    """

    def __init__(self) -> None:
        self.waiting: dict[int, list[int]] = {}
        self.last_turn: dict[int, int] = {}
        self.turns = 0

    def add(self, user: int, job_id: int) -> None:
        self.waiting.setdefault(user, []).append(job_id)

    def remove(self, job_id: int) -> None:
        for jobs in self.waiting.values():
            if job_id in jobs:
                jobs.remove(job_id)

    def pop(self) -> int | None:
        users = [user for user, jobs in self.waiting.items() if jobs]
        if not users:
            return None
        user = min(users, key=lambda u: (self.last_turn.get(u, 0), self.waiting[u][0]))
        self.turns += 1
        self.last_turn[user] = self.turns
        return self.waiting[user].pop(0)

    def order(self) -> list[int]:
        copy = FairLine()
        copy.waiting = {user: list(jobs) for user, jobs in self.waiting.items()}
        copy.last_turn = dict(self.last_turn)
        copy.turns = self.turns
        return [job for job in iter(copy.pop, None)]

    def queued(self) -> list[int]:
        return sorted(job for jobs in self.waiting.values() for job in jobs)


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 4)),  # a user
        st.tuples(st.just("claim"), st.integers(0, 1)),  # which process
        st.tuples(st.just("cancel"), st.integers(0, 20)),  # which queued job
    ),
    max_size=30,
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # emptied for each example
)
@given(steps=STEPS)
async def test_the_line_predicts_every_claim(
    store: JobStore, other: JobStore, steps: list[tuple[str, int]]
) -> None:
    async with store.database.write() as tx:  # a fresh line for each example
        await tx.execute("DELETE FROM jobs")
    model = FairLine()
    for action, number in steps:
        if action == "add":
            model.add(number, await add(store, number))
        elif action == "cancel":
            queued = model.queued()
            if queued:
                job_id = queued[number % len(queued)]
                assert await (store, other)[number % 2].cancel(job_id) is not None
                model.remove(job_id)
        else:
            expected = model.order()
            assert await line_ids((store, other)[number]) == expected
            job = await claim((store, other)[number], f"owner-{number}")
            assert (job.id if job else None) == model.pop()
    expected = model.order()
    assert await line_ids(store) == expected
    assert await claim_all(other) == expected


# -- the global cap and the rate of starts ------------------------------------------------


async def test_the_cap_holds_in_all_processes_together(store: JobStore, other: JobStore) -> None:
    for n in range(12):
        await add(store, n % 4)

    async def rush() -> list[Job]:
        """Many claims at once from both processes, under a cap of 3."""
        claims = [claim(s, owner, cap=3) for s, owner in ((store, "a"), (other, "b")) * 8]
        return started(await asyncio.gather(*claims))

    running = await rush()
    assert len(running) == 3
    assert await store.running_count() == 3
    assert await rush() == []  # full

    endings: dict[str, Callable[[int], Awaitable[object]]] = {
        "deliver": lambda job_id: other.deliver(job_id, message_id=1, channel_id=2),
        "fail": lambda job_id: store.fail(job_id, error="Failed.", detail="test"),
        "cancel": lambda job_id: other.cancel(job_id),
    }
    for name, end in endings.items():
        ended = running.pop(0)
        assert await end(ended.id), name
        more = await rush()
        assert len(more) == 1, name  # exactly one more, whoever claims it
        running += more
        assert await other.running_count() == 3, name
    assert len({job.id for job in running}) == 3


async def test_two_owners_never_claim_the_same_job(store: JobStore, other: JobStore) -> None:
    ids = [await add(store, n % 5) for n in range(20)]
    claims = [claim(s, owner) for s, owner in ((store, "a"), (other, "b")) * 15]
    jobs = started(await asyncio.gather(*claims))
    assert sorted(job.id for job in jobs) == ids  # each job once, none left out
    for job in jobs:
        stored = await other.get(job.id)
        assert stored is not None
        assert (stored.status, stored.attempts, stored.unfinished_runs) == ("running", 1, 1)
        assert stored.lease_owner == job.lease_owner
    assert sorted(job.turn or 0 for job in jobs) == list(range(1, 21))  # one turn each


async def test_starts_per_minute_hold_in_all_processes_together(
    store: JobStore, other: JobStore, clock: Clock
) -> None:
    for n in range(6):
        await add(store, n)
    assert await claim(store, "a", per_minute=2) is not None  # at 0 s
    clock.advance(seconds=30)
    assert await claim(other, "b", per_minute=2) is not None  # at 30 s
    assert await claim(store, "a", per_minute=2) is None
    assert await claim(other, "b", per_minute=2) is None
    clock.advance(seconds=29)  # 59 s: both starts are within the last minute
    assert await claim(other, "b", per_minute=2) is None
    clock.advance(seconds=2)  # 61 s: only the start at 30 s is
    assert await claim(other, "b", per_minute=2) is not None
    assert await claim(store, "a", per_minute=2) is None
    clock.advance(seconds=30)  # 91 s: only the start at 61 s is
    assert await claim(store, "a", per_minute=2) is not None
    assert await claim(store, "a", per_minute=2) is None
    # the cap still counts: four are running
    clock.advance(minutes=5)
    assert await claim(store, "a", cap=4, per_minute=2) is None
    assert await claim(store, "a", cap=5, per_minute=2) is not None


# -- leases and takeovers -----------------------------------------------------------------


async def test_renewing_extends_only_the_owners_leases(
    store: JobStore, other: JobStore, clock: Clock
) -> None:
    await add(store, 1)
    await add(store, 2)
    mine, theirs = await claim(store, "a"), await claim(other, "b")
    assert mine is not None and theirs is not None
    assert mine.lease_owner == "a"
    assert mine.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    clock.advance(seconds=10)

    assert await store.renew_leases("a", LEASE) == {mine.id}
    renewed, untouched = await store.get(mine.id), await store.get(theirs.id)
    assert renewed is not None and untouched is not None
    assert renewed.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert untouched.lease_expires_at == theirs.lease_expires_at
    assert await store.renew_leases("nobody", LEASE) == set()

    assert await store.deliver(mine.id, message_id=1, channel_id=2)
    assert await store.renew_leases("a", LEASE) == set()  # only running jobs are held


async def test_an_expired_lease_is_taken_over_and_the_old_owner_fenced_off(
    store: JobStore, other: JobStore, clock: Clock
) -> None:
    await add(store, 1)
    job = await claim(store, "a")
    assert job is not None and job.unfinished_runs == 1
    assert await other.take_over("b", LEASE) == []  # alive: nothing to take
    clock.advance(seconds=LEASE - 1)
    assert await other.take_over("b", LEASE) == []
    clock.advance(seconds=1)  # expired: the owner did not renew in time

    [taken] = await other.take_over("b", LEASE)
    assert taken.id == job.id
    assert (taken.lease_owner, taken.unfinished_runs) == ("b", 2)  # one more unfinished run
    assert taken.lease_expires_at == clock.now + timedelta(seconds=LEASE)
    assert await store.take_over("c", LEASE) == []  # the new lease holds

    assert await store.set_prediction(job.id, "pred-a", owner="a") is False
    assert await store.mark_delivering(job.id, owner="a") is False
    assert await store.renew_leases("a", LEASE) == set()
    assert await other.set_prediction(job.id, "pred-b", owner="b") is True
    assert await other.mark_delivering(job.id, owner="b") is True
    final = await store.get(job.id)
    assert final is not None
    assert (final.prediction_id, final.delivering_at) == ("pred-b", clock.now)


async def test_released_runs_can_be_taken_over_at_once(
    store: JobStore, other: JobStore, clock: Clock
) -> None:
    for user in (1, 2):
        await add(store, user)
    mine, theirs = await claim(store, "a"), await claim(other, "b")
    assert mine is not None and theirs is not None
    await store.release_runs([mine.id, theirs.id], owner="a")  # a clean shutdown of "a"
    [taken] = await other.take_over("c", LEASE)  # at once: the clock has not moved
    assert taken.id == mine.id
    assert taken.unfinished_runs == 1  # released (0), then taken over (1): no crash counted
    kept = await store.get(theirs.id)
    assert kept is not None
    assert kept.lease_owner == "b"
    assert kept.lease_expires_at == theirs.lease_expires_at

    everything = await store.take_over("d", LEASE, expired_only=False)  # a fresh start
    assert [job.id for job in everything] == [mine.id, theirs.id]
    assert {job.lease_owner for job in everything} == {"d"}


# -- notifications ------------------------------------------------------------------------


class Wakeups:
    """A listener's calls, awaitable."""

    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._event.set()

    async def next(self) -> None:
        async with asyncio.timeout(10):
            await self._event.wait()
        self._event.clear()

    def forget(self) -> None:
        self.count = 0
        self._event.clear()


async def test_sqlite_a_write_wakes_the_local_listener_after_it_commits(tmp_path: Path) -> None:
    async with await JobStore.open(tmp_path / "jambot.db") as store:
        wakeups = Wakeups()
        store.database.add_listener(wakeups)
        await store.database.start_listening()  # nothing to listen to: no other process

        with pytest.raises(ValueError):
            async with store.database.write(notify=True) as tx:
                await tx.execute("DELETE FROM jobs")
                raise ValueError("rolled back")
        await asyncio.sleep(0)  # the loop runs what was scheduled before resuming us
        assert wakeups.count == 0  # nothing committed, nobody woken

        job = await store.add(new_job())
        await wakeups.next()
        assert await store.get(job.id) is not None
        assert wakeups.count == 1


async def test_postgres_a_write_in_one_process_wakes_the_others(pg_processes: Processes) -> None:
    writer, reader = await pg_processes.open(), await pg_processes.open()
    heard_by_writer, heard_by_reader = Wakeups(), Wakeups()
    writer.database.add_listener(heard_by_writer)
    reader.database.add_listener(heard_by_reader)
    await asyncio.gather(writer.database.start_listening(), reader.database.start_listening())
    heard_by_writer.forget()  # listening begins with a wake-up for what was missed
    heard_by_reader.forget()

    job = await writer.add(new_job())
    await asyncio.gather(heard_by_reader.next(), heard_by_writer.next())
    assert await writer.claim_next("w", cap=1, lease_seconds=LEASE) is not None
    assert await writer.deliver(job.id, message_id=1, channel_id=2)
    await heard_by_reader.next()  # a slot is free: the other process may start a job


# -- admission: one user's check-then-add, one process at a time --------------------------

USER = 42


async def lock_waiters(monitor: asyncpg.Connection, count: int = 1) -> None:
    """Until `count` connections wait for an advisory lock (polled: PostgreSQL announces
    nothing); TimeoutError if they never do."""
    async with asyncio.timeout(10):
        while await monitor.fetchval(LOCK_WAITERS_SQL) < count:  # noqa: ASYNC110 (no event)
            await asyncio.sleep(0.005)


async def first_of(*waits: Awaitable[object]) -> None:
    """Until any of `waits` is done."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED, timeout=10)
        assert done, "nothing happened"
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def nothing() -> None:
    pass


async def check_then_add(
    store: JobStore,
    guard: AbstractAsyncContextManager[object],
    checked: asyncio.Event,
    then: Callable[[], Awaitable[object]],
) -> bool:
    """What the scheduler does for a command: add a job only if the user has none active."""
    async with guard:
        active = await store.active_count_for_user(USER)
        checked.set()
        await then()
        if active:
            return False
        await store.add(new_job(user_id=USER))
        return True


@pytest.mark.parametrize("admitted", [True, False], ids=["admission", "no-admission"])
async def test_postgres_admission_lets_one_process_check_and_add_at_a_time(
    pg_processes: Processes, monitor: asyncpg.Connection, admitted: bool
) -> None:
    """Process A checks (no job yet), then waits until B has checked too, or until B waits
    for A's lock. Under admission B waits, sees A's job, and adds none; without it, both see
    none and both add (the race admission exists for: this is how the test can fail)."""
    first, second = await pg_processes.open(), await pg_processes.open()

    def guard(store: JobStore) -> AbstractAsyncContextManager[object]:
        return store.admission(USER) if admitted else contextlib.nullcontext()

    first_checked, second_checked = asyncio.Event(), asyncio.Event()
    first_done = asyncio.create_task(
        check_then_add(
            first,
            guard(first),
            first_checked,
            lambda: first_of(second_checked.wait(), lock_waiters(monitor)),
        )
    )
    await first_checked.wait()
    second_done = asyncio.create_task(
        check_then_add(second, guard(second), second_checked, nothing)
    )
    results = list(await asyncio.gather(first_done, second_done))

    if admitted:
        assert results == [True, False]
        assert await second.active_count_for_user(USER) == 1
    else:
        assert results == [True, True]
        assert await second.active_count_for_user(USER) == 2


async def test_postgres_admission_holds_against_many_at_once(pg_processes: Processes) -> None:
    stores = [await pg_processes.open(), await pg_processes.open()]

    async def attempt(store: JobStore) -> bool:
        # the store's own round trip stands between the check and the add
        return await check_then_add(
            store, store.admission(USER), asyncio.Event(), store.running_count
        )

    results = await asyncio.gather(*(attempt(store) for store in stores * 5))
    assert results.count(True) == 1
    assert await stores[0].active_count_for_user(USER) == 1


async def test_postgres_admission_of_different_users_does_not_wait(pg_processes: Processes) -> None:
    first, second = await pg_processes.open(), await pg_processes.open()

    async def other_user() -> None:
        async with second.admission(USER + 1):
            await second.add(new_job(user_id=USER + 1))

    async with first.admission(USER):
        await first.add(new_job(user_id=USER))
        # it would wait for ever (and time out) if the locks were one
        await asyncio.wait_for(asyncio.create_task(other_user()), 10)
    assert await second.active_count_for_user(USER) == 1
    assert await first.active_count_for_user(USER + 1) == 1


async def test_postgres_admission_of_different_users_waits_for_a_shared_lock(
    pg_processes: Processes, monitor: asyncpg.Connection
) -> None:
    first, second = await pg_processes.open(), await pg_processes.open()
    entered = asyncio.Event()

    async def other_user() -> None:
        async with second.admission(USER + 1, "budget:guild:7"):
            entered.set()

    async with first.admission(USER, "budget:guild:7"):
        waiting = asyncio.create_task(other_user())
        await lock_waiters(monitor)  # the other process waits for the budget's lock
        assert not entered.is_set()
    await waiting
    assert entered.is_set()


async def test_postgres_admission_commits_its_writes_together(pg_processes: Processes) -> None:
    first, second = await pg_processes.open(), await pg_processes.open()
    async with first.admission(USER):
        job = await first.add(new_job(user_id=USER))
        assert await first.get(job.id) == job  # the task sees its own write
        assert await second.get(job.id) is None  # others don't, until the end
    assert await second.get(job.id) == job

    with pytest.raises(ValueError):
        async with first.admission(USER):
            doomed = await first.add(new_job(user_id=USER))
            raise ValueError("refused after all")
    assert await second.get(doomed.id) is None  # rolled back with the rest
    assert await second.active_count_for_user(USER) == 1


async def test_postgres_a_task_cancelled_while_waiting_for_admission_leaves_nothing_held(
    pg_processes: Processes, monitor: asyncpg.Connection
) -> None:
    first, second = await pg_processes.open(), await pg_processes.open()

    async def waiter() -> None:
        async with second.admission(USER):
            await second.add(new_job(user_id=USER))

    async with first.admission(USER):
        waiting = asyncio.create_task(waiter())
        await lock_waiters(monitor)
        waiting.cancel()  # a command abandoned while it waited for its turn
        [outcome] = await asyncio.gather(waiting, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert await monitor.fetchval(LOCK_WAITERS_SQL) == 0  # its wait ended with it
    async with asyncio.timeout(10), second.admission(USER):  # the lock is free again
        assert await second.active_count_for_user(USER) == 0  # and nothing was added
