"""Model-management routes: version, tags, show, copy, delete, blobs, create.

Routes translate HTTP to store calls and nothing more; every store call is blocking file I/O and
runs in a worker thread.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import trio
from quart import Blueprint, Response, current_app, request

from appliance import OLLAMA_COMPAT_VERSION, __version__
from appliance.api.options import format_parameters
from appliance.errors import ApplianceError, BadRequest, BlobNotFound, InsufficientStorage, ModelNotFound
from appliance.server.requests import drain_body, mark_body_read, read_json, require_str, stream_flag
from appliance.server.streaming import job_response
from appliance.store import create as creating
from appliance.store.blobs import BlobWriter, parse_digest, translate_disk_full
from appliance.store.gguf import model_info, read_gguf
from appliance.store.local import Store
from appliance.store.manifests import StoredManifest
from appliance.store.model import Model, capabilities, details_from_config, read_config
from appliance.store.modelfile import render_modelfile
from appliance.store.names import parse_name

bp = Blueprint("models", __name__)
log = logging.getLogger(__name__)

#: What upstream's /api/show answers as the template of a model without a TEMPLATE layer.
DEFAULT_TEMPLATE = "{{ .Prompt }}"

#: Blob uploads are written in chunks of this size, one thread hop each.
UPLOAD_CHUNK = 4 << 20


def get_store() -> Store:
    return current_app.extensions["appliance.store"]  # type: ignore[no-any-return]


@bp.route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return Response("Ollama is running", content_type="text/plain; charset=utf-8")


@bp.get("/api/version")
async def version() -> dict[str, Any]:
    return {"version": OLLAMA_COMPAT_VERSION, "appliance": __version__}


def _list_models(store: Store) -> list[dict[str, Any]]:
    out = []
    for stored in store.list():
        entry: dict[str, Any] = {
            "name": stored.name.display,
            "model": stored.name.display,
            "modified_at": stored.modified_at.isoformat(),
            "size": stored.manifest.size,
            "digest": stored.digest,
        }
        entry["details"], capabilities_ = _list_details(store, stored)
        if capabilities_:
            entry["capabilities"] = capabilities_
        out.append(entry)
    return out


def _list_details(store: Store, stored: StoredManifest) -> tuple[dict[str, Any], list[str]]:
    """``details`` of an /api/tags entry, with the context and embedding lengths, and the capabilities.

    As upstream: the config's lengths first (a remote model's), else the GGUF's; a model whose layers
    cannot be read is still listed, without them.
    """
    config = read_config(store.blobs, stored.manifest)
    details = details_from_config(config, stored.manifest).to_json()
    try:
        model = store.get(stored.name)
        info = read_gguf(model.model_path, max_array=0) if model.model_path is not None else None
    except (ApplianceError, OSError, ValueError) as exc:
        log.warning("model %s: cannot read its layers for the list: %s", stored.name.display, exc)
        return details, []
    for key, from_gguf in (("context_length", info.context_length if info else None),
                           ("embedding_length", info.embedding_length if info else None)):
        value = config.get(key) or from_gguf
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            details[key] = value
    return details, capabilities(model, info)


@bp.get("/api/tags")
async def tags() -> dict[str, Any]:
    return {"models": await trio.to_thread.run_sync(_list_models, get_store())}


def _show(store: Store, name_text: str, verbose: bool, system: str | None = None) -> dict[str, Any]:
    """Upstream's ShowResponse; ``system`` (ShowRequest.system) replaces the model's in the answer."""
    model = store.get(parse_name(name_text), as_typed=name_text)
    system = system or model.system
    # Without verbose every non-empty array shows as null: step over them instead of building them.
    info = None
    if model.model_path is not None:
        info = read_gguf(model.model_path, max_array=None if verbose else 0)
    details = model.details.to_json()
    out: dict[str, Any] = {}
    if model.license:
        out["license"] = "\n".join(model.license)
    out["modelfile"] = _modelfile_of(model, system)
    if model.parameters:
        out["parameters"] = format_parameters(model.parameters)
    # Upstream always answers a template: its default, for a model without a TEMPLATE layer.
    out["template"] = model.template if model.template is not None else DEFAULT_TEMPLATE
    if system:
        out["system"] = system
    for key in ("renderer", "parser", "requires"):
        if model.config.get(key):
            out[key] = model.config[key]
    out["details"] = details
    if model.messages:
        out["messages"] = list(model.messages)
    out["model_info"] = model_info(info, verbose) if info is not None else {}
    if model.projector_paths:  # upstream's projector_info: the (first) projector's metadata
        projector = read_gguf(model.projector_paths[0], max_array=None if verbose else 0)
        out["projector_info"] = model_info(projector, verbose)
    if verbose and info is not None:
        from appliance.store.gguf import ggml_type_name

        out["tensors"] = [{"name": t.name, "type": ggml_type_name(t.ggml_type), "shape": list(t.shape)}
                          for t in info.tensors]
    out["capabilities"] = capabilities(model, info)
    out["modified_at"] = model.modified_at.isoformat()
    return out


def _modelfile_of(model: Model, system: str | None) -> str:
    return render_modelfile(
        from_=str(model.model_path) if model.model_path else model.name.display,
        template=model.template,
        system=system,
        renderer=str(model.config.get("renderer") or "") or None,
        parser=str(model.config.get("parser") or "") or None,
        requires=str(model.config.get("requires") or "") or None,
        parameters=model.parameters,
        adapters=[str(p) for p in model.adapter_paths],
        draft=str(model.draft_path) if model.draft_path else None,
        projectors=[str(p) for p in model.projector_paths],
        license=list(model.license),
        messages=list(model.messages),
        header_name=model.name.display,
    )


@bp.post("/api/show")
async def show() -> dict[str, Any]:
    body = await read_json()
    name = body.get("model") or body.get("name")
    if not name:
        raise BadRequest("model is required")
    name = require_str(body, "model" if "model" in body else "name")
    verbose = body.get("verbose", False)
    if verbose is not None and not isinstance(verbose, bool):
        raise BadRequest("verbose must be a boolean")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        raise BadRequest("system must be a string")
    return await trio.to_thread.run_sync(_show, get_store(), name, bool(verbose), system)


@bp.post("/api/copy")
async def copy() -> Response:
    body = await read_json()
    source = parse_name(require_str(body, "source"))
    destination = parse_name(require_str(body, "destination"))
    store = get_store()
    if not await trio.to_thread.run_sync(store.manifests.exists, source):
        raise ModelNotFound(body["source"])
    await trio.to_thread.run_sync(store.copy, source, destination)
    return Response(b"", status=200)


@bp.delete("/api/delete")
async def delete() -> Response:
    body = await read_json()
    text = body.get("model") or body.get("name")
    if not isinstance(text, str) or not text:
        raise BadRequest("model is required")
    name = parse_name(text)
    store = get_store()
    if not await trio.to_thread.run_sync(store.manifests.exists, name):
        raise ModelNotFound(text)
    await trio.to_thread.run_sync(store.delete, name)
    return Response(b"", status=200)


# ``path`` (not the default converter) so that a digest holding "/" or "%2F" still reaches
# parse_digest and gets its 400, instead of the router's 404; "/api/blobs" too, rather than
# Werkzeug's HTML redirect to "/api/blobs/".
@bp.route("/api/blobs/", defaults={"digest": ""}, methods=["HEAD"], strict_slashes=False)
@bp.route("/api/blobs/<path:digest>", methods=["HEAD"])
async def head_blob(digest: str) -> Response:
    store = get_store()
    if not await trio.to_thread.run_sync(store.blobs.exists, parse_digest(digest)):
        raise BlobNotFound(f"blob {digest!r} not found")
    return Response(b"", status=200)


@bp.post("/api/blobs/", defaults={"digest": ""}, strict_slashes=False)
@bp.post("/api/blobs/<path:digest>")
async def push_blob(digest: str) -> Response:
    expected = parse_digest(digest)
    store = get_store()
    if await trio.to_thread.run_sync(store.blobs.exists, expected):
        return Response(b"", status=200)  # already here: nothing to write (Ollama answers 200 too)
    request.body_timeout = None  # blobs are model weights: streamed to disk, never held in memory
    try:
        await trio.to_thread.run_sync(_check_room, store, request.content_length)
        await _receive_blob(store, expected)
    except ApplianceError:
        await drain_body()
        raise
    return Response(b"", status=201)


def _check_room(store: Store, declared: int | None) -> None:
    """Refuse at once (507) a body that says it is larger than the free space."""
    if declared is None:
        return
    with translate_disk_full(store.root):
        store.ensure_dirs()
    stat = os.statvfs(store.blobs.blobs_dir)
    free = stat.f_bavail * stat.f_frsize
    if declared > free:
        raise InsufficientStorage(f"no space left on device: the blob is {declared} bytes, {free} are free")


async def _receive_blob(store: Store, expected: str) -> None:
    writer = await trio.to_thread.run_sync(store.blobs.open_writer, expected)
    try:
        pending: list[bytes] = []
        size = 0
        async for chunk in request.body:  # at most bodies.HIGH_WATER_BYTES at a time
            pending.append(chunk)
            size += len(chunk)
            if size >= UPLOAD_CHUNK:
                await trio.to_thread.run_sync(_write_all, writer, pending)
                pending, size = [], 0
        mark_body_read()
        await trio.to_thread.run_sync(_write_all, writer, pending)
        await trio.to_thread.run_sync(writer.commit)
    finally:
        # Shielded: a client that disconnects mid-upload cancels this handler, and the temp file
        # must still go.  No-op after a successful commit.
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(writer.abort)


def _write_all(writer: BlobWriter, chunks: list[bytes]) -> None:
    for chunk in chunks:
        writer.write(chunk)


@bp.post("/api/create")
async def create() -> Any:
    body = await read_json()
    store = get_store()
    plan = await trio.to_thread.run_sync(creating.plan_create, store, body)

    async def job(progress: Any) -> None:
        def from_thread(obj: dict[str, Any]) -> None:
            trio.from_thread.run_sync(progress, obj)

        prune = not current_app.extensions["appliance.config"].noprune
        run = functools.partial(creating.run_create, store, plan, from_thread, prune=prune)
        await trio.to_thread.run_sync(run)

    return await job_response(job, stream_flag(body))
