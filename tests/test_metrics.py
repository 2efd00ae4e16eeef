"""The metrics: each layer's reports reach the right series, and no label holds anything private.

The registry is read back through Prometheus' own text parser, as a scrape would read it.
"""

from __future__ import annotations

import random
import socket
from datetime import timedelta
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from bot.chat.acks import AckGate
from bot.clock import utc_now
from bot.jobs.limits import Limits
from bot.jobs.scheduler import Scheduler
from bot.jobs.store import Job, JobStore
from bot.music import errors
from bot.music.replicate import DATA_URI_LIMIT, ReplicateBackend
from bot.music.request import MusicRequest
from bot.music.retry import RetryPolicy
from bot.ops.metrics import NO_METRICS, Metrics, status_label
from tests.fakes.replicate import FakeReplicate, HttpFault
from tests.harness import wait_for
from tests.scheduler_doubles import MemoryBackend, RecordingEvents, new_job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(metrics: Metrics) -> Samples:
    """Every sample of a scrape, by name and labels."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def requests(metrics: Metrics) -> dict[tuple[str, str], float]:
    """jambot_replicate_requests_total by (kind, status)."""
    return {
        (dict(labels)["kind"], dict(labels)["status"]): count
        for (name, labels), count in samples(metrics).items()
        if name == "jambot_replicate_requests_total"
    }


# -- the module on its own -------------------------------------------------------------------


def test_each_report_reaches_its_series() -> None:
    metrics = Metrics(cost_per_second=0.002)
    metrics.job_ended("delivered")
    metrics.job_ended("delivered")
    metrics.job_ended("failed")
    metrics.prediction_created()
    metrics.prediction_finished(2.5)
    metrics.replicate_request("poll", 200)
    metrics.replicate_request("create", None)
    metrics.acknowledged(0.04)
    metrics.delivered(0.2)
    assert value(metrics, "jambot_jobs_total", status="delivered") == 2
    assert value(metrics, "jambot_jobs_total", status="failed") == 1
    assert value(metrics, "jambot_jobs_total", status="cancelled") == 0  # there from the start
    assert value(metrics, "jambot_predictions_created_total") == 1
    assert value(metrics, "jambot_replicate_gpu_seconds_total") == 2.5
    assert value(metrics, "jambot_spend_usd_total") == pytest.approx(0.005)
    assert requests(metrics) == {("poll", "200"): 1, ("create", "error"): 1}
    assert value(metrics, "jambot_ack_latency_seconds_count") == 1
    assert value(metrics, "jambot_ack_latency_seconds_bucket", le="0.05") == 1
    assert value(metrics, "jambot_ack_latency_seconds_bucket", le="0.025") == 0
    assert value(metrics, "jambot_delivery_seconds_sum") == pytest.approx(0.2)


def test_the_gauges_read_the_queue_at_each_scrape() -> None:
    metrics = Metrics(cost_per_second=0.0)
    line = [1, 2, 3]
    metrics.watch_queue(lambda: len(line), lambda: 2)
    assert value(metrics, "jambot_queue_waiting") == 3
    line.pop()
    assert value(metrics, "jambot_queue_waiting") == 2
    assert value(metrics, "jambot_generations_running") == 2


@pytest.mark.parametrize("garbled", [None, float("nan"), float("inf"), -1.0])
def test_a_missing_or_garbled_gpu_time_counts_nothing(garbled: float | None) -> None:
    metrics = Metrics(cost_per_second=1.0)
    metrics.prediction_finished(garbled)
    assert value(metrics, "jambot_replicate_gpu_seconds_total") == 0
    assert value(metrics, "jambot_spend_usd_total") == 0


def test_a_clock_behind_discords_gives_no_negative_latency() -> None:
    metrics = Metrics(cost_per_second=0.0)
    metrics.acknowledged(-0.3)
    assert value(metrics, "jambot_ack_latency_seconds_sum") == 0
    assert value(metrics, "jambot_ack_latency_seconds_count") == 1


def test_two_bots_in_one_process_count_apart_and_leave_the_global_registry_alone() -> None:
    first, second = Metrics(cost_per_second=0.0), Metrics(cost_per_second=0.0)
    first.prediction_created()
    assert value(first, "jambot_predictions_created_total") == 1
    assert value(second, "jambot_predictions_created_total") == 0
    assert prometheus_client.REGISTRY.get_sample_value("jambot_predictions_created_total") is None


def test_no_created_timestamps_are_served() -> None:
    metrics = Metrics(cost_per_second=0.0)
    metrics.prediction_created()
    metrics.replicate_request("poll", 200)
    assert not [name for name, _ in samples(metrics) if name.endswith("_created")]


@pytest.mark.parametrize(
    ("status", "label"), [(200, "200"), (503, "503"), (None, "error"), (0, "error"), (999, "error")]
)
def test_a_status_label_is_a_code_or_error(status: int | None, label: str) -> None:
    assert status_label(status) == label


def test_no_metrics_takes_every_report() -> None:
    NO_METRICS.job_ended("cancelled")
    NO_METRICS.prediction_finished(1.0)
    NO_METRICS.replicate_request("download", None)
    NO_METRICS.acknowledged(1.0)
    NO_METRICS.delivered(1.0)


# -- the Replicate adapter reports ----------------------------------------------------------


def backend_for(fake: FakeReplicate, metrics: Metrics, **overrides: object) -> ReplicateBackend:
    options: dict[str, object] = {
        "api_token": SecretStr(fake.token),
        "model": f"{fake.model}:{fake.version}",
        "base_url": fake.base_url,
        "poll_interval": 0.05,
        "timeout": 20.0,
        "retry": RetryPolicy(max_attempts=3, base_delay=0.01, rng=random.Random(7)),
        "http_timeout": 5.0,
        "metrics": metrics,
    }
    options.update(overrides)
    return ReplicateBackend(**options)  # type: ignore[arg-type]


def music(prompt: str = "warm lofi beat") -> MusicRequest:
    return MusicRequest.parse({"prompt": prompt, "duration": 1})


async def test_a_generation_counts_its_requests_prediction_and_gpu_time(
    replicate_fake: FakeReplicate,
) -> None:
    metrics = Metrics(cost_per_second=0.01)
    backend = backend_for(replicate_fake, metrics)
    try:
        replicate_fake.fail_creates(HttpFault.server_error(503))
        track = await backend.generate(music())
        await backend.cancel(track.prediction_id)  # finished already: Replicate still answers
        await backend.upload_audio(b"\0" * DATA_URI_LIMIT, filename="clip.wav")
    finally:
        await backend.aclose()
    counted = requests(metrics)
    assert counted[("create", "503")] == 1 and counted[("create", "201")] == 1
    polls = sum(n for (kind, _), n in counted.items() if kind == "poll")
    assert polls == len(replicate_fake.polls) and counted[("poll", "200")] == polls
    assert counted[("download", "200")] == 1
    assert counted[("upload", "201")] == 1
    assert sum(n for (kind, _), n in counted.items() if kind == "cancel") == 1
    assert value(metrics, "jambot_predictions_created_total") == 1
    assert track.predict_time is not None
    gpu = value(metrics, "jambot_replicate_gpu_seconds_total")
    assert gpu == pytest.approx(track.predict_time)
    assert value(metrics, "jambot_spend_usd_total") == pytest.approx(track.predict_time * 0.01)


async def test_a_request_that_gets_no_answer_counts_as_error(
    replicate_fake: FakeReplicate,
) -> None:
    metrics = Metrics(cost_per_second=0.0)
    backend = backend_for(replicate_fake, metrics)
    try:
        replicate_fake.fail_polls(HttpFault.disconnect())
        replicate_fake.fail_downloads(HttpFault.disconnect())
        await backend.generate(music())
    finally:
        await backend.aclose()
    counted = requests(metrics)
    assert counted[("poll", "error")] == 1 and counted[("download", "error")] == 1
    assert counted[("download", "200")] == 1  # the retry


async def test_an_unreachable_replicate_counts_each_create_as_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    metrics = Metrics(cost_per_second=0.0)
    backend = ReplicateBackend(
        api_token=SecretStr("r8_unused"),
        model="meta/musicgen",
        base_url=closed,
        retry=RetryPolicy(max_attempts=2, base_delay=0.0),
        http_timeout=2.0,
        metrics=metrics,
    )
    try:
        with pytest.raises(errors.ServiceUnavailableError):
            await backend.generate(music())
    finally:
        await backend.aclose()
    assert requests(metrics) == {("create", "error"): 2}
    assert value(metrics, "jambot_predictions_created_total") == 0


async def test_no_prompt_or_token_reaches_a_label(replicate_fake: FakeReplicate) -> None:
    metrics = Metrics(cost_per_second=0.0)
    backend = backend_for(replicate_fake, metrics)
    try:
        track = await backend.generate(music("a secret prompt about my cat"))
    finally:
        await backend.aclose()
    scrape = metrics.render().decode()
    for private in ("secret prompt", replicate_fake.token, track.prediction_id):
        assert private not in scrape


# -- the scheduler and the acknowledgements report --------------------------------------------


async def test_the_scheduler_counts_how_each_job_ends_and_times_delivery(tmp_path: Path) -> None:
    metrics = Metrics(cost_per_second=0.0)
    store = await JobStore.open(tmp_path / "jambot.db")
    backend, events = MemoryBackend(), RecordingEvents()
    limits = Limits(store, cooldown_seconds=0, daily_quota=0, max_queued_per_user=0)
    scheduler = Scheduler(
        store, backend, events, limits, max_concurrent=2, cost_per_second=0.0, metrics=metrics
    )
    await scheduler.start()
    try:
        delivered = await scheduler.submit(new_job(user_id=1))
        assert isinstance(delivered, Job)
        await wait_for(lambda: events.delivered == [delivered.id])
        backend.raise_next.append(errors.PredictionFailedError("The model couldn't make it."))
        failed = await scheduler.submit(new_job(user_id=2))
        await wait_for(lambda: events.failed)
        backend.hold()
        cancelled = await scheduler.submit(new_job(user_id=3))
        assert isinstance(failed, Job) and isinstance(cancelled, Job)
        await wait_for(lambda: backend.waiting)
        await scheduler.cancel(cancelled.id)
        await scheduler.cancel(cancelled.id)  # a second cancel changes nothing: counted once
        await wait_for(lambda: events.cancelled)
    finally:
        backend.release()
        await scheduler.close()
        await store.close()
    for status in ("delivered", "failed", "cancelled"):
        assert value(metrics, "jambot_jobs_total", status=status) == 1, status
    assert value(metrics, "jambot_delivery_seconds_count") == 1


async def test_an_acknowledgement_is_timed_from_the_interactions_creation() -> None:
    metrics = Metrics(cost_per_second=0.0)
    gate = AckGate(metrics)
    async with gate.acknowledging(utc_now() - timedelta(milliseconds=300)):
        pass
    with pytest.raises(RuntimeError):
        async with gate.acknowledging(utc_now()):
            raise RuntimeError("the defer failed: nothing was acknowledged")
    assert value(metrics, "jambot_ack_latency_seconds_count") == 1
    assert value(metrics, "jambot_ack_latency_seconds_bucket", le="0.25") == 0
    assert value(metrics, "jambot_ack_latency_seconds_bucket", le="0.5") == 1
