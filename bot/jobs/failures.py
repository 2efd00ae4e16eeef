"""Why a job can end without a track for reasons of the bot's own, as sentences for the user.

They join the music domain's `GenerationError` tree (permanent: retrying would not help), so
the front end shows them like any other failure: one sentence, the detail in the log.
"""

from __future__ import annotations

from bot.music.errors import PermanentError


class InternalFailure(PermanentError):
    """An exception nobody expected (a bug): the traceback is in the log."""

    default_message = (
        "Something went wrong on the bot's side while making your track; the owner can find "
        "the details in the logs."
    )


class StorageFailure(PermanentError):
    """The job store could not record what the job needs to continue safely."""

    default_message = (
        "The bot couldn't save your track's progress (its database is unavailable), so it "
        "stopped the generation; please try again later."
    )


class CrashLoopFailure(PermanentError):
    """The job took the process down too often: resuming it again would only repeat that."""

    def __init__(self, crashes: int) -> None:
        super().__init__(
            f"This track stopped the bot {crashes} times while it was being made, so it was "
            "given up; please try again with other options.",
            f"unfinished after {crashes} runs that ended in a crash",
        )
