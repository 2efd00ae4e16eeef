"""What the fake remembers of each request, for tests to assert on."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


class Headers(dict[str, str]):
    """Request headers: keys stored lower-case, looked up case-insensitively."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__((key.lower(), value) for key, value in items)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass
class CreateRecord:
    """One create request that reached the fake, whatever it was answered."""

    body: Any
    headers: Headers
    at: float
    path: str
    status: int = 0  # HTTP status answered; 0 when the connection was dropped
    prediction_id: str | None = None


@dataclass
class RequestRecord:
    """One request that reached the fake: ``route`` is create, poll, cancel, download, upload,
    file, file_download or other."""

    method: str
    path: str
    route: str
    headers: Headers
    at: float
    status: int = 0  # HTTP status answered; 0 when the connection was dropped


@dataclass
class UploadRecord:
    """One ``POST /v1/files`` that reached the fake, whatever it was answered."""

    headers: Headers
    at: float
    status: int = 0  # HTTP status answered; 0 when the connection was dropped
    file_id: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None
