"""What a long line costs: the bot's memory with 1,000 queued jobs, and how fast a freed slot
goes to the next job.

The bot is `python -m bot run` in a child process with two generation slots
(MAX_CONCURRENT_GENERATIONS=2) and the production per-user limits (one job per user stays
within them). 1,000 users send one `/music` each, all in one burst over the gateway; the fake
Replicate keeps predictions processing (`run_seconds=None`), so two jobs run and 998 wait.
Memory is read from /proc/<pid>/status (VmRSS now, VmHWM the peak so far): at rest before the
burst, once the burst has settled (every command acknowledged, every job stored, the Discord
traffic stopped), and after the slot releases below.

Then, 20 times per fake mode, one running prediction is finished (`FakeReplicate.finish`):
the bot sees it at its next poll, delivers the track (final PATCH with the file), and starts
the next job in line (its create reaches the fake Replicate, `CreateRecord.at`). Per release:

* finish → next create: everything;
* finish → final PATCH arrives: the delivery part, split at the poll that sees the success
  (polls come every 0.5 s here, since the fake's progress gives no usable ETA);
* final PATCH arrives → answered: the fake reads the 1 MB upload and answers;
* answered → next create: the dispatch itself (the store's commits, picking the next job from
  the fair line, the create request).

Each release also moves the line, and the bot shows the new places (up to 20 "⏳" edits, the
jobs within reach of a slot) in one pass `POSITION_UPDATE_DELAY` (0.2 s) after the line moved;
they are counted per release. Releases alternate between the fake Discord as the tests use it
(validating every request and answer against Discord's OpenAPI schema) and with that
validation off, since whatever the fake validates around the create delays its timestamps.

The fake renders a prediction's audio on its first download; each file is rendered before
its prediction is finished, since real Replicate serves a stored file.

Run from the repository root: `.venv/bin/python -m bench.queue_memory`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

from bench._common import (
    NOT_VALIDATING,
    VALIDATING,
    cpu_seconds,
    job_statuses,
    median,
    ms,
    open_fds,
    openapi_validation_off,
    percentile,
    print_header,
    print_table,
    proc_memory,
    quiet_logging,
    realistic_overrides,
    settle_garbage,
    workdir,
)
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction, RestCall
from tests.fakes.replicate import FakePrediction, FakeReplicate
from tests.harness import (
    BotProcess,
    bot_settings,
    fakes,
    is_final_edit,
    spawn_bot,
    to_options,
    wait_for,
)

TARGET_RSS_MIB = 150
USER_BASE = 4_000_000


@dataclass
class Memory:
    when: str
    rss: float
    hwm: float
    fds: int
    statuses: dict[str, int]


@dataclass
class Release:
    mode: str
    finished: float  # FakePrediction.finished_at of the released job
    seen: float  # the first poll after it
    final: float  # its final PATCH arrived (RestCall.at)
    answered: float  # the fake had read the upload and answered
    created: float  # the next job's create arrived (CreateRecord.at)
    position_edits: int  # places-in-line edits the release caused
    waiting: int  # jobs in line at the release


def _snapshot(child: BotProcess, database: Path, when: str) -> Memory:
    pid = child.process.pid
    memory = proc_memory(pid)
    return Memory(when, memory["VmRSS"], memory["VmHWM"], open_fds(pid), job_statuses(database))


async def _quiet(discord: FakeDiscord, seconds: float) -> None:
    """Wait (up to 2 minutes) until the bot has made no Discord request for `seconds`."""

    def quiet() -> bool:
        last = discord.calls[-1].at if discord.calls else 0.0
        answered = all(c.status is not None for c in discord.calls[-50:])
        return answered and time.monotonic() - last >= seconds

    await wait_for(quiet, 120, 0.1)


def _prompt(n: int) -> str:
    return f"queued track {n}"


def _running(replicate: FakeReplicate) -> list[FakePrediction]:
    alive = [p for p in replicate.predictions.values() if not p.terminal]
    return sorted(alive, key=lambda p: p.created_at)


async def _release(
    discord: FakeDiscord,
    replicate: FakeReplicate,
    by_prompt: dict[str, FakeInteraction],
    database: Path,
    mode: str,
    rng: random.Random,
) -> Release:
    prediction = _running(replicate)[0]
    interaction = by_prompt[str(prediction.input["prompt"])]
    for alive in _running(replicate):
        await replicate._audio_bytes(alive)  # rendered now, served at once when due
    answered: list[float] = []

    def final(call: RestCall) -> bool:
        matched = is_final_edit(call, interaction)
        if matched and not answered:
            answered.append(time.monotonic())
        return matched

    waiting = job_statuses(database).get("queued", 0)
    settle_garbage()
    creates = len(replicate.creates)
    calls_before = len(discord.calls)
    delivered = asyncio.create_task(discord.wait_for_call(final, 30))
    await asyncio.sleep(rng.uniform(0.0, 0.5))  # any phase of the 0.5 s polling
    replicate.finish(prediction.id)
    await wait_for(lambda: len(replicate.creates) > creates, 30, 0.005)
    call = await delivered
    await _quiet(discord, 0.5)
    edits = [
        c
        for c in discord.calls[calls_before:]
        if c.method == "PATCH" and str((c.json or {}).get("content") or "").startswith("⏳")
    ]
    assert prediction.finished_at is not None and call.files
    finished = prediction.finished_at
    return Release(
        mode=mode,
        finished=finished,
        seen=min(at for pid, at in replicate.polls if pid == prediction.id and at >= finished),
        final=call.at,
        answered=answered[0],
        created=replicate.creates[creates].at,
        position_edits=len(edits),
        waiting=waiting,
    )


async def run(jobs: int, releases: int, seed: int) -> int:
    quiet_logging()
    rng = random.Random(seed)
    print_header(f"queue memory: {jobs} queued jobs, {releases} slot releases per fake mode")
    snapshots: list[Memory] = []
    results: list[Release] = []
    with workdir() as folder:
        async with fakes() as (discord, replicate):
            replicate.start_seconds = 0.5
            replicate.run_seconds = None  # processing until finish(): the line stays long
            database = folder / "jambot.db"
            overrides = realistic_overrides(
                user_cooldown_seconds=10, daily_quota_per_user=20, max_queued_per_user=3
            )
            settings = bot_settings(discord, replicate, database, **overrides)
            child = await spawn_bot(settings, discord, folder)
            try:
                await asyncio.sleep(3.0)  # discord.py's on_ready waits 2 s after GUILD_CREATE
                snapshots.append(_snapshot(child, database, "at rest, before the burst"))
                cpu = cpu_seconds(child.process.pid)
                started = time.monotonic()
                sent = await asyncio.gather(
                    *(
                        discord.send_interaction(
                            "music",
                            to_options({"prompt": _prompt(n), "duration": 8}),
                            user_id=USER_BASE + n,
                        )
                        for n in range(jobs)
                    )
                )
                by_prompt = {_prompt(n): interaction for n, interaction in enumerate(sent)}
                await wait_for(lambda: all(i.callback_at for i in sent), 120, 0.05)
                acknowledged = [(i.callback_at or 0.0) - started for i in sent]
                await wait_for(lambda: sum(job_statuses(database).values()) == jobs, 120, 0.2)
                await _quiet(discord, 1.0)
                settled = time.monotonic() - started - 1.0
                burst_cpu = cpu_seconds(child.process.pid) - cpu
                snapshots.append(_snapshot(child, database, f"{jobs} jobs in, settled"))
                for n in range(1, releases * 2 + 1):
                    mode = VALIDATING if n % 2 else NOT_VALIDATING
                    with contextlib.ExitStack() as stack:
                        if mode == NOT_VALIDATING:
                            stack.enter_context(openapi_validation_off(discord))
                        release = await _release(discord, replicate, by_prompt, database, mode, rng)
                    results.append(release)
                    if n % 10 == 0:
                        snapshots.append(_snapshot(child, database, f"after {n} releases"))
            except BaseException:
                print(child.log[-4000:])
                raise
            finally:
                await child.terminate()
    _report(snapshots, results, acknowledged, settled, burst_cpu, jobs)
    return 0  # the verdict is printed; a missed target is a figure, not a failure


def _report(
    snapshots: list[Memory],
    results: list[Release],
    acknowledged: list[float],
    settled: float,
    burst_cpu: float,
    jobs: int,
) -> None:
    print(
        "Bot: `python -m bot run` in a child process, MAX_CONCURRENT_GENERATIONS=2, "
        "REPLICATE_POLL_INTERVAL=0.5, production per-user limits, LOG_LEVEL=INFO."
    )
    print(
        f"Burst: {jobs} INTERACTION_CREATE frames back to back from {jobs} users (the fake "
        f"validating); acknowledged (type-5 callback at the fake) after p50 "
        f"{median(acknowledged):.2f} s, p99 {percentile(acknowledged, 99):.2f} s, max "
        f"{max(acknowledged):.2f} s; settled (stored, places shown, Discord traffic stopped) "
        f"after {settled:.1f} s; the bot used {burst_cpu:.1f} s of CPU for it."
    )
    print()
    print_table(
        ["bot process", "VmRSS (MiB)", "VmHWM (MiB)", "open fds", "jobs"],
        [[s.when, f"{s.rss:.1f}", f"{s.hwm:.1f}", s.fds, s.statuses] for s in snapshots],
    )
    rows = []
    for mode in (VALIDATING, NOT_VALIDATING):
        mine = [r for r in results if r.mode == mode]
        parts = {
            "**finish → next create**": [r.created - r.finished for r in mine],
            "finish → final PATCH arrives (delivery)": [r.final - r.finished for r in mine],
            "· finish → the poll that sees it": [r.seen - r.finished for r in mine],
            "· that poll → final PATCH arrives": [r.final - r.seen for r in mine],
            "final PATCH arrives → answered (upload)": [r.answered - r.final for r in mine],
            "**answered → next create (dispatch)**": [r.created - r.answered for r in mine],
        }
        rows += [[mode, k, ms(median(v)), ms(min(v)), ms(max(v))] for k, v in parts.items()]
        waiting = sorted({r.waiting for r in mine})
        edits = median([float(r.position_edits) for r in mine])
        rows.append(
            [
                mode,
                f"{len(mine)} releases with {waiting[0]}-{waiting[-1]} jobs in line; "
                f"places-in-line edits per release (median): {edits:.0f}",
                "",
                "",
                "",
            ]
        )
    print_table(["fake", "slot release", "median (ms)", "min (ms)", "max (ms)"], rows)
    peak = max(s.rss for s in snapshots)
    verdict = "met" if peak <= TARGET_RSS_MIB else "MISSED"
    print(
        f"Target RSS <= {TARGET_RSS_MIB} MB with {jobs} queued: {verdict} "
        f"(largest VmRSS {peak:.1f} MiB, peak VmHWM {max(s.hwm for s in snapshots):.1f} MiB)."
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.queue_memory", description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000, help="users, one /music each")
    parser.add_argument(
        "--releases",
        type=int,
        default=20,
        help="slots freed one by one, per fake mode (validating, not; they alternate)",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the release moments")
    args = parser.parse_args()
    return asyncio.run(run(args.jobs, args.releases, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
