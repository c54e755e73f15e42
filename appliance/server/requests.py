"""Reading and checking request bodies, with Ollama's error messages."""

from __future__ import annotations

from typing import Any

import trio
from quart import current_app, request

from appliance.api import jsonbody
from appliance.errors import BadRequest, PayloadTooLarge

#: Bodies at least this large are joined off the event loop.
JOIN_IN_THREAD_BYTES = 1 << 20


async def read_body(limit: int) -> bytes:
    """The whole body, refusing (413) more than ``limit`` bytes without buffering past it."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.body:
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
    mark_body_read()
    # One copy at the end: a growing bytearray re-copies everything so far whenever it moves.  A large
    # body is joined in a worker thread: bytes.join releases the GIL while it copies, and one copy of
    # a 60 MB body on the event loop would hold every other request for tens of milliseconds.
    if len(chunks) == 1:
        return chunks[0]
    if size < JOIN_IN_THREAD_BYTES:
        return b"".join(chunks)
    return await trio.to_thread.run_sync(b"".join, chunks)


def mark_body_read() -> None:
    """Record that the request body was read to its end (see :func:`body_left_unread`)."""
    request._appliance_body_read = True  # type: ignore[attr-defined]


def body_left_unread() -> bool:
    """True if the request carries a body that no handler read to its end.

    The server must then close the connection after its response: Hypercorn does so anyway, but
    without ``Connection: close`` a keep-alive client reuses the dead connection and hangs.
    """
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    has_body = chunked or (request.content_length or 0) > 0
    return has_body and not getattr(request, "_appliance_body_read", False)


async def read_json() -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest (400) naming what is wrong with it."""
    cached = getattr(request, "_appliance_json", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    data = await read_body(current_app.extensions["appliance.config"].max_body_bytes)
    if not data or not data.strip():
        raise BadRequest("missing request body")
    body = await jsonbody.decode(data)
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    request._appliance_json = body  # type: ignore[attr-defined]
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


#: How long the rest of a failed upload is read and dropped before answering (see drain_body).
DRAIN_AFTER_ERROR_S = 10.0


async def drain_body() -> None:
    """Read and drop what is left of a failed upload, so the client gets to read the error.

    Closing a connection with unread data in it makes the kernel send a reset, which can destroy the
    response before the client reads it (RFC 9112, section 9.6; Windows clients, WSL2's included,
    drop unread data on a reset).  Bounded in time; past that, the connection closes anyway
    (``Connection: close``, see :func:`appliance.server.requests.body_left_unread`).
    """
    with trio.move_on_after(DRAIN_AFTER_ERROR_S):
        async for _ in request.body:
            pass
        mark_body_read()
