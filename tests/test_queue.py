"""FairQueue: the order users are served in, and that `order()` predicts `pop()`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.jobs.queue import RECENT_TURNS, FairQueue


def drain(queue: FairQueue) -> list[int]:
    popped = []
    while (job := queue.pop()) is not None:
        popped.append(job)
    return popped


def test_users_take_turns() -> None:
    queue = FairQueue()
    for job, user in [(1, 10), (2, 10), (3, 10), (4, 20), (5, 30), (6, 20)]:
        queue.push(user, job)
    assert drain(queue) == [1, 4, 5, 2, 6, 3]


def test_a_user_just_served_waits_for_the_others() -> None:
    queue = FairQueue()
    queue.push(1, 100)
    assert queue.pop() == 100  # user 1 served
    queue.push(1, 101)
    queue.push(1, 102)
    queue.push(2, 200)  # arrives last, but user 2 hasn't been served yet
    assert drain(queue) == [200, 101, 102]


def test_remove_and_positions() -> None:
    queue = FairQueue()
    for job, user in [(1, 1), (2, 1), (3, 2)]:
        queue.push(user, job)
    assert queue.positions() == {1: 1, 3: 2, 2: 3}
    assert queue.remove(3) and not queue.remove(3)
    assert queue.positions() == {1: 1, 2: 2}
    assert 3 not in queue and len(queue) == 2


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=60))
def test_order_always_predicts_pop(steps: list[tuple[bool, int]]) -> None:
    queue = FairQueue()
    next_id = 0
    for push, user in steps:
        if push:
            next_id += 1
            queue.push(user, next_id)
        else:
            expected = queue.order()
            popped = queue.pop()
            assert popped == (expected[0] if expected else None)
    assert queue.order() == drain(queue)


def test_memory_stays_bounded_as_users_come_and_go() -> None:
    queue = FairQueue()
    for user in range(10_000):
        queue.push(user, user)
        assert queue.pop() == user
    assert queue.tracked_users() <= 2 * RECENT_TURNS + 1


def test_forgotten_turns_order_like_new_users_behind_recent_ones() -> None:
    queue = FairQueue()
    for user in range(3 * RECENT_TURNS):  # users 0.. are served once and leave
        queue.push(user, user)
        queue.pop()
    assert queue.tracked_users() < 3 * RECENT_TURNS  # user 0's turn was forgotten
    recent = 3 * RECENT_TURNS - 1  # served last of all
    queue.push(recent, 100_001)
    queue.push(0, 100_002)  # long ago: counts as never served, so goes first
    queue.push(10**6, 100_003)  # never served: after user 0 by arrival
    assert drain(queue) == [100_002, 100_003, 100_001]


def test_take_serves_a_given_job_and_uses_its_users_turn() -> None:
    queue = FairQueue()
    for job, user in [(1, 1), (2, 1), (3, 2)]:
        queue.push(user, job)
    assert queue.peek() == 1 and queue.take(1) and not queue.take(1)
    assert drain(queue) == [3, 2]
