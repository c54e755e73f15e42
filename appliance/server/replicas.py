"""One of several servers over one models folder: the readiness check and the read-only guard.

``GET /`` (upstream's "Ollama is running") says the process answers, which is what a liveness probe
needs.  A load balancer or a Kubernetes readiness probe needs more: whether this server can serve a
request now.  ``GET /api/health`` answers that, cheaply, without a model load and without a key:

    200 {"status": "ok", "store": {...}, "scheduler": {...}}
    503 {"status": "unavailable", "problems": ["..."], ...}    (and HEAD, without the body)

It checks that start-up has finished and shut-down has not begun (the scheduler runs), that the models
folder can be read (in a worker thread with a time limit: a hung network mount makes the server
unready, never the probe stuck), and that the request queue is not full.  No path, model name or
address of ours is in the answer.

A server whose store is read-only (:mod:`appliance.store.readonly`) refuses the routes that change
it here, before their bodies are read, so a client uploading gigabytes learns it at once.
"""

from __future__ import annotations

import os
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request

from appliance.engine.scheduler import Scheduler
from appliance.store.local import Store
from appliance.store.readonly import StoreReadOnly

bp = Blueprint("replicas", __name__)

#: Extension key set while the scheduler runs (after start-up, until shut-down begins).
SERVING = "appliance.serving"

#: A store that takes longer than this to list is as good as unreadable for a probe.
STORE_CHECK_S = 2.0

#: Every route that changes the models folder (blueprint.endpoint); a test classifies every
#: non-GET route as one of these or a reader, so a new writer cannot be missed.
WRITE_ENDPOINTS = frozenset({
    "models.create",
    "models.copy",
    "models.delete",
    "models.push_blob",
    "transfer.pull",
    "archive.import_model",
})


async def refuse_writes_to_read_only_store() -> None:
    """before_request: a change to a read-only store is a 403 before any of its body is read."""
    store: Store = current_app.extensions["appliance.store"]
    if store.read_only and request.endpoint in WRITE_ENDPOINTS:
        raise StoreReadOnly(store.read_only_reason)


def _store_readable(store: Store) -> bool:
    try:
        with os.scandir(store.manifests.root):
            pass
        with os.scandir(store.blobs.blobs_dir):
            pass
    except OSError:
        return False
    return True


async def readiness() -> tuple[dict[str, Any], int]:
    """The health answer and its status, for the app in context."""
    store: Store = current_app.extensions["appliance.store"]
    scheduler: Scheduler = current_app.extensions["appliance.scheduler"]
    cfg = current_app.extensions["appliance.config"]
    problems = []
    serving = bool(current_app.extensions.get(SERVING))
    if not serving:
        problems.append("the server is starting or stopping")
    readable = False
    with trio.move_on_after(STORE_CHECK_S):
        readable = await trio.to_thread.run_sync(_store_readable, store, abandon_on_cancel=True)
    if not readable:
        problems.append("the models folder cannot be read")
    if scheduler.waiting >= cfg.max_queue:
        problems.append("the request queue is full")
    body: dict[str, Any] = {
        "status": "unavailable" if problems else "ok",
        "store": {"readable": readable, "read_only": store.read_only},
        "scheduler": {"running": serving, "loaded": len(scheduler.running()),
                      "waiting": scheduler.waiting, "max_queue": cfg.max_queue},
    }
    if problems:
        body["problems"] = problems
    return body, 503 if problems else 200


@bp.route("/api/health", methods=["GET", "HEAD"])
async def health() -> Response:
    body, status = await readiness()
    response = current_app.json.response(body)
    assert isinstance(response, Response)
    response.status_code = status
    response.headers["Cache-Control"] = "no-store"
    return response
