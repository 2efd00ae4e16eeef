"""The Replicate adapter: the only module that imports `replicate` or talks HTTP to Replicate.

It creates predictions with the official client (never `run()` and its `Prefer: wait` traps),
polls them on its own loop with a deadline, downloads the output at once (Replicate deletes
it after an hour) and translates every third-party failure into `bot.music.errors`.

`RetryPolicy` is the only retry layer, and every retry it makes is logged. The official client
wraps any transport in a `RetryTransport` that silently retries GETs on 429/503/504, so only
creates (POSTs, which it never retries) go through it, on a transport this module owns and
closes. Polls and cancels use a plain httpx client on the documented routes; the download
client carries no token, because output files live on another host. Every poll first takes
a turn from the backend's `PollPacer`, so that many jobs in flight share the account's request
budget instead of each polling at its own pace.

Audio to continue goes in as a data URI when small, else through Replicate's file upload (free,
so retried like a poll): never as an earlier prediction's output URL, which dies within the hour.

`jambot check` reads the account and the model through `check_account` and `check_model` on
the plain client too: the official client has `accounts.async_current()`, but its transport
would retry a 429 or 503 silently for up to minutes, and its `Account` model requires a `name`
that Replicate's API description doesn't promise. Both reads are free and create nothing.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self, TypeVar

import httpx
from pydantic import BaseModel, Field, SecretStr, ValidationError
from replicate.client import Client
from replicate.exceptions import ReplicateError

from bot.music import errors
from bot.music.backend import CreatedCallback, Progress, ProgressCallback, Track
from bot.music.pacing import PollPacer
from bot.music.request import MusicRequest
from bot.music.retry import RetryPolicy
from bot.ops.metrics import NO_METRICS, JobMetrics, RequestKind
from bot.settings import Settings

log = logging.getLogger(__name__)

EventHook = Callable[[httpx.Response], Awaitable[None]]
Parsed = TypeVar("Parsed", bound=BaseModel)

TERMINAL = frozenset({"succeeded", "failed", "canceled", "aborted"})
MIN_POLL_INTERVAL = 0.05
OUTPUT_LIFETIME = timedelta(hours=1)
DATA_URI_LIMIT = 1_000_000  # bytes; Replicate takes data URIs only for files under 1 MB
_FILES_ROUTE = re.compile(r"/v1/files(?:/|$)")
_PREDICTION_ROUTE = re.compile(r"/v1/predictions/[^/]+$")
_CANCEL_ROUTE = re.compile(r"/v1/predictions/[^/]+/cancel$")
# The read-only routes `jambot check` uses; their callers read the status themselves.
_CHECK_ROUTE = re.compile(r"/v1/(?:account|models/[^/]+/[^/]+(?:/versions/[^/]+)?)$")
_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)%\|")  # tqdm: " 42%|████▏     | 210/500"
_COUNTER = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$", re.MULTILINE)  # audiocraft: "  210 /   500"
_SEED = re.compile(r"Using seed:? (\d+)")
_SECRET = re.compile(r"r8_\w+|(?i:bearer)\s+\S+")  # scrubbed from body excerpts, just in case
_TAG = re.compile(r"<[^<>]{0,200}>")  # a proxy's HTML page reads better without its markup
_TRANSIENT_FAILURE = re.compile(
    r"out of memory|CUDA error|OOM|interrupted|worker (?:died|lost|crashed)|timed? ?out|"
    r"connection reset|preempted|internal server error|no space left",
    re.IGNORECASE,
)


class PredictionState(BaseModel):
    """The fields of Replicate's prediction JSON we rely on, any status accepted (even aborted)."""

    id: str = Field(min_length=1)
    status: str = Field(min_length=1)
    output: Any = None
    logs: str | None = None
    error: Any = None
    metrics: dict[str, Any] | None = None
    created_at: str | None = None

    @property
    def percent(self) -> float | None:
        logs = (self.logs or "").replace("\r", "\n")
        if found := _PERCENT.findall(logs):
            return min(float(found[-1]), 100.0)
        if counters := [(int(a), int(b)) for a, b in _COUNTER.findall(logs) if int(b) > 0]:
            done, total = counters[-1]
            return min(100.0 * done / total, 100.0)
        return None

    @property
    def seed(self) -> int | None:
        found = _SEED.findall(self.logs or "")
        return int(found[-1]) if found else None

    @property
    def predict_time(self) -> float | None:
        value = (self.metrics or {}).get("predict_time")
        return float(value) if isinstance(value, int | float) else None


class FileUrls(BaseModel):
    get: str = Field(pattern=r"^https?://\S+$")


class UploadedFile(BaseModel):
    """Replicate's file JSON: the fields the official client's own model requires."""

    id: str = Field(min_length=1)
    name: str
    content_type: str
    size: int = Field(ge=0)
    etag: str
    checksums: dict[str, str]
    metadata: dict[str, Any]
    created_at: str
    urls: FileUrls


class Account(BaseModel):
    """Replicate's account JSON (`GET /v1/account`): the fields its API description requires."""

    type: str
    username: str = Field(min_length=1)


class VersionInfo(BaseModel):
    """Replicate's model version JSON (`GET /v1/models/{owner}/{name}/versions/{id}`)."""

    id: str = Field(min_length=1)
    created_at: str | None = None


class ModelInfo(BaseModel):
    """Replicate's model JSON (`GET /v1/models/{owner}/{name}`); the latest version may be null."""

    owner: str
    name: str
    latest_version: VersionInfo | None = None


@dataclass(frozen=True)
class Refused:
    """Replicate's "no" to a read-only check: its status and the title of its problem body.

    Returned rather than raised, so the check can say which setting to fix from the status
    (401 on the account: the token; 404 on the model: REPLICATE_MODEL).
    """

    status: int
    title: str


class ReplicateBackend:
    """MusicGen on Replicate. One instance (and so one set of HTTP pools) per process."""

    def __init__(
        self,
        *,
        api_token: SecretStr,
        model: str,
        base_url: str = "https://api.replicate.com",
        poll_interval: float = 0.5,
        timeout: float = 300.0,
        retry: RetryPolicy | None = None,
        max_download_bytes: int = 100 * 1024 * 1024,
        http_timeout: float = 30.0,
        upload_timeout: float = 120.0,
        metrics: JobMetrics = NO_METRICS,
        pacer: PollPacer | None = None,
    ) -> None:
        self._model, _, self._version = model.partition(":")
        self._metrics = metrics
        self._pacer = pacer or PollPacer()
        self._poll_interval = poll_interval
        self._timeout = timeout
        self._retry = retry or RetryPolicy()
        self._max_download_bytes = max_download_bytes
        self._http_timeout = http_timeout
        self._upload_timeout = upload_timeout
        self._open_clients(api_token.get_secret_value(), base_url)

    @classmethod
    def from_settings(cls, settings: Settings, metrics: JobMetrics = NO_METRICS) -> Self:
        settings.require("REPLICATE_API_TOKEN")
        assert settings.replicate_api_token is not None
        retry = RetryPolicy(
            max_attempts=settings.max_attempts, base_delay=settings.retry_base_delay_seconds
        )
        return cls(
            api_token=settings.replicate_api_token,
            model=settings.replicate_model,
            base_url=settings.replicate_base_url,
            poll_interval=settings.replicate_poll_interval,
            timeout=settings.generation_timeout_seconds,
            retry=retry,
            max_download_bytes=settings.max_download_bytes,
            metrics=metrics,
        )

    def _open_clients(self, token: str, base_url: str) -> None:
        """Three pools: creates and uploads (official client), polls and cancels (ours),
        downloads (no token).

        They share one TLS context, which is the slow part of building a client.
        """
        limits = httpx.Timeout(self._http_timeout, connect=10.0)
        tls = httpx.create_ssl_context()
        hooks: dict[str, list[EventHook]] = {"response": [self._count, _raise_translated]}
        self._create_transport = httpx.AsyncHTTPTransport(verify=tls)
        self._client = Client(
            api_token=token,
            base_url=base_url,
            timeout=limits,
            transport=self._create_transport,
            event_hooks=hooks,
        )
        self._api = httpx.AsyncClient(
            base_url=base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=limits,
            event_hooks=hooks,
            verify=tls,
        )
        self._http = httpx.AsyncClient(timeout=limits, follow_redirects=True, verify=tls)

    def set_poll_share(self, fraction: float) -> None:
        """Poll within `fraction` of the account's poll budget (the rest is other processes')."""
        self._pacer.set_share(fraction)

    async def aclose(self) -> None:
        """Close every pool. The official client holds no connection but our transport's."""
        await self._http.aclose()
        await self._api.aclose()
        await self._create_transport.aclose()

    async def _count(self, response: httpx.Response) -> None:
        """Response hook on the API clients: every answer is counted, before any is judged
        (a request that gets none is counted where its failure is caught)."""
        kind = _request_kind(response.request)
        if kind is not None:
            self._metrics.replicate_request(kind, response.status_code)

    # -- the public operations ------------------------------------------------------------

    async def generate(
        self,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
        on_created: CreatedCallback | None = None,
    ) -> Track:
        """Create, report the id, wait, download. Creates again only after a transient failure."""
        deadline = self._deadline()
        current: list[str] = []

        async def run() -> Track:
            attempt = 0
            while True:
                attempt += 1
                try:
                    prediction_id = await self._create(request.to_replicate_input())
                except errors.TransientError as exc:
                    await self._retry.backoff(attempt, exc, deadline)
                    continue
                current.append(prediction_id)
                if on_created is not None:
                    await on_created(prediction_id)
                try:
                    return await self._wait_and_fetch(prediction_id, request, on_progress)
                except errors.TransientPredictionError as exc:
                    await self._retry.backoff(attempt, exc, deadline)

        return await self._within_deadline(run(), deadline, current)

    async def resume(
        self,
        prediction_id: str,
        request: MusicRequest,
        *,
        on_progress: ProgressCallback | None = None,
    ) -> Track:
        """Wait for and download a prediction created earlier (after a restart). No create."""
        deadline = self._deadline()
        run = self._wait_and_fetch(prediction_id, request, on_progress)
        return await self._within_deadline(run, deadline, [prediction_id])

    async def cancel(self, prediction_id: str) -> None:
        """Cancel at Replicate, never raising: it runs on the way out of failures and deadlines.

        Cancelling a finished or unknown prediction, or getting an unreadable answer, is logged.
        """
        try:
            await self._pacer.errand()
            await self._api.post(f"/v1/predictions/{prediction_id}/cancel")
        except (errors.GenerationError, httpx.HTTPError) as exc:
            if isinstance(exc, httpx.HTTPError):
                self._metrics.replicate_request("cancel", None)
            reason = _translate(exc, "cancel").detail
            log.warning("cancel of prediction %s failed: %s", prediction_id, reason)
        else:
            log.info("cancelled prediction %s", prediction_id)

    async def upload_audio(
        self, data: bytes, *, filename: str, content_type: str = "audio/wav"
    ) -> str:
        """A URI for `data` that Replicate accepts as `input_audio` and keeps until it is used.

        Replicate reads data URIs only for files under 1 MB; a larger clip is uploaded and its
        file URL (`urls.get`, what the client itself passes for a file input) is returned. An
        upload costs nothing, so transient failures are retried.
        """
        if not data:
            raise errors.InvalidRequestError("The clip is empty.", f"{filename}: no audio bytes")
        if len(data) < DATA_URI_LIMIT:
            return data_uri(data, content_type)
        return await self._retry.call(lambda: self._upload(data, filename, content_type))

    async def check_account(self) -> Account | Refused:
        """The account the token belongs to, or Replicate's refusal (401: a wrong token).

        An unreachable host or an answer that isn't Replicate's raises, as everywhere else.
        """
        return await self._read("/v1/account", Account, "an account")

    async def check_model(self) -> VersionInfo | Refused:
        """The configured version (or, for `owner/name`, the model's latest one), or the refusal.

        Raises ModelNotFoundError for a model that has no version yet: nothing could run.
        """
        if self._version:
            path = f"/v1/models/{self._model}/versions/{self._version}"
            return await self._read(path, VersionInfo, "a model version")
        found = await self._read(f"/v1/models/{self._model}", ModelInfo, "a model")
        if isinstance(found, Refused):
            return found
        if found.latest_version is None:
            raise errors.ModelNotFoundError(detail=f"{self._model} has no version yet")
        return found.latest_version

    # -- steps ----------------------------------------------------------------------------

    async def _read(self, path: str, model: type[Parsed], noun: str) -> Parsed | Refused:
        """One GET on a read-only route: its parsed body, or the status it was refused with."""
        try:
            response = await self._api.get(path)
        except httpx.HTTPError as exc:
            raise _translate(exc, f"GET {path}") from exc
        if response.status_code >= 400:
            return Refused(response.status_code, _title(response))
        return _parsed(response, model, noun)

    def _deadline(self) -> float:
        return asyncio.get_running_loop().time() + self._timeout

    async def _within_deadline(
        self, work: Awaitable[Track], deadline: float, predictions: list[str]
    ) -> Track:
        try:
            async with asyncio.timeout_at(deadline):
                return await work
        except TimeoutError:
            if predictions:
                await asyncio.shield(self.cancel(predictions[-1]))
            raise errors.GenerationTimeoutError(
                detail=f"deadline of {self._timeout:.0f}s passed; predictions {predictions}"
            ) from None

    async def _create(self, payload: dict[str, Any]) -> str:
        """One create request. The client sends POSTs with no timeout at all: bound it here.

        A garbled answer stays an `UnexpectedResponseError` (permanent): a prediction may have
        been made and billed, so creating again is not safe.
        """
        try:
            async with asyncio.timeout(self._http_timeout):
                prediction = await self._send_create(payload)
        except TimeoutError:
            self._metrics.replicate_request("create", None)
            raise errors.ServiceUnavailableError(detail="create timed out") from None
        except (httpx.HTTPError, ReplicateError) as exc:
            if isinstance(exc, httpx.HTTPError):
                self._metrics.replicate_request("create", None)
            raise _translate(exc, "create") from exc
        except ValueError as exc:  # the client's own model refused a body our hook let through
            raise errors.UnexpectedResponseError(
                detail=f"create answer is not a prediction: {type(exc).__name__}"
            ) from exc
        self._metrics.prediction_created()
        log.info("created prediction %s", prediction.id)
        return str(prediction.id)

    async def _upload(self, data: bytes, filename: str, content_type: str) -> str:
        """One upload. The client sends it with no timeout at all: bound it here."""
        files = self._client.files
        await self._pacer.errand()
        try:
            async with asyncio.timeout(self._upload_timeout):
                created = await files.async_create(
                    io.BytesIO(data), filename=filename, content_type=content_type
                )
        except TimeoutError:
            self._metrics.replicate_request("upload", None)
            raise errors.ServiceUnavailableError(detail="upload timed out") from None
        except _UPLOAD_REWORDED as exc:  # the hook's other errors already say it right
            if isinstance(exc, httpx.HTTPError):
                self._metrics.replicate_request("upload", None)
            raise _upload_error(exc) from exc
        if created.size != len(data):
            raise errors.ServiceUnavailableError(
                detail=f"upload of {len(data)} bytes stored {created.size}: file {created.id}"
            )
        log.info("uploaded %s (%d bytes) as file %s", filename, len(data), created.id)
        return str(created.urls["get"])

    def _send_create(self, payload: dict[str, Any]) -> Awaitable[Any]:
        predictions = self._client.predictions
        if self._version:
            return predictions.async_create(version=self._version, input=payload)
        return predictions.async_create(model=self._model, input=payload)

    async def _poll(self, prediction_id: str) -> PredictionState:
        """One GET on the documented route (the client's own model rejects status `aborted`)."""
        try:
            response = await self._api.get(f"/v1/predictions/{prediction_id}")
            return _prediction_state(response)
        except errors.ModelNotFoundError as exc:  # a 404 here is about the prediction
            raise errors.OutputError(
                "Replicate no longer has this generation, so the track can't be fetched.",
                f"prediction {prediction_id}: {exc.detail}",
            ) from exc
        except errors.UnexpectedResponseError as exc:  # polling again costs nothing
            raise errors.ServiceUnavailableError(detail=exc.detail) from exc
        except httpx.HTTPError as exc:
            self._metrics.replicate_request("poll", None)
            raise _translate(exc, "poll") from exc

    async def _wait_and_fetch(
        self, prediction_id: str, request: MusicRequest, on_progress: ProgressCallback | None
    ) -> Track:
        loop = asyncio.get_running_loop()
        started = loop.time()
        state = await self._wait(prediction_id, started, on_progress)
        url = _output_url(state)
        if on_progress is not None:
            await on_progress(
                Progress("downloading", loop.time() - started, 100.0, 0.0, state.seed)
            )
        data = await self._retry.call(lambda: self._download(url))
        return Track(
            data=data,
            format=_extension(url, request.output_format.value),
            prediction_id=prediction_id,
            model_version=request.model_version.value,
            seed=state.seed if state.seed is not None else request.seed,
            predict_time=state.predict_time,
            elapsed=loop.time() - started,
            output_url=url,
            url_expires_at=_expiry(state.created_at),
        )

    async def _wait(
        self, prediction_id: str, started: float, on_progress: ProgressCallback | None
    ) -> PredictionState:
        """Poll until a terminal status. A failed poll is retried as a poll, never a create.

        Every poll waits for its turn from the backend's pacer, which keeps all predictions
        in flight together within the account's request budget.
        """
        loop = asyncio.get_running_loop()
        failures = 0
        processing_since: float | None = None
        eta: float | None = None
        with self._pacer.polling() as ticket:
            while True:
                await self._pacer.turn(ticket, eta)
                try:
                    state = await self._poll(prediction_id)
                    failures = 0
                except errors.TransientError as exc:
                    failures += 1
                    await self._retry.sleep(self._poll_backoff(prediction_id, failures, exc))
                    continue
                if state.status in TERMINAL:
                    self._metrics.prediction_finished(state.predict_time)
                    return _check_terminal(state)
                now = loop.time()
                if state.status == "processing" and processing_since is None:
                    processing_since = now
                eta = _eta(state.percent, now - processing_since if processing_since else None)
                if on_progress is not None:
                    progress = Progress(state.status, now - started, state.percent, eta, state.seed)
                    await on_progress(progress)
                await self._retry.sleep(self._next_poll(eta))

    def _next_poll(self, eta: float | None) -> float:
        """Poll at the configured pace, faster as the logs say the end is near."""
        if eta is None:
            return self._poll_interval
        return max(MIN_POLL_INTERVAL, min(self._poll_interval, eta / 2))

    def _poll_backoff(self, prediction_id: str, failures: int, exc: errors.TransientError) -> float:
        """The policy's delay, logged: poll retries are unbounded until the deadline."""
        delay = self._retry.delay(failures, exc)
        log.info(
            "poll of prediction %s failed (%s; %d in a row); polling again in %.2fs",
            prediction_id,
            exc.detail,
            failures,
            delay,
        )
        return delay

    async def _download(self, url: str) -> bytes:
        """Fetch the output with a size cap. Transient failures are retried by the caller."""
        answered = False
        await self._pacer.errand()
        try:
            async with self._http.stream("GET", url) as response:
                answered = True
                self._metrics.replicate_request("download", response.status_code)
                _check_download_status(response)
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_download_bytes:
                        raise errors.OutputError(detail=f"output over {size} bytes")
                    chunks.append(chunk)
        except httpx.HTTPError as exc:
            if not answered:  # one that broke off mid-body was counted with its status
                self._metrics.replicate_request("download", None)
            raise errors.ServiceUnavailableError(
                "Replicate finished, but the track couldn't be downloaded; please try again.",
                f"download failed: {type(exc).__name__}",
            ) from exc
        data = b"".join(chunks)
        if not data:
            raise errors.OutputError(detail="empty output file")
        return data


def data_uri(data: bytes, content_type: str = "audio/wav") -> str:
    """`data` inline, as Replicate reads small file inputs."""
    return f"data:{content_type};base64,{base64.b64encode(data).decode('ascii')}"


# -- translation of third-party failures (the only place that knows httpx/replicate errors) ----


async def _raise_translated(response: httpx.Response) -> None:
    """httpx response hook on the API clients: any answer that isn't what the route gives
    (a file on the files routes, a prediction on the others) raises ours.

    It runs before the official client parses the body, so a proxy's HTML page, an empty body
    or JSON without `id` never reaches `json.loads` or pydantic as a raw exception.
    """
    await response.aread()
    if response.request.method == "GET" and _CHECK_ROUTE.search(response.url.path):
        return  # `_read` turns these answers into a body or a `Refused` itself
    if response.status_code >= 400:
        what = f"{response.request.method} {response.url.path}"
        raise _from_status(response.status_code, _problem(response), response.headers, what)
    if _FILES_ROUTE.search(response.url.path):
        _parsed(response, UploadedFile, "a file")
    else:
        _prediction_state(response)


def _request_kind(request: httpx.Request) -> RequestKind | None:
    """Which of the counted requests this is; None for the read-only ones `jambot check` makes."""
    path = request.url.path
    if _FILES_ROUTE.search(path):
        return "upload"
    if _CANCEL_ROUTE.search(path):
        return "cancel"
    if request.method == "GET" and _PREDICTION_ROUTE.search(path):
        return "poll"
    if request.method == "POST" and path.endswith("/predictions"):
        return "create"
    return None


def _prediction_state(response: httpx.Response) -> PredictionState:
    return _parsed(response, PredictionState, "a prediction")


def _parsed(response: httpx.Response, model: type[Parsed], noun: str) -> Parsed:
    """The `model` in a 2xx JSON answer, or `UnexpectedResponseError` saying what came."""
    if not response.is_success or not _is_json(response):
        raise _unexpected(response, "not a JSON answer")
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        fields = ", ".join(sorted({str(e["loc"][0]) for e in exc.errors() if e["loc"]}))
        why = f"not {noun} (bad {fields})" if fields else f"not {noun}"
        raise _unexpected(response, why) from exc


def _is_json(response: httpx.Response) -> bool:
    media: str = response.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def _unexpected(response: httpx.Response, why: str) -> errors.UnexpectedResponseError:
    kind = response.headers.get("content-type") or "no content type"
    return errors.UnexpectedResponseError(
        detail=(
            f"Replicate answered {response.request.method} {response.url.path} with "
            f"{response.status_code} ({kind}), {why}: {_excerpt(response.text)!r}"
        )
    )


def _excerpt(text: str, limit: int = 120) -> str:
    """A short, single-line, token-free piece of a body, for logs."""
    flat = " ".join(_SECRET.sub("[redacted]", _TAG.sub(" ", text)).split())
    return flat if len(flat) <= limit else flat[:limit] + "..."


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return _excerpt(response.text, 200)
    if not isinstance(body, dict):
        return str(body)[:200]
    parts = [str(body[key]) for key in ("title", "detail") if body.get(key)]
    return ": ".join(parts)[:500]


def _title(response: httpx.Response) -> str:
    """A refusal in a few words: the problem body's title, else the status's reason phrase."""
    try:
        body = response.json()
    except ValueError:
        body = None
    title = body.get("title") if isinstance(body, dict) else None
    return _excerpt(str(title), 80) if title else response.reason_phrase


def _from_status(
    status: int, problem: str, headers: httpx.Headers | None = None, what: str = "a request"
) -> errors.GenerationError:
    detail = f"Replicate answered {status} to {what}: {problem}"
    if status in (401, 403):
        return errors.AuthenticationError(detail=detail)
    if status == 402:
        return errors.BillingError(detail=detail)
    if status == 413:
        return errors.InputRejectedError(
            "The clip is too large for Replicate's file upload, so it can't be sent.", detail
        )
    if status == 404:
        return errors.ModelNotFoundError(detail=detail)
    if status == 422:
        if "version" in problem.lower():
            return errors.ModelNotFoundError(detail=detail)
        return errors.InputRejectedError(
            f"Replicate rejected the request's settings ({problem[:200]}).", detail
        )
    if status == 429:
        return errors.RateLimitedError(detail=detail, retry_after=_retry_after(headers))
    if status >= 500 or status == 408:
        return errors.ServiceUnavailableError(detail=detail, retry_after=_retry_after(headers))
    return errors.PermanentError(detail=detail)


def _translate(exc: Exception, what: str = "request") -> errors.GenerationError:
    """Our error for any failure of the request named `what` (no third-party error escapes)."""
    if isinstance(exc, errors.GenerationError):
        return exc
    if isinstance(exc, ReplicateError):
        return _from_status(exc.status or 500, f"{exc.title or ''}: {exc.detail or ''}")
    if isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError):
        return errors.ServiceUnavailableError(
            "Couldn't reach Replicate; please try again in a minute.",
            f"{what} failed: {type(exc).__name__}",
        )
    return errors.ServiceUnavailableError(detail=f"unexpected HTTP failure: {type(exc).__name__}")


_UPLOAD_REWORDED = (
    errors.UnexpectedResponseError,
    errors.ModelNotFoundError,
    httpx.HTTPError,
    ReplicateError,
    ValueError,
)


def _upload_error(exc: Exception) -> errors.GenerationError:
    """Our error for a failed upload. Unlike a create's, a garbled answer is worth another
    try (nothing is billed), and a 404 means the files route, not the model, is missing."""
    if isinstance(exc, errors.UnexpectedResponseError):
        return errors.ServiceUnavailableError(detail=exc.detail)
    if isinstance(exc, errors.ModelNotFoundError):
        return errors.PermanentError(
            "Replicate's file upload isn't available, so the clip can't be sent.", exc.detail
        )
    if isinstance(exc, ValueError):  # the client's own model refused a body our hook let through
        return errors.ServiceUnavailableError(
            detail=f"upload answer is not a file: {type(exc).__name__}"
        )
    return _translate(exc, "upload")


def _retry_after(headers: httpx.Headers | None) -> float | None:
    value = headers.get("retry-after", "").strip() if headers is not None else ""
    try:
        return float(value) if value else None
    except ValueError:
        return None


def _check_download_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status in (408, 429) or status >= 500:
        raise errors.ServiceUnavailableError(
            "Replicate finished, but the track couldn't be downloaded; please try again.",
            f"download answered {status}",
            retry_after=_retry_after(response.headers),
        )
    raise errors.OutputError(detail=f"download answered {status}")


def _check_terminal(state: PredictionState) -> PredictionState:
    if state.status == "succeeded":
        return state
    if state.status == "canceled":
        raise errors.PredictionCanceledError(detail=f"prediction {state.id} was canceled")
    if state.status == "aborted":
        raise errors.TransientPredictionError(
            "Replicate dropped the generation before it started; please try again.",
            f"prediction {state.id} aborted",
        )
    reason = str(state.error or "no reason given").strip()
    detail = f"prediction {state.id} failed: {reason[:1000]}"
    if _TRANSIENT_FAILURE.search(reason):
        raise errors.TransientPredictionError(detail=detail)
    short = reason.splitlines()[-1][:300] if reason else "no reason given"
    raise errors.PredictionFailedError(f"The model couldn't make this track: {short}", detail)


def _output_url(state: PredictionState) -> str:
    output = state.output
    if isinstance(output, list) and len(output) == 1:
        output = output[0]
    if not isinstance(output, str) or not output.startswith(("https://", "http://")):
        raise errors.OutputError(detail=f"prediction {state.id} output is not a URL: {output!r}")
    return output


def _extension(url: str, fallback: str) -> str:
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return ext if ext in {"wav", "mp3", "flac", "ogg"} else fallback


def _expiry(created_at: str | None) -> datetime | None:
    if not created_at:
        return None
    try:
        return datetime.fromisoformat(created_at.replace("Z", "+00:00")) + OUTPUT_LIFETIME
    except ValueError:
        return None


def _eta(percent: float | None, processing_for: float | None) -> float | None:
    if percent is None or processing_for is None or percent <= 0:
        return None
    return max(processing_for * (100.0 - percent) / percent, 0.0)
