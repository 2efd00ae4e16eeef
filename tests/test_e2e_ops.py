"""The owner's view of the real bot, through the fakes: `/metrics` and `/healthz` over HTTP,
and a taken METRICS_PORT at `jambot run`."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import (
    bot_settings,
    fakes,
    harness,
    run_until_it_stops,
    wait_for,
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def get(port: int, path: str) -> tuple[int, str, str]:
    """Status, content type and body of one GET on the bot's metrics server."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}") as response,
    ):
        return response.status, response.headers.get("Content-Type", ""), await response.text()


async def health(port: int) -> tuple[int, str]:
    status, _, body = await get(port, "/healthz")
    return status, body.strip()


def values(scrape: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
    }


@contextlib.contextmanager
def write_lock(database: Path) -> Iterator[None]:
    """Hold the database's write lock, as an operator's `sqlite3` shell mid-transaction does."""
    shell = sqlite3.connect(database, isolation_level=None)
    try:
        shell.execute("BEGIN IMMEDIATE")
        yield
        shell.execute("ROLLBACK")
    finally:
        shell.close()


async def test_a_delivered_job_shows_in_a_scrape_over_http(tmp_path: Path) -> None:
    port = free_port()
    async with harness(tmp_path, metrics_port=port) as h:
        interaction = await h.music(prompt="my very private lullaby", duration=1)
        assert (await h.final_reply(interaction)).files
        assert (await h.job_for(interaction)).status == "delivered"

        async def scraped_after_delivery() -> str | None:
            status, content_type, text = await get(port, "/metrics")
            assert status == 200 and content_type.startswith("text/plain")
            return text if 'jambot_jobs_total{status="delivered"} 1.0' in text else None

        scrape: str = await wait_for(scraped_after_delivery)
    assert "jambot_predictions_created_total 1.0" in scrape
    found = values(scrape)

    def requests(kind: str, status: str) -> float:
        return found.get(
            ("jambot_replicate_requests_total", frozenset({("kind", kind), ("status", status)})), 0
        )

    assert requests("create", "201") == 1
    assert requests("poll", "200") >= 1
    assert requests("download", "200") == 1
    assert found[("jambot_ack_latency_seconds_count", frozenset())] == 1
    assert found[("jambot_delivery_seconds_count", frozenset())] == 1
    assert found[("jambot_replicate_gpu_seconds_total", frozenset())] > 0
    assert found[("jambot_spend_usd_total", frozenset())] > 0
    assert ("jambot_queue_waiting", frozenset()) in found
    assert ("jambot_generations_running", frozenset()) in found
    for private in (
        "private lullaby",
        interaction.token,
        h.discord.bot_token,
        h.replicate.token,
        str(interaction.user_id),
    ):
        assert private not in scrape


async def test_healthz_is_ok_only_while_the_gateway_is_up_and_the_store_takes_writes(
    tmp_path: Path,
) -> None:
    port = free_port()
    async with harness(tmp_path, metrics_port=port) as h:
        assert await health(port) == (200, "ok")

        async def answers(status: int) -> tuple[int, str] | None:
            got = await health(port)
            return got if got[0] == status else None

        await h.discord.drop_gateway()
        _, reason = await wait_for(lambda: answers(503), 10)
        assert "gateway" in reason
        h.discord.restore_gateway()
        await wait_for(lambda: answers(200), 30)  # discord.py resumes on its own

        with write_lock(tmp_path / "jambot.db"):
            status, reason = await health(port)
        assert status == 503 and "busy" in reason
        assert await health(port) == (200, "ok")


async def test_a_taken_metrics_port_stops_the_start_with_one_sentence(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with fakes() as (discord, replicate):
            settings = bot_settings(discord, replicate, tmp_path / "jambot.db", metrics_port=port)
            code, _, stderr = await run_until_it_stops(settings, tmp_path)
    said = [line for line in stderr.splitlines() if line.startswith("jambot:")]
    assert code == 1
    assert said == [
        f"jambot: METRICS_PORT {port} is already in use on METRICS_HOST: stop the program "
        "listening there, or choose another METRICS_PORT (0 turns the metrics server off)."
    ]
    assert "Traceback" not in stderr
    assert not (tmp_path / "jambot.db").exists()  # nothing was opened, no job resumed
    assert not discord.gateway_sessions
