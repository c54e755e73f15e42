"""Reading and checking request bodies, with Ollama's error messages."""

from __future__ import annotations

import json
from typing import Any

from quart import request

from appliance.errors import BadRequest


async def read_json() -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest (400) naming what is wrong with it."""
    data = await request.get_data(cache=True)
    if not data or not data.strip():
        raise BadRequest("missing request body")
    try:
        body = json.loads(data)
    except UnicodeDecodeError as exc:
        raise BadRequest(f"invalid request body: {exc}") from exc
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid JSON in request body: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def require_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None or value == "":
        raise BadRequest(f"{key} is required")
    if not isinstance(value, str):
        raise BadRequest(f"{key} must be a string")
    return value


def stream_flag(body: dict[str, Any], default: bool = True) -> bool:
    value = body.get("stream", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest("stream must be a boolean")
    return value
