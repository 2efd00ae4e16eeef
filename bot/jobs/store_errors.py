"""What can go wrong in the job database, in kinds the callers act on (never a driver's own
exception): busy (worth retrying), full, unreachable, or broken."""

from __future__ import annotations


class StoreError(Exception):
    """The database could not do what was asked. ``kind`` says whether retrying may help."""

    kind = "broken"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StoreBusyError(StoreError):
    """Another connection (a ``sqlite3`` shell, a backup tool, a lock) held us up too long."""

    kind = "busy"


class StoreUnreachableError(StoreBusyError):
    """The database server can't be reached right now (it may come back: worth retrying)."""

    kind = "unreachable"


class StoreFullError(StoreError):
    """The disk, or the database's size limit, is full: nothing new can be written."""

    kind = "full"


class DatabaseInUseError(StoreError):
    """Another process has this database open with ``exclusive=True``."""

    kind = "in use"
