"""Offline export and import: ``GET /api/export`` and ``POST /api/import`` (not in Ollama).

A model leaves and enters as an OCI image layout tarball (:mod:`appliance.store.oci_archive`).  Both
go through the server rather than the CLI reading the models folder itself: the service's folder
belongs to the ``ollama`` user (the CLI's user may not read it, let alone write it), only the server
holds the store lock that keeps a delete or prune from racing the write, and the same commands work
against a server on another machine (OLLAMA_HOST).

* ``GET /api/export?model=NAME`` streams the tarball (``application/x-tar``, with its length).
* ``POST /api/import[?model=NAME]`` takes the tarball as the raw body, streamed to temp files as it
  arrives; it answers ``{"status": "success", "model": ...}`` once the model is stored, or a 400
  naming what is wrong with the archive (nothing of it is then left in the store).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request

from appliance.errors import ApplianceError, BadRequest, ModelNotFound
from appliance.server.models import get_store
from appliance.server.requests import drain_body, mark_body_read
from appliance.store import oci_archive
from appliance.store.names import Name, parse_name

bp = Blueprint("archive", __name__)


def _model_arg(required: bool) -> Name | None:
    text = request.args.get("model") or request.args.get("name")
    if not text:
        if required:
            raise BadRequest("model is required")
        return None
    return parse_name(text)


@bp.get("/api/export")
async def export_model() -> Response:
    name = _model_arg(required=True)
    assert name is not None
    try:
        export = await trio.to_thread.run_sync(oci_archive.open_export, get_store(), name)
    except ModelNotFound:
        raise ModelNotFound(request.args.get("model") or request.args.get("name") or name.display) from None

    async def body() -> AsyncIterator[bytes]:
        chunks = export.chunks()
        try:
            while chunk := await trio.to_thread.run_sync(next, chunks, b""):
                yield chunk
        finally:
            export.close()

    filename = f"{name.model}-{name.tag}.tar"
    return Response(body(), status=200, content_type="application/x-tar", headers={
        "Content-Length": str(export.size),
        "Content-Disposition": f'attachment; filename="{filename}"',
    })


@bp.post("/api/import")
async def import_model() -> Any:
    name = _model_arg(required=False)
    store = get_store()
    prune = not current_app.extensions["appliance.config"].noprune
    request.body_timeout = None  # a model's weights: streamed to temp files, never held in memory
    chunks = aiter(request.body)  # at most bodies.HIGH_WATER_BYTES ahead of the reader

    async def next_chunk() -> bytes:
        try:
            return await anext(chunks)
        except StopAsyncIteration:
            mark_body_read()
            return b""

    def read_chunk() -> bytes:
        return trio.from_thread.run(next_chunk)

    try:
        stored = await trio.to_thread.run_sync(
            functools.partial(oci_archive.import_archive, store, read_chunk, name, prune=prune))
    except ApplianceError:
        await drain_body()
        raise
    return {"status": "success", "model": stored.display}
