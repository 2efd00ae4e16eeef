"""Replicate's Files API in the fake: uploads, their JSON, and the audio a prediction receives.

``POST /v1/files`` takes multipart ``content`` (the file part; its own filename and content
type count), with optional ``filename``, ``type`` and ``metadata`` fields that win over the
part's. The file JSON has the documented shape; ``urls.get`` is the file's API URL, which is
what the official client passes as a file input and what a later create may name as
``input_audio``. The bytes are served at the signed ``/v1/files/{id}/download`` route.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final

from aiohttp import BodyPartReader, web

from tests.fakes.replicate.faults import HttpFault
from tests.fakes.replicate.predictions import WallClock, new_prediction_id

MAX_FILE_BYTES: Final = 100 * 1024 * 1024
FILE_LIFETIME: Final = 3600.0  # seconds, as in the API docs' example file
DOWNLOAD_OWNER: Final = "jambot-test"
_CHUNK: Final = 64 * 1024


@dataclass
class FakeFile:
    """One uploaded file. ``created_at`` is a ``time.monotonic()`` value."""

    id: str
    name: str
    content_type: str
    content: bytes = field(repr=False)
    metadata: dict[str, Any]
    created_at: float

    def to_json(self, base_url: str, wall: WallClock) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "content_type": self.content_type,
            "size": len(self.content),
            "etag": hashlib.md5(self.content).hexdigest(),
            "checksums": {
                "sha256": hashlib.sha256(self.content).hexdigest(),
                "md5": hashlib.md5(self.content).hexdigest(),
            },
            "metadata": self.metadata,
            "created_at": wall.iso(self.created_at),
            "expires_at": wall.iso(self.created_at + FILE_LIFETIME),
            "urls": {"get": f"{base_url}/v1/files/{self.id}"},
        }


def unprocessable(detail: str) -> HttpFault:
    return HttpFault(422, {"title": "Unprocessable Entity", "detail": detail, "status": 422})


def too_large(limit: int) -> HttpFault:
    size = f"{limit // 2**20}MB" if limit % 2**20 == 0 else f"{limit} bytes"
    detail = f"Files must be less than {size} in size"
    return HttpFault(413, {"title": "Content Too Large", "detail": detail, "status": 413})


async def read_upload(request: web.Request, limit: int) -> FakeFile | HttpFault:
    """The file in a ``POST /v1/files`` body, or the fault Replicate would answer instead.

    The whole body is read even past ``limit``, so the client gets its 413 instead of a reset.
    """
    if request.content_type != "multipart/form-data":
        return unprocessable("The request must be multipart/form-data")
    fields: dict[str, str] = {}
    content: bytes | None = None
    size, part_name, part_type = 0, None, None
    async for part in await request.multipart():
        if not isinstance(part, BodyPartReader):
            return unprocessable("Nested multipart bodies are not supported")
        if part.name == "content":
            part_name, part_type = part.filename, part.headers.get("Content-Type")
            content, size = await _read_capped(part, limit)
        elif part.name:
            fields[part.name] = await part.text()
    if size > limit:
        return too_large(limit)
    if content is None:
        return unprocessable("content is required")
    return _new_file(content, fields, part_name, part_type)


async def _read_capped(part: BodyPartReader, limit: int) -> tuple[bytes, int]:
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(_CHUNK):
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    return b"".join(chunks), size


def _new_file(
    content: bytes, fields: dict[str, str], part_name: str | None, part_type: str | None
) -> FakeFile | HttpFault:
    name = fields.get("filename") or part_name
    if not name or len(name.encode()) > 255:
        return unprocessable("filename is required and must be at most 255 bytes")
    try:
        metadata = json.loads(fields.get("metadata") or "{}")
    except ValueError:
        return unprocessable("metadata must be valid JSON")
    if not isinstance(metadata, dict):
        return unprocessable("metadata must be a JSON object")
    content_type = fields.get("type") or part_type or "application/octet-stream"
    return FakeFile(new_prediction_id(), name, content_type, content, metadata, time.monotonic())


def sign_download(key: bytes, file_id: str, expiry: int) -> str:
    """The ``signature`` of a download URL: HMAC-SHA256 of ``"{owner} {id} {expiry}"``."""
    message = f"{DOWNLOAD_OWNER} {file_id} {expiry}".encode()
    return base64.b64encode(hmac.digest(key, message, "sha256")).decode()


def download_allowed(key: bytes, file_id: str, query: dict[str, str]) -> bool:
    try:
        expiry = int(query.get("expiry", ""))
    except ValueError:
        return False
    signature = sign_download(key, file_id, expiry)
    return (
        query.get("owner") == DOWNLOAD_OWNER
        and expiry > time.time()
        and hmac.compare_digest(query.get("signature", ""), signature)
    )


def new_signing_key() -> bytes:
    return secrets.token_bytes(32)


def decode_data_uri(uri: str) -> bytes | None:
    """The bytes of a ``data:`` URI (base64 or percent-encoded), or None when malformed."""
    if not uri.startswith("data:"):
        return None
    header, comma, payload = uri[5:].partition(",")
    if not comma:
        return None
    if not header.endswith(";base64"):
        return urllib.parse.unquote_to_bytes(payload)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return None


def file_id_in(url: str, base_url: str) -> str | None:
    """The id of one of the fake's own files named by ``url`` (``urls.get`` or a download)."""
    prefix = f"{base_url}/v1/files/"
    if not url.startswith(prefix):
        return None
    return url[len(prefix) :].split("?", 1)[0].split("/", 1)[0] or None


def resolve_input_audio(
    value: Any, base_url: str, files: dict[str, FakeFile]
) -> tuple[bytes | None, str | None]:
    """What a worker fetches for ``input_audio``: (bytes, None), or (None, why it failed).

    Other hosts' URLs are not fetched: (None, None), as for no ``input_audio`` at all.
    """
    if not isinstance(value, str):
        return None, None
    if value.startswith("data:"):
        data = decode_data_uri(value)
        return (data, None) if data else (None, "input_audio is not a valid data URI")
    file_id = file_id_in(value, base_url)
    if file_id is None:
        return None, None
    found = files.get(file_id)
    return (found.content, None) if found else (None, f"input_audio file {file_id} not found")
