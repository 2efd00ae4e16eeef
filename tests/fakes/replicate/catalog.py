"""The read-only answers: the token's account, the model and its version.

Shaped after Replicate's API description (``GET /v1/account``: ``type`` and ``username``
required; ``GET /v1/models/{owner}/{name}`` and ``.../versions/{id}``), so `jambot check` meets
the same JSON here as on Replicate. The version's schema lists the inputs the fake validates.
"""

from __future__ import annotations

from typing import Any, Final

from tests.fakes.replicate.schema import MUSICGEN_INPUTS

ACCOUNT_USERNAME: Final = "jam-tester"
VERSION_CREATED_AT: Final = "2023-11-16T19:44:39.102134Z"


def account_json() -> dict[str, Any]:
    """``GET /v1/account`` for the fake's one token."""
    return {
        "type": "user",
        "username": ACCOUNT_USERNAME,
        "name": "Jam Tester",
        "github_url": f"https://github.com/{ACCOUNT_USERNAME}",
        "avatar_url": f"https://avatars.githubusercontent.com/{ACCOUNT_USERNAME}",
    }


def version_json(version: str) -> dict[str, Any]:
    """``GET /v1/models/{owner}/{name}/versions/{id}`` for the fake's one version."""
    properties = {
        name: {"type": field.type, "title": name.replace("_", " ").title()}
        | ({"enum": list(field.choices)} if field.choices else {})
        for name, field in MUSICGEN_INPUTS.items()
    }
    schema = {"openapi": "3.0.2", "components": {"schemas": {"Input": {"properties": properties}}}}
    return {
        "id": version,
        "created_at": VERSION_CREATED_AT,
        "cog_version": "0.8.6",
        "openapi_schema": schema,
    }


def model_json(model: str, version: str) -> dict[str, Any]:
    """``GET /v1/models/{owner}/{name}``: the model, with its latest version inline."""
    owner, _, name = model.partition("/")
    return {
        "url": f"https://replicate.com/{model}",
        "owner": owner,
        "name": name,
        "description": "Generate music from a prompt or melody",
        "visibility": "public",
        "github_url": "https://github.com/facebookresearch/audiocraft",
        "paper_url": "https://arxiv.org/abs/2306.05284",
        "license_url": "https://github.com/facebookresearch/audiocraft/blob/main/LICENSE",
        "run_count": 1_000_000,
        "cover_image_url": None,
        "default_example": None,
        "is_official": False,
        "latest_version": version_json(version),
    }
