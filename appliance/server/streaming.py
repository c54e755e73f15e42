"""Streaming job results as NDJSON, or as one JSON object when the client asked for ``stream: false``.

A job (create, pull, push …) runs as a task in the app's long-lived nursery and reports progress
objects into a channel.  The HTTP response only reads that channel, so a client that goes away
stops reading but never leaves a half-done store write behind: the job finishes (or fails)
cleanly on its own.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio
from quart import Response, current_app

from appliance.errors import ApplianceError, public_message

ProgressFn = Callable[[dict[str, Any]], None]
Job = Callable[[ProgressFn], Awaitable[None]]

NDJSON = "application/x-ndjson"
_DONE = object()


def json_line(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def error_status(exc: BaseException) -> int:
    return exc.status if isinstance(exc, ApplianceError) else 500


def _start_job(job: Job) -> trio.MemoryReceiveChannel[Any]:
    send, receive = trio.open_memory_channel[Any](math.inf)

    def progress(obj: dict[str, Any]) -> None:
        send.send_nowait(obj)

    async def runner() -> None:
        async with send:
            try:
                await job(progress)
            except ApplianceError as exc:
                send.send_nowait(exc)
            except Exception as exc:  # a job failing must never take the server down
                current_app.logger.exception("job failed")
                send.send_nowait(exc)

    current_app.nursery.start_soon(runner)  # type: ignore[attr-defined]
    return receive


async def job_response(job: Job, stream: bool) -> Response | tuple[dict[str, Any], int]:
    """Run ``job`` in the background and answer with its progress stream or its final object."""
    receive = _start_job(job)
    if not stream:
        last: dict[str, Any] = {}
        async with receive:
            async for item in receive:
                if isinstance(item, BaseException):
                    return {"error": public_message(item)}, error_status(item)
                last = item
        return last, 200

    async def body() -> AsyncIterator[bytes]:
        async with receive:
            async for item in receive:
                if isinstance(item, BaseException):
                    yield json_line({"error": public_message(item)})
                    return
                yield json_line(item)

    return Response(body(), status=200, content_type=NDJSON)
