"""The bot's numbers for Prometheus, and the small protocol every layer reports them through.

The Replicate adapter reports its requests, the predictions it created and the GPU time of
the ones it saw finish; the scheduler reports how jobs end and how long delivery took; the
chat front reports how long an acknowledgement took. They all call a `JobMetrics`, whose
default `NO_METRICS` does nothing, so `jambot generate`, `jambot check` and unit tests build a
backend or a scheduler without thinking about metrics.

`Metrics` keeps its own `CollectorRegistry` instead of the library's global one: nothing is
registered at import time, and several bots in one process (the tests) count separately.

Labels hold only the fixed words below and HTTP status codes: never a prompt, a token, a user
or a prediction id. A scrape then reveals nothing private, and the series stay few.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "NO_METRICS",
    "JobMetrics",
    "JobOutcome",
    "Metrics",
    "NoMetrics",
    "RequestKind",
    "status_label",
]

JobOutcome = Literal["delivered", "failed", "cancelled"]
RequestKind = Literal["create", "poll", "cancel", "download", "upload"]

# Discord allows 3 s to acknowledge; the bot aims at 0.1 s (docs/benchmarks.md).
ACK_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0)
# Delivery runs the audio worker (check, transcode, waveform) and uploads to Discord.
DELIVERY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class JobMetrics(Protocol):
    """What the bot counts. Every method is cheap and never raises into its caller."""

    def job_ended(self, status: JobOutcome) -> None:
        """A job reached its terminal status (counted once: where the store's guarded
        transition said it happened)."""
        ...

    def prediction_created(self) -> None: ...

    def prediction_finished(self, gpu_seconds: float | None) -> None:
        """A prediction reached a terminal status; `gpu_seconds` is Replicate's predict_time."""
        ...

    def replicate_request(self, kind: RequestKind, status: int | None) -> None:
        """One HTTP request to Replicate (or its file host) answered with `status`; None: no
        answer came (a network failure or a timeout)."""
        ...

    def acknowledged(self, seconds: float) -> None:
        """An interaction was acknowledged `seconds` after Discord created it."""
        ...

    def delivered(self, seconds: float) -> None:
        """A track was posted `seconds` after the bot had its bytes in hand."""
        ...


class NoMetrics:
    """Counts nothing: the default wherever no `Metrics` was given."""

    def job_ended(self, status: JobOutcome) -> None:
        pass

    def prediction_created(self) -> None:
        pass

    def prediction_finished(self, gpu_seconds: float | None) -> None:
        pass

    def replicate_request(self, kind: RequestKind, status: int | None) -> None:
        pass

    def acknowledged(self, seconds: float) -> None:
        pass

    def delivered(self, seconds: float) -> None:
        pass


NO_METRICS: JobMetrics = NoMetrics()


def status_label(status: int | None) -> str:
    """An HTTP status as a label value, or "error" when there was no (sensible) answer."""
    return str(status) if status is not None and 100 <= status <= 599 else "error"


class Metrics:
    """The Prometheus implementation of `JobMetrics`, with a registry of its own.

    Spend is estimated as the scheduler estimates a job's cost: GPU seconds times
    REPLICATE_COST_PER_SECOND, here for every prediction seen to finish (Replicate bills
    failed ones too).
    """

    def __init__(self, *, cost_per_second: float) -> None:
        self._cost_per_second = cost_per_second
        registry = CollectorRegistry()  # where the metrics below live
        self.registry = CollectorRegistry()  # what is served: the same, less `_created`
        self.registry.register(_WithoutCreated(registry))
        self._jobs = Counter(
            "jambot_jobs", "Jobs that ended, by how they ended.", ["status"], registry=registry
        )
        for outcome in ("delivered", "failed", "cancelled"):
            self._jobs.labels(outcome)  # present at 0 from the start, for rate() and alerts
        self._created = Counter(
            "jambot_predictions_created", "Predictions created at Replicate.", registry=registry
        )
        self._gpu = Counter(
            "jambot_replicate_gpu_seconds",
            "GPU seconds (predict_time) of predictions seen to finish.",
            registry=registry,
        )
        self._spend = Counter(
            "jambot_spend_usd",
            "Estimated spend in US dollars: GPU seconds times REPLICATE_COST_PER_SECOND.",
            registry=registry,
        )
        self._requests = Counter(
            "jambot_replicate_requests",
            "HTTP requests to Replicate, by kind and HTTP status (error: no answer).",
            ["kind", "status"],
            registry=registry,
        )
        self._waiting = Gauge("jambot_queue_waiting", "Jobs waiting in line.", registry=registry)
        self._running = Gauge(
            "jambot_generations_running", "Jobs being generated or delivered.", registry=registry
        )
        self._ack = Histogram(
            "jambot_ack_latency_seconds",
            "From the interaction's creation (its id's timestamp) to its acknowledgement.",
            buckets=ACK_BUCKETS,
            registry=registry,
        )
        self._delivery = Histogram(
            "jambot_delivery_seconds",
            "From the finished track's bytes in hand to the track posted on Discord.",
            buckets=DELIVERY_BUCKETS,
            registry=registry,
        )

    def watch_queue(self, waiting: Callable[[], int], running: Callable[[], int]) -> None:
        """Read the line's length and the running count at each scrape (on the event loop,
        since the server that scrapes runs there), rather than tracking every change."""
        self._waiting.set_function(lambda: float(waiting()))
        self._running.set_function(lambda: float(running()))

    # -- JobMetrics ---------------------------------------------------------------------------

    def job_ended(self, status: JobOutcome) -> None:
        self._jobs.labels(status).inc()

    def prediction_created(self) -> None:
        self._created.inc()

    def prediction_finished(self, gpu_seconds: float | None) -> None:
        if gpu_seconds is None or not math.isfinite(gpu_seconds) or gpu_seconds < 0:
            return  # a counter can't go down, and a garbled answer mustn't raise here
        self._gpu.inc(gpu_seconds)
        self._spend.inc(gpu_seconds * self._cost_per_second)

    def replicate_request(self, kind: RequestKind, status: int | None) -> None:
        self._requests.labels(kind, status_label(status)).inc()

    def acknowledged(self, seconds: float) -> None:
        # The interaction's timestamp is Discord's clock: a host clock slightly behind it
        # would give a negative latency.
        self._ack.observe(max(seconds, 0.0))

    def delivered(self, seconds: float) -> None:
        self._delivery.observe(max(seconds, 0.0))

    # -- exposition ---------------------------------------------------------------------------

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class _WithoutCreated(Collector):
    """Another registry's metrics without the client's `_created` samples (the time each
    series was first seen): they would double the series, and read oddly
    (`jambot_predictions_created_created`). The library can only drop them process-wide."""

    def __init__(self, source: CollectorRegistry) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for metric in self._source.collect():  # fresh objects at every collection
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric
