"""What handling a track in a child process costs, against the in-thread calls it replaces.

One 8 s 32 kHz stereo WAV (1 MB), two upload limits: 10 MiB (it fits, so the fit only probes:
the common case) and 100 kB (it is transcoded to Ogg Vorbis). Each run, one after another:

* in-thread (the old delivery path): `asyncio.to_thread(waveform_png, data)`, then
  `asyncio.to_thread(fit_to_limit, data, limit - len(picture))`;
* isolated: `prepare_track(data, expected, limit)`: one child doing check, waveform and fit;
* no-op: `run_isolated` of a function that does nothing with no data, the floor of a call.

The forkserver is started (and timed) before the runs. Every multiprocessing child re-runs the
parent's main module, so this script imports nothing at the top that the forkserver hasn't
loaded already, as with the bot run as `python -m bot` (a package's `__main__` is never re-run).
Run by the `jambot` console script, each child would also import `bot.cli` unless the
forkserver preloads it (`isolation.warm_up(preload=["bot.cli"])`): a no-op call measured here
at about 50 ms without that, 10 ms with it.

Run from the repository root: `.venv/bin/python -m bench.audio_isolation [--runs N]`.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import time
from collections.abc import Awaitable, Callable

import numpy as np
import soundfile as sf

from bot.music.audio import ExpectedAudio, fit_to_limit, waveform_png
from bot.music.isolation import prepare_track, run_isolated, warm_up
from bot.music.request import AudioFormat

EXPECTED = ExpectedAudio(channels=2, seconds=8, format=AudioFormat.WAV)
LIMITS = {"fits (10 MiB)": 10 * 1024 * 1024, "transcodes (100 kB)": 100_000}


def track() -> bytes:
    """8 s of a chord plus noise: what an 8 s stereo-large output looks like to the codecs."""
    rng = np.random.default_rng(0)
    t = np.arange(8 * 32000) / 32000
    chord = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (220.0, 277.2, 329.6))
    samples = np.stack([chord + 0.05 * rng.standard_normal(t.size) for _ in range(2)], axis=1)
    out = io.BytesIO()
    sf.write(out, np.clip(samples, -1, 1), 32000, format="WAV", subtype="PCM_16")
    return out.getvalue()


async def in_thread(data: bytes, limit: int) -> None:
    picture = await asyncio.to_thread(waveform_png, data)
    await asyncio.to_thread(fit_to_limit, data, limit - len(picture))


async def isolated(data: bytes, limit: int) -> None:
    await prepare_track(data, EXPECTED, limit)


def nothing(data: bytes) -> None:
    return None


async def noop(data: bytes, limit: int) -> None:
    await run_isolated(nothing, b"")


async def timings(
    call: Callable[[bytes, int], Awaitable[None]], limit: int, runs: int
) -> list[float]:
    data = track()
    await call(data, limit)  # warm caches (and the codecs' first-use setup) before measuring
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        await call(data, limit)
        seconds.append(time.perf_counter() - started)
    return seconds


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return (ordered[middle] + ordered[~middle]) / 2


def row(name: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p90 = ms[int(0.9 * (len(ms) - 1))]
    return f"  {name:<28} median {median(ms):7.1f} ms   p90 {p90:7.1f}   min {ms[0]:7.1f}"


async def run(runs: int) -> None:
    print(f"python {sys.version.split()[0]}, {len(os.sched_getaffinity(0))} CPUs, {runs} runs")
    started = time.perf_counter()
    await warm_up(preload=["argparse"])  # the one import here that the forkserver lacks
    print(f"forkserver start + first child: {(time.perf_counter() - started) * 1000:.0f} ms")
    print(row("no-op child call", await timings(noop, 0, runs)))
    for label, limit in LIMITS.items():
        print(f"{label}:")
        old = await timings(in_thread, limit, runs)
        new = await timings(isolated, limit, runs)
        print(row("in-thread (old)", old))
        print(row("isolated prepare_track", new))
        overhead = median(new) - median(old)
        print(f"  overhead (median difference): {overhead * 1000:+.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    asyncio.run(run(parser.parse_args().runs))


if __name__ == "__main__":
    main()
