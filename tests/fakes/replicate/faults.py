"""The fake's answers other than the normal one: HTTP faults, and how a prediction ends.

Shapes are Replicate's own (RFC 7807 problem bodies, a proxy's HTML page on a 502), so the
client meets in tests exactly what it meets in production.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Self

from aiohttp import web

PROBLEM_JSON: Final = "application/problem+json"

Status = Literal["starting", "processing", "succeeded", "failed", "canceled", "aborted"]
OutcomeKind = Literal["succeeded", "failed", "canceled", "aborted", "malformed_output", "no_output"]


@dataclass(frozen=True)
class HttpFault:
    """An answer the fake gives instead of the normal one.

    ``body`` (any JSON value) is sent as ``application/problem+json``; ``text`` (if set) is sent
    verbatim instead, with the ``Content-Type`` from ``headers`` (default ``text/html``).
    ``delay`` seconds pass before answering. ``drop_connection`` closes the connection without
    any answer.
    """

    status: int
    body: Any = None
    headers: dict[str, str] | None = None
    text: str | None = None
    delay: float = 0.0
    drop_connection: bool = False

    @classmethod
    def unauthenticated(cls) -> Self:
        return cls(
            401,
            {
                "title": "Unauthenticated",
                "detail": "You did not pass a valid authentication token",
                "status": 401,
            },
        )

    @classmethod
    def payment_required(cls) -> Self:
        return cls(
            402,
            {
                "title": "Insufficient credit",
                "detail": (
                    "You have insufficient credit to run this model. Go to "
                    "https://replicate.com/account/billing#billing to purchase credit. Once you "
                    "purchase credit, please wait a few minutes before trying again."
                ),
                "status": 402,
            },
        )

    @classmethod
    def forbidden(cls) -> Self:
        return cls(
            403,
            {
                "title": "Forbidden",
                "detail": "You do not have permission to perform this action.",
                "status": 403,
            },
        )

    @classmethod
    def not_found(cls) -> Self:
        return cls(404, {"detail": "Not found.", "status": 404})

    @classmethod
    def invalid_version(cls) -> Self:
        return cls(
            422,
            {
                "title": "Invalid version or not permitted",
                "detail": (
                    "The specified version does not exist (or perhaps you don't have "
                    "permission to use it?)"
                ),
                "status": 422,
            },
        )

    @classmethod
    def input_invalid(cls, fields: Iterable[Mapping[str, str]] | None = None) -> Self:
        """422 ``Input validation failed``; ``fields`` are ``{type, field, description}``."""
        invalid = [dict(f) for f in fields] if fields is not None else []
        if not invalid:
            invalid = [{"type": "required", "field": "input", "description": "prompt is required"}]
        detail = "".join(f"- {f['field']}: {f['description']}\n" for f in invalid)
        return cls(
            422,
            {
                "detail": detail,
                "status": 422,
                "title": "Input validation failed",
                "invalid_fields": invalid,
            },
        )

    @classmethod
    def throttled(cls, retry_after: int = 1) -> Self:
        """429 with ``Retry-After``; the detail names the same number of seconds."""
        return cls(
            429,
            {
                "detail": f"Request was throttled. Your rate limit resets in ~{retry_after}s.",
                "status": 429,
            },
            headers={"Retry-After": str(retry_after)},
        )

    @classmethod
    def server_error(cls, status: int = 500) -> Self:
        """A 5xx. 500 comes as a JSON problem; 502/503/504 as the HTML page a proxy sends."""
        if status == 500:
            return cls(500, {"title": "Internal Server Error", "detail": "", "status": 500})
        reason = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}.get(
            status, "Server Error"
        )
        page = (
            f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n"
            f"<center><h1>{status} {reason}</h1></center>\r\n</body>\r\n</html>\r\n"
        )
        return cls(status, text=page, headers={"Content-Type": "text/html"})

    @classmethod
    def html_page(cls, status: int = 200) -> Self:
        """A ``text/html`` page where JSON belongs, e.g. a captive portal or a misrouted proxy."""
        page = (
            "<!DOCTYPE html>\n<html><head><title>Sign in to the network</title></head>\n"
            "<body><h1>Please sign in</h1><p>Accept the terms to continue.</p></body></html>\n"
        )
        return cls(status, text=page, headers={"Content-Type": "text/html"})

    @classmethod
    def json_answer(
        cls, value: Any, *, status: int = 200, content_type: str = "application/json"
    ) -> Self:
        """Any JSON ``value`` (a list, a dict missing fields) sent as ``content_type``."""
        return cls(status, text=json.dumps(value), headers={"Content-Type": content_type})

    @classmethod
    def json_without_id(cls) -> Self:
        """200 with prediction-like JSON that has no ``id``."""
        return cls.json_answer({"status": "processing", "output": None, "logs": "", "error": None})

    @classmethod
    def empty_answer(cls, status: int = 200) -> Self:
        """``status`` with ``Content-Type: application/json`` and no body at all."""
        return cls(status, text="", headers={"Content-Type": "application/json"})

    @classmethod
    def disconnect(cls) -> Self:
        """Close the connection without answering (the client sees a network error)."""
        return cls(0, drop_connection=True)

    @classmethod
    def timeout(cls, seconds: float = 30.0) -> Self:
        """Hold the request ``seconds`` without answering, then close the connection."""
        return cls(0, delay=seconds, drop_connection=True)

    def delayed(self, seconds: float) -> HttpFault:
        """The same fault, answered after ``seconds``."""
        return dataclasses.replace(self, delay=seconds)

    def to_response(self) -> web.Response:
        headers = dict(self.headers or {})
        content_type = PROBLEM_JSON
        for key in list(headers):
            if key.lower() == "content-type":
                content_type = headers.pop(key)
        if self.text is not None:
            if content_type == PROBLEM_JSON:
                content_type = "text/html"
            return web.Response(
                status=self.status, text=self.text, content_type=content_type, headers=headers
            )
        if self.body is None:
            return web.Response(status=self.status, headers=headers)
        return web.Response(
            status=self.status,
            text=json.dumps(self.body),
            content_type=content_type,
            headers=headers,
        )


@dataclass(frozen=True)
class Outcome:
    """How a prediction ends once its processing time is over (or ``finish()`` is called)."""

    kind: OutcomeKind
    error: str | None = None
    output: Any = None

    @classmethod
    def succeeded(cls) -> Self:
        return cls("succeeded")

    @classmethod
    def failed(
        cls,
        error: str = (
            "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity; "
            "75.31 GiB already allocated; 1.22 GiB free; 76.02 GiB reserved in total by PyTorch)"
        ),
    ) -> Self:
        return cls("failed", error=error)

    @classmethod
    def canceled(cls) -> Self:
        return cls("canceled")

    @classmethod
    def aborted(cls) -> Self:
        return cls("aborted")

    @classmethod
    def malformed_output(cls, output: Any = 12345) -> Self:
        """Status ``succeeded`` with an output that is not one URL string."""
        return cls("malformed_output", output=output)

    @classmethod
    def no_output(cls) -> Self:
        return cls("no_output")

    @property
    def status(self) -> Status:
        statuses: dict[OutcomeKind, Status] = {
            "succeeded": "succeeded",
            "malformed_output": "succeeded",
            "no_output": "succeeded",
            "failed": "failed",
            "canceled": "canceled",
            "aborted": "aborted",
        }
        return statuses[self.kind]
