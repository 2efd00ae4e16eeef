"""A local stand-in for the Replicate HTTP API, serving ``meta/musicgen``.

The fake answers in the shapes the official ``replicate`` client (1.0.x) parses, so tests can
point ``replicate.Client(base_url=fake.base_url)`` at it. It models:

* bearer-token auth on every ``/v1`` route (output files are public, like replicate.delivery);
* ``POST /v1/predictions`` and ``POST /v1/models/{owner}/{name}/predictions`` with the
  model's input schema validated the way Replicate does (422 ``Input validation failed``);
* predictions whose status is derived from time: ``starting`` -> ``processing`` (logs grow
  with ``Using seed N`` and tqdm-style progress) -> an outcome chosen by the test;
* the model's own run-time checks, which end a prediction ``failed`` (not a 422);
* ``POST /v1/predictions/{id}/cancel``, ``Prefer: wait`` on create;
* real audio files (WAV or MP3) at the output URL;
* the read-only routes: ``GET /v1/account``, ``GET /v1/models/{owner}/{name}`` and
  ``.../versions/{id}`` (404 for any other model or version);
* the Files API: ``POST /v1/files`` (multipart; 413 over ``max_file_bytes``), ``GET
  /v1/files/{id}`` and signed downloads; a create's ``input_audio`` may be a data URI or one of
  these files' URLs, and ``input_audio_bytes(prediction_id)`` gives the bytes it received;
* fault injection (HTTP errors with Replicate's RFC 7807 bodies, dropped connections, delays,
  and 2xx answers that are not a prediction: a proxy's HTML page, JSON without ``id``);
* a record of every request and the status it was answered with (``requests``), and of every
  upload (``uploads``);
* the predictions in flight now (``in_flight``: created, not ended) and the most there were at
  once so far (``max_in_flight``, counted at each create).

Run it by hand with ``python -m tests.fakes.replicate --port 8765``.

The fake is a package of small modules; every public name is re-exported here: ``faults``
(HttpFault, Outcome), ``schema`` (input validation), ``catalog`` (account and model JSON),
``audio`` (render_audio), ``files`` (FakeFile, uploads and ``input_audio``), ``records``,
``predictions`` (FakePrediction and its clock), ``server`` (FakeReplicate), ``standalone``.
"""

from tests.fakes.replicate.audio import render_audio
from tests.fakes.replicate.catalog import ACCOUNT_USERNAME, account_json, model_json, version_json
from tests.fakes.replicate.faults import HttpFault, Outcome
from tests.fakes.replicate.files import MAX_FILE_BYTES, FakeFile, decode_data_uri
from tests.fakes.replicate.predictions import FakePrediction
from tests.fakes.replicate.records import CreateRecord, Headers, RequestRecord, UploadRecord
from tests.fakes.replicate.schema import MODEL_VERSIONS, validate_musicgen_input
from tests.fakes.replicate.server import (
    DEFAULT_MODEL,
    DEFAULT_TOKEN,
    DEFAULT_VERSION,
    FakeReplicate,
)
from tests.fakes.replicate.standalone import main

__all__ = [
    "ACCOUNT_USERNAME",
    "DEFAULT_MODEL",
    "DEFAULT_TOKEN",
    "DEFAULT_VERSION",
    "MAX_FILE_BYTES",
    "MODEL_VERSIONS",
    "CreateRecord",
    "FakeFile",
    "FakePrediction",
    "FakeReplicate",
    "Headers",
    "HttpFault",
    "Outcome",
    "RequestRecord",
    "UploadRecord",
    "account_json",
    "decode_data_uri",
    "main",
    "model_json",
    "render_audio",
    "validate_musicgen_input",
    "version_json",
]
