"""How long a finished track takes to reach Discord once Replicate says it succeeded.

Overhead = the final PATCH with the file arriving at the fake Discord (`RestCall.at` of the
final edit) minus the moment the fake Replicate marked the prediction succeeded
(`FakePrediction.finished_at`). Both fakes run in this process and stamp `time.monotonic()`;
the bot is `python -m bot run` in a child process. Each run is one `/music` of an 8 s WAV
(stereo-large, 1 MB), run after run (never two at once), on one bot process.

The overhead is split at the fake's own records:

* waiting for the poll: the first poll after `finished_at` (`FakeReplicate.polls`);
* poll → download request: the poll's answer, the "fetching your track" progress step;
* download → final PATCH: the 1 MB download, the size check (`fit_to_limit` probes the file,
  no transcoding since it fits), the store's commits, the embed and the multipart upload's
  start (`RestCall.at` is stamped when the request's headers have arrived).

Two series, same bot process and settings (REPLICATE_POLL_INTERVAL=0.5, the default):

* progress bar: the fake's natural progression (0.5 s starting, 3 s processing, logs with a
  tqdm percentage), so the backend's polling speeds up as the end nears;
* no usable ETA: predictions stay processing (`run_seconds=None`, the percentage creeps so
  slowly that the ETA stays ~5 s) until this script calls `FakeReplicate.finish()` at a random
  moment 1.0-1.5 s into processing: the backend polls at the fixed 0.5 s interval, as it would
  without adaptive polling.

The fake renders a prediction's audio on its first download (tens of ms of numpy, in this
process); real Replicate serves a stored file, so each file is rendered before it is due.

Run from the repository root: `.venv/bin/python -m bench.delivery_overhead`.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

from bench._common import (
    median,
    ms,
    print_header,
    print_table,
    quiet_logging,
    realistic_overrides,
    settle_garbage,
    workdir,
)
from tests.fakes.discord import FakeDiscord
from tests.fakes.discord_models import RestCall
from tests.fakes.replicate import FakePrediction, FakeReplicate
from tests.harness import (
    audio_seconds,
    bot_settings,
    fakes,
    is_final_edit,
    spawn_bot,
    to_options,
    wait_for,
)

TARGET_MEDIAN = 0.100
DURATION = 8
START_SECONDS = 0.5
RUN_SECONDS = 3.0
ADAPTIVE = "progress bar (adaptive polls)"
FIXED = "no usable ETA (fixed 0.5 s polls)"


class StampedList(list[Any]):
    """A list that also remembers when each item was appended (`time.monotonic()`)."""

    def __init__(self) -> None:
        super().__init__()
        self.stamps: list[tuple[float, Any]] = []

    def append(self, item: Any) -> None:
        self.stamps.append((time.monotonic(), item))
        super().append(item)


@dataclass
class Run:
    series: str
    finished: float  # FakePrediction.finished_at
    seen: float  # the first poll after it
    previous_poll: float  # the poll before that one
    polls: int
    download: float  # the download request reached the fake
    final: float  # the final PATCH's headers reached the fake (RestCall.at)
    answered: float  # the fake had read the upload and answered
    other_edits: list[str]  # placeholder edits between finished and final (their text)
    audio_seconds: float

    @property
    def overhead(self) -> float:
        return self.final - self.finished


async def _prediction_for(replicate: FakeReplicate, prompt: str) -> FakePrediction:
    async def created() -> FakePrediction | None:
        for record in reversed(replicate.creates):
            body = record.body if isinstance(record.body, dict) else {}
            if (body.get("input") or {}).get("prompt") == prompt and record.prediction_id:
                return replicate.predictions[record.prediction_id]
        return None

    prediction: FakePrediction = await wait_for(created, 20, 0.005)
    return prediction


async def _one_run(
    discord: FakeDiscord,
    replicate: FakeReplicate,
    series: str,
    n: int,
    rng: random.Random,
) -> Run:
    settle_garbage()
    prompt = f"{series} run {n}"
    interaction = await discord.send_interaction(
        "music", to_options({"prompt": prompt, "duration": DURATION}), user_id=3_000_000 + n
    )
    answered: list[float] = []

    def final(call: RestCall) -> bool:
        matched = is_final_edit(call, interaction)
        if matched and not answered:
            answered.append(time.monotonic())
        return matched

    waiting = asyncio.create_task(discord.wait_for_call(final, 60))
    prediction = await _prediction_for(replicate, prompt)
    await replicate._audio_bytes(prediction)  # rendered now, served at once when due
    if series == FIXED:
        await wait_for(lambda: prediction.started_at is not None, 20, 0.005)
        assert prediction.started_at is not None
        due = prediction.started_at + rng.uniform(1.0, 1.5)
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        replicate.finish(prediction.id)
    call = await waiting
    finished = prediction.finished_at
    assert finished is not None and call.files, f"run {n} did not end with a file"
    polls = [at for pid, at in replicate.polls if pid == prediction.id]
    seen = min(at for at in polls if at >= finished)
    before = [at for at in polls if at < seen]
    assert isinstance(replicate.downloads, StampedList)
    download = min(at for at, path in replicate.downloads.stamps if prediction.id in path)
    edits = [
        c
        for c in discord.calls_for(interaction)
        if c.method == "PATCH" and finished <= c.at < call.at
    ]
    return Run(
        series=series,
        finished=finished,
        seen=seen,
        previous_poll=max(before) if before else seen,
        polls=len(polls),
        download=download,
        final=call.at,
        answered=answered[0],
        other_edits=[str((c.json or {}).get("content") or "")[:40] for c in edits],
        audio_seconds=audio_seconds(call.files[0][1]),
    )


async def run(runs: int, seed: int) -> int:
    quiet_logging()
    print_header(f"delivery overhead: {runs} sequential runs per series, {DURATION} s WAV")
    rng = random.Random(seed)
    results: list[Run] = []
    with workdir() as folder:
        async with fakes() as (discord, replicate):
            replicate.start_seconds = START_SECONDS
            replicate.run_seconds = RUN_SECONDS
            replicate.downloads = StampedList()
            settings = bot_settings(
                discord, replicate, folder / "jambot.db", **realistic_overrides()
            )
            child = await spawn_bot(settings, discord, folder)
            try:
                await _one_run(discord, replicate, ADAPTIVE, -1, rng)  # warm-up, not counted
                for n in range(runs):
                    results.append(await _one_run(discord, replicate, ADAPTIVE, n, rng))
                replicate.run_seconds = None
                for n in range(runs):
                    results.append(await _one_run(discord, replicate, FIXED, n, rng))
            except BaseException:
                print(child.log[-4000:])
                raise
            finally:
                await child.terminate()
    _report(results, settings.replicate_poll_interval)
    return 0  # the verdict is printed; a missed target is a figure, not a failure


def _report(results: list[Run], poll_interval: float) -> None:
    print(
        f"Bot: `python -m bot run` in a child process, REPLICATE_POLL_INTERVAL={poll_interval}, "
        f"LOG_LEVEL=INFO. Fake Replicate: {START_SECONDS} s starting, then processing "
        f"({RUN_SECONDS} s in the progress-bar series)."
    )
    print()
    rows = []
    for series in (ADAPTIVE, FIXED):
        mine = [r for r in results if r.series == series]
        parts = {
            "**overhead: succeeded → final PATCH arrives**": [r.overhead for r in mine],
            "waiting for the next poll": [r.seen - r.finished for r in mine],
            "poll → download request": [r.download - r.seen for r in mine],
            "download → final PATCH arrives": [r.final - r.download for r in mine],
            "(PATCH arrives → upload read and answered)": [r.answered - r.final for r in mine],
            "(interval of the poll that saw it)": [r.seen - r.previous_poll for r in mine],
        }
        for name, values in parts.items():
            rows.append([series, name, ms(median(values)), ms(min(values)), ms(max(values))])
        polls = median([float(r.polls) for r in mine])
        edits = sorted({text for r in mine for text in r.other_edits})
        count = sum(len(r.other_edits) for r in mine)
        audio = {round(r.audio_seconds, 2) for r in mine}
        rows.append(
            [
                series,
                f"{len(mine)} runs; polls per run (median) {polls:.0f}; placeholder edits inside "
                f"the overhead: {count} ({', '.join(edits) or 'none'}); audio delivered: "
                f"{sorted(audio)} s",
                "",
                "",
                "",
            ]
        )
    print_table(["series", "part", "median (ms)", "min (ms)", "max (ms)"], rows)
    adaptive = [r.overhead for r in results if r.series == ADAPTIVE]
    fixed = [r.overhead for r in results if r.series == FIXED]
    verdict = "met" if median(adaptive) <= TARGET_MEDIAN else "MISSED"
    print(
        f"Target median <= {TARGET_MEDIAN * 1000:.0f} ms: {verdict} (median {ms(median(adaptive))} "
        f"ms with the progress bar, {ms(median(fixed))} ms without a usable ETA)."
    )
    for series in (ADAPTIVE, FIXED):
        mine = [r for r in results if r.series == series]
        waiting = sum(r.seen - r.finished for r in mine) / sum(r.overhead for r in mine)
        rest = median([r.final - r.seen for r in mine])
        print(
            f"{series}: {waiting * 100:.0f}% of the total overhead is waiting for the poll; the "
            f"rest (poll seen → final PATCH) has median {ms(rest)} ms."
        )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.delivery_overhead", description=__doc__)
    parser.add_argument("--runs", type=int, default=20, help="runs per series")
    parser.add_argument("--seed", type=int, default=1, help="seed of the finish moments")
    args = parser.parse_args()
    return asyncio.run(run(args.runs, args.seed))


if __name__ == "__main__":
    raise SystemExit(main())
