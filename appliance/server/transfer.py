"""Registry routes: ``/api/pull`` and ``/api/push``.

What can be checked before any byte moves (the body, the name, ``insecure`` against an ``http://``
name, a push of a model we do not have) is answered with a proper status; after that the job streams
Ollama's progress objects and a failure becomes an ``{"error": ...}`` line.  A client that goes away
stops its job (as in Ollama): a download another pull is still waiting for goes on under that pull,
and an abandoned one keeps its partial state for the next pull to resume.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import trio
from quart import Blueprint, current_app

from appliance.errors import BadRequest, ModelNotFound
from appliance.server.metrics import Metrics
from appliance.server.requests import read_json, stream_flag
from appliance.server.streaming import job_response
from appliance.store import registry
from appliance.store.local import Store
from appliance.store.names import Name, parse_name

bp = Blueprint("transfer", __name__)

ProgressFn = Callable[[dict[str, Any]], None]
Job = Callable[[ProgressFn], Awaitable[None]]


def _store() -> Store:
    return current_app.extensions["appliance.store"]  # type: ignore[no-any-return]


async def _parse(body: dict[str, Any]) -> tuple[Name, bool, bool]:
    text = body.get("model") or body.get("name")
    if not text:
        raise BadRequest("model is required")
    if not isinstance(text, str):
        raise BadRequest("model must be a string")
    insecure = body.get("insecure", False)
    if insecure is None:
        insecure = False
    if not isinstance(insecure, bool):
        raise BadRequest("insecure must be a boolean")
    name = parse_name(text)
    registry.check_protocol(name, insecure)
    return name, insecure, stream_flag(body)


def _until_client_leaves(run: Job) -> Job:
    """Wrap a job so that it is cancelled once nobody reads its progress any more."""

    async def job(progress: ProgressFn) -> None:
        with trio.CancelScope() as scope:

            def report(obj: dict[str, Any]) -> None:
                try:
                    progress(obj)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    scope.cancel()

            await run(report)

    return job


@bp.post("/api/pull")
async def pull() -> Any:
    name, insecure, stream = await _parse(await read_json())
    store = _store()
    cfg = current_app.extensions["appliance.config"]
    metrics: Metrics = current_app.extensions["appliance.metrics"]
    settings = replace(registry.settings_from_config(cfg), on_received=metrics.count_pulled)

    async def run(progress: ProgressFn) -> None:
        await registry.pull(store, name, insecure, progress, settings=settings, prune=not cfg.noprune)

    return await job_response(_until_client_leaves(run), stream)


@bp.post("/api/push")
async def push() -> Any:
    name, insecure, stream = await _parse(await read_json())
    store = _store()
    if not await trio.to_thread.run_sync(store.manifests.exists, name):
        raise ModelNotFound(name.display)
    settings = registry.settings_from_config(current_app.extensions["appliance.config"])

    async def run(progress: ProgressFn) -> None:
        await registry.push(store, name, insecure, progress, settings=settings)

    return await job_response(_until_client_leaves(run), stream)
