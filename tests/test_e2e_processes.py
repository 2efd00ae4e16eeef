"""Several `jambot run` processes on one PostgreSQL database: the real entry point in child
processes, each holding one shard of one fake Discord, all calling one fake Replicate.

What holds across processes (README, "Several processes on PostgreSQL"): the global cap on
predictions in flight, the fair round-robin line, each user's limits, and no job lost or paid
twice when a process is killed (its leases expire and another process resumes its predictions)
or stopped cleanly (its leases end at once). A server that can't be reached stops the start
with one line naming DATABASE_URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction, RestCall, shard_of
from tests.fakes.replicate import FakeReplicate
from tests.harness import (
    BotProcess,
    bot_settings,
    fakes,
    is_final_edit,
    run_until_it_stops,
    spawn_bot,
    to_options,
    wait_for,
)
from tests.pg import free_port

QUEUE_REFUSAL = "⏱️ You already have 1 track waiting; try again when it is done."
COOLDOWN_REFUSAL = "⏱️ You can request another track in"


@dataclass
class Jam:
    """One fake Discord with guilds on each of `shard_count` shards, one fake Replicate, one
    PostgreSQL database, and the bot processes started on them (one shard each)."""

    discord: FakeDiscord
    replicate: FakeReplicate
    db: asyncpg.Connection
    workdir: Path
    shard_count: int
    guilds: dict[int, list[int]]  # shard → the guilds it carries
    settings: dict[str, Any]
    processes: list[BotProcess] = field(default_factory=list)

    async def spawn(self, shard: int) -> BotProcess:
        settings = bot_settings(
            self.discord,
            self.replicate,
            self.workdir / "unused.db",
            shard_count=self.shard_count,
            shard_ids=str(shard),
            **self.settings,
        )
        process = await spawn_bot(settings, self.discord, self.workdir)
        self.processes.append(process)
        return process

    async def music(self, shard: int, user: int, prompt: str, *, nth: int = 0) -> FakeInteraction:
        """/music from `user` in the `nth` guild of `shard`: it reaches that shard's process."""
        interaction = await self.discord.send_interaction(
            "music",
            to_options({"prompt": prompt, "duration": 1}),
            user_id=user,
            guild_id=self.guilds[shard][nth],
        )
        assert interaction.shard_id == shard
        return interaction

    async def jobs(self) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self.db.fetch(
            "SELECT id, user_id, guild_id, interaction_id, status, prediction_id, lease_owner"
            " FROM jobs ORDER BY id"
        )
        return rows

    async def job_of(self, interaction: FakeInteraction) -> asyncpg.Record | None:
        for job in await self.jobs():
            if job["interaction_id"] == interaction.id:
                return job
        return None

    async def wait_job(
        self, interaction: FakeInteraction, *, timeout: float = 30, **expected: Any
    ) -> asyncpg.Record:
        """The interaction's job once its columns have the `expected` values."""

        async def probe() -> asyncpg.Record | None:
            job = await self.job_of(interaction)
            if job is None or any(job[name] != value for name, value in expected.items()):
                return None
            return job

        found: asyncpg.Record = await wait_for(probe, timeout, interval=0.05)
        return found

    async def delivered(self, interaction: FakeInteraction, timeout: float = 30) -> RestCall:
        """The final edit of the interaction's reply, which must carry the track."""
        final = await self.discord.wait_for_call(lambda c: is_final_edit(c, interaction), timeout)
        assert final.files, final.json
        return final

    async def refusal(self, interaction: FakeInteraction, timeout: float = 30) -> str:
        """The private sentence that refused the command (its placeholder is removed)."""
        followup = await self.discord.wait_for_call(
            lambda c: c.method == "POST" and c.path.endswith(f"/{interaction.token}"), timeout
        )
        assert followup.json["flags"] & 64, "a refusal is ephemeral"
        await self.discord.wait_for_call(
            lambda c: c.method == "DELETE" and f"/{interaction.token}/" in c.path, timeout
        )
        return str(followup.json["content"])

    def final_edits(self, interaction: FakeInteraction) -> list[RestCall]:
        return [c for c in self.discord.calls if is_final_edit(c, interaction)]

    def channel_posts(self) -> list[RestCall]:
        """Tracks posted in a channel with the bot token (none while tokens live)."""
        return [
            c
            for c in self.discord.calls
            if c.method == "POST" and c.path.startswith("/channels/") and c.files
        ]

    def prompts_created(self) -> list[str]:
        return [str(create.body["input"]["prompt"]) for create in self.replicate.creates]


async def place_guilds(
    discord: FakeDiscord, shard_count: int, per_shard: int
) -> dict[int, list[int]]:
    """`per_shard` guilds of the bot on each shard (the fake's own guild among them)."""
    placed: dict[int, list[int]] = {shard: [] for shard in range(shard_count)}
    step = 0
    while any(len(guilds) < per_shard for guilds in placed.values()):
        guild = discord.guild_id + (step << 22)
        step += 1
        shard = shard_of(guild, shard_count)
        if len(placed[shard]) >= per_shard:
            continue
        if guild != discord.guild_id:
            await discord.add_guild(guild)
        placed[shard].append(guild)
    return placed


@contextlib.asynccontextmanager
async def jam(
    tmp_path: Path, pg_url: str, *, shard_count: int = 2, per_shard: int = 1, **settings: Any
) -> AsyncIterator[Jam]:
    async with fakes() as (discord, replicate):
        guilds = await place_guilds(discord, shard_count, per_shard)
        db = await asyncpg.connect(pg_url)
        j = Jam(
            discord,
            replicate,
            db,
            tmp_path,
            shard_count,
            guilds,
            {"database_url": pg_url, **settings},
        )
        try:
            yield j
        finally:
            await asyncio.gather(*(stop(p) for p in j.processes))
            await db.close()


async def stop(process: BotProcess) -> None:
    if process.process.returncode is not None:
        return
    try:
        await asyncio.wait_for(process.terminate(), 15)
    except TimeoutError:
        await process.kill()


def pid_of(owner: str | None) -> int | None:
    """The process id in a lease owner (host:pid:random)."""
    return None if owner is None else int(owner.rsplit(":", 2)[1])


def pids(processes: list[BotProcess]) -> set[int]:
    return {p.process.pid for p in processes}


async def test_two_processes_never_run_more_than_the_cap_and_deliver_each_job_once(
    tmp_path: Path, pg_url: str
) -> None:
    async with jam(tmp_path, pg_url, per_shard=2, max_concurrent_generations=2) as j:
        for shard in (0, 1):
            await j.spawn(shard)
        users = [7001, 7002, 7003, 7004]
        requests = []  # (shard, nth guild of it, user, prompt): each user in every guild
        for n in range(3):
            for index, user in enumerate(users):
                guild = (index + n) % 4
                requests.append((guild % 2, guild // 2, user, f"user {user} track {n}"))
        sent = await asyncio.gather(
            *(j.music(shard, user, prompt, nth=nth) for shard, nth, user, prompt in requests)
        )
        assert {i.shard_id for i in sent} == {0, 1}
        for interaction in sent:
            await j.delivered(interaction, timeout=60)
        jobs = await wait_for(lambda: _all_delivered(j, len(sent)), 20, interval=0.05)

        assert j.replicate.max_in_flight == 2  # the cap was reached, never passed
        assert sorted(j.prompts_created()) == sorted(prompt for *_, prompt in requests)
        assert [len(j.final_edits(i)) for i in sent] == [1] * len(sent)
        assert j.channel_posts() == []
        assert {job["interaction_id"] for job in jobs} == {i.id for i in sent}
        assert {pid_of(job["lease_owner"]) for job in jobs} <= pids(j.processes)


async def _all_delivered(j: Jam, count: int) -> list[asyncpg.Record] | None:
    jobs = await j.jobs()
    if len(jobs) == count and all(job["status"] == "delivered" for job in jobs):
        return jobs
    return None


async def test_the_line_is_round_robin_across_users_in_all_processes(
    tmp_path: Path, pg_url: str
) -> None:
    async with jam(tmp_path, pg_url, max_concurrent_generations=1) as j:
        for shard in (0, 1):
            await j.spawn(shard)
        j.replicate.run_seconds = None  # each prediction runs until the test finishes it
        a, b = 8001, 8002
        sent = []
        for prompt, shard, user in [("A1", 0, a), ("A2", 0, a), ("A3", 0, a), ("B1", 1, b)]:
            interaction = await j.music(shard, user, prompt)
            await j.wait_job(interaction)  # in the line before the next one is sent
            sent.append(interaction)
        for n in range(len(sent)):
            await wait_for(functools.partial(_more_creates_than, j.replicate, n), 30)
            record = j.replicate.creates[n]
            assert record.prediction_id is not None, record
            assert len(j.replicate.creates) == n + 1  # the cap holds the rest back
            j.replicate.finish(record.prediction_id)
        for interaction in sent:
            await j.delivered(interaction)
        assert j.prompts_created() == ["A1", "B1", "A2", "A3"]
        assert j.replicate.max_in_flight == 1


def _more_creates_than(replicate: FakeReplicate, count: int) -> bool:
    return len(replicate.creates) > count


async def test_a_users_limits_hold_across_processes(tmp_path: Path, pg_url: str) -> None:
    async with jam(
        tmp_path,
        pg_url,
        max_concurrent_generations=2,
        max_queued_per_user=1,
        user_cooldown_seconds=60,
    ) as j:
        for shard in (0, 1):
            await j.spawn(shard)
        j.replicate.run_seconds = None
        user = 9001
        both = await asyncio.gather(
            j.music(0, user, "same moment, shard 0"), j.music(1, user, "same moment, shard 1")
        )

        async def one_job() -> asyncpg.Record | None:
            jobs = [job for job in await j.jobs() if job["user_id"] == user]
            return jobs[0] if jobs else None

        job = await wait_for(one_job, 30, interval=0.05)
        accepted = next(i for i in both if i.id == job["interaction_id"])
        refused = next(i for i in both if i is not accepted)
        assert await j.refusal(refused) == QUEUE_REFUSAL
        prediction = await j.replicate.wait_for_prediction(timeout=30)
        await asyncio.sleep(0.3)  # a second job or create would show up here
        assert [job["user_id"] for job in await j.jobs()] == [user]
        assert len(j.replicate.creates) == 1
        assert not [c for c in j.discord.calls_for(refused) if c.files]

        # the cooldown: with the first track delivered, the next one is refused everywhere
        prediction.finish()
        await j.delivered(accepted)
        await j.wait_job(accepted, status="delivered")
        again = await asyncio.gather(
            j.music(0, user, "too soon, shard 0"), j.music(1, user, "too soon, shard 1")
        )
        for interaction in again:
            assert (await j.refusal(interaction)).startswith(COOLDOWN_REFUSAL)
        assert len(await j.jobs()) == 1
        assert len(j.replicate.creates) == 1


async def test_a_killed_process_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    async with jam(
        tmp_path, pg_url, shard_count=3, max_concurrent_generations=1, job_lease_seconds=5
    ) as j:
        j.replicate.run_seconds = None
        doomed = await j.spawn(0)
        running = await j.music(0, 10_001, "running when killed")
        prediction = await j.replicate.wait_for_prediction(timeout=30)
        await j.wait_job(running, prediction_id=prediction.id)
        survivors = [await j.spawn(1), await j.spawn(2)]
        queued = await j.music(0, 10_002, "waiting when killed")
        await j.wait_job(queued, status="queued")
        job = await j.job_of(running)
        assert job is not None and pid_of(job["lease_owner"]) == doomed.process.pid

        await doomed.kill()  # SIGKILL: no cleanup of any kind
        j.replicate.run_seconds = 0.3
        await wait_for(
            lambda: _leased_to(j, running, pids(survivors)), 30, interval=0.1
        )  # after the lease expired
        prediction.finish()
        await j.delivered(running)
        await j.delivered(queued)
        done = await j.wait_job(running, status="delivered", prediction_id=prediction.id)
        started = await j.wait_job(queued, status="delivered")

        assert j.prompts_created() == ["running when killed", "waiting when killed"]
        assert j.replicate.creates[0].prediction_id == prediction.id  # resumed, not made anew
        assert j.replicate.cancels == []
        assert pid_of(done["lease_owner"]) in pids(survivors)
        assert pid_of(started["lease_owner"]) in pids(survivors)
        assert [len(j.final_edits(i)) for i in (running, queued)] == [1, 1]
        assert j.channel_posts() == []


async def _leased_to(j: Jam, interaction: FakeInteraction, owners: set[int]) -> bool:
    job = await j.job_of(interaction)
    return job is not None and pid_of(job["lease_owner"]) in owners


async def test_a_clean_stop_hands_the_running_job_over_at_once(tmp_path: Path, pg_url: str) -> None:
    lease = 60  # heartbeats 20 s apart: a handover within seconds is the clean stop's doing
    async with jam(tmp_path, pg_url, max_concurrent_generations=1, job_lease_seconds=lease) as j:
        j.replicate.run_seconds = None
        leaving = await j.spawn(0)
        interaction = await j.music(0, 11_001, "handed over")
        prediction = await j.replicate.wait_for_prediction(timeout=30)
        await j.wait_job(interaction, prediction_id=prediction.id)
        staying = await j.spawn(1)

        assert await asyncio.wait_for(leaving.terminate(), 15) == 0, leaving.log
        stopped_at = time.monotonic()
        try:
            await wait_for(
                lambda: _leased_to(j, interaction, {staying.process.pid}), 10, interval=0.05
            )
        except TimeoutError:
            raise AssertionError(
                "the running job was not taken over within 10 s of a clean stop "
                f"(JOB_LEASE_SECONDS={lease})"
            ) from None
        assert time.monotonic() - stopped_at < 10
        prediction.finish()
        await j.delivered(interaction)
        await j.wait_job(interaction, status="delivered", prediction_id=prediction.id)
        assert len(j.replicate.creates) == 1
        assert j.replicate.cancels == []
        assert len(j.final_edits(interaction)) == 1
        assert j.channel_posts() == []


async def test_an_unreachable_database_stops_the_start_with_one_line(tmp_path: Path) -> None:
    password = "pw-Only-In-The-Url-4711"
    url = f"postgresql://jambot:{password}@127.0.0.1:{free_port()}/jambot"
    async with fakes() as (discord, replicate):
        settings = bot_settings(discord, replicate, tmp_path / "unused.db", database_url=url)
        code, stdout, stderr = await run_until_it_stops(settings, tmp_path)
    assert code == 1, stderr
    naming = [line for line in stderr.splitlines() if "DATABASE_URL" in line]
    assert len(naming) == 1, stderr
    assert naming[0].startswith("jambot: ") and stderr.rstrip().endswith(naming[0]), stderr
    assert "Traceback" not in stdout + stderr
    assert password not in stdout + stderr
