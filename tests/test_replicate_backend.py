"""The Replicate adapter against the loopback fake, through the real `replicate` client."""

from __future__ import annotations

import base64
import functools
import io
import logging

import pytest
import soundfile as sf

from bot.music import errors
from bot.music.backend import Progress
from bot.music.replicate import DATA_URI_LIMIT, ReplicateBackend
from bot.music.request import MusicRequest
from tests.conftest import make_backend
from tests.fakes.replicate import FakeReplicate, HttpFault, Outcome, render_audio
from tests.test_request import DEFAULT_INPUT


def request(**fields: object) -> MusicRequest:
    return MusicRequest.parse({"prompt": "warm lofi beat", "duration": 2, **fields})


async def create_then_crash(backend: ReplicateBackend) -> str:
    """Create a prediction and die right after its id was handed over (as a crash would)."""
    created: list[str] = []

    async def on_created(prediction_id: str) -> None:
        created.append(prediction_id)
        raise RuntimeError("the process dies right after committing the id")

    with pytest.raises(RuntimeError):
        await backend.generate(request(), on_created=on_created)
    return created[0]


async def test_success_returns_audio_of_the_requested_length(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    created: list[str] = []
    events: list[Progress] = []

    async def on_created(prediction_id: str) -> None:
        assert not [p for p, _ in replicate_fake.polls if p == prediction_id]  # before any poll
        created.append(prediction_id)

    async def on_progress(progress: Progress) -> None:
        events.append(progress)

    track = await backend.generate(
        request(seed=1234), on_progress=on_progress, on_created=on_created
    )
    assert created == [track.prediction_id]
    info = sf.info(io.BytesIO(track.data))
    assert info.duration == pytest.approx(2, abs=0.05)
    assert info.channels == 2
    assert track.format == "wav" and track.seed == 1234
    assert track.model_version == "stereo-large"
    assert track.predict_time is not None and track.predict_time > 0
    assert track.url_expires_at is not None
    statuses = {event.status for event in events}
    assert {"processing", "downloading"} <= statuses
    assert any(event.percent is not None for event in events)
    assert len(replicate_fake.creates) == 1


async def test_create_body_is_exact_for_the_default_request(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    await backend.generate(MusicRequest.parse({"prompt": "warm lofi beat"}))
    assert replicate_fake.creates[0].path == "/v1/predictions"
    assert replicate_fake.creates[0].body == {
        "version": replicate_fake.version,
        "input": DEFAULT_INPUT,
    }


async def test_create_body_is_exact_with_every_option(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    full = request(
        model_version="melody-large",
        temperature=0.5,
        top_k=10,
        top_p=0.95,
        classifier_free_guidance=7,
        output_format="mp3",
        normalization_strategy="rms",
        seed=99,
        input_audio="https://cdn.example.com/riff.wav",
        continuation=True,
        continuation_start=1,
        continuation_end=3,
    )
    track = await backend.generate(full)
    assert replicate_fake.creates[0].body["input"] == {
        "prompt": "warm lofi beat",
        "model_version": "melody-large",
        "duration": 2,
        "temperature": 0.5,
        "top_k": 10,
        "top_p": 0.95,
        "classifier_free_guidance": 7,
        "output_format": "mp3",
        "normalization_strategy": "rms",
        "seed": 99,
        "input_audio": "https://cdn.example.com/riff.wav",
        "continuation": True,
        "continuation_start": 1,
        "continuation_end": 3,
    }
    assert track.format == "mp3"
    assert sf.info(io.BytesIO(track.data)).channels == 1


async def test_model_without_version_uses_the_models_endpoint(
    replicate_fake: FakeReplicate,
) -> None:
    backend = make_backend(replicate_fake, model=replicate_fake.model)
    try:
        await backend.generate(request())
    finally:
        await backend.aclose()
    assert replicate_fake.creates[0].path == f"/v1/models/{replicate_fake.model}/predictions"
    assert "version" not in replicate_fake.creates[0].body


@pytest.mark.parametrize(
    ("fault", "error_type", "phrase"),
    [
        (HttpFault.unauthenticated(), errors.AuthenticationError, "REPLICATE_API_TOKEN"),
        (HttpFault.forbidden(), errors.AuthenticationError, "REPLICATE_API_TOKEN"),
        (HttpFault.payment_required(), errors.BillingError, "billing"),
        (HttpFault.not_found(), errors.ModelNotFoundError, "REPLICATE_MODEL"),
        (HttpFault.invalid_version(), errors.ModelNotFoundError, "REPLICATE_MODEL"),
        (HttpFault.input_invalid(), errors.InputRejectedError, "rejected"),
    ],
)
async def test_permanent_create_errors_are_not_retried(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    fault: HttpFault,
    error_type: type[errors.GenerationError],
    phrase: str,
) -> None:
    replicate_fake.fail_creates(fault, fault, fault)
    with pytest.raises(error_type) as caught:
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1
    assert phrase in caught.value.user_message
    assert str(fault.status) in caught.value.detail


async def test_a_wrong_token_is_reported_without_leaking_it(
    replicate_fake: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "r8_wrong_secret_value_123"
    backend = make_backend(replicate_fake, token=secret)
    try:
        with pytest.raises(errors.AuthenticationError) as caught:
            await backend.generate(request())
    finally:
        await backend.aclose()
    assert len(replicate_fake.creates) == 1
    text = f"{caught.value.user_message} {caught.value.detail} {caught.value!r}"
    assert secret not in text
    assert secret not in caplog.text


async def test_429_waits_as_long_as_retry_after_then_succeeds(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_creates(HttpFault.throttled(retry_after=1))
    track = await backend.generate(request())
    first, second = replicate_fake.creates
    assert (first.status, second.status) == (429, 201)
    assert second.at - first.at >= 0.95
    assert track.prediction_id == second.prediction_id


async def test_5xx_twice_then_success(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_creates(HttpFault.server_error(502), HttpFault.server_error(503))
    track = await backend.generate(request())
    assert [c.status for c in replicate_fake.creates] == [502, 503, 201]
    assert len(replicate_fake.predictions) == 1 and track.data


async def test_5xx_beyond_max_attempts_gives_up(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_creates(*[HttpFault.server_error(500)] * 3)
    with pytest.raises(errors.ServiceUnavailableError) as caught:
        await backend.generate(request())
    assert len(replicate_fake.creates) == 3
    assert "try again" in caught.value.user_message


async def test_connection_drop_on_create_is_transient(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_creates(HttpFault.disconnect())
    await backend.generate(request())
    assert len(replicate_fake.creates) == 2 and len(replicate_fake.predictions) == 1


async def test_poll_failures_are_retried_as_polls_with_one_create(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_polls(
        HttpFault.server_error(500), HttpFault.disconnect(), HttpFault.throttled(retry_after=0)
    )
    track = await backend.generate(request())
    assert len(replicate_fake.creates) == 1
    assert len(replicate_fake.polls) >= 4
    assert track.data


async def test_poll_with_a_revoked_token_fails_at_once(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_polls(HttpFault.unauthenticated())
    with pytest.raises(errors.AuthenticationError):
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1


async def test_failed_with_a_transient_reason_is_created_again(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.set_outcomes(Outcome.failed(), Outcome.succeeded())
    created: list[str] = []

    async def on_created(prediction_id: str) -> None:
        created.append(prediction_id)

    track = await backend.generate(request(), on_created=on_created)
    assert len(replicate_fake.creates) == 2
    assert created == [c.prediction_id for c in replicate_fake.creates]
    assert track.prediction_id == created[-1]


async def test_failed_with_a_permanent_reason_keeps_the_models_words(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    reason = "ValueError: Melody conditioning requires a melody model"
    replicate_fake.set_outcomes(Outcome.failed(reason))
    with pytest.raises(errors.PredictionFailedError) as caught:
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1
    assert "Melody conditioning requires a melody model" in caught.value.user_message


async def test_canceled_prediction(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.set_outcomes(Outcome.canceled())
    with pytest.raises(errors.PredictionCanceledError):
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1


async def test_aborted_is_understood_and_retried(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.set_outcomes(Outcome.aborted(), Outcome.succeeded())
    track = await backend.generate(request())
    assert len(replicate_fake.creates) == 2 and track.data


async def test_aborted_every_time_gives_up_after_max_attempts(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.set_outcomes(*[Outcome.aborted()] * 3)
    with pytest.raises(errors.TransientPredictionError):
        await backend.generate(request())
    assert len(replicate_fake.creates) == 3


async def test_deadline_cancels_at_replicate(replicate_fake: FakeReplicate) -> None:
    replicate_fake.run_seconds = None  # stays processing until finished
    backend = make_backend(replicate_fake, timeout=0.6)
    try:
        with pytest.raises(errors.GenerationTimeoutError) as caught:
            await backend.generate(request())
    finally:
        await backend.aclose()
    assert replicate_fake.cancels == [replicate_fake.creates[0].prediction_id]
    assert "took too long" in caught.value.user_message


async def test_download_failure_is_retried_then_succeeds(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_downloads(HttpFault.server_error(503))
    track = await backend.generate(request())
    assert len(replicate_fake.downloads) >= 2 and track.data
    assert len(replicate_fake.creates) == 1


async def test_download_gone_is_an_output_error_without_new_create(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_downloads(HttpFault.not_found())
    with pytest.raises(errors.OutputError):
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1


async def test_download_over_the_size_cap(replicate_fake: FakeReplicate) -> None:
    backend = make_backend(replicate_fake, max_download_bytes=1000)
    try:
        with pytest.raises(errors.OutputError):
            await backend.generate(request())
    finally:
        await backend.aclose()


@pytest.mark.parametrize("outcome", [Outcome.malformed_output(), Outcome.no_output()])
async def test_malformed_output(
    replicate_fake: FakeReplicate, backend: ReplicateBackend, outcome: Outcome
) -> None:
    replicate_fake.set_outcomes(outcome)
    with pytest.raises(errors.OutputError):
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1


async def test_resume_polls_the_same_prediction_and_creates_nothing(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.run_seconds = None
    prediction_id = await create_then_crash(backend)
    replicate_fake.finish(prediction_id)
    track = await backend.resume(prediction_id, request())
    assert track.prediction_id == prediction_id
    assert len(replicate_fake.creates) == 1


async def test_cancel_reaches_replicate(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.run_seconds = None
    prediction_id = await create_then_crash(backend)
    await backend.cancel(prediction_id)
    assert replicate_fake.cancels == [prediction_id]
    assert replicate_fake.predictions[prediction_id].status == "canceled"


@pytest.mark.parametrize(
    ("logs", "percent", "seed"),
    [
        ("Using seed 42\n 42%|████▏     | 210/500 [00:04<00:06, 48.1it/s]", 42.0, 42),
        ("Using seed: 7\n     50 /    400\r    100 /    400\r", 25.0, 7),
        ("loading weights\n", None, None),
        (None, None, None),
    ],
)
def test_progress_and_seed_come_from_the_logs(
    logs: str | None, percent: float | None, seed: int | None
) -> None:
    from bot.music.replicate import PredictionState

    state = PredictionState(id="x", status="processing", logs=logs)
    assert state.percent == percent
    assert state.seed == seed


async def test_resume_of_a_vanished_prediction_says_so(backend: ReplicateBackend) -> None:
    with pytest.raises(errors.OutputError) as caught:
        await backend.resume("gone0000000000000000000000", request())
    assert "no longer has this generation" in caught.value.user_message


async def test_resume_after_replicate_removed_the_output(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    track = await backend.generate(request())
    replicate_fake.remove_data(track.prediction_id)  # what Replicate does after an hour
    with pytest.raises(errors.OutputError):
        await backend.resume(track.prediction_id, request())
    assert len(replicate_fake.creates) == 1


def poll_retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.music.replicate" and "polling again in" in r.getMessage()
    ]


async def test_every_poll_retry_reaches_the_fake_and_is_logged(
    replicate_fake: FakeReplicate, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    replicate_fake.fail_polls(*[HttpFault.server_error(503)] * 4)
    backend = make_backend(replicate_fake, max_attempts=1)
    try:
        track = await backend.generate(request())
    finally:
        await backend.aclose()
    statuses = [r.status for r in replicate_fake.requests_to("poll")]
    assert statuses[:5] == [503, 503, 503, 503, 200]
    lines = poll_retry_lines(caplog)
    assert len(lines) == 4
    assert all("503" in line and track.prediction_id in line for line in lines)
    assert len(replicate_fake.creates) == 1 and track.data


GARBLED = [
    HttpFault.html_page(),
    HttpFault.json_without_id(),
    HttpFault.json_answer({"id": "abc"}),
    HttpFault.json_answer([]),
    HttpFault.empty_answer(),
    HttpFault.json_answer({"id": "abc", "status": "processing"}, content_type="text/plain"),
]


@pytest.mark.parametrize("fault", GARBLED)
async def test_a_garbled_poll_answer_is_polled_again(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    caplog: pytest.LogCaptureFixture,
    fault: HttpFault,
) -> None:
    caplog.set_level(logging.INFO)
    replicate_fake.fail_polls(fault)
    track = await backend.generate(request())
    assert len(replicate_fake.creates) == 1 and track.data
    assert replicate_fake.requests_to("poll")[0].status == 200
    [line] = poll_retry_lines(caplog)
    assert "answered GET" in line and "r8_" not in line


@pytest.mark.parametrize(
    "fault",
    [
        *GARBLED,
        HttpFault.json_answer(
            {"id": "a" * 26, "model": "meta/musicgen", "version": "v", "status": "starting"},
            status=201,
            content_type="text/html",
        ),
    ],
)
async def test_a_garbled_create_answer_is_permanent_and_never_created_again(
    replicate_fake: FakeReplicate, backend: ReplicateBackend, fault: HttpFault
) -> None:
    replicate_fake.fail_creates(fault, fault, fault)
    with pytest.raises(errors.UnexpectedResponseError) as caught:
        await backend.generate(request())
    assert len(replicate_fake.creates) == 1
    assert replicate_fake.requests_to("poll") == []
    error = caught.value
    assert isinstance(error, errors.PermanentError)
    assert "couldn't understand" in error.user_message
    assert "<" not in error.user_message and "{" not in error.user_message
    assert str(fault.status) in error.detail and replicate_fake.token not in error.detail


@pytest.mark.parametrize(
    "fault", [HttpFault.html_page(), HttpFault.json_without_id(), HttpFault.empty_answer()]
)
async def test_a_garbled_cancel_answer_is_only_logged(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    caplog: pytest.LogCaptureFixture,
    fault: HttpFault,
) -> None:
    replicate_fake.run_seconds = None
    prediction_id = await create_then_crash(backend)
    replicate_fake.fail_cancels(fault)
    await backend.cancel(prediction_id)
    [cancel] = replicate_fake.requests_to("cancel")
    assert cancel.status == 200
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"cancel of prediction {prediction_id} failed" in warning
    assert "answered POST" in warning


async def test_a_deadline_with_a_garbled_cancel_answer_still_times_out(
    replicate_fake: FakeReplicate,
) -> None:
    replicate_fake.run_seconds = None
    replicate_fake.fail_cancels(HttpFault.html_page())
    backend = make_backend(replicate_fake, timeout=0.4)
    try:
        with pytest.raises(errors.GenerationTimeoutError):
            await backend.generate(request())
    finally:
        await backend.aclose()
    assert len(replicate_fake.requests_to("cancel")) == 1


async def test_downloads_carry_no_token_and_api_calls_do(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    await backend.generate(request())
    [download] = replicate_fake.requests_to("download")
    assert "authorization" not in download.headers
    for route in ("create", "poll"):
        for record in replicate_fake.requests_to(route):
            assert record.headers["Authorization"] == f"Bearer {replicate_fake.token}"


async def test_aclose_closes_every_connection(replicate_fake: FakeReplicate) -> None:
    backend = make_backend(replicate_fake)
    replicate_fake.run_seconds = None
    prediction_id = await create_then_crash(backend)
    replicate_fake.finish(prediction_id)
    await backend.resume(prediction_id, request())  # poll and download pools
    await backend.cancel(prediction_id)
    assert replicate_fake.open_connections > 0  # keep-alive connections of the pools
    await backend.aclose()
    await replicate_fake.wait_connections_closed()


# -- audio to continue: inline when small, uploaded when not --------------------------------


@functools.cache
def clip(seconds: float) -> bytes:
    """A 16-bit stereo WAV, as the bot's own tracks are cut (128,000 bytes a second)."""
    return render_audio(duration=seconds, channels=2, sample_rate=32000, output_format="wav")


SMALL, LARGE = 1.6, 16.0  # about 200 KB and 2 MB


def upload_retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "bot.music.retry" and "POST /v1/files" in r.getMessage()
    ]


async def test_a_small_clip_goes_inline_without_an_upload(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    data = clip(SMALL)
    assert 150_000 < len(data) < DATA_URI_LIMIT
    uri = await backend.upload_audio(data, filename="tail.wav")
    prefix = "data:audio/wav;base64,"
    assert uri.startswith(prefix)
    assert base64.b64decode(uri.removeprefix(prefix)) == data
    assert replicate_fake.requests == [] and replicate_fake.uploads == []


async def test_a_large_clip_is_uploaded_once_and_its_url_holds_the_clip(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    data = clip(LARGE)
    assert len(data) > 2_000_000
    url = await backend.upload_audio(data, filename="tail.wav")
    [upload] = replicate_fake.requests_to("upload")
    assert (upload.method, upload.status) == ("POST", 201)
    assert upload.headers["Authorization"] == f"Bearer {replicate_fake.token}"
    [record] = replicate_fake.uploads
    assert (record.filename, record.content_type, record.size) == (
        "tail.wav",
        "audio/wav",
        len(data),
    )
    assert url == f"{replicate_fake.base_url}/v1/files/{record.file_id}"
    assert replicate_fake.file_bytes(url) == data


@pytest.mark.parametrize("seconds", [SMALL, LARGE])
async def test_a_continuation_reaches_the_model_with_the_exact_clip(
    replicate_fake: FakeReplicate, backend: ReplicateBackend, seconds: float
) -> None:
    data = clip(seconds)
    uri = await backend.upload_audio(data, filename="tail.wav")
    extended = request(seed=5).continuing(uri, duration=20, max_duration=30)
    track = await backend.generate(extended)
    [create] = replicate_fake.creates
    assert create.status == 201 and create.body["input"]["input_audio"] == uri
    assert replicate_fake.predictions[track.prediction_id].error_text() is None
    assert replicate_fake.input_audio_bytes(track.prediction_id) == data


@pytest.mark.parametrize(
    ("fault", "error_type", "phrase"),
    [
        (None, errors.InputRejectedError, "too large for Replicate's file upload"),
        (HttpFault.unauthenticated(), errors.AuthenticationError, "REPLICATE_API_TOKEN"),
        (HttpFault.forbidden(), errors.AuthenticationError, "REPLICATE_API_TOKEN"),
        (HttpFault.not_found(), errors.PermanentError, "file upload isn't available"),
    ],
)
async def test_a_refused_upload_is_permanent_and_said_in_a_sentence(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    fault: HttpFault | None,
    error_type: type[errors.GenerationError],
    phrase: str,
) -> None:
    if fault is None:
        replicate_fake.max_file_bytes = 1_500_000
    else:
        replicate_fake.fail_uploads(fault, fault, fault)
    with pytest.raises(error_type) as caught:
        await backend.upload_audio(clip(LARGE), filename="tail.wav")
    assert isinstance(caught.value, errors.PermanentError)
    assert phrase in caught.value.user_message and caught.value.user_message.endswith(".")
    [upload] = replicate_fake.requests_to("upload")
    assert str(upload.status) in caught.value.detail and "POST /v1/files" in caught.value.detail
    assert replicate_fake.files == {}


async def test_a_wrong_token_on_upload_is_an_authentication_error(
    replicate_fake: FakeReplicate,
) -> None:
    backend = make_backend(replicate_fake, token="r8_wrong_secret_value_456")
    try:
        with pytest.raises(errors.AuthenticationError) as caught:
            await backend.upload_audio(clip(LARGE), filename="tail.wav")
    finally:
        await backend.aclose()
    assert [u.status for u in replicate_fake.uploads] == [401]
    assert "r8_wrong" not in caught.value.detail


@pytest.mark.parametrize("fault", [HttpFault.server_error(503), HttpFault.disconnect()])
async def test_a_failed_upload_is_retried_once_and_logged(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    caplog: pytest.LogCaptureFixture,
    fault: HttpFault,
) -> None:
    caplog.set_level(logging.INFO)
    replicate_fake.fail_uploads(fault)
    data = clip(LARGE)
    url = await backend.upload_audio(data, filename="tail.wav")
    assert [u.status for u in replicate_fake.uploads] == [fault.status, 201]
    assert replicate_fake.file_bytes(url) == data
    retries = [r.getMessage() for r in caplog.records if r.name == "bot.music.retry"]
    assert len(retries) == 1 and "retrying in" in retries[0]


GOOD_FILE = {
    "id": "cneqzikepnug6xezperrr4z55o",
    "name": "tail.wav",
    "content_type": "audio/wav",
    "size": 1,
    "etag": "e",
    "checksums": {},
    "metadata": {},
    "created_at": "2024-02-21T12:54:18Z",
    "expires_at": None,
    "urls": {"get": "https://api.replicate.com/v1/files/cneqzikepnug6xezperrr4z55o"},
}
GARBLED_FILES = [
    HttpFault.html_page(201),
    HttpFault.empty_answer(201),
    HttpFault.json_answer([], status=201),
    HttpFault.json_answer({"id": "abc"}, status=201),
    HttpFault.json_answer({**GOOD_FILE, "urls": {}}, status=201),
    HttpFault.json_answer({**GOOD_FILE, "urls": {"get": "not a url"}}, status=201),
    HttpFault.json_answer(GOOD_FILE, status=201, content_type="text/plain"),
]


@pytest.mark.parametrize("fault", GARBLED_FILES)
async def test_a_garbled_upload_answer_is_a_typed_error(
    replicate_fake: FakeReplicate,
    backend: ReplicateBackend,
    caplog: pytest.LogCaptureFixture,
    fault: HttpFault,
) -> None:
    caplog.set_level(logging.INFO)
    replicate_fake.fail_uploads(fault, fault, fault)
    with pytest.raises(errors.ServiceUnavailableError) as caught:
        await backend.upload_audio(clip(LARGE), filename="tail.wav")
    assert len(replicate_fake.uploads) == 3  # nothing is billed, so it was tried again
    detail = caught.value.detail
    assert "answered POST /v1/files with 201" in detail and replicate_fake.token not in detail
    assert "try again" in caught.value.user_message
    assert len(upload_retry_lines(caplog)) == 2


async def test_an_upload_answer_of_the_wrong_size_is_tried_again(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    replicate_fake.fail_uploads(HttpFault.json_answer(GOOD_FILE, status=201))
    data = clip(LARGE)
    url = await backend.upload_audio(data, filename="tail.wav")
    assert [u.status for u in replicate_fake.requests_to("upload")] == [201, 201]
    assert replicate_fake.file_bytes(url) == data


async def test_an_empty_clip_is_refused_before_any_request(
    replicate_fake: FakeReplicate, backend: ReplicateBackend
) -> None:
    with pytest.raises(errors.InvalidRequestError):
        await backend.upload_audio(b"", filename="tail.wav")
    assert replicate_fake.requests == []
