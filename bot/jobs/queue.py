"""The waiting line: round-robin across users, so one user's ten jobs don't starve a channel."""

from __future__ import annotations

from collections import deque


class FairQueue:
    """Job ids per user; users take turns. Pure bookkeeping, no I/O."""

    def __init__(self) -> None:
        self._per_user: dict[int, deque[int]] = {}
        self._turns: deque[int] = deque()  # users with waiting jobs, in the order they get served
        self._owner: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._owner)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._owner

    def push(self, user_id: int, job_id: int) -> None:
        if user_id not in self._per_user:
            self._per_user[user_id] = deque()
            self._turns.append(user_id)
        self._per_user[user_id].append(job_id)
        self._owner[job_id] = user_id

    def pop(self) -> int | None:
        """The next job id: the first waiting job of the user whose turn it is."""
        if not self._turns:
            return None
        user_id = self._turns.popleft()
        jobs = self._per_user[user_id]
        job_id = jobs.popleft()
        if jobs:
            self._turns.append(user_id)
        else:
            del self._per_user[user_id]
        del self._owner[job_id]
        return job_id

    def remove(self, job_id: int) -> bool:
        user_id = self._owner.pop(job_id, None)
        if user_id is None:
            return False
        jobs = self._per_user[user_id]
        jobs.remove(job_id)
        if not jobs:
            del self._per_user[user_id]
            self._turns.remove(user_id)
        return True

    def order(self) -> list[int]:
        """Every waiting job id in the order `pop` would return them."""
        users = list(self._turns)
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
