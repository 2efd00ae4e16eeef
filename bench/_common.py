"""What the benchmarks share: machine facts, quiet logs, percentiles, /proc readings, tables.

The bot, the fakes and the test harness are reused as they are (`tests.harness`); nothing here
changes how the bot behaves. The one change to a fake is `openapi_validation_off`, which skips
the fake Discord's schema checks while a latency is measured.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import platform
import shlex
import sqlite3
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tests.fakes.discord import FakeDiscord

VALIDATING = "fake validates"
NOT_VALIDATING = "validation off"


def quiet_logging() -> None:
    """The fakes log every request at INFO; at that level logging would dominate the figures."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.WARNING)


def settle_garbage() -> None:
    """Collect now and freeze what survives, so that a full collection over everything the
    fakes have recorded so far (thousands of requests) can't pause this process mid-measure."""
    gc.collect()
    gc.freeze()


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def print_header(title: str) -> None:
    """The benchmark's name, the command that reproduces it and the machine it ran on."""
    module = sys.modules["__main__"].__spec__
    command = f".venv/bin/python -m {module.name if module else sys.argv[0]}"
    if len(sys.argv) > 1:
        command += " " + shlex.join(sys.argv[1:])
    print(f"# {title}")
    print(f"command: {command}")
    for key, value in machine_facts().items():
        print(f"{key}: {value}")
    print()


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th smallest)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A Markdown table, ready to paste into docs/benchmarks.md."""
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB, from /proc/<pid>/status."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024  # the kernel reports kB
    return values


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def job_statuses(database: Path) -> dict[str, int]:
    """Jobs per status in the bot's SQLite file (a reader beside the bot, as the tests do)."""
    if not database.exists():
        return {}
    with contextlib.closing(sqlite3.connect(database, timeout=5)) as db:
        try:
            rows = db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
        except sqlite3.OperationalError:  # not migrated yet
            return {}
    return {str(status): int(count) for status, count in rows}


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    """A scratch folder for the bot's database and log, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="jambot-bench-") as folder:
        yield Path(folder)


def realistic_overrides(**overrides: object) -> dict[str, object]:
    """Settings for a bot under load: production pacing, no per-user limits in the way.

    `tests.harness.bot_settings` tunes the bot for fast tests (polls every 50 ms); here the
    poll interval, deadline and retry delay are the production defaults again.
    """
    values: dict[str, object] = {
        "replicate_poll_interval": 0.5,
        "generation_timeout_seconds": 300,
        "retry_base_delay_seconds": 1.0,
        "max_concurrent_generations": 2,
        "user_cooldown_seconds": 0,
        "daily_quota_per_user": 0,
        "max_queued_per_user": 1000,
    }
    values.update(overrides)
    return values


@contextlib.contextmanager
def openapi_validation_off(discord: FakeDiscord) -> Iterator[None]:
    """Skip the fake's schema checks of requests and answers (instance attributes shadow the
    methods; deleting them restores the checks)."""
    discord._validate = lambda *args: None  # type: ignore[method-assign]
    discord._check_answer = lambda *args: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        del discord._validate
        del discord._check_answer
