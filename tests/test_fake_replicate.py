"""Self-tests of the fake Replicate API, driven through the official client where possible."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
from collections.abc import AsyncIterator

import httpx
import pydantic.v1
import pytest
import soundfile as sf
from replicate.client import Client
from replicate.exceptions import ReplicateError

from tests.fakes.replicate import (
    DEFAULT_MODEL,
    DEFAULT_VERSION,
    MAX_FILE_BYTES,
    FakeReplicate,
    HttpFault,
    Outcome,
    decode_data_uri,
    render_audio,
    validate_musicgen_input,
)

PROMPT = {"prompt": "lofi hip hop with warm keys", "duration": 2}


def local_transport() -> httpx.AsyncHTTPTransport:
    # Plain HTTP to 127.0.0.1: skipping the CA bundle saves ~50 ms per client.
    return httpx.AsyncHTTPTransport(verify=False)


@pytest.fixture
async def fake() -> AsyncIterator[FakeReplicate]:
    async with FakeReplicate(start_seconds=0.02, run_seconds=0.15) as server:
        yield server


@pytest.fixture
async def client(fake: FakeReplicate) -> AsyncIterator[Client]:
    transport = local_transport()
    api = Client(api_token=fake.token, base_url=fake.base_url, transport=transport)
    api.poll_interval = 0.01
    yield api
    await transport.aclose()


@pytest.fixture
async def http(fake: FakeReplicate) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=fake.base_url,
        headers={"Authorization": f"Bearer {fake.token}"},
        transport=local_transport(),
    ) as session:
        yield session


async def test_prediction_progresses_and_logs_grow(fake: FakeReplicate, client: Client) -> None:
    fake.start_seconds = 0.05
    fake.run_seconds = 0.3
    prediction = await client.predictions.async_create(
        version=DEFAULT_VERSION, input={**PROMPT, "seed": 1234}
    )
    first_status: str = prediction.status
    assert first_status == "starting"
    assert re.fullmatch(r"[a-z0-9]{26}", prediction.id)
    assert prediction.started_at is None
    assert prediction.metrics == {}

    seen: list[str] = []
    log_lengths: list[int] = []
    while prediction.status not in ("succeeded", "failed", "canceled"):
        await asyncio.sleep(0.02)
        await prediction.async_reload()
        seen.append(prediction.status)
        if prediction.status == "processing":
            log_lengths.append(len(prediction.logs or ""))
    assert "processing" in seen
    assert seen[-1] == "succeeded"
    assert log_lengths == sorted(log_lengths)
    assert log_lengths[-1] > log_lengths[0]

    assert prediction.logs is not None
    assert "Using seed 1234" in prediction.logs
    assert re.search(r"^\s*\d+%\|.+\| \d+/100 \[", prediction.logs, re.MULTILINE)
    progress = prediction.progress
    assert progress is not None
    assert (progress.percentage, progress.current, progress.total) == (1.0, 100, 100)
    assert isinstance(prediction.output, str)
    assert prediction.output == f"{fake.base_url}/files/{prediction.id}/out.wav"
    assert prediction.metrics is not None
    assert prediction.metrics["predict_time"] == pytest.approx(0.3, abs=0.01)
    assert prediction.completed_at is not None
    assert prediction.completed_at.endswith("Z")

    stored = fake.predictions[prediction.id]
    assert stored.status == "succeeded"
    assert stored.finished_at is not None
    assert [poll_id for poll_id, _ in fake.polls] == [prediction.id] * len(fake.polls)
    record = fake.creates[0]
    assert record.status == 201
    assert record.path == "/v1/predictions"
    assert record.body["input"]["seed"] == 1234
    assert record.headers["Authorization"] == f"Bearer {fake.token}"
    assert record.prediction_id == prediction.id


async def test_output_downloads_as_real_audio(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    stereo = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    mono_mp3 = await client.predictions.async_create(
        version=DEFAULT_VERSION,
        input={**PROMPT, "duration": 1, "model_version": "melody-large", "output_format": "mp3"},
    )
    fake.finish(stereo.id)
    fake.finish(mono_mp3.id)
    await stereo.async_reload()
    await mono_mp3.async_reload()
    wav_url, mp3_url = stereo.output, mono_mp3.output
    assert isinstance(wav_url, str)
    assert isinstance(mp3_url, str)

    # Output files need no token.
    async with httpx.AsyncClient(transport=local_transport()) as public:
        wav = await public.get(wav_url)
        mp3 = await public.get(mp3_url)
    assert wav.status_code == 200
    assert wav.headers["content-type"] == "audio/wav"
    data, rate = sf.read(io.BytesIO(wav.content))
    assert rate == 32000
    assert data.shape == (2 * 32000, 2)
    assert 0.01 < abs(data).max() < 1.0

    assert mp3_url.endswith("/out.mp3")
    assert mp3.headers["content-type"] == "audio/mpeg"
    info = sf.info(io.BytesIO(mp3.content))
    assert info.channels == 1
    assert info.duration == pytest.approx(1.0, abs=0.1)
    assert fake.downloads == [f"/files/{stereo.id}/out.wav", f"/files/{mono_mp3.id}/out.mp3"]

    fake.fail_downloads(HttpFault.server_error(503))
    failed = await http.get(wav_url)
    assert failed.status_code == 503
    again = await http.get(wav_url)
    assert again.content == wav.content


async def test_bad_token_is_401(fake: FakeReplicate) -> None:
    transport = local_transport()
    api = Client(api_token="r8_wrong", base_url=fake.base_url, transport=transport)
    try:
        with pytest.raises(ReplicateError) as caught:
            await api.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    finally:
        await transport.aclose()
    assert caught.value.status == 401
    assert caught.value.title == "Unauthenticated"
    assert caught.value.detail == "You did not pass a valid authentication token"
    assert fake.creates[0].status == 401
    assert fake.predictions == {}


async def test_throttled_create_carries_retry_after(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    fake.fail_creates(HttpFault.throttled(retry_after=2), HttpFault.throttled(retry_after=2))
    with pytest.raises(ReplicateError) as caught:
        await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    assert caught.value.status == 429
    assert "rate limit resets" in (caught.value.detail or "")

    raw = await http.post("/v1/predictions", json={"version": DEFAULT_VERSION, "input": PROMPT})
    assert raw.status_code == 429
    assert raw.headers["retry-after"] == "2"
    assert raw.headers["content-type"].startswith("application/problem+json")
    assert raw.json()["status"] == 429

    created = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    assert created.status == "starting"
    assert [record.status for record in fake.creates] == [429, 429, 201]


async def test_invalid_input_is_422_with_invalid_fields(http: httpx.AsyncClient) -> None:
    bad = {**PROMPT, "model_version": "medium", "duration": "8", "seed": None, "extra": 1}
    response = await http.post("/v1/predictions", json={"version": DEFAULT_VERSION, "input": bad})
    assert response.status_code == 422
    body = response.json()
    assert body["title"] == "Input validation failed"
    fields = {item["field"]: item for item in body["invalid_fields"]}
    assert set(fields) == {"input.model_version", "input.duration", "input.seed"}
    assert fields["input.model_version"]["type"] == "enum"
    assert fields["input.model_version"]["description"].startswith(
        'model_version must be one of the following: "stereo-melody-large"'
    )
    assert fields["input.duration"]["description"] == (
        "Invalid type. Expected: integer, given: string"
    )
    assert "- input.model_version: model_version must be one of" in body["detail"]


def test_validation_accepts_the_schema_and_ignores_unknown_keys() -> None:
    good = {
        "model_version": "melody-large",
        "prompt": "x",
        "input_audio": "https://example.com/a.wav",
        "duration": 8.0,
        "continuation": False,
        "continuation_start": 0,
        "continuation_end": 3,
        "multi_band_diffusion": True,
        "normalization_strategy": "peak",
        "top_k": 250,
        "top_p": 0,
        "temperature": 0.7,
        "classifier_free_guidance": 3,
        "output_format": "mp3",
        "seed": 7,
        "music_gen_model_version": "anything",
    }
    assert validate_musicgen_input(good) == []
    problems = validate_musicgen_input(
        {"input_audio": "not a uri", "continuation_end": -1, "continuation": 1, "top_p": "0.9"}
    )
    assert [p["type"] for p in problems] == ["format", "number_gte", "invalid_type", "invalid_type"]


async def test_versions_and_models(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    with pytest.raises(ReplicateError) as caught:
        await client.predictions.async_create(version="0" * 64, input=PROMPT)
    assert caught.value.status == 422
    assert caught.value.title == "Invalid version or not permitted"

    named = await client.predictions.async_create(
        version=f"meta/musicgen:{DEFAULT_VERSION}", input=PROMPT
    )
    assert named.version == DEFAULT_VERSION
    assert fake.creates[-1].body["version"] == f"meta/musicgen:{DEFAULT_VERSION}"

    via_model = await client.models.predictions.async_create(model="meta/musicgen", input=PROMPT)
    assert via_model.model == "meta/musicgen"
    assert fake.creates[-1].path == "/v1/models/meta/musicgen/predictions"

    other = await http.post("/v1/models/someone/else/predictions", json={"input": PROMPT})
    assert other.status_code == 404
    missing = await http.get("/v1/predictions/doesnotexist")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not found.", "status": 404}


async def test_cancel(fake: FakeReplicate, client: Client) -> None:
    fake.run_seconds = None
    prediction = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    await prediction.async_cancel()
    assert prediction.status == "canceled"
    assert prediction.completed_at is not None
    assert fake.cancels == [prediction.id]
    await prediction.async_reload()
    assert prediction.status == "canceled"
    assert prediction.output is None
    with pytest.raises(ReplicateError) as caught:
        await client.predictions.async_cancel("doesnotexist")
    assert caught.value.status == 404


async def test_outcomes_show_in_get_json(fake: FakeReplicate, http: httpx.AsyncClient) -> None:
    fake.set_outcomes(
        Outcome.failed("CUDA out of memory. Tried to allocate 2.00 GiB"),
        Outcome.aborted(),
        Outcome.malformed_output(["not-a-url"]),
        Outcome.no_output(),
    )
    ids = []
    for _ in range(5):
        created = await http.post(
            "/v1/predictions", json={"version": DEFAULT_VERSION, "input": PROMPT}
        )
        assert created.status_code == 201
        ids.append(created.json()["id"])
    for prediction_id in ids:
        fake.finish(prediction_id)
    bodies = [(await http.get(f"/v1/predictions/{i}")).json() for i in ids]

    failed, aborted, malformed, empty, default = bodies
    assert failed["status"] == "failed"
    assert failed["error"] == "CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "CUDA out of memory" in failed["logs"]
    assert aborted["status"] == "aborted"
    assert aborted["output"] is None
    assert aborted["error"] is None
    assert (malformed["status"], malformed["output"]) == ("succeeded", ["not-a-url"])
    assert (empty["status"], empty["output"]) == ("succeeded", None)
    assert default["status"] == "succeeded"
    assert default["output"].endswith("/out.wav")
    assert set(default) >= {"urls", "metrics", "data_removed", "created_at", "started_at"}


async def test_aborted_status_breaks_the_official_client(
    fake: FakeReplicate, client: Client
) -> None:
    fake.set_outcomes(Outcome.aborted())
    prediction = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    fake.finish(prediction.id)
    with pytest.raises(pydantic.v1.ValidationError):
        await prediction.async_reload()


async def test_model_rules_fail_the_prediction(fake: FakeReplicate, client: Client) -> None:
    prediction = await client.predictions.async_create(
        version=DEFAULT_VERSION, input={"duration": 2}
    )
    await prediction.async_wait()
    assert prediction.status == "failed"
    assert prediction.error == "Must provide either prompt or input_audio"
    assert "ValueError: Must provide either prompt or input_audio" in (prediction.logs or "")

    stereo_mbd = await client.predictions.async_create(
        version=DEFAULT_VERSION, input={**PROMPT, "multi_band_diffusion": True}
    )
    await stereo_mbd.async_wait()
    assert stereo_mbd.error == "Multi-Band Diffusion is only available with non-stereo models."


async def test_poll_faults_and_prefer_wait(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    prediction = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    fake.fail_polls(HttpFault.disconnect(), HttpFault.payment_required())
    with pytest.raises(httpx.RemoteProtocolError):
        await prediction.async_reload()
    with pytest.raises(ReplicateError) as caught:
        await prediction.async_reload()
    assert caught.value.status == 402
    assert caught.value.title == "Insufficient credit"
    await prediction.async_reload()
    assert prediction.status in ("starting", "processing", "succeeded")

    waited = await http.post(
        "/v1/predictions",
        json={"version": DEFAULT_VERSION, "input": PROMPT},
        headers={"Prefer": "wait=5"},
    )
    assert waited.status_code == 201
    assert waited.json()["status"] == "succeeded"


async def test_wait_for_prediction_and_remove_data(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    task = asyncio.create_task(fake.wait_for_prediction(timeout=2))
    await asyncio.sleep(0)
    created = await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    newest = await task
    assert newest.id == created.id
    assert newest.input == PROMPT

    fake.finish(created.id)
    fake.remove_data(created.id)
    body = (await http.get(f"/v1/predictions/{created.id}")).json()
    assert body["data_removed"] is True
    assert body["output"] is None
    gone = await http.get(f"/files/{created.id}/out.wav")
    assert gone.status_code == 404


async def test_non_prediction_answers_on_every_route(
    fake: FakeReplicate, http: httpx.AsyncClient
) -> None:
    created = await http.post("/v1/predictions", json={"version": DEFAULT_VERSION, "input": PROMPT})
    prediction_id = created.json()["id"]
    fake.fail_creates(HttpFault.html_page())
    fake.fail_polls(HttpFault.json_without_id(), HttpFault.empty_answer())
    fake.fail_cancels(HttpFault.json_answer([], content_type="text/plain"))

    page = await http.post("/v1/predictions", json={"version": DEFAULT_VERSION, "input": PROMPT})
    no_id = await http.get(f"/v1/predictions/{prediction_id}")
    empty = await http.get(f"/v1/predictions/{prediction_id}")
    listed = await http.post(f"/v1/predictions/{prediction_id}/cancel")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert page.text.startswith("<!DOCTYPE html>")
    assert no_id.headers["content-type"].startswith("application/json")
    assert "id" not in no_id.json() and no_id.json()["status"] == "processing"
    assert (empty.status_code, empty.content) == (200, b"")
    assert listed.headers["content-type"].startswith("text/plain")
    assert listed.json() == []
    assert fake.predictions[prediction_id].status != "canceled"


async def test_garbled_create_answers_break_the_official_client(
    fake: FakeReplicate, client: Client
) -> None:
    """Why the adapter must translate: the client lets json.loads and pydantic errors escape."""
    fake.fail_creates(HttpFault.html_page(), HttpFault.json_without_id())
    with pytest.raises(ValueError):
        await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    with pytest.raises(pydantic.v1.ValidationError):
        await client.predictions.async_create(version=DEFAULT_VERSION, input=PROMPT)
    assert [record.status for record in fake.creates] == [200, 200]
    assert fake.predictions == {}


async def test_every_request_is_recorded_with_its_answer(
    fake: FakeReplicate, http: httpx.AsyncClient
) -> None:
    created = await http.post("/v1/predictions", json={"version": DEFAULT_VERSION, "input": PROMPT})
    prediction_id = created.json()["id"]
    fake.fail_polls(HttpFault.server_error(503), HttpFault.disconnect())
    assert (await http.get(f"/v1/predictions/{prediction_id}")).status_code == 503
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(f"/v1/predictions/{prediction_id}")
    await http.get(f"/v1/predictions/{prediction_id}")
    await http.post(f"/v1/predictions/{prediction_id}/cancel")
    await http.get("/v1/hardware")  # a real route the fake doesn't play

    polls = fake.requests_to("poll")
    assert [(r.method, r.status) for r in polls] == [("GET", 503), ("GET", 0), ("GET", 200)]
    assert {r.path for r in polls} == {f"/v1/predictions/{prediction_id}"}
    assert [r.route for r in fake.requests] == [
        "create",
        "poll",
        "poll",
        "poll",
        "cancel",
        "other",
    ]
    assert fake.requests[-1].status == 404


async def test_the_read_only_routes_answer_in_the_documented_shapes(
    fake: FakeReplicate, http: httpx.AsyncClient, client: Client
) -> None:
    account = (await http.get("/v1/account")).json()
    assert {"type", "username"} <= set(account) and account["type"] in ("user", "organization")
    assert (await client.accounts.async_current()).username == account["username"]
    version = await http.get(f"/v1/models/{fake.model}/versions/{fake.version}")
    assert version.status_code == 200 and version.json()["id"] == fake.version
    assert set(version.json()) == {"id", "created_at", "cog_version", "openapi_schema"}
    model = (await http.get(f"/v1/models/{fake.model}")).json()
    assert (model["owner"], model["name"]) == tuple(fake.model.split("/"))
    assert model["latest_version"]["id"] == fake.version
    unknown = await http.get(f"/v1/models/{fake.model}/versions/{'0' * 64}")
    assert (unknown.status_code, unknown.json()) == (404, {"detail": "Not found.", "status": 404})
    assert (await http.get("/v1/models/someone/else")).status_code == 404
    assert fake.creates == []


@pytest.mark.parametrize(
    "path", ["/v1/account", f"/v1/models/{DEFAULT_MODEL}", f"/v1/models/{DEFAULT_MODEL}/versions/x"]
)
async def test_the_read_only_routes_need_the_token(fake: FakeReplicate, path: str) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url, transport=local_transport()) as anon:
        answer = await anon.get(path, headers={"Authorization": "Bearer r8_wrong"})
    assert answer.status_code == 401 and answer.json()["title"] == "Unauthenticated"


async def test_open_connections_follow_the_client(fake: FakeReplicate) -> None:
    async with httpx.AsyncClient(transport=local_transport()) as session:
        await session.get(f"{fake.base_url}/v1/predictions/x")
        assert fake.open_connections == 1
    await fake.wait_connections_closed()


# -- the Files API and input_audio ---------------------------------------------------------

WAV = render_audio(duration=0.5, channels=1, sample_rate=8000, output_format="wav")


async def test_upload_through_the_official_client_has_the_documented_shape(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    created = await client.files.async_create(
        io.BytesIO(WAV), filename="tail.wav", content_type="audio/wav", metadata={"job": 7}
    )
    assert (created.name, created.content_type, created.size) == ("tail.wav", "audio/wav", len(WAV))
    assert created.metadata == {"job": 7}
    assert created.checksums["sha256"] == hashlib.sha256(WAV).hexdigest()
    assert created.urls == {"get": f"{fake.base_url}/v1/files/{created.id}"}
    assert created.created_at.endswith("Z") and created.expires_at is not None
    [record] = fake.uploads
    assert (record.status, record.file_id, record.size) == (201, created.id, len(WAV))
    assert fake.requests_to("upload")[0].status == 201
    assert fake.file_bytes(created.urls["get"]) == WAV

    got = await http.get(f"/v1/files/{created.id}")
    assert got.headers["content-type"].startswith("application/json")
    assert got.json() == (await client.files.async_get(created.id)).dict()
    assert (await http.get("/v1/files/nope")).json() == {"detail": "File not found", "status": 404}


async def test_uploaded_bytes_download_from_a_signed_url_only(
    fake: FakeReplicate, client: Client
) -> None:
    created = await client.files.async_create(
        io.BytesIO(WAV), filename="tail.wav", content_type="audio/wav"
    )
    async with httpx.AsyncClient(transport=local_transport()) as public:  # no token
        signed = await public.get(fake.download_url(created.id))
        forged = await public.get(fake.download_url(created.id) + "x")
        expired = await public.get(fake.download_url(created.id, lifetime=-1))
    assert (signed.status_code, signed.content) == (200, WAV)
    assert signed.headers["content-type"] == "audio/wav"
    assert (forged.status_code, expired.status_code) == (404, 404)


async def test_files_routes_need_the_token(fake: FakeReplicate) -> None:
    async with httpx.AsyncClient(base_url=fake.base_url, transport=local_transport()) as anon:
        posted = await anon.post("/v1/files", files={"content": ("a.wav", WAV, "audio/wav")})
        got = await anon.get("/v1/files/anything")
    assert (posted.status_code, got.status_code) == (401, 401)
    assert posted.json()["title"] == "Unauthenticated"
    assert [u.status for u in fake.uploads] == [401] and fake.files == {}


async def test_upload_over_the_limit_is_413_problem(
    fake: FakeReplicate, client: Client, http: httpx.AsyncClient
) -> None:
    fake.max_file_bytes = 1000
    raw = await http.post("/v1/files", files={"content": ("a.wav", WAV, "audio/wav")})
    assert raw.status_code == 413
    assert raw.headers["content-type"].startswith("application/problem+json")
    assert raw.json() == {
        "title": "Content Too Large",
        "detail": "Files must be less than 1000 bytes in size",
        "status": 413,
    }
    with pytest.raises(ReplicateError) as caught:
        await client.files.async_create(io.BytesIO(WAV), filename="a.wav")
    assert caught.value.status == 413
    assert fake.files == {} and [u.status for u in fake.uploads] == [413, 413]
    assert FakeReplicate().max_file_bytes == MAX_FILE_BYTES == 100 * 2**20


async def test_upload_fields_win_over_the_parts_own(
    fake: FakeReplicate, http: httpx.AsyncClient
) -> None:
    fields = {"filename": "named.wav", "type": "audio/x-wav", "metadata": '{"a": 1}'}
    raw = await http.post(
        "/v1/files", data=fields, files={"content": ("blob", b"RIFF", "application/octet-stream")}
    )
    assert raw.status_code == 201
    body = raw.json()
    assert (body["name"], body["content_type"], body["metadata"]) == (
        "named.wav",
        "audio/x-wav",
        {"a": 1},
    )
    missing = await http.post("/v1/files", files={"other": ("a.wav", b"x", "audio/wav")})
    bad_meta = await http.post(
        "/v1/files", data={"metadata": "{"}, files={"content": ("a.wav", b"x", "audio/wav")}
    )
    not_multipart = await http.post("/v1/files", json={"content": "x"})
    assert [r.status_code for r in (missing, bad_meta, not_multipart)] == [422, 422, 422]
    assert len(fake.files) == 1


async def test_upload_faults_are_answered_after_the_body(
    fake: FakeReplicate, client: Client
) -> None:
    fake.fail_uploads(HttpFault.server_error(503))
    with pytest.raises(ReplicateError) as caught:
        await client.files.async_create(io.BytesIO(WAV), filename="a.wav")
    assert caught.value.status == 503
    await client.files.async_create(io.BytesIO(WAV), filename="a.wav")
    assert [u.status for u in fake.uploads] == [503, 201] and len(fake.files) == 1


async def test_input_audio_as_a_data_uri_or_an_uploaded_file(
    fake: FakeReplicate, client: Client
) -> None:
    created = await client.files.async_create(io.BytesIO(WAV), filename="tail.wav")
    inline = "data:audio/wav;base64," + base64.b64encode(WAV).decode()
    elsewhere = "https://cdn.example.com/riff.wav"
    ids = []
    for audio in (inline, created.urls["get"], elsewhere):
        prediction = await client.predictions.async_create(
            version=DEFAULT_VERSION, input={**PROMPT, "input_audio": audio, "continuation": True}
        )
        ids.append(prediction.id)
    assert fake.input_audio_bytes(ids[0]) == WAV
    assert fake.input_audio_bytes(ids[1]) == WAV
    with pytest.raises(KeyError):
        fake.input_audio_bytes(ids[2])  # another host's file is not fetched
    for prediction_id in ids:
        fake.finish(prediction_id)
        assert fake.predictions[prediction_id].status == "succeeded"


@pytest.mark.parametrize(
    ("audio", "error"),
    [
        ("data:audio/wav;base64,@@@@", "input_audio is not a valid data URI"),
        ("{base}/v1/files/nosuchfile", "input_audio file nosuchfile not found"),
    ],
)
async def test_input_audio_the_worker_cannot_read_fails_the_prediction(
    fake: FakeReplicate, client: Client, audio: str, error: str
) -> None:
    prediction = await client.predictions.async_create(
        version=DEFAULT_VERSION,
        input={**PROMPT, "input_audio": audio.format(base=fake.base_url), "continuation": True},
    )
    await prediction.async_wait()
    assert (prediction.status, prediction.error) == ("failed", error)


async def test_a_create_with_a_data_uri_near_the_limit_is_accepted(
    fake: FakeReplicate, http: httpx.AsyncClient
) -> None:
    data = bytes(999_999)
    audio = "data:audio/wav;base64," + base64.b64encode(data).decode()
    body = {
        "version": DEFAULT_VERSION,
        "input": {**PROMPT, "input_audio": audio, "continuation": True},
    }
    created = await http.post("/v1/predictions", json=body)
    assert created.status_code == 201
    assert fake.input_audio_bytes(created.json()["id"]) == data


def test_data_uris_decode_and_are_uris_to_the_schema() -> None:
    assert decode_data_uri("data:audio/wav;base64,UklGRg==") == b"RIFF"
    assert decode_data_uri("data:text/plain,a%20b") == b"a b"
    assert decode_data_uri("data:audio/wav;base64") is None
    assert decode_data_uri("https://example.com/a.wav") is None
    assert (
        validate_musicgen_input({"prompt": "x", "input_audio": "data:audio/wav;base64,AA=="}) == []
    )
