"""FairQueue: the order users are served in, and that `order()` predicts `pop()`."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.jobs.queue import FairQueue


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
