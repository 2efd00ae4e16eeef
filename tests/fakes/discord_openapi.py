"""Validation of Discord REST traffic against Discord's official OpenAPI description.

The spec next to this module (``discord-openapi.json``) is a verbatim copy of
``specs/openapi.json`` from the public repository discord/discord-api-spec at commit 74fda0f
(MIT licensed, copyright Discord Inc.). It describes the v10 HTTP API as an OpenAPI 3.1 document,
whose schemas are JSON Schema draft 2020-12.

Request bodies are validated against the operation's ``application/json`` request schema; a
multipart request is validated through its ``payload_json`` part against the same schema (the
multipart schemas in the spec are that JSON schema plus the ``files[n]`` parts). Responses can be
validated the same way against the operation's response schema for the status code.

Snowflakes are strings in the spec (``SnowflakeType``). Discord's servers also accept integers,
and discord.py sends some (for example ``attachments[].id`` of a new upload is the integer index
of its ``files[n]`` part). A failure that disappears when integer snowflakes are allowed is
reported as such (``RequestCheck.integer_snowflakes_only``), so that a caller can keep those apart
from real mistakes instead of loosening the spec silently.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import (  # type: ignore[import-untyped, unused-ignore]
    Draft202012Validator,
    ValidationError,
)
from jsonschema.exceptions import best_match  # type: ignore[import-untyped, unused-ignore]
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["SPEC_PATH", "DiscordOpenAPI", "Operation", "RequestCheck"]

log = logging.getLogger(__name__)

SPEC_PATH = Path(__file__).with_name("discord-openapi.json")
_SPEC_URI = "urn:discord-openapi"
_LENIENT_URI = "urn:discord-openapi-integer-snowflakes"
_METHODS = ("get", "put", "post", "patch", "delete")
_JSON = "application/json"


def _pointer_token(value: str) -> str:
    return value.replace("~", "~0").replace("/", "~1")


@dataclass(frozen=True)
class Operation:
    """One method of one path template of the spec."""

    method: str
    template: str
    pattern: re.Pattern[str]
    literal_segments: int
    definition: Mapping[str, Any] = field(repr=False)

    @property
    def pointer(self) -> str:
        return f"/paths/{_pointer_token(self.template)}/{self.method.lower()}"

    @property
    def operation_id(self) -> str:
        return str(self.definition.get("operationId", f"{self.method} {self.template}"))


@dataclass(frozen=True)
class RequestCheck:
    """Outcome of validating one request body."""

    errors: list[str]
    integer_snowflakes_only: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


class DiscordOpenAPI:
    """Path lookup and cached JSON-schema validators for the Discord OpenAPI spec."""

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self._spec = spec
        schemas = dict(spec["components"]["schemas"])
        strict_snowflake = schemas["SnowflakeType"]
        schemas["SnowflakeType"] = {
            "anyOf": [strict_snowflake, {"type": "integer", "minimum": 0}],
        }
        lenient = {**spec, "components": {**spec["components"], "schemas": schemas}}
        self._registry: Registry[Any] = Registry().with_resources(
            [
                (_SPEC_URI, DRAFT202012.create_resource(spec)),
                (_LENIENT_URI, DRAFT202012.create_resource(lenient)),
            ]
        )
        self._validators: dict[tuple[str, bool], Draft202012Validator] = {}
        self._operations: dict[tuple[str, int], list[Operation]] = {}
        for template, item in spec["paths"].items():
            segments = template.strip("/").split("/")
            regex = "/".join("[^/]+" if seg.startswith("{") else re.escape(seg) for seg in segments)
            literal = sum(not seg.startswith("{") for seg in segments)
            for method in _METHODS:
                if method not in item:
                    continue
                op = Operation(
                    method=method.upper(),
                    template=template,
                    pattern=re.compile(f"/{regex}"),
                    literal_segments=literal,
                    definition=item[method],
                )
                self._operations.setdefault((op.method, len(segments)), []).append(op)
        for ops in self._operations.values():
            ops.sort(key=lambda o: o.literal_segments, reverse=True)

    @classmethod
    @functools.cache
    def load(cls) -> DiscordOpenAPI:
        """The spec shipped next to this module, parsed once per process."""
        with SPEC_PATH.open(encoding="utf-8") as fh:
            return cls(json.load(fh))

    def find_operation(self, method: str, path: str) -> Operation | None:
        """The operation for a concrete request path such as ``/channels/1/messages``."""
        segments = path.strip("/").split("/")
        for op in self._operations.get((method.upper(), len(segments)), []):
            if op.pattern.fullmatch(path):
                return op
        return None

    def _validator(self, pointer: str, lenient: bool) -> Draft202012Validator:
        key = (pointer, lenient)
        validator = self._validators.get(key)
        if validator is None:
            uri = _LENIENT_URI if lenient else _SPEC_URI
            validator = Draft202012Validator({"$ref": f"{uri}#{pointer}"}, registry=self._registry)
            self._validators[key] = validator
        return validator

    @staticmethod
    def _describe(errors: Iterable[ValidationError]) -> str | None:
        """The most telling error: for ``anyOf``/``oneOf`` failures, the deepest one found in
        any branch (an over-long ``data.content`` rather than "not valid under any schema")."""
        top = best_match(errors)
        if top is None:
            return None
        leaves: list[ValidationError] = []
        pending = [top]
        while pending:
            error = pending.pop()
            if error.context:
                pending.extend(error.context)
            else:
                leaves.append(error)
        deepest = max(leaves, key=lambda e: len(e.absolute_path)) if leaves else top
        if len(deepest.absolute_path) <= len(top.absolute_path):
            deepest = top
        message = deepest.message
        if len(message) > 200:
            message = f"{message[:120]}...{message[-60:]}"
        where = deepest.json_path if deepest.absolute_path else "$"
        return f"{where}: {message} (schema keyword {deepest.validator!r})"

    def validate_request(self, method: str, path: str, body: Any) -> RequestCheck:
        """Validate a request body (``None`` when the request had none)."""
        op = self.find_operation(method, path)
        if op is None:
            return RequestCheck([f"{method} {path}: no such operation in the spec"])
        request_body = op.definition.get("requestBody")
        if request_body is None:
            if body is None:
                return RequestCheck([])
            return RequestCheck([f"{method} {path}: the spec defines no request body"])
        if body is None:
            if request_body.get("required", False):
                return RequestCheck([f"{method} {path}: missing required request body"])
            return RequestCheck([])
        if _JSON not in request_body.get("content", {}):
            return RequestCheck([f"{method} {path}: the spec defines no JSON request body"])
        pointer = f"{op.pointer}/requestBody/content/{_pointer_token(_JSON)}/schema"
        problem = self._describe(self._validator(pointer, lenient=False).iter_errors(body))
        if problem is None:
            return RequestCheck([])
        message = f"{method} {path} ({op.operation_id}) request {problem}"
        lenient_ok = self._validator(pointer, lenient=True).is_valid(body)
        return RequestCheck([message], integer_snowflakes_only=lenient_ok)

    def validate_response(self, method: str, path: str, status: int, body: Any) -> list[str]:
        """Validate a JSON response body against the spec's schema for that status."""
        op = self.find_operation(method, path)
        if op is None:
            return []
        responses = op.definition.get("responses", {})
        code = str(status)
        key = next(
            (k for k in (code, f"{code[0]}XX", "default") if k in responses),
            None,
        )
        if key is None:
            return [f"{method} {path}: status {status} is not documented"]
        response = responses[key]
        pointer = f"{op.pointer}/responses/{key}"
        if "$ref" in response:
            pointer = response["$ref"].removeprefix("#")
            name = pointer.rsplit("/", 1)[-1]
            response = self._spec["components"]["responses"][name]
        content = response.get("content", {})
        if _JSON not in content:
            if body is None:
                return []
            return [f"{method} {path}: status {status} should have no body"]
        if body is None:
            return [f"{method} {path}: status {status} needs a JSON body"]
        schema_pointer = f"{pointer}/content/{_pointer_token(_JSON)}/schema"
        problem = self._describe(self._validator(schema_pointer, lenient=False).iter_errors(body))
        if problem is None:
            return []
        return [f"{method} {path} ({op.operation_id}) response {status} {problem}"]
