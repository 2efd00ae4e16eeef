"""Serving the fake by hand: ``python -m tests.fakes.replicate --port 8765``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from tests.fakes.replicate.server import DEFAULT_TOKEN, FakeReplicate

logger = logging.getLogger(__name__)


async def _serve(port: int, token: str, start_seconds: float, run_seconds: float | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    fake = FakeReplicate(token, start_seconds=start_seconds, run_seconds=run_seconds)
    await fake.start(port)
    try:
        print(f"Fake Replicate API at {fake.base_url} token={fake.token}", flush=True)
        await stop.wait()
    finally:
        await fake.close()
        logger.info("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.replicate",
        description="Serve a local fake of the Replicate API for meta/musicgen.",
    )
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token", default=DEFAULT_TOKEN)
    parser.add_argument("--start-seconds", type=float, default=1.0)
    parser.add_argument(
        "--run-seconds",
        type=float,
        default=5.0,
        help="seconds a prediction spends processing; negative: until cancelled",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_seconds = None if args.run_seconds < 0 else args.run_seconds
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.port, args.token, args.start_seconds, run_seconds))
    return 0
