"""Several `jambot run` processes on one PostgreSQL queue: throughput, dispatch latency and
Replicate's request budget, against one process on SQLite.

Configurations (each with fresh fakes and a fresh database):

* SQLite, 1 process;
* PostgreSQL, 1, 2 and 4 processes on one database, each holding its share of the shards
  (SHARD_COUNT = the number of processes, SHARD_IDS = the process's index);
* PostgreSQL, 2 processes, with the default REPLICATE_CREATES_PER_MINUTE (540) and fewer jobs:
  the create limit shared by all processes.

The main configurations run with REPLICATE_CREATES_PER_MINUTE=100000 (an account whose create
limit Replicate raised); at the default 540, 2,000 jobs would take about four minutes per
configuration for that limit alone.

Each bot is `python -m bot run` in a child process (`tests.harness.spawn_bot`) with the
production pacing (REPLICATE_POLL_INTERVAL=0.5, GENERATION_TIMEOUT_SECONDS=300,
JOB_LEASE_SECONDS=30, LOG_LEVEL=INFO), MAX_CONCURRENT_GENERATIONS=200 (the cap counts the
predictions of all processes together) and per-user limits that refuse nothing
(MAX_QUEUED_PER_USER = jobs per user, DAILY_QUOTA_PER_USER=0, USER_COOLDOWN_SECONDS=0).
The PostgreSQL server is a throwaway cluster (`tests.pg.PostgresCluster`, fsync off).

The fake Discord has 8 guilds, two on every shard of 4 (so every shard of 1, 2 or 4 has
guilds); users are spread over them. The workload is `--jobs` `/music` of 1 s (stereo-large
WAV, 128 KB) from `--users` users, sent back to back over the gateway (`asyncio.gather`),
each to the connection of its guild's shard. The fake Replicate lets a prediction start after
`START_SECONDS` and succeed `RUN_SECONDS` later, with the tqdm progress in its logs (so the
bot's polls speed up near the end). The fake Discord's OpenAPI validation is off (it is the
fakes' main CPU cost, and the fakes share the 2 cores with the bots); `--validate` keeps it.

Figures, all from the fakes' own records (`time.monotonic()`, shared by every process):

* jobs/s dispatched: predictions created at the fake / (last create - first `/music` sent);
* dispatch latency: a `/music` frame written to the gateway → its prediction's create
  arriving at the fake (`CreateRecord.at`): the wait in line plus the dispatch itself;
* predictions created per delivered track (must be 1.00; no prompt may be created twice);
* delivered exactly once: final replies (the original reply edited with the file, or with a
  ⚠️ sentence) counted per interaction at the fake Discord: every job exactly one, with a file;
* Replicate requests per minute at peak: every non-create request the fake recorded (polls,
  downloads, cancels, start-up checks) in the busiest 60 s window (must stay under 3,000);
  a run shorter than 60 s uses its whole length as the window, scaled to a minute;
* creates per minute at peak: the same window over creates (in the default-540
  configuration it must stay under 600);
* predictions in flight at the fake at peak (create → succeeded; at most 200);
* delivery overhead at load: prediction succeeded (`FakePrediction.finished_at`) → the final
  PATCH with the file arriving at the fake Discord (`RestCall.at`).

The machine has 2 cores shared by the bots, PostgreSQL and both fakes, and other work: the
absolute figures are noisy; compare configurations within one run. Exits 1 if a "must"
fails (after printing every table).

Run from the repository root: `.venv/bin/python -m bench.processes`. On the 2-core VM the
bots deliver 12-18 jobs a second, so the default 2,000 jobs take about 13 minutes in all;
`--jobs 1000 --users 250` about 7 minutes, `--jobs 200 --users 50 --limited-jobs 0` one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import math
import os
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench._common import (
    cpu_seconds,
    median,
    ms,
    openapi_validation_off,
    percentile,
    print_header,
    print_table,
    quiet_logging,
    realistic_overrides,
    settle_garbage,
    workdir,
)
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import FakeInteraction, RestCall, shard_of
from tests.fakes.replicate import FakeReplicate
from tests.harness import BotProcess, bot_settings, fakes, spawn_bot, to_options
from tests.pg import PostgresCluster

START_SECONDS = 0.5  # starting → processing
RUN_SECONDS = 3.0  # processing → succeeded
DURATION = 1  # seconds of audio per job
MAX_IN_FLIGHT = 200  # MAX_CONCURRENT_GENERATIONS
RAISED_CREATES = 100_000  # REPLICATE_CREATES_PER_MINUTE of the main comparison
DEFAULT_CREATES = 540  # the setting's default
REQUEST_LIMIT = 3_000  # Replicate: non-create requests a minute per account
CREATE_LIMIT = 600  # Replicate: creates a minute per account
SHARDS_OF_GUILDS = 4  # the guilds cover every shard of 1, 2 and 4
GUILDS = 8
USER_BASE = 5_000_000
DELIVERY_TIMEOUT = 600.0  # seconds a configuration may take from the first /music
STOP_TIMEOUT = 20.0
OVERHEAD_PARTS = (
    "succeeded → the poll that sees it",
    "that poll → download request",
    "download request → final PATCH arrives",
)
_STARTED = re.compile(r": job \d+: started \(attempt")
_PROBLEM = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) +(\S+): (.*)$")


@dataclass
class Config:
    name: str
    engine: str  # "sqlite" or "postgres"
    processes: int
    jobs: int
    users: int
    creates_per_minute: int


@dataclass
class Result:
    config: Config
    sent: list[float]  # when each /music frame was written (by job number)
    tokens: list[str]  # each job's interaction token
    first_sent: float
    last_delivered: float
    creates: int  # answered 201
    create_records: int  # every create request, whatever it was answered
    prompts_created_twice: int
    dispatch: list[float]
    ack: list[float]
    delivered_once: int
    delivered_more: int  # jobs with more than one final reply
    warnings: int  # final replies with a ⚠️ sentence instead of a file
    missing: int  # jobs with no final reply
    tracks: int  # final replies with a file
    overhead: list[float]
    overhead_parts: dict[str, list[float]]
    jobs_per_second: float
    request_peak: float  # non-create requests per minute, busiest window
    request_window: float  # its width (s)
    request_routes: dict[str, int]  # the busiest window, by route
    request_total: dict[str, int]  # the whole run, by route
    create_peak: float
    poll_peak: float  # polls alone, their own busiest window (the bot's budget: 2,400)
    in_flight_peak: int
    started_per_process: list[int]
    bot_cpu: list[float]
    fakes_cpu: float  # this process: both fakes and the measuring
    load: str  # /proc/loadavg (1 and 5 min) at the end: the machine is shared
    exit_codes: list[int | None]
    problems: list[str] = field(default_factory=list)  # distinct WARNING/ERROR log lines

    @property
    def wall(self) -> float:
        return self.last_delivered - self.first_sent

    @property
    def per_track(self) -> float:
        return self.creates / self.tracks if self.tracks else math.inf

    def failures(self) -> list[str]:
        """The promises this run broke, one sentence each."""
        c, found = self.config, []
        if self.prompts_created_twice or self.creates != self.tracks:
            found.append(
                f"{c.name}: {self.creates} predictions created for {self.tracks} tracks "
                f"({self.prompts_created_twice} prompts created more than once)"
            )
        if self.delivered_once != c.jobs:
            found.append(
                f"{c.name}: {self.delivered_once} of {c.jobs} jobs delivered exactly once "
                f"({self.delivered_more} more than once, {self.warnings} ⚠️, "
                f"{self.missing} without a final reply)"
            )
        if self.request_peak >= REQUEST_LIMIT:
            found.append(
                f"{c.name}: {self.request_peak:.0f} non-create requests a minute at peak "
                f"({self.request_routes})"
            )
        if self.in_flight_peak > MAX_IN_FLIGHT:
            found.append(f"{c.name}: {self.in_flight_peak} predictions in flight at once")
        if c.creates_per_minute == DEFAULT_CREATES and self.create_peak >= CREATE_LIMIT:
            found.append(f"{c.name}: {self.create_peak:.0f} creates a minute at peak")
        if any(code not in (0, None) for code in self.exit_codes):
            found.append(f"{c.name}: bot exit codes {self.exit_codes}")
        return found


# --------------------------------------------------------------------------- helpers


def peak_in_window(times: Sequence[float], width: float) -> tuple[int, float]:
    """The most stamps in any window (t - width, t], and the window's end."""
    ordered = sorted(times)
    best, end, low = 0, 0.0, 0
    for high, at in enumerate(ordered):
        while ordered[low] <= at - width:
            low += 1
        if high - low + 1 > best:
            best, end = high - low + 1, at
    return best, end


def in_flight_peak(spans: Sequence[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def token_of(call: RestCall) -> str | None:
    """The interaction token of a webhook call (`/webhooks/{app}/{token}/messages/...`)."""
    parts = call.path.split("/")
    if len(parts) >= 5 and parts[1] == "webhooks" and parts[4] == "messages":
        return parts[3]
    return None


def final_kind(call: RestCall) -> str | None:
    """ "file" or "warning" for an edit that ends a job (as `tests.harness.is_final_edit`)."""
    if call.method != "PATCH" or call.status is None or "/messages/" not in call.path:
        return None
    if call.files:
        return "file"
    if str((call.json or {}).get("content") or "").startswith("⚠️"):
        return "warning"
    return None


def prompt(n: int) -> str:
    return f"bench processes job {n}"


def guild_ids(discord: FakeDiscord) -> list[int]:
    """The fake's own guild and 7 more, two on each of 4 shards (so every shard of 1 and 2)."""
    guilds = [discord.guild_id + (k << 22) for k in range(GUILDS)]
    assert Counter(shard_of(g, SHARDS_OF_GUILDS) for g in guilds) == Counter(
        {s: GUILDS // SHARDS_OF_GUILDS for s in range(SHARDS_OF_GUILDS)}
    )
    return guilds


class FinalReplies:
    """Final replies at the fake Discord, counted as they are answered (the calls are scanned
    once each, up to the first one not answered yet)."""

    def __init__(self, discord: FakeDiscord) -> None:
        self._discord = discord
        self._next = 0
        self.by_token: dict[str, list[RestCall]] = {}

    def scan(self) -> int:
        calls = self._discord.calls
        while self._next < len(calls) and calls[self._next].status is not None:
            call = calls[self._next]
            self._next += 1
            if final_kind(call) is not None and (token := token_of(call)) is not None:
                self.by_token.setdefault(token, []).append(call)
        return len(self.by_token)


async def stop_all(children: Sequence[BotProcess]) -> list[int | None]:
    """SIGTERM every bot, and SIGKILL what hasn't stopped after STOP_TIMEOUT."""
    for child in children:
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
    codes: list[int | None] = []
    for child in children:
        try:
            codes.append(await asyncio.wait_for(child.process.wait(), STOP_TIMEOUT))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
            codes.append(None)
            print(f"bot {child.process.pid} did not stop on SIGTERM; killed")
    return codes


def log_problems(logs: Sequence[str]) -> list[str]:
    """Distinct WARNING/ERROR lines of the bots' logs (numbers masked), with their counts."""
    counts: Counter[str] = Counter()
    for text in logs:
        for line in text.splitlines():
            match = _PROBLEM.match(line)
            if match:
                masked = re.sub(r"\d+", "N", f"{match[1]} {match[2]}: {match[3]}")[:160]
                counts[masked] += 1
    return [f"{count} x {line}" for line, count in counts.most_common(8)]


@contextlib.contextmanager
def young_garbage_only() -> Iterator[None]:
    """No full collections of this process's growing records while the bots run: collect
    and freeze first, and freeze again every few seconds (the caller's loop does)."""
    settle_garbage()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.collect()


# --------------------------------------------------------------------------- one configuration


async def run_config(
    config: Config,
    cluster: PostgresCluster | None,
    folder: Path,
    validate: bool,
    dump: Path | None,
) -> Result:
    print(f"## {config.name}: {config.jobs} jobs from {config.users} users", flush=True)
    await asyncio.to_thread(folder.mkdir)
    async with fakes() as (discord, replicate), contextlib.AsyncExitStack() as stack:
        replicate.start_seconds = START_SECONDS
        replicate.run_seconds = RUN_SECONDS
        if not validate:
            stack.enter_context(openapi_validation_off(discord))
        guilds = guild_ids(discord)
        for guild in guilds[1:]:
            await discord.add_guild(guild)
        if config.engine == "postgres":
            assert cluster is not None
            name = re.sub(r"\W+", "_", config.name.lower()).strip("_")
            database_url = cluster.create_database(name)
        else:
            database_url = f"sqlite:///{folder / 'jambot.db'}"
        per_user = -(-config.jobs // config.users)
        children: list[BotProcess] = []
        try:
            for index in range(config.processes):
                overrides = realistic_overrides(
                    max_concurrent_generations=MAX_IN_FLIGHT,
                    replicate_creates_per_minute=config.creates_per_minute,
                    max_queued_per_user=max(3, per_user),
                    shard_count=config.processes,
                    shard_ids=str(index),
                    database_url=database_url,
                )
                settings = bot_settings(discord, replicate, folder / "unused.db", **overrides)
                place = folder / f"process-{index}"
                await asyncio.to_thread(place.mkdir)
                children.append(await spawn_bot(settings, discord, place))
            await asyncio.sleep(3.0)  # discord.py's on_ready waits 2 s after GUILD_CREATE
            result = await _measure(config, discord, replicate, children, guilds)
            if dump is not None:
                _dump(dump / folder.name, discord, replicate, children, result)
            return result
        except BaseException:
            for child in children:
                print(f"--- log of bot {child.process.pid} (tail)\n{child.log[-3000:]}")
            raise
        finally:
            await stop_all(children)


async def _measure(
    config: Config,
    discord: FakeDiscord,
    replicate: FakeReplicate,
    children: list[BotProcess],
    guilds: list[int],
) -> Result:
    sent_at: dict[int, float] = {}
    cpu_before = [cpu_seconds(child.process.pid) for child in children]
    fakes_cpu = time.process_time()
    finals = FinalReplies(discord)

    async def send(n: int) -> FakeInteraction:
        user = n % config.users
        interaction = await discord.send_interaction(
            "music",
            to_options({"prompt": prompt(n), "duration": DURATION}),
            user_id=USER_BASE + user,
            guild_id=guilds[user % len(guilds)],
        )
        sent_at[n] = time.monotonic()
        return interaction

    with young_garbage_only():
        began = time.monotonic()
        interactions = await asyncio.gather(*(send(n) for n in range(config.jobs)))
        print(
            f"sent {config.jobs} in {time.monotonic() - began:.1f} s; waiting for deliveries",
            flush=True,
        )
        deadline = began + DELIVERY_TIMEOUT
        reported = began
        while finals.scan() < config.jobs:
            now = time.monotonic()
            if now > deadline:
                print(f"TIMEOUT: {len(finals.by_token)} of {config.jobs} jobs had a final reply")
                break
            if now - reported >= 15:
                reported = now
                print(
                    f"  {now - began:5.0f} s: {len(replicate.creates)} created, "
                    f"{len(finals.by_token)} delivered",
                    flush=True,
                )
            gc.freeze()
            await asyncio.sleep(0.25)
        await asyncio.sleep(3.0)  # a late duplicate would show up here
        finals.scan()
        bot_cpu = [
            cpu_seconds(child.process.pid) - before
            for child, before in zip(children, cpu_before, strict=True)
        ]
        fakes_cpu = time.process_time() - fakes_cpu
        load = " ".join(f"{x:.1f}" for x in os.getloadavg()[:2])
        logs = [child.log for child in children]
        exit_codes = await stop_all(children)
        return _figures(
            config,
            discord,
            replicate,
            list(interactions),
            sent_at,
            finals,
            bot_cpu,
            fakes_cpu,
            load,
            exit_codes,
            logs,
        )


def _dump(
    to: Path,
    discord: FakeDiscord,
    replicate: FakeReplicate,
    children: list[BotProcess],
    result: Result,
) -> None:
    """The raw stamps of one configuration and the bots' logs, for a closer look."""
    to.mkdir(parents=True, exist_ok=True)
    raw = {
        "config": result.config.__dict__,
        "sent": result.sent,
        "tokens": result.tokens,
        "creates": [
            [
                str(((r.body or {}).get("input") or {}).get("prompt")),
                r.at,
                r.status,
                r.prediction_id,
            ]
            for r in replicate.creates
        ],
        "predictions": {
            p.id: [p.created_at, p.started_at, p.finished_at, p.status]
            for p in replicate.predictions.values()
        },
        "requests": [[r.route, r.at, r.status, r.path] for r in replicate.requests],
        "discord": [[c.method, c.path, c.at, c.status, bool(c.files)] for c in discord.calls],
    }
    (to / "raw.json").write_text(json.dumps(raw))
    for index, child in enumerate(children):
        shutil.copy(child.log_path, to / f"bot-{index}.log")
    print(f"raw records and logs in {to}")


def _figures(
    config: Config,
    discord: FakeDiscord,
    replicate: FakeReplicate,
    interactions: list[FakeInteraction],
    sent_at: dict[int, float],
    finals: FinalReplies,
    bot_cpu: list[float],
    fakes_cpu: float,
    load: str,
    exit_codes: list[int | None],
    logs: list[str],
) -> Result:
    by_prompt: dict[str, list[float]] = {}
    prediction_of: dict[str, str] = {}
    answered = [r for r in replicate.creates if r.status == 201 and r.prediction_id]
    for record in answered:
        text = str(((record.body or {}).get("input") or {}).get("prompt"))
        by_prompt.setdefault(text, []).append(record.at)
        prediction_of.setdefault(text, record.prediction_id or "")
    dispatch = [
        by_prompt[prompt(n)][0] - sent_at[n] for n in range(config.jobs) if prompt(n) in by_prompt
    ]
    ack = [(i.callback_at or math.inf) - sent_at[n] for n, i in enumerate(interactions)]
    once = more = warnings = missing = tracks = 0
    overhead: list[float] = []
    parts: dict[str, list[float]] = {part: [] for part in OVERHEAD_PARTS}
    polls: dict[str, list[float]] = {}
    for prediction_id, at in replicate.polls:
        polls.setdefault(prediction_id, []).append(at)
    downloads: dict[str, float] = {}
    for request in replicate.requests_to("download"):
        downloads.setdefault(request.path.split("/")[2], request.at)  # /files/{id}/{name}
    last = max(sent_at.values())
    for n, interaction in enumerate(interactions):
        calls = finals.by_token.get(interaction.token, [])
        kinds = [final_kind(call) for call in calls]
        tracks += kinds.count("file")
        warnings += kinds.count("warning")
        if not calls:
            missing += 1
        elif len(calls) > 1:
            more += 1
        elif kinds == ["file"]:
            once += 1
        if calls:
            last = max(last, *(call.at for call in calls))
        prediction = replicate.predictions.get(prediction_of.get(prompt(n), ""))
        if kinds[:1] != ["file"] or prediction is None or prediction.finished_at is None:
            continue
        finished, final = prediction.finished_at, calls[0].at
        overhead.append(final - finished)
        seen = min((at for at in polls.get(prediction.id, []) if at >= finished), default=None)
        download = downloads.get(prediction.id)
        if seen is not None and download is not None:
            parts[OVERHEAD_PARTS[0]].append(seen - finished)
            parts[OVERHEAD_PARTS[1]].append(download - seen)
            parts[OVERHEAD_PARTS[2]].append(final - download)
    first = min(sent_at.values())
    span = max(last - first, 1e-9)
    width = min(60.0, span)
    other = [r for r in replicate.requests if r.route != "create"]
    count, end = peak_in_window([r.at for r in other], width)
    in_window = Counter(r.route for r in other if end - width < r.at <= end)
    creates_count, _ = peak_in_window([r.at for r in replicate.creates], width)
    polls_count, _ = peak_in_window([at for _, at in replicate.polls], width)
    spans = []
    for record in answered:
        prediction = replicate.predictions[record.prediction_id or ""]
        spans.append((record.at, prediction.finished_at or math.inf))
    create_times = [r.at for r in answered]
    dispatched = len(answered) / (max(create_times) - first) if create_times else 0.0
    return Result(
        config=config,
        sent=[sent_at[n] for n in range(config.jobs)],
        tokens=[i.token for i in interactions],
        first_sent=first,
        last_delivered=last,
        creates=len(answered),
        create_records=len(replicate.creates),
        prompts_created_twice=sum(1 for times in by_prompt.values() if len(times) > 1),
        dispatch=dispatch,
        ack=ack,
        delivered_once=once,
        delivered_more=more,
        warnings=warnings,
        missing=missing,
        tracks=tracks,
        overhead=overhead,
        overhead_parts=parts,
        jobs_per_second=dispatched,
        request_peak=count * 60.0 / width,
        request_window=width,
        request_routes=dict(in_window),
        request_total=dict(Counter(r.route for r in replicate.requests)),
        create_peak=creates_count * 60.0 / width,
        poll_peak=polls_count * 60.0 / width,
        in_flight_peak=in_flight_peak(spans),
        started_per_process=[len(_STARTED.findall(text)) for text in logs],
        bot_cpu=bot_cpu,
        fakes_cpu=fakes_cpu,
        load=load,
        exit_codes=exit_codes,
        problems=log_problems(logs),
    )


# --------------------------------------------------------------------------- the report


def _per_minute(result: Result, value: float) -> str:
    scaled = "" if result.request_window >= 60 else f" (x{60 / result.request_window:.2f})"
    return f"{value:.0f}{scaled}"


def report(results: list[Result]) -> list[str]:
    print()
    print(
        f"Fake Replicate: each prediction starting {START_SECONDS} s, then processing "
        f"{RUN_SECONDS} s (tqdm progress in its logs); {DURATION} s stereo-large WAV. "
        f"Bots: MAX_CONCURRENT_GENERATIONS={MAX_IN_FLIGHT}, REPLICATE_POLL_INTERVAL=0.5, "
        "JOB_LEASE_SECONDS=30, LOG_LEVEL=INFO, one shard per process."
    )
    print()
    print_table(
        [
            "configuration",
            "creates/min limit",
            "jobs",
            "first /music → last track (s)",
            "jobs/s dispatched",
            "dispatch latency p50 / p95 (s)",
            "predictions per track",
            "delivered exactly once",
            "Replicate non-create requests/min, peak",
            "creates/min, peak",
            "in flight at peak",
            "delivery overhead p50 / p95 (ms)",
        ],
        [
            [
                r.config.name,
                r.config.creates_per_minute,
                r.config.jobs,
                f"{r.wall:.1f}",
                f"{r.jobs_per_second:.1f}",
                f"{median(r.dispatch):.1f} / {percentile(r.dispatch, 95):.1f}",
                f"{r.per_track:.2f}",
                f"{r.delivered_once} / {r.config.jobs}",
                _per_minute(r, r.request_peak),
                _per_minute(r, r.create_peak),
                r.in_flight_peak,
                f"{ms(median(r.overhead))} / {ms(percentile(r.overhead, 95))}",
            ]
            for r in results
        ],
    )
    print(
        "Peaks are the busiest 60 s window of the run; a run shorter than 60 s uses its whole "
        "length (first /music → last track) as the window and the count is scaled to a minute "
        "(the factor is shown as xF)."
    )
    print()
    print_table(
        [
            "configuration",
            "requests in the busiest window, by route",
            "requests over the run, by route",
            "polls/min, peak (budget 2,400)",
            "polls per job",
            "/music acknowledged p50 / p99 / max (s)",
            "jobs started per process",
            "CPU (s): bots / fakes",
            "load avg 1 / 5 min at the end",
            "exit codes",
        ],
        [
            [
                r.config.name,
                ", ".join(f"{k} {v}" for k, v in sorted(r.request_routes.items())),
                ", ".join(f"{k} {v}" for k, v in sorted(r.request_total.items())),
                _per_minute(r, r.poll_peak),
                f"{r.request_total.get('poll', 0) / max(r.creates, 1):.2f}",
                f"{median(r.ack):.2f} / {percentile(r.ack, 99):.2f} / {max(r.ack):.2f}",
                " + ".join(str(n) for n in r.started_per_process),
                " + ".join(f"{s:.0f}" for s in r.bot_cpu) + f" / {r.fakes_cpu:.0f}",
                r.load,
                r.exit_codes,
            ]
            for r in results
        ],
    )
    print_table(
        ["configuration", "delivery overhead: part", "p50 (ms)", "p95 (ms)", "max (ms)"],
        [
            [r.config.name, part, ms(median(v)), ms(percentile(v, 95)), ms(max(v, default=0))]
            for r in results
            for part, v in [
                ("**succeeded → final PATCH arrives**", r.overhead),
                *r.overhead_parts.items(),
            ]
        ],
    )
    for r in results:
        if r.problems:
            print(f"{r.config.name}: WARNING/ERROR lines in the bots' logs:")
            for line in r.problems:
                print(f"  {line}")
    failures = [failure for r in results for failure in r.failures()]
    print()
    if failures:
        print("MUST FAILED:")
        for failure in failures:
            print(f"  {failure}")
    else:
        print(
            "All musts held: one prediction per track, every job delivered exactly once, "
            f"under {REQUEST_LIMIT} non-create requests a minute, at most {MAX_IN_FLIGHT} in "
            f"flight, and under {CREATE_LIMIT} creates a minute with the default "
            f"{DEFAULT_CREATES}."
        )
    return failures


# --------------------------------------------------------------------------- main


def configs(args: argparse.Namespace) -> list[Config]:
    found = [
        Config("SQLite, 1 process", "sqlite", 1, args.jobs, args.users, RAISED_CREATES),
    ]
    for n in args.processes:
        name = f"PostgreSQL, {n} process{'es' if n > 1 else ''}"
        found.append(Config(name, "postgres", n, args.jobs, args.users, RAISED_CREATES))
    if args.limited_jobs:
        users = max(1, args.limited_jobs * args.users // args.jobs)
        found.append(
            Config(
                "PostgreSQL, 2 processes, default create limit",
                "postgres",
                2,
                args.limited_jobs,
                users,
                DEFAULT_CREATES,
            )
        )
    return found


async def run(args: argparse.Namespace) -> int:
    quiet_logging()
    print_header("processes: 1, 2 and 4 bots on one PostgreSQL queue, and one on SQLite")
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    assert main_task is not None
    loop.add_signal_handler(signal.SIGTERM, main_task.cancel)  # clean up on SIGTERM too
    began = time.monotonic()
    results: list[Result] = []
    cluster = PostgresCluster()
    try:
        cluster.start()
        with workdir() as folder:
            for n, config in enumerate(configs(args)):
                place = folder / f"config-{n}"
                results.append(await run_config(config, cluster, place, args.validate, args.dump))
                print(f"   done at {time.monotonic() - began:.0f} s", flush=True)
    finally:
        cluster.stop()
    failures = report(results)
    print(f"\nTotal run time: {time.monotonic() - began:.0f} s")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.processes", description=__doc__)
    parser.add_argument("--jobs", type=int, default=2000, help="/music commands per configuration")
    parser.add_argument("--users", type=int, default=500, help="users sending them")
    parser.add_argument(
        "--processes",
        type=int,
        nargs="+",
        default=[1, 2, 4],
        help="PostgreSQL configurations: bot processes on one database",
    )
    parser.add_argument(
        "--limited-jobs",
        type=int,
        default=800,
        help="jobs of the 2-process run with the default create limit (0: skip it)",
    )
    parser.add_argument(
        "--validate", action="store_true", help="keep the fake Discord's OpenAPI validation on"
    )
    parser.add_argument(
        "--dump", type=Path, default=None, help="write raw stamps and bot logs to this folder"
    )
    args = parser.parse_args()
    try:
        return asyncio.run(run(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("stopped: the bots and PostgreSQL were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
