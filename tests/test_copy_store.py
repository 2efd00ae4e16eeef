"""`jambot copy-store`: a SQLite store's history moved into an empty PostgreSQL database."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.jobs.copy import CopyReport, TargetNotEmptyError, copy_store
from bot.jobs.guild_settings import GuildSettings
from bot.jobs.store import STATUSES, Job, JobStore, NewJob
from tests.clock import START, Clock
from tests.test_cli import closed_port_url, jambot, one_line

OWNER = "old-host:4242:abcd"
PASSWORD = "s3cret-pw"


def new_job(interaction_id: int, **overrides: Any) -> NewJob:
    values: dict[str, Any] = {
        "guild_id": 7,
        "channel_id": 8,
        "user_id": 42,
        "interaction_id": interaction_id,
        "application_id": 9,
        "token": f"token-{interaction_id}",
        "token_expires_at": START + timedelta(minutes=15),
        "request_json": '{"prompt": "lofi; rain", "duration": 8}',
        "expected_cost": 0.0112,
        "model_version": "stereo-large",
        "duration_seconds": 8.0,
    }
    return NewJob(**(values | overrides))


async def fill(path: Path) -> None:
    """A store with a job in every status, a follow-up, a DM job and two servers' settings."""
    clock = Clock()
    async with await JobStore.open(path, now=clock) as store:
        delivered = await store.add(new_job(1))
        clock.advance(seconds=1)
        assert await store.claim_next(OWNER, cap=5, lease_seconds=30) is not None
        assert await store.set_prediction(delivered.id, "pred-delivered", owner=OWNER)
        await store.record_result(delivered.id, seed=17, predict_time=6.25, cost_estimate=0.00875)
        assert await store.mark_delivering(delivered.id, owner=OWNER)
        clock.advance(seconds=2)
        assert await store.deliver(delivered.id, message_id=555, channel_id=8)

        failed = await store.add(new_job(2, user_id=43))
        assert await store.start(failed.id) is not None
        clock.advance(seconds=1)
        assert await store.fail(failed.id, error="Replicate is down.", detail="HTTP 503")

        cancelled = await store.add(new_job(3, guild_id=None))  # a DM
        assert await store.cancel(cancelled.id) is not None

        running = await store.add(
            new_job(
                4,
                action="extend",
                parent_job_id=delivered.id,
                extend_json='{"url": "https://cdn/x.wav", "seconds": 8}',
            )
        )
        clock.advance(seconds=1)
        assert await store.claim_next(OWNER, cap=5, lease_seconds=30) is not None
        assert await store.set_prediction(running.id, "pred-running", owner=OWNER)

        await store.add(new_job(5, user_id=44, message_id=777))  # stays queued
        await store.save_guild_settings(
            7,
            GuildSettings(
                daily_budget_usd=2.5,
                daily_quota=5,
                cooldown_seconds=12.5,
                max_duration=20,
                allowed_models=("large", "stereo-large"),
                blocked_words=("spam", "eggs"),
            ),
            by=99,
        )
        await store.save_guild_settings(11, GuildSettings(), by=98)


async def all_jobs(store: JobStore) -> dict[int, Job]:
    return {job.id: job for job in await store.by_status(*STATUSES)}


async def all_settings(store: JobStore) -> list[dict[str, Any]]:
    rows = await store.database.read("SELECT * FROM guild_settings ORDER BY guild_id")
    return [dict(zip(row.keys(), row, strict=True)) for row in rows]


def unleased(job: Job) -> Job:
    if job.is_terminal:
        return job
    return replace(job, lease_owner=None, lease_expires_at=None)


def with_password(url: str) -> str:
    """The same database, with a password in the URL (the test cluster trusts every login)."""
    return url.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


@pytest.fixture
async def source(tmp_path: Path) -> Path:
    path = tmp_path / "jambot.db"
    await fill(path)
    return path


# -- the copy itself ------------------------------------------------------------------------


@pytest.mark.parametrize("rows_per_insert", [500, 2])
async def test_every_job_and_setting_is_copied_and_numbering_continues(
    source: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch, rows_per_insert: int
) -> None:
    monkeypatch.setattr("bot.jobs.copy.MAX_ROWS", rows_per_insert)
    async with await JobStore.open(source) as old, await JobStore.open(pg_url) as new:
        report = await copy_store(old, new)
        before, after = await all_jobs(old), await all_jobs(new)
        assert {job.status for job in before.values()} == STATUSES
        assert report == CopyReport(jobs=5, queued=1, running=1, guild_settings=2, next_id=6)
        assert after == {job_id: unleased(job) for job_id, job in before.items()}
        running = after[4]
        assert running.prediction_id == "pred-running" and running.token == "token-4"
        assert before[4].lease_owner == OWNER and running.lease_owner is None
        assert after[1].lease_owner == OWNER  # a finished job's history stays as it was
        assert await all_settings(new) == await all_settings(old)
        assert await new.guild_settings(7) == await old.guild_settings(7)

        added = await new.add(new_job(6))
        assert added.id == max(before) + 1
        # Any process of the PostgreSQL-backed bot takes the running job over at once.
        taken = await new.take_over("new-host:1:ef01", 30)
        assert [job.id for job in taken] == [4]
        assert taken[0].prediction_id == "pred-running"


async def test_ids_given_out_and_deleted_are_not_given_out_again(source: Path, pg_url: str) -> None:
    with sqlite3.connect(source) as db:  # someone tidied the newest job away by hand
        db.execute("DELETE FROM jobs WHERE id = 5")
    db.close()
    async with await JobStore.open(source) as old, await JobStore.open(pg_url) as new:
        report = await copy_store(old, new)
        assert (report.jobs, report.queued, report.next_id) == (4, 0, 6)
        assert (await new.add(new_job(6))).id == 6


async def test_a_target_that_holds_anything_is_refused_and_left_alone(
    source: Path, pg_url: str
) -> None:
    async with await JobStore.open(pg_url) as new:
        await new.save_guild_settings(5, GuildSettings(daily_quota=1), by=1)
        async with await JobStore.open(source) as old:
            with pytest.raises(TargetNotEmptyError) as refused:
                await copy_store(old, new)
        assert (refused.value.jobs, refused.value.guild_settings) == (0, 1)
        assert await all_jobs(new) == {}
        assert [row["guild_id"] for row in await all_settings(new)] == [5]


# -- the command ------------------------------------------------------------------------------


async def test_the_command_copies_once_and_then_refuses(
    source: Path, tmp_path: Path, pg_url: str
) -> None:
    target = with_password(pg_url)
    env = {"DATABASE_URL": f"sqlite:///{source}"}  # --from defaults to DATABASE_URL
    code, out, err = await jambot("copy-store", "--to", target, cwd=tmp_path, env=env)
    assert code == 0, err
    shown = target.replace(PASSWORD, "***")
    assert out == (
        f"Copied 5 jobs (1 queued, 1 running) and 2 server settings from {source} to {shown}; "
        "start jambot with DATABASE_URL set to it.\n"
    )
    assert PASSWORD not in out + err
    async with await JobStore.open(pg_url) as new:
        copied = await all_jobs(new)
    assert sorted(copied) == [1, 2, 3, 4, 5]

    code, out, err = await jambot(
        "copy-store", "--from", f"sqlite:///{source}", "--to", target, cwd=tmp_path, env={}
    )
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"jambot: The database at --to ({shown}) already holds 5 jobs and 2 server settings: "
        "copy-store only copies into an empty database, so it copied nothing."
    )
    async with await JobStore.open(pg_url) as new:
        assert await all_jobs(new) == copied


async def test_a_running_bot_is_not_copied_from(source: Path, tmp_path: Path, pg_url: str) -> None:
    async with await JobStore.open(source, exclusive=True):  # what `jambot run` holds
        code, out, err = await jambot(
            "copy-store", "--from", f"sqlite:///{source}", "--to", pg_url, cwd=tmp_path, env={}
        )
    assert code == 1 and out == ""
    assert one_line(err) == (
        f"jambot: A jambot is running on {source}: stop the bot first, then copy its jobs."
    )
    async with await JobStore.open(pg_url) as new:
        assert await all_jobs(new) == {}


async def test_an_unreachable_target_is_named_without_its_password(
    source: Path, tmp_path: Path
) -> None:
    url = closed_port_url("postgresql", "/jambot").replace("://", f"://jam:{PASSWORD}@", 1)
    code, out, err = await jambot(
        "copy-store", "--from", f"sqlite:///{source}", "--to", url, cwd=tmp_path, env={}
    )
    assert code == 1 and out == ""
    line = one_line(err)
    assert line.startswith("jambot: The PostgreSQL database at --to can't be used (")
    assert url.replace(PASSWORD, "***") in line and "can't be reached" in line
    assert PASSWORD not in err


@pytest.mark.parametrize(
    ("args", "env", "code", "sentence"),
    [
        (
            ["--from", "sqlite:///nowhere/jambot.db"],
            {},
            1,
            "jambot: There is no SQLite file at nowhere/jambot.db to copy: check --from.",
        ),
        (
            [],
            {"DATABASE_URL": f"postgresql://jam:{PASSWORD}@db/jambot"},
            2,
            "jambot: DATABASE_URL names a PostgreSQL server: give the SQLite file to copy with "
            "--from sqlite:///path/to/jambot.db.",
        ),
    ],
)
async def test_a_wrong_source_is_one_sentence(
    tmp_path: Path, args: list[str], env: dict[str, str], code: int, sentence: str
) -> None:
    target = f"postgresql://jam:{PASSWORD}@127.0.0.1:1/jambot"
    got, out, err = await jambot("copy-store", *args, "--to", target, cwd=tmp_path, env=env)
    assert (got, out) == (code, "")
    assert one_line(err) == sentence
    assert PASSWORD not in err
    assert not (tmp_path / "nowhere").exists()
