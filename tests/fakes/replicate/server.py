"""The aiohttp server that answers like Replicate's API for meta/musicgen."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections import deque
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web
from aiohttp.typedefs import Handler

from tests.fakes.replicate import files
from tests.fakes.replicate.audio import render_audio
from tests.fakes.replicate.catalog import account_json, model_json, version_json
from tests.fakes.replicate.faults import PROBLEM_JSON, HttpFault, Outcome
from tests.fakes.replicate.files import MAX_FILE_BYTES, FakeFile
from tests.fakes.replicate.predictions import FakePrediction, WallClock, new_prediction_id
from tests.fakes.replicate.records import CreateRecord, Headers, RequestRecord, UploadRecord
from tests.fakes.replicate.schema import model_rule_error, validate_musicgen_input

logger = logging.getLogger(__name__)

DEFAULT_TOKEN: Final = "r8_test_token"
DEFAULT_MODEL: Final = "meta/musicgen"
DEFAULT_VERSION: Final = "671ac645ce5e552cc63a54a2bbff63fcf798043055d2dac5fc9e36a837eedcfb"
# aiohttp refuses bodies over 1 MiB by default; a create carrying a data URI of a clip just
# under Replicate's 1 MB data URI limit is about 1.4 MB.
MAX_JSON_BODY: Final = 16 * 1024 * 1024


def _json_response(
    status: int, data: Any, *, problem: bool = False, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status,
        text=json.dumps(data),
        content_type=PROBLEM_JSON if problem else "application/json",
        headers=dict(headers or {}),
    )


def _parse_prefer_wait(header: str | None) -> float | None:
    """Seconds asked for by ``Prefer: wait`` / ``Prefer: wait=N`` (None when absent)."""
    if not header:
        return None
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        if not value:
            return 60.0
        try:
            return float(min(60, max(1, int(value.strip()))))
        except ValueError:
            return None
    return None


class FakeReplicate:
    """An aiohttp server on 127.0.0.1 that behaves like Replicate for meta/musicgen."""

    def __init__(
        self,
        token: str = DEFAULT_TOKEN,
        *,
        model: str = DEFAULT_MODEL,
        version: str = DEFAULT_VERSION,
        start_seconds: float = 0.05,
        run_seconds: float | None = 0.3,
        sample_rate: int = 32000,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.token = token
        self.model = model
        self.version = version
        self.start_seconds = start_seconds
        self.run_seconds = run_seconds
        self.sample_rate = sample_rate
        self.max_file_bytes = max_file_bytes  # uploads over this many bytes are answered 413
        self.default_outcome = Outcome.succeeded()
        # When set, every succeeded prediction's output file holds these bytes instead of a
        # rendered track (a hostile or broken output: an HTML page, a crafted WAV header).
        self.output_data: bytes | None = None

        self.creates: list[CreateRecord] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.cancels: list[str] = []
        self.polls: list[tuple[str, float]] = []
        self.downloads: list[str] = []
        self.requests: list[RequestRecord] = []
        self.uploads: list[UploadRecord] = []
        self.files: dict[str, FakeFile] = {}
        # The most predictions in flight (created, not yet ended) at once so far, counted at
        # each create: a bot's concurrency cap, measured where the money is spent.
        self.max_in_flight = 0

        self._create_faults: deque[HttpFault] = deque()
        self._poll_faults: deque[HttpFault] = deque()
        self._cancel_faults: deque[HttpFault] = deque()
        self._download_faults: deque[HttpFault] = deque()
        self._upload_faults: deque[HttpFault] = deque()
        self._input_audio: dict[str, bytes] = {}
        self._signing_key = files.new_signing_key()
        self._outcomes: deque[Outcome] = deque()
        self._audio: dict[str, bytes] = {}
        self._audio_locks: dict[str, asyncio.Lock] = {}
        self._wall = WallClock()
        self._closing = asyncio.Event()
        self._prediction_added = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, the host root (the client appends ``/v1/...``)."""
        if self._base_url is None:
            raise RuntimeError("FakeReplicate is not started")
        return self._base_url

    async def start(self, port: int = 0) -> str:
        if self._runner is not None:
            raise RuntimeError("FakeReplicate is already started")
        app = web.Application(middlewares=[self._record_request], client_max_size=MAX_JSON_BODY)
        router = app.router
        router.add_post("/v1/predictions", self._handle_create, name="create")
        router.add_get("/v1/predictions/{id}", self._handle_get, name="poll")
        router.add_post("/v1/predictions/{id}/cancel", self._handle_cancel, name="cancel")
        router.add_post(
            "/v1/models/{owner}/{name}/predictions", self._handle_model_create, name="model_create"
        )
        router.add_post("/v1/files", self._handle_upload, name="upload")
        router.add_get("/v1/files/{id}", self._handle_file, name="file")
        router.add_get("/v1/files/{id}/download", self._handle_file_download, name="file_download")
        router.add_get("/v1/account", self._handle_account, name="account")
        router.add_get("/v1/models/{owner}/{name}", self._handle_model, name="model")
        router.add_get(
            "/v1/models/{owner}/{name}/versions/{version}", self._handle_version, name="version"
        )
        router.add_route("*", "/v1/{tail:.*}", self._handle_unknown)
        router.add_get("/files/{id}/{name}", self._handle_download, name="download")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runner = runner
        host, bound_port = runner.addresses[0][:2]
        self._base_url = f"http://{host}:{bound_port}"
        logger.info("fake Replicate API listening on %s", self._base_url)
        return self._base_url

    async def close(self) -> None:
        self._closing.set()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def open_connections(self) -> int:
        """Client connections the server holds open right now (keep-alive ones included)."""
        server = self._runner.server if self._runner is not None else None
        return len(server.connections) if server is not None else 0

    async def wait_connections_closed(self, timeout: float = 2) -> None:
        """Wait until no client connection is open (a closed pool's sockets close soon after)."""
        async with asyncio.timeout(timeout):
            while self.open_connections:  # noqa: ASYNC110 - aiohttp signals no connection close
                await asyncio.sleep(0.01)

    @property
    def in_flight(self) -> int:
        """Predictions created and not ended yet (``starting`` or ``processing``) right now."""
        return sum(1 for prediction in self.predictions.values() if not prediction.terminal)

    def requests_to(self, route: str) -> list[RequestRecord]:
        """The recorded requests to ``route`` (``create`` covers both create routes)."""
        return [r for r in self.requests if r.route == route]

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- knobs --------------------------------------------------------------------------

    def fail_creates(self, *errors: HttpFault) -> None:
        self._create_faults.extend(errors)

    def fail_polls(self, *errors: HttpFault) -> None:
        self._poll_faults.extend(errors)

    def fail_cancels(self, *errors: HttpFault) -> None:
        self._cancel_faults.extend(errors)

    def fail_downloads(self, *errors: HttpFault) -> None:
        self._download_faults.extend(errors)

    def fail_uploads(self, *errors: HttpFault) -> None:
        self._upload_faults.extend(errors)

    def set_outcomes(self, *outcomes: Outcome) -> None:
        self._outcomes.extend(outcomes)

    def finish(self, prediction_id: str) -> None:
        self.predictions[prediction_id].finish()

    def remove_data(self, prediction_id: str) -> None:
        """What Replicate does an hour after an API prediction ends: no input/output/logs."""
        self.predictions[prediction_id].data_removed = True
        self._audio.pop(prediction_id, None)

    def file_bytes(self, url: str) -> bytes:
        """The content of the fake's own file that ``url`` (``urls.get``) names."""
        file_id = files.file_id_in(url, self.base_url)
        if file_id is None or file_id not in self.files:
            raise KeyError(f"{url} is not a file uploaded to this fake")
        return self.files[file_id].content

    def download_url(self, file_id: str, *, lifetime: int = 3600) -> str:
        """A signed ``/v1/files/{id}/download`` URL, as Replicate hands out for its files."""
        expiry = int(time.time()) + lifetime
        query = urllib.parse.urlencode(
            {
                "owner": files.DOWNLOAD_OWNER,
                "expiry": expiry,
                "signature": files.sign_download(self._signing_key, file_id, expiry),
            }
        )
        return f"{self.base_url}/v1/files/{file_id}/download?{query}"

    def input_audio_bytes(self, prediction_id: str) -> bytes:
        """The exact bytes the prediction received as ``input_audio`` (a data URI decoded, or
        one of the fake's files as it was at create). KeyError for none or another host's URL."""
        if prediction_id not in self._input_audio:
            raise KeyError(f"prediction {prediction_id} received no input_audio the fake holds")
        return self._input_audio[prediction_id]

    async def wait_for_prediction(self, timeout: float = 5) -> FakePrediction:
        """Wait until at least one prediction exists; return the newest."""
        if not self.predictions:
            async with asyncio.timeout(timeout):
                await self._prediction_added.wait()
        return next(reversed(self.predictions.values()))

    # ---- helpers ------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() in ("bearer", "token") and value.strip() == self.token

    async def _sleep(self, seconds: float) -> None:
        """Sleep, cut short when the fake closes."""
        if seconds <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._closing.wait(), timeout=seconds)

    async def _answer_fault(self, request: web.Request, fault: HttpFault) -> web.StreamResponse:
        await self._sleep(fault.delay)
        if fault.drop_connection:
            logger.debug("dropping connection for %s %s", request.method, request.path)
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=204)
        return fault.to_response()

    def _resolve_version(self, ref: Any) -> bool:
        return isinstance(ref, str) and ref in (
            self.version,
            self.model,
            f"{self.model}:{self.version}",
        )

    def _prediction_json(self, prediction: FakePrediction) -> dict[str, Any]:
        return prediction.to_json(self.base_url, self._wall)

    # ---- handlers -----------------------------------------------------------------------

    @web.middleware
    async def _record_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        name = request.match_info.route.name or "other"
        route = "create" if name == "model_create" else name
        headers = Headers(request.headers.items())
        record = RequestRecord(request.method, request.path, route, headers, time.monotonic())
        self.requests.append(record)
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # aiohttp's own 404/405 for paths outside the API
            record.status = exc.status
            raise
        dropped = request.transport is None or request.transport.is_closing()
        record.status = 0 if dropped else response.status
        return response

    async def _handle_create(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, model_path=None)

    async def _handle_model_create(self, request: web.Request) -> web.StreamResponse:
        owner, name = request.match_info["owner"], request.match_info["name"]
        return await self._create(request, model_path=f"{owner}/{name}")

    async def _create(self, request: web.Request, *, model_path: str | None) -> web.StreamResponse:
        raw = await request.read()
        parsed_ok = True
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                parsed_ok = False
        record = CreateRecord(
            body=body,
            headers=Headers(request.headers.items()),
            at=time.monotonic(),
            path=request.path,
        )
        self.creates.append(record)
        fault: HttpFault | None = None
        if not self._authorized(request):
            fault = HttpFault.unauthenticated()
        elif self._create_faults:
            fault = self._create_faults.popleft()
        if fault is not None:
            response = await self._answer_fault(request, fault)
            record.status = 0 if fault.drop_connection else response.status
            return response

        response = await self._create_prediction(request, body, parsed_ok, model_path, record)
        record.status = response.status
        return response

    async def _create_prediction(
        self,
        request: web.Request,
        body: Any,
        parsed_ok: bool,
        model_path: str | None,
        record: CreateRecord,
    ) -> web.Response:
        if not parsed_ok or not isinstance(body, dict):
            return _json_response(400, {"detail": "Invalid JSON body", "status": 400}, problem=True)
        if model_path is not None:
            if model_path != self.model:
                return HttpFault.not_found().to_response()
        elif "version" not in body:
            return _json_response(
                422, {"detail": "version is required", "status": 422}, problem=True
            )
        elif not self._resolve_version(body["version"]):
            return HttpFault.invalid_version().to_response()

        payload = body.get("input")
        problems = validate_musicgen_input(payload)
        if problems:
            return HttpFault.input_invalid(problems).to_response()
        assert isinstance(payload, dict)

        outcome = self._outcomes.popleft() if self._outcomes else self.default_outcome
        audio, audio_error = files.resolve_input_audio(
            payload.get("input_audio"), self.base_url, self.files
        )
        rule_error = model_rule_error(payload) or audio_error
        if rule_error is not None:
            outcome = Outcome.failed(rule_error)
        requested_seed = payload.get("seed")
        seed = (
            int(requested_seed)
            if isinstance(requested_seed, int | float) and requested_seed > 0
            else random.randrange(0, 2**32 - 1)
        )
        prediction = FakePrediction(
            id=new_prediction_id(),
            model=self.model,
            version=self.version,
            input=payload,
            outcome=outcome,
            created_at=time.monotonic(),
            start_seconds=self.start_seconds,
            run_seconds=self.run_seconds,
            seed=seed,
            rule_error=rule_error,
        )
        self.predictions[prediction.id] = prediction
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if audio is not None:
            self._input_audio[prediction.id] = audio
        record.prediction_id = prediction.id
        self._prediction_added.set()
        logger.debug("created prediction %s (outcome %s)", prediction.id, outcome.kind)

        wait = _parse_prefer_wait(request.headers.get("Prefer"))
        if wait is not None:
            deadline = time.monotonic() + wait
            while not prediction.terminal and not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await self._sleep(min(0.01, remaining))
        return _json_response(201, self._prediction_json(prediction))

    async def _handle_get(self, request: web.Request) -> web.StreamResponse:
        prediction_id = request.match_info["id"]
        self.polls.append((prediction_id, time.monotonic()))
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        if self._poll_faults:
            return await self._answer_fault(request, self._poll_faults.popleft())
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return HttpFault.not_found().to_response()
        return _json_response(200, self._prediction_json(prediction))

    async def _handle_cancel(self, request: web.Request) -> web.StreamResponse:
        prediction_id = request.match_info["id"]
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        if self._cancel_faults:
            return await self._answer_fault(request, self._cancel_faults.popleft())
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return HttpFault.not_found().to_response()
        self.cancels.append(prediction_id)
        prediction.cancel()
        return _json_response(200, self._prediction_json(prediction))

    async def _handle_upload(self, request: web.Request) -> web.StreamResponse:
        record = UploadRecord(Headers(request.headers.items()), time.monotonic())
        self.uploads.append(record)
        fault = None if self._authorized(request) else HttpFault.unauthenticated()
        if fault is None and self._upload_faults:
            fault = self._upload_faults.popleft()
        if fault is not None:
            if not fault.drop_connection:
                await request.content.read()  # answered after the body, as a server does
            response = await self._answer_fault(request, fault)
            record.status = 0 if fault.drop_connection else response.status
            return response
        parsed = await files.read_upload(request, self.max_file_bytes)
        if isinstance(parsed, HttpFault):
            record.status = parsed.status
            return parsed.to_response()
        self.files[parsed.id] = parsed
        record.status, record.file_id = 201, parsed.id
        record.filename, record.content_type = parsed.name, parsed.content_type
        record.size = len(parsed.content)
        return _json_response(201, parsed.to_json(self.base_url, self._wall))

    async def _handle_file(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        found = self.files.get(request.match_info["id"])
        if found is None:
            return HttpFault(404, {"detail": "File not found", "status": 404}).to_response()
        return _json_response(200, found.to_json(self.base_url, self._wall))

    async def _handle_file_download(self, request: web.Request) -> web.StreamResponse:
        """The bytes, for a signed URL: no token, like Replicate's own download links."""
        file_id = request.match_info["id"]
        found = self.files.get(file_id)
        if found is None or not files.download_allowed(
            self._signing_key, file_id, dict(request.query)
        ):
            return HttpFault(404, {"detail": "File not found", "status": 404}).to_response()
        return web.Response(body=found.content, content_type=found.content_type)

    async def _handle_account(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        return _json_response(200, account_json())

    async def _handle_model(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        if f"{request.match_info['owner']}/{request.match_info['name']}" != self.model:
            return HttpFault.not_found().to_response()
        return _json_response(200, model_json(self.model, self.version))

    async def _handle_version(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model != self.model or request.match_info["version"] != self.version:
            return HttpFault.not_found().to_response()
        return _json_response(200, version_json(self.version))

    async def _handle_unknown(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return HttpFault.unauthenticated().to_response()
        return HttpFault.not_found().to_response()

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        self.downloads.append(request.path)
        if self._download_faults:
            return await self._answer_fault(request, self._download_faults.popleft())
        prediction_id, name = request.match_info["id"], request.match_info["name"]
        prediction = self.predictions.get(prediction_id)
        if (
            prediction is None
            or prediction.status != "succeeded"
            or prediction.outcome.kind != "succeeded"
            or prediction.data_removed
            or name != prediction.output_name
        ):
            return web.Response(status=404, text="Not Found")
        data = await self._audio_bytes(prediction)
        content_type = "audio/mpeg" if name.endswith(".mp3") else "audio/wav"
        return web.Response(body=data, content_type=content_type)

    async def _audio_bytes(self, prediction: FakePrediction) -> bytes:
        if self.output_data is not None:
            return self.output_data
        lock = self._audio_locks.setdefault(prediction.id, asyncio.Lock())
        async with lock:
            cached = self._audio.get(prediction.id)
            if cached is None:
                cached = await asyncio.to_thread(
                    render_audio,
                    duration=prediction.duration,
                    channels=prediction.channels,
                    sample_rate=self.sample_rate,
                    output_format=str(prediction.input.get("output_format", "wav")),
                    seed=prediction.seed,
                )
                self._audio[prediction.id] = cached
            return cached
