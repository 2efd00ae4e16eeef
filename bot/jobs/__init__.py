"""Durable jobs: every accepted /music command, its status, and the per-user limits.

This package knows nothing of Discord or Replicate; it stores ids and text they hand it.
"""

from bot.jobs.limits import Limits, Refusal, SubmissionHistory, format_duration
from bot.jobs.migrate import MigrationError
from bot.jobs.store import (
    ACTIVE,
    STATUSES,
    TERMINAL,
    Job,
    JobNotFound,
    JobStatus,
    JobStore,
    NewJob,
)

__all__ = [
    "ACTIVE",
    "STATUSES",
    "TERMINAL",
    "Job",
    "JobNotFound",
    "JobStatus",
    "JobStore",
    "Limits",
    "MigrationError",
    "NewJob",
    "Refusal",
    "SubmissionHistory",
    "format_duration",
]
