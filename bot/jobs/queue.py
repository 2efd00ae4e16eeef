"""The waiting line, fair across users: whoever was served least recently goes next.

So one user's ten jobs don't starve a channel: with users A (three jobs) and B (one, sent
last) and one slot, the order is A1, B1, A2, A3.

Memory stays bounded however many users come and go: when a user was last served matters only
against users who are waiting, and against other recent returners. Entries older than both
the oldest turn of a waiting user and the last `RECENT_TURNS` turns order exactly like "never
served", so they are dropped.
"""

from __future__ import annotations

from collections import deque

RECENT_TURNS = 1024


class FairQueue:
    """Job ids per user. Pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self._per_user: dict[int, deque[int]] = {}
        self._owner: dict[int, int] = {}
        self._last_served: dict[int, int] = {}
        self._tick = 0

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._owner

    def push(self, user_id: int, job_id: int) -> None:
        self._per_user.setdefault(user_id, deque()).append(job_id)
        self._owner[job_id] = user_id

    def peek(self) -> int | None:
        """The job `pop` would return, left in line."""
        if not self._per_user:
            return None
        return self._per_user[min(self._per_user, key=self._turn_key)][0]

    def pop(self) -> int | None:
        """The next job: the first waiting job of the user served least recently."""
        job_id = self.peek()
        if job_id is not None:
            self.take(job_id)
        return job_id

    def take(self, job_id: int) -> bool:
        """Remove `job_id` from the line as served (its user's turn is used). False if absent."""
        user_id = self._owner.get(job_id)
        if user_id is None:
            return False
        self.remove(job_id)
        self._tick += 1
        self._last_served[user_id] = self._tick
        self._forget_old_turns()
        return True

    def tracked_users(self) -> int:
        """How many users the queue remembers a turn for (bounded; see the module docstring)."""
        return len(self._last_served)

    def remove(self, job_id: int) -> bool:
        user_id = self._owner.pop(job_id, None)
        if user_id is None:
            return False
        jobs = self._per_user[user_id]
        jobs.remove(job_id)
        if not jobs:
            del self._per_user[user_id]
        return True

    def order(self) -> list[int]:
        """Every waiting job id in the order `pop` will return them (barring new arrivals).

        Users take turns in the order of their turn keys, and keep that order in later
        rounds, since each is served once per round.
        """
        users = sorted(self._per_user, key=self._turn_key)
        rounds = max((len(self._per_user[u]) for u in users), default=0)
        return [
            self._per_user[user][index]
            for index in range(rounds)
            for user in users
            if index < len(self._per_user[user])
        ]

    def positions(self) -> dict[int, int]:
        """job id → 1-based place in line."""
        return {job_id: place for place, job_id in enumerate(self.order(), start=1)}

    def _turn_key(self, user_id: int) -> tuple[int, int]:
        return self._last_served.get(user_id, 0), self._per_user[user_id][0]

    def _forget_old_turns(self) -> None:
        if len(self._last_served) <= 2 * RECENT_TURNS + len(self._per_user):
            return
        waiting = [self._last_served.get(user, 0) for user in self._per_user]
        horizon = min([self._tick - RECENT_TURNS, *waiting])
        self._last_served = {
            user: tick
            for user, tick in self._last_served.items()
            if tick > horizon or user in self._per_user
        }
