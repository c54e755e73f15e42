"""Ollama's native inference routes: /api/generate, /api/chat, /api/embed, /api/embeddings, /api/ps."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import trio
from quart import Blueprint, Response, current_app

from appliance.engine.scheduler import Scheduler
from appliance.errors import ApplianceError, BadRequest, ModelNotFound
from appliance.prompt.builtin import THINK_LEVELS
from appliance.prompt.render import parse_template
from appliance.server import inference
from appliance.server.inference import Chunk, Generation
from appliance.server.models import get_store
from appliance.server.requests import read_json, stream_flag
from appliance.server.streaming import NDJSON, json_line
from appliance.store.model import details_from_config

bp = Blueprint("native", __name__)

ROLES = {"system", "user", "assistant", "tool"}


def get_scheduler() -> Scheduler:
    return current_app.extensions["appliance.scheduler"]  # type: ignore[no-any-return]


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _check_images(images: Any, where: str) -> None:
    """The shape of a request's ``images``; their contents are checked when decoded (inference.py),
    once the model is known to see images."""
    if images is None:
        return
    if not isinstance(images, list) or not all(isinstance(i, str) for i in images):
        raise BadRequest(f"{where}: images must be a list of base64 strings")


def _check_messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        return []
    if not isinstance(messages, list):
        raise BadRequest("messages must be a list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        if isinstance(msg.get("role"), str):  # upstream lower-cases every role as it reads a message
            msg["role"] = msg["role"].lower()
        if msg.get("role") not in ROLES:
            raise BadRequest(
                f"messages[{i}]: invalid role {msg.get('role')!r}; use system, user, assistant or tool"
            )
        content = msg.get("content", "")
        if content is not None and not isinstance(content, str):
            raise BadRequest(f"messages[{i}]: content must be a string")
        for key in ("thinking", "tool_name", "tool_call_id", "name"):
            _optional(msg, key, str, f"messages[{i}]")
        _check_images(msg.get("images"), f"messages[{i}]")
        calls = msg.get("tool_calls")
        if calls is not None:
            if not isinstance(calls, list):
                raise BadRequest(f"messages[{i}]: tool_calls must be a list")
            for j, call in enumerate(calls):
                _check_tool_call(call, f"messages[{i}].tool_calls[{j}]")
    return messages


def _optional(obj: dict[str, Any], key: str, kind: type, where: str) -> None:
    """``obj[key]`` is absent, null or a ``kind`` (a boolean is no integer), else BadRequest."""
    value = obj.get(key)
    if value is not None and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        word = {str: "a string", int: "an integer", dict: "an object"}[kind]
        raise BadRequest(f"{where}.{key} must be {word}")


def _check_tool_call(call: Any, where: str) -> None:
    if not isinstance(call, dict):
        raise BadRequest(f"{where} must be an object")
    function = call.get("function")
    if not isinstance(function, dict):
        raise BadRequest(f"{where}.function must be an object")
    _optional(function, "name", str, f"{where}.function")
    _optional(function, "arguments", dict, f"{where}.function")
    _optional(function, "index", int, f"{where}.function")
    _optional(call, "id", str, where)


def _check_tools(tools: Any) -> list[dict[str, Any]] | None:
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise BadRequest("tools must be a list of objects")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools[{i}] must be an object")
        _optional(tool, "type", str, f"tools[{i}]")
        _optional(tool, "function", dict, f"tools[{i}]")
        for key, kind in (("name", str), ("description", str), ("parameters", dict)):
            _optional(tool.get("function") or {}, key, kind, f"tools[{i}].function")
    return tools


def _think(value: Any) -> bool | str | None:
    if value is None or isinstance(value, bool):
        return value
    if value in THINK_LEVELS:
        return str(value)
    if isinstance(value, str):  # upstream's words
        raise BadRequest(f'invalid think value: "{value}" '
                         '(must be "high", "medium", "low", "max", true, or false)')
    raise BadRequest('think must be a boolean or string ("high", "medium", "low", "max", true, or false)')


async def _gen_common(body: dict[str, Any]) -> Generation:
    logprobs, top_logprobs = inference.logprob_options(body.get("logprobs"), body.get("top_logprobs"))
    model = await inference.resolve_model(get_store(), body.get("model") or body.get("name"))
    return Generation(
        logprobs=logprobs,
        top_logprobs=top_logprobs,
        model=model,
        options=inference.merged_options(model, body.get("options")),
        keep_alive_s=inference.parse_keep_alive(body.get("keep_alive")),
        format=inference.check_format(body.get("format")),
        think=_think(body.get("think")),
    )


async def _load_or_unload(gen: Generation, key: str, body: dict[str, Any]) -> dict[str, Any]:
    """An empty request loads the model (or unloads it with keep_alive 0)."""
    scheduler = get_scheduler()
    out: dict[str, Any] = {"model": body.get("model") or body.get("name"), "created_at": now_iso()}
    if gen.keep_alive_s == 0:
        await scheduler.unload_model(gen.model)
        reason = "unload"
    else:
        await inference.check_capabilities(gen, scheduler)
        await scheduler.load(gen.model, gen.options, gen.keep_alive_s)
        reason = "load"
    out[key] = {"role": "assistant", "content": ""} if key == "message" else ""
    out.update({"done_reason": reason, "done": True})
    return out


async def _respond(gen: Generation, body: dict[str, Any], shape: Any) -> Response | dict[str, Any]:
    """Stream NDJSON chunks or collect them into one object (``stream: false``)."""
    scheduler = get_scheduler()
    name = body.get("model") or body.get("name")

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for chunk in inference.generate(gen, scheduler):
            obj = shape(name, chunk)
            if chunk.logprobs:
                obj["logprobs"] = chunk.logprobs
            yield obj

    if stream_flag(body):
        return await _stream(events())
    merged: dict[str, Any] | None = None
    async for obj in events():
        merged = obj if merged is None else _merge(merged, obj)
    assert merged is not None
    return merged


async def _stream(events: AsyncIterator[dict[str, Any]]) -> Response:
    """NDJSON; the first object is awaited here so an early error still gets its real status."""
    try:
        first: dict[str, Any] | None = await events.__anext__()
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield json_line(first)
        try:
            async for obj in events:
                yield json_line(obj)
        except ApplianceError as exc:  # after the 200 went out, errors travel in the stream
            yield json_line({"error": str(exc)})

    return Response(body(), content_type=NDJSON)


def _merge(acc: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    pieces = ("message", "response", "thinking", "logprobs")
    out = {**acc, **{k: v for k, v in obj.items() if k not in pieces}}
    if obj.get("logprobs"):
        out["logprobs"] = (acc.get("logprobs") or []) + obj["logprobs"]
    if "message" in acc:
        message = dict(acc["message"])
        new = obj.get("message") or {}
        message["content"] = (message.get("content") or "") + (new.get("content") or "")
        if new.get("thinking"):
            message["thinking"] = (message.get("thinking") or "") + new["thinking"]
        if new.get("tool_calls"):
            message["tool_calls"] = (message.get("tool_calls") or []) + new["tool_calls"]
        out["message"] = message
    if "response" in acc:
        out["response"] = acc["response"] + obj.get("response", "")
        if acc.get("thinking") or obj.get("thinking"):
            out["thinking"] = (acc.get("thinking") or "") + (obj.get("thinking") or "")
    return out


def _final_fields(chunk: Chunk) -> dict[str, Any]:
    return (
        {"done_reason": chunk.done_reason, "done": True, **chunk.metrics} if chunk.done else {"done": False}
    )


def _chat_shape(name: str, chunk: Chunk) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": chunk.content}
    if chunk.thinking:
        message["thinking"] = chunk.thinking
    if chunk.tool_calls:
        message["tool_calls"] = chunk.tool_calls
    return {"model": name, "created_at": now_iso(), "message": message, **_final_fields(chunk)}


def _generate_shape(name: str, chunk: Chunk) -> dict[str, Any]:
    out: dict[str, Any] = {"model": name, "created_at": now_iso(), "response": chunk.content}
    if chunk.thinking:
        out["thinking"] = chunk.thinking
    out.update(_final_fields(chunk))
    if chunk.done and chunk.context is not None:
        out["context"] = chunk.context
    return out


@bp.post("/api/chat")
async def chat() -> Any:
    body = await read_json()
    gen = await _gen_common(body)
    inference.context_flags(gen, body)
    gen.messages = _check_messages(body.get("messages"))
    gen.tools = _check_tools(body.get("tools"))
    if not gen.messages:
        return await _load_or_unload(gen, "message", body)
    if body.get("_debug_render_only") is True:
        return await _render_only(gen, body)
    return await _respond(gen, body, _chat_shape)


@bp.post("/api/generate")
async def generate() -> Any:
    body = await read_json()
    gen = await _gen_common(body)
    inference.context_flags(gen, body)
    for key in ("prompt", "suffix", "system", "template"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise BadRequest(f"{key} must be a string")
    gen.prompt = body.get("prompt") or ""
    gen.suffix = body.get("suffix") or ""
    gen.system = body.get("system")
    gen.template = body.get("template") or None
    gen.raw = bool(body.get("raw", False))
    context = body.get("context")
    if context is not None:
        if not isinstance(context, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**31 for t in context
        ):
            raise BadRequest("context must be a list of token ids")  # the runner checks them against n_vocab
        gen.context = context
    if gen.raw and (gen.template or gen.system or context):
        raise BadRequest("raw mode does not support template, system, or context")  # as upstream
    _check_images(body.get("images"), "generate")
    gen.images = body.get("images") or None
    gen.want_context = not gen.raw
    if not gen.prompt and not gen.suffix:
        return await _load_or_unload(gen, "response", body)
    if gen.template:
        await trio.to_thread.run_sync(parse_template, gen.template)
    if body.get("_debug_render_only") is True:
        return await _render_only(gen, body)
    return await _respond(gen, body, _generate_shape)


async def _render_only(gen: Generation, body: dict[str, Any]) -> dict[str, Any]:
    """Upstream's debug answer: the rendered prompt instead of a reply."""
    prompt = await inference.render_only(gen, get_scheduler())
    return {"model": body.get("model") or body.get("name"), "created_at": now_iso(),
            "_debug_info": {"rendered_template": prompt}}


def _normalize(vec: list[float], dimensions: int | None) -> list[float]:
    if dimensions:
        vec = vec[:dimensions]
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec


async def _embed(gen: Generation, inputs: list[str], truncate: bool) -> dict[str, Any]:
    import time

    t0 = time.perf_counter_ns()
    scheduler = get_scheduler()
    async with scheduler.use(gen.model, gen.options, gen.keep_alive_s) as loaded:
        t_loaded = time.perf_counter_ns()
        result: dict[str, Any] = {}
        async for event in loaded.runner.request({"op": "embed", "inputs": inputs, "truncate": truncate}):
            result = event
    return {
        "embeddings": result.get("embeddings") or [],
        "total_duration": time.perf_counter_ns() - t0,
        "load_duration": t_loaded - t0,
        "prompt_eval_count": int(result.get("prompt_eval_count", 0)),
    }


@bp.post("/api/embed")
async def embed() -> dict[str, Any]:
    body = await read_json()
    gen = await _gen_common(body)
    raw = body.get("input")
    if raw is None or raw == "" or raw == []:
        inputs: list[str] = []
    elif isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        inputs = raw
    else:
        raise BadRequest("input must be a string or a list of strings")
    dimensions = body.get("dimensions")
    if dimensions is not None and (
        not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1
    ):
        raise BadRequest("dimensions must be a positive integer")
    truncate = body.get("truncate", True)
    if not isinstance(truncate, bool):
        raise BadRequest("truncate must be a boolean")
    if not inputs:
        await get_scheduler().load(gen.model, gen.options, gen.keep_alive_s)
        return {"model": body.get("model"), "embeddings": []}
    out = await _embed(gen, inputs, truncate)
    out["embeddings"] = [_normalize(v, dimensions) for v in out["embeddings"]]
    return {"model": body.get("model"), **out}


@bp.post("/api/embeddings")
async def embeddings_legacy() -> dict[str, Any]:
    body = await read_json()
    gen = await _gen_common(body)
    prompt = body.get("prompt")
    if not prompt:
        return {"embedding": []}
    if not isinstance(prompt, str):
        raise BadRequest("prompt must be a string")
    out = await _embed(gen, [prompt], True)
    return {"embedding": out["embeddings"][0]}


@bp.get("/api/ps")
async def ps() -> dict[str, Any]:
    models = []
    for loaded in get_scheduler().running():
        model = loaded.model
        models.append(
            {
                "name": model.name.display,
                "model": model.name.display,
                "size": loaded.estimated_bytes,
                "digest": model.digest,
                "details": details_from_config(model.config, model.stored.manifest).to_json(),
                "expires_at": (loaded.expires_at or datetime.now(UTC)).astimezone().isoformat(),
                "size_vram": loaded.vram_bytes,
                "context_length": loaded.context_length,
                # Not in Ollama: the layers' devices when the model is spread over llama.cpp RPC workers.
                **({"rpc": loaded.runner.info["rpc"]} if "rpc" in loaded.runner.info else {}),
            }
        )
    return {"models": models}


__all__ = ["ModelNotFound", "bp"]
