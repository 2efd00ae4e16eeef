"""Shared fixtures: the Replicate fake on loopback and a backend built the way the bot builds it."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.jobs.store import JobStore
from bot.music.replicate import ReplicateBackend
from bot.music.retry import RetryPolicy
from tests.clock import Clock
from tests.fakes.replicate import FakeReplicate
from tests.pg import PostgresCluster, find_bindir


@pytest.fixture
async def replicate_fake() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(start_seconds=0.05, run_seconds=0.3) as fake:
        yield fake


def make_backend(
    fake: FakeReplicate,
    *,
    token: str | None = None,
    timeout: float = 20.0,
    max_attempts: int = 3,
    base_delay: float = 0.01,
    poll_interval: float = 0.05,
    max_download_bytes: int = 50 * 1024 * 1024,
    model: str | None = None,
) -> ReplicateBackend:
    return ReplicateBackend(
        api_token=SecretStr(token or fake.token),
        model=model or f"{fake.model}:{fake.version}",
        base_url=fake.base_url,
        poll_interval=poll_interval,
        timeout=timeout,
        retry=RetryPolicy(max_attempts=max_attempts, base_delay=base_delay, rng=random.Random(7)),
        max_download_bytes=max_download_bytes,
        http_timeout=5.0,
    )


@pytest.fixture
async def backend(replicate_fake: FakeReplicate) -> AsyncIterator[ReplicateBackend]:
    backend = make_backend(replicate_fake)
    yield backend
    await backend.aclose()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs (needs root, as on the CI machines): a disk that can really fill up."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill_disk(folder: Path) -> Path:
    """Write a file until the disk is full; remove it to free the space again."""
    filler = folder / "filler"
    with filler.open("wb", buffering=0) as out:
        for size in (65536, 4096, 512, 1):  # down to the last byte
            with contextlib.suppress(OSError):
                while out.write(b"\0" * size):
                    pass
    return filler


@pytest.fixture
def clock() -> Clock:
    """A settable clock for the store and the limits (tests/clock.py)."""
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[JobStore]:
    """A job store on a fresh file, timed by `clock`."""
    job_store = await JobStore.open(tmp_path / "jambot.db", now=clock)
    yield job_store
    await job_store.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster on 127.0.0.1 for the whole session (tests/pg.py)."""
    bindir = find_bindir()
    if bindir is None:
        reason = "PostgreSQL's server programs (initdb, pg_ctl) aren't installed"
        if os.environ.get("JAMBOT_TESTS_NEED_POSTGRES"):  # CI: the PostgreSQL tests must run
            pytest.fail(f"{reason} (install Debian's postgresql-15)")
        pytest.skip(reason)
    cluster = PostgresCluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PostgresCluster) -> Iterator[str]:
    """The URL of a fresh, empty database of its own for this test; dropped afterwards."""
    name = f"jambot_test_{uuid.uuid4().hex}"
    url = pg_cluster.create_database(name)
    try:
        yield url
    finally:
        pg_cluster.drop_database(name)
