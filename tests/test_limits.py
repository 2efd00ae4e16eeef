"""Per-user limits over a real job database, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.jobs import JobStore, Limits, NewJob, Refusal, format_duration
from bot.jobs.limits import next_utc_midnight
from tests.clock import START, Clock

_interaction_ids = iter(range(1, 1_000_000))


async def submit(store: JobStore, user_id: int = 42) -> int:
    job = await store.add(
        NewJob(
            guild_id=1,
            channel_id=2,
            user_id=user_id,
            interaction_id=next(_interaction_ids),
            application_id=3,
            token="token",
            token_expires_at=START + timedelta(minutes=15),
            request_json="{}",
        )
    )
    return job.id


async def finish(store: JobStore, job_id: int) -> None:
    await store.start(job_id)
    assert await store.deliver(job_id, message_id=1, channel_id=2)


def limits(
    store: JobStore,
    clock: Clock,
    *,
    cooldown_seconds: float = 0,
    daily_quota: int = 0,
    max_queued_per_user: int = 0,
) -> Limits:
    return Limits(
        store,
        cooldown_seconds=cooldown_seconds,
        daily_quota=daily_quota,
        max_queued_per_user=max_queued_per_user,
        now=clock,
    )


def assert_sentence(refusal: Refusal) -> None:
    assert refusal.message[0].isupper()
    assert refusal.message.endswith(".")
    assert "\n" not in refusal.message


async def test_a_new_user_may_submit(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, cooldown_seconds=10, daily_quota=20, max_queued_per_user=3)
    assert await checker.check(42) is None


async def test_cooldown_says_how_many_seconds_are_left(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, cooldown_seconds=10)
    await submit(store)
    clock.advance(seconds=3)

    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.reason == "cooldown"
    assert refusal.retry_at == START + timedelta(seconds=10)
    assert refusal.message == "You can request another track in 7 seconds."
    assert_sentence(refusal)

    clock.advance(seconds=6.5)
    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.message == "You can request another track in 1 second."

    clock.advance(seconds=0.5)
    assert await checker.check(42) is None
    assert await checker.check(43) is None


async def test_cooldown_rounds_the_wait_up(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, cooldown_seconds=10)
    await submit(store)
    clock.advance(seconds=2.5)
    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.message == "You can request another track in 8 seconds."


async def test_quota_resets_at_the_next_utc_midnight(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, daily_quota=2)
    for _ in range(2):
        await finish(store, await submit(store))

    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.reason == "quota"
    assert refusal.retry_at == datetime(2025, 3, 15, tzinfo=UTC)
    assert refusal.message == (
        "You've used all 2 of today's tracks; the quota resets at 00:00 UTC (in 3 h 12 min)."
    )
    assert_sentence(refusal)
    assert await checker.remaining_today(42) == (2, 2, datetime(2025, 3, 15, tzinfo=UTC))

    clock.now = datetime(2025, 3, 15, tzinfo=UTC)
    assert await checker.check(42) is None
    assert await checker.remaining_today(42) == (0, 2, datetime(2025, 3, 16, tzinfo=UTC))


async def test_quota_of_one_reads_well(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, daily_quota=1)
    await finish(store, await submit(store))
    clock.now = datetime(2025, 3, 14, 23, 59, 30, tzinfo=UTC)
    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.message == (
        "You've used today's track; the quota resets at 00:00 UTC (in 30 seconds)."
    )


async def test_a_job_cancelled_before_starting_gives_its_track_back(
    store: JobStore, clock: Clock
) -> None:
    checker = limits(store, clock, daily_quota=1)
    await store.cancel(await submit(store))
    assert await checker.check(42) is None
    assert (await checker.remaining_today(42))[0] == 0


async def test_queue_cap(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, max_queued_per_user=3)
    job_ids = [await submit(store) for _ in range(3)]
    await store.start(job_ids[0])

    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.reason == "queue"
    assert refusal.retry_at is None
    assert refusal.message == "You already have 3 tracks waiting; try again when one is done."
    assert_sentence(refusal)
    assert await checker.check(43) is None

    assert await store.deliver(job_ids[0], message_id=1, channel_id=2)
    assert await checker.check(42) is None


async def test_queue_cap_of_one_reads_well(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, max_queued_per_user=1)
    await submit(store)
    refusal = await checker.check(42)
    assert refusal is not None
    assert refusal.message == "You already have 1 track waiting; try again when it is done."


async def test_zero_means_unlimited(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, cooldown_seconds=0, daily_quota=0, max_queued_per_user=0)
    for _ in range(25):
        await submit(store)
    assert await checker.check(42) is None
    assert await checker.remaining_today(42) == (25, 0, datetime(2025, 3, 15, tzinfo=UTC))


async def test_the_longest_wait_is_reported_first(store: JobStore, clock: Clock) -> None:
    checker = limits(store, clock, cooldown_seconds=60, daily_quota=2, max_queued_per_user=2)
    await submit(store)
    refusal = await checker.check(42)
    assert refusal is not None and refusal.reason == "cooldown"
    await submit(store)
    refusal = await checker.check(42)
    assert refusal is not None and refusal.reason == "quota"

    quota_free = limits(store, clock, cooldown_seconds=60, max_queued_per_user=2)
    refusal = await quota_free.check(42)
    assert refusal is not None and refusal.reason == "queue"


def test_negative_limits_are_refused(clock: Clock) -> None:
    with pytest.raises(ValueError, match="negative"):
        Limits(
            None,  # type: ignore[arg-type]
            cooldown_seconds=-1,
            daily_quota=0,
            max_queued_per_user=0,
        )


async def test_a_naive_clock_is_refused(store: JobStore) -> None:
    checker = Limits(
        store,
        cooldown_seconds=1,
        daily_quota=1,
        max_queued_per_user=1,
        now=lambda: datetime(2025, 1, 1),
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        await checker.check(42)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 seconds"),
        (0.2, "1 second"),
        (1, "1 second"),
        (7, "7 seconds"),
        (59, "59 seconds"),
        (59.5, "1 min"),
        (60, "1 min"),
        (61, "2 min"),
        (180, "3 min"),
        (3599, "1 h"),
        (3600, "1 h"),
        (3 * 3600 + 12 * 60, "3 h 12 min"),
        (3 * 3600 + 11 * 60 + 1, "3 h 12 min"),
        (24 * 3600, "24 h"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


@given(st.integers(min_value=0, max_value=2 * 24 * 3600 * 10**6))
def test_format_duration_never_promises_too_early(microseconds: int) -> None:
    duration = timedelta(microseconds=microseconds)
    number, *rest = format_duration(duration).split()
    if rest[0].startswith("second"):
        shown = timedelta(seconds=int(number))
    elif rest[0] == "min":
        shown = timedelta(minutes=int(number))
    else:
        shown = timedelta(hours=int(number), minutes=int(rest[1]) if len(rest) > 1 else 0)
    assert duration <= shown < duration + timedelta(minutes=1)


@given(st.datetimes(timezones=st.just(UTC)))
def test_next_utc_midnight(moment: datetime) -> None:
    if moment > datetime(9999, 12, 30, tzinfo=UTC):
        return
    reset = next_utc_midnight(moment)
    assert (reset.hour, reset.minute, reset.second, reset.microsecond) == (0, 0, 0, 0)
    assert timedelta(0) < reset - moment <= timedelta(days=1)
