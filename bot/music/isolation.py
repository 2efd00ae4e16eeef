"""Untrusted audio, handled in a child process that can crash without taking the bot along.

Outputs come from a remote model and clips from users, and libsndfile's codecs are C code: a WAV
header claiming 256 channels or 1 MHz segfaults libvorbis's encoder, and a few kilobytes of FLAC
can claim ten minutes of 8-channel audio. So every probe, waveform, transcode, tagging, cut and
stitch of such bytes runs in a fresh child process, one per call, so that nothing a crash leaves
behind is reused:

* forked from a forkserver that has already imported this module (numpy, soundfile, Pillow), so
  a call costs a fork rather than an interpreter start;
* limited before it reads the data: address space (`ChildLimits.memory_bytes` on top of what the
  child starts with), CPU seconds, no core dumps; and killed by the parent at a wall-clock
  deadline, or when the awaiting task is cancelled;
* driven from a worker thread, so the event loop never waits on it.

This contains crashes and runaway use of memory or CPU. It is not a security boundary against a
decoder exploit: the child runs as the bot's user, with its environment.

Errors (the first two are defined in `bot.music.audio`, the last here):

    AudioError                 the bytes aren't usable audio (not audio at all, or broken)
    ├── UnexpectedAudioError   decodable, but not what was asked for, or implausible
    └── AudioWorkerError       the child crashed, ran out of memory or CPU, or took too long
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
import os
import pickle
import resource
import signal
import struct
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any, TypeVar

from bot.music.audio import (
    AudioError,
    AudioInfo,
    Clip,
    ExpectedAudio,
    FittedAudio,
    fit_to_limit,
    probe,
    probe_clip,
    stitch,
    tail_clip,
    waveform_png,
)
from bot.music.tags import TrackTags, tag_audio, tag_room

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_LIMITS",
    "AudioWorkerError",
    "ChildLimits",
    "PreparedTrack",
    "continuation_clip",
    "fit_again",
    "prepare_track",
    "probe_untrusted",
    "run_isolated",
    "stitch_extension",
    "warm_up",
]

T = TypeVar("T")


@dataclass(frozen=True)
class ChildLimits:
    """What one child may use. The defaults leave room for a 300 s track's slowest fit (MP3 of
    five minutes of stereo encodes in about 20 s) and its decoded samples (under 100 MB)."""

    memory_bytes: int = 1024 * 1024 * 1024  # address space on top of the forked child's own
    cpu_seconds: int = 120
    wall_seconds: float = 180.0


DEFAULT_LIMITS = ChildLimits()


class AudioWorkerError(AudioError):
    """The child handling the audio died or was stopped; `reason` says how, for logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"audio worker failed: {reason}")
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.reason,)


@dataclass(frozen=True)
class PreparedTrack:
    """A checked output: what it holds, the version to upload, and its waveform picture."""

    info: AudioInfo
    fitted: FittedAudio | None  # None: not even the lowest rung fits the limit
    waveform: bytes = field(repr=False)  # PNG, or b"" when the audio can't be drawn


async def prepare_track(
    data: bytes,
    expected: ExpectedAudio,
    limit_bytes: int,
    *,
    tags: TrackTags | None = None,
    limits: ChildLimits = DEFAULT_LIMITS,
) -> PreparedTrack:
    """Check a finished generation against the request, draw it, fit it and tag it, in one
    child call.

    `limit_bytes` is what the track and its picture may take together: the track is fitted into
    what the picture leaves, tags included (see `_fit_tagged`). Raises UnexpectedAudioError
    when the header isn't what `expected` says (nothing is decoded then), AudioWorkerError when
    the child fails, AudioError when the bytes aren't audio.
    """
    started = time.perf_counter()
    job = partial(_prepare, expected=expected, limit_bytes=limit_bytes, tags=tags)
    prepared = await run_isolated(job, data, limits=limits)
    fitted = _with_original(prepared.fitted, data)
    log.info(
        "prepared %d bytes (%s) as %s in %.2f s",
        len(data),
        prepared.info.describe(),
        fitted.description if fitted else "nothing that fits",
        time.perf_counter() - started,
    )
    return replace(prepared, fitted=fitted)


async def fit_again(
    data: bytes,
    limit_bytes: int,
    *,
    tags: TrackTags | None = None,
    limits: ChildLimits = DEFAULT_LIMITS,
) -> FittedAudio | None:
    """`fit_to_limit` (then `tag_audio`) in a child: for a retry under a smaller limit after an
    upload was refused.

    Raises UnexpectedAudioError for implausible audio (before encoding), AudioWorkerError when
    the child fails, AudioError when the bytes aren't audio.
    """
    job = partial(_fit_tagged, limit_bytes=limit_bytes, tags=tags)
    return _with_original(await run_isolated(job, data, limits=limits), data)


async def probe_untrusted(data: bytes, *, limits: ChildLimits = DEFAULT_LIMITS) -> AudioInfo:
    """What a user's clip holds (`audio.probe_clip`, in a child), so that a caller can refuse
    clips that are too long before paying for them.

    Raises AudioError when it isn't audio (text, HTML), UnexpectedAudioError when it is
    implausible, AudioWorkerError when the child fails.
    """
    return await run_isolated(probe_clip, data, limits=limits)


async def continuation_clip(
    data: bytes, max_seconds: float, *, limits: ChildLimits = DEFAULT_LIMITS
) -> Clip:
    """The last whole seconds (at most `max_seconds`) of a delivered track, as 16-bit WAV for
    MusicGen's `input_audio` (`audio.tail_clip`, in a child).

    Raises ValueError when `max_seconds` < 1, AudioError when `data` isn't decodable audio,
    UnexpectedAudioError when it is implausible, AudioWorkerError when the child fails.
    """
    if max_seconds < 1:
        raise ValueError(f"a continuation prompt needs at least a second, not {max_seconds}")
    return await run_isolated(partial(tail_clip, max_seconds=max_seconds), data, limits=limits)


async def stitch_extension(
    original: bytes,
    output: bytes,
    context_seconds: float,
    expected: ExpectedAudio,
    *,
    limits: ChildLimits = DEFAULT_LIMITS,
) -> bytes:
    """The track `original` continued by `output`, a continuation that opens with its own
    rendition of the `context_seconds` prompt, as 16-bit WAV (`audio.stitch`, in a child).

    Raises ValueError when `context_seconds` < 0; UnexpectedAudioError when `output` isn't
    what `expected` says (checked before decoding) or `original` is implausible; AudioError
    when either isn't decodable audio or `output` ends within the context; AudioWorkerError
    when the child fails.
    """
    if context_seconds < 0:
        raise ValueError(f"the context can't be negative ({context_seconds} s)")
    job = partial(_stitch, context_seconds=context_seconds, expected=expected)
    return await run_isolated(job, _pack(original, output), limits=limits)


async def warm_up(*, preload: Sequence[str] = ()) -> None:
    """Start the forkserver now (it takes a few hundred ms), rather than on the first track.

    `preload` names more modules for the forkserver to import; it only counts before the
    forkserver starts. Every multiprocessing child re-runs the parent's main script, so name
    what that script imports: for the `jambot` console script, `bot.cli` (otherwise some 50 ms
    a call). `python -m bot` needs nothing: a package's `__main__` is never re-run. Don't name
    a module run with `python -m`: runpy warns, in every child, that it was already imported.
    """
    if preload:
        _context().set_forkserver_preload([*_PRELOAD, *preload])
    await run_isolated(_nothing, b"")


async def run_isolated(
    func: Callable[[bytes], T], data: bytes, *, limits: ChildLimits = DEFAULT_LIMITS
) -> T:
    """`func(data)` in a fresh limited child. `func` must be picklable (a module-level function
    or a `functools.partial` of one), and so must what it returns.

    AudioError raised by `func` comes back as it was; any other failure is an AudioWorkerError.
    Cancelling the awaiting task kills the child.
    """
    call = _ChildCall(_context(), func, data, limits)
    try:
        result: T = await asyncio.to_thread(call.run)
    except asyncio.CancelledError:
        call.kill()
        raise
    return result


# --- in the child --------------------------------------------------------------------------


def _prepare(
    data: bytes, expected: ExpectedAudio, limit_bytes: int, tags: TrackTags | None
) -> PreparedTrack:
    info = probe(data)
    expected.check(info)
    try:
        picture = waveform_png(data)
    except AudioError:  # a track that plays but doesn't draw still goes out, without a picture
        picture = b""
    fitted = _fit_tagged(data, limit_bytes - len(picture), tags)
    return PreparedTrack(info=info, fitted=fitted, waveform=picture)


def _fit_tagged(data: bytes, limit_bytes: int, tags: TrackTags | None) -> FittedAudio | None:
    """`fit_to_limit`, leaving room for the tags, then tagged. Should tagging still push the
    file over `limit_bytes`, it goes untagged: it fits, and the audio matters more."""
    if tags is None:
        return _without_original(fit_to_limit(data, limit_bytes), data)
    fitted = fit_to_limit(data, limit_bytes - tag_room(tags))
    if fitted is None:
        return None
    tagged = tag_audio(fitted.data, fitted.extension, tags)
    if len(tagged) <= limit_bytes:
        fitted = replace(fitted, data=tagged)
    return _without_original(fitted, data)


def _stitch(data: bytes, context_seconds: float, expected: ExpectedAudio) -> bytes:
    original, output = _unpack(data)
    return stitch(original, output, context_seconds, expected)


def _nothing(data: bytes) -> None:
    return None


def _without_original(fitted: FittedAudio | None, data: bytes) -> FittedAudio | None:
    """The very bytes the child was given go back empty: the parent has them, no need to pipe
    them back. (Untouched audio that was tagged is new bytes, and goes back in full.)"""
    if fitted is not None and not fitted.transcoded and fitted.data == data:
        return replace(fitted, data=b"")
    return fitted


def _with_original(fitted: FittedAudio | None, data: bytes) -> FittedAudio | None:
    return replace(fitted, data=data) if fitted is not None and not fitted.data else fitted


def _pack(first: bytes, second: bytes) -> bytes:
    """Two blobs as the one a child reads (after limiting itself): a length, then both."""
    return struct.pack("<Q", len(first)) + first + second


def _unpack(data: bytes) -> tuple[bytes, bytes]:
    (length,) = struct.unpack_from("<Q", data)
    return data[8 : 8 + length], data[8 + length :]


@dataclass(frozen=True)
class _Answer:
    """What a child sends back, once: a result, or why there is none."""

    result: Any = None
    refusal: AudioError | None = None  # the audio's fault: raised as it is in the parent
    failure: str | None = None  # the child's own trouble (memory, a bug): an AudioWorkerError
    details: str = ""  # a traceback, for the parent's log


def _child_main(conn: Connection, func: Callable[[bytes], Any], limits: ChildLimits) -> None:
    """The child's whole life: limit itself, read the data, answer once."""
    _limit_self(limits)
    answer = _answer(conn, func, limits)
    conn.send(answer)
    conn.close()


def _answer(conn: Connection, func: Callable[[bytes], Any], limits: ChildLimits) -> _Answer:
    try:
        return _Answer(result=func(conn.recv_bytes()))
    except AudioError as exc:
        return _Answer(refusal=exc)
    except MemoryError:  # the arrays are freed once this block is left, before the answer is sent
        return _Answer(failure=f"ran out of memory (over {limits.memory_bytes >> 20} MB)")
    except Exception as exc:  # a bug here rather than bad audio: keep the traceback for the log
        return _Answer(failure=f"{type(exc).__name__}: {exc}", details=traceback.format_exc())


def _limit_self(limits: ChildLimits) -> None:
    os.environ.update(_SINGLE_THREADED)  # for anything that starts threads lazily
    _set_limit(resource.RLIMIT_CORE, 0, 0)  # a crash must not write a core of up to a GB
    _set_limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)
    space = _address_space() + limits.memory_bytes
    _set_limit(resource.RLIMIT_AS, space, space)


def _set_limit(which: int, soft: int, hard: int) -> None:
    """Lower a limit (soft: SIGXCPU or a failed allocation; hard: SIGKILL, and the child can't
    raise it again) within the inherited hard limit."""
    _, ceiling = resource.getrlimit(which)
    if ceiling != resource.RLIM_INFINITY:
        soft, hard = min(soft, ceiling), min(hard, ceiling)
    resource.setrlimit(which, (soft, hard))


def _address_space() -> int:
    """Bytes of address space mapped now: the forkserver's imports, and thread stacks that
    OpenBLAS may have reserved there, are not this call's to pay for."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


# --- in the parent -------------------------------------------------------------------------

_SINGLE_THREADED = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# This module (and so numpy, soundfile, Pillow), and the Pillow plugins that the first
# `Image.save` of a process imports (`Image.preinit`): 8 ms a child otherwise.
_PRELOAD = [
    __name__,
    "PIL.BmpImagePlugin",
    "PIL.GifImagePlugin",
    "PIL.JpegImagePlugin",
    "PIL.PngImagePlugin",
    "PIL.PpmImagePlugin",
]
# Held to start a process and to collect one's exit status. `Process.start()` polls every
# other live child of this process, and a forkserver child's exit status is a message read
# once from a pipe: two threads reading it at once leave one of them with code 255.
_PROCESSES = threading.Lock()
_EXIT_GRACE_SECONDS = 5.0  # a child that has answered or been killed exits in milliseconds


@functools.cache
def _context() -> ForkServerContext:
    """The forkserver context, set up on the first isolated call (or `warm_up`).

    Two process-wide settings change here, deliberately. The forkserver will preload `_PRELOAD`.
    And OPENBLAS_NUM_THREADS / OMP_NUM_THREADS become 1 in this process's environment unless set:
    the forkserver inherits it when it starts, and a numpy imported with OpenBLAS's default of a
    thread per core reserves some 40 MB of address space per thread, inherited by every child.
    This process's own numpy was loaded earlier (this module imports it), so it is unaffected.
    """
    for name, value in _SINGLE_THREADED.items():
        os.environ.setdefault(name, value)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


class _ChildCall:
    """One call in one child, driven from a worker thread: start it, send the data, wait for
    the answer until the deadline, reap it. `kill` may come from another thread at any time."""

    def __init__(
        self,
        context: ForkServerContext,
        func: Callable[[bytes], Any],
        data: bytes,
        limits: ChildLimits,
    ) -> None:
        self._context = context
        self._func = func
        self._data = data
        self._limits = limits
        self._lock = threading.Lock()  # guards _process against kill() from another thread
        self._process: BaseProcess | None = None
        self._cancelled = False
        self._timed_out = False

    def run(self) -> Any:
        deadline = time.monotonic() + self._limits.wall_seconds
        ours, theirs = self._context.Pipe()
        try:
            process = self._start(theirs)
        finally:
            theirs.close()  # the child has its own copy now; ours would hide its death
        try:
            answer = self._exchange(ours, process, deadline)
        finally:
            ours.close()
            exitcode = self._reap(process)
        return self._unwrap(answer, exitcode)

    def kill(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._process is not None:
                self._process.kill()

    def _start(self, theirs: Connection) -> BaseProcess:
        process = self._context.Process(
            target=_child_main,
            args=(theirs, self._func, self._limits),
            name="audio-worker",
            daemon=True,
        )
        with self._lock:
            if self._cancelled:
                raise AudioWorkerError("cancelled before it started")
            try:
                with _PROCESSES:
                    process.start()
            except OSError as exc:
                raise AudioWorkerError(f"couldn't start a child process: {exc}") from exc
            self._process = process
        return process

    def _exchange(self, ours: Connection, process: BaseProcess, deadline: float) -> _Answer | None:
        """The child's answer, or None when it died or ran out of time (and was killed)."""
        try:
            ours.send_bytes(self._data)
            if not ours.poll(max(0.0, deadline - time.monotonic())):
                self._timed_out = True
                process.kill()
                return None
            message = ours.recv_bytes()
        except (EOFError, OSError):  # it died before reading or before answering
            return None
        try:
            answer = pickle.loads(message)
        except Exception as exc:  # an answer cut short or garbled by a dying child
            return _Answer(failure=f"unreadable answer ({type(exc).__name__})")
        return answer if isinstance(answer, _Answer) else _Answer(failure="unreadable answer")

    def _reap(self, process: BaseProcess) -> int | None:
        if not wait([process.sentinel], _EXIT_GRACE_SECONDS):
            process.kill()
            wait([process.sentinel])
        with self._lock:
            self._process = None  # it has exited: nothing left for kill() to do
        with _PROCESSES:
            process.join()
            exitcode = process.exitcode
            process.close()
        return exitcode

    def _unwrap(self, answer: _Answer | None, exitcode: int | None) -> Any:
        if answer is None:
            raise AudioWorkerError(self._death(exitcode))
        if answer.refusal is not None:
            raise answer.refusal
        if answer.failure is not None:
            if answer.details:
                log.error("audio worker failed: %s", answer.details)
            raise AudioWorkerError(answer.failure)
        return answer.result

    def _death(self, exitcode: int | None) -> str:
        limits = self._limits
        if self._timed_out:
            return f"took longer than {limits.wall_seconds:g} s and was killed"
        if self._cancelled:
            return "cancelled"
        if exitcode is not None and exitcode < 0:
            number = -exitcode
            if number == signal.SIGXCPU:
                return f"used more than {limits.cpu_seconds} s of CPU and was stopped (SIGXCPU)"
            if number == signal.SIGKILL:
                return "killed by SIGKILL (out of memory, or past its CPU limit)"
            return f"died of {_signal_name(number)}"
        return f"exited with code {exitcode} before answering"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
