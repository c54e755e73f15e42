"""OpenAI-compatible routes: chat completions, completions, embeddings, models and responses under /v1.

A client built for OpenAI works by changing only its base URL.  Every generation goes through
:func:`inference.generate`; these routes translate the wire format and nothing more, and every error
leaves as OpenAI's ``{"error": {"message", "type", "param", "code"}}``.
"""

from __future__ import annotations

import base64
import logging
import struct
from collections.abc import AsyncIterator
from typing import Any

import trio
from quart import Blueprint

from appliance.errors import ApplianceError
from appliance.server import compat, inference
from appliance.server import openai_convert as oc
from appliance.server import openai_responses as responses
from appliance.server.compat import FieldError
from appliance.server.inference import Chunk, Generation
from appliance.server.models import get_store
from appliance.server.native import _embed, _normalize, get_scheduler
from appliance.server.requests import read_json
from appliance.store.names import parse_name

log = logging.getLogger("appliance.server.openai")

bp = Blueprint("openai", __name__)



compat.register_error_handlers(bp, oc.error_body)


def _error_frame(exc: ApplianceError) -> bytes:
    return compat.sse_frame(oc.error_body(exc))


# -- chat completions ---------------------------------------------------------------------------


@bp.post("/v1/chat/completions")
async def chat_completions() -> Any:
    body = await read_json()
    logprobs, top_logprobs = oc.chat_logprobs(body)
    sampling = oc.sampling(body, ("max_completion_tokens", "max_tokens"))
    stops = compat.stop_list(body, "stop")
    stream = bool(compat.boolean(body, "stream"))
    usage_wanted = bool((compat.mapping(body, "stream_options") or {}).get("include_usage"))
    messages = oc.chat_messages(body.get("messages"))
    tools, fmt = oc.chat_tools(body)
    think = oc.think(body)
    model = await compat.model_for(body)
    gen = Generation(model=model, messages=messages, tools=tools, format=inference.check_format(fmt),
                     options=compat.options_for(model, sampling, stops), think=think, logprobs=logprobs,
                     top_logprobs=top_logprobs)
    if stream:
        return await compat.sse_response(_chat_frames(gen, body["model"], usage_wanted), _error_frame)
    reply = await compat.collect(gen)
    message: dict[str, Any] = {"role": "assistant",
                               "content": reply.content or (None if reply.tool_calls else "")}
    if reply.thinking:
        message["reasoning"] = reply.thinking
    if reply.tool_calls:
        message["tool_calls"] = oc.tool_calls_out(reply.tool_calls, 0, stream=False)
    return {
        "id": oc.new_id("chatcmpl"), "object": "chat.completion", "created": oc.now(), "model": body["model"],
        "system_fingerprint": oc.SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": oc.chat_logprobs_out(reply.logprobs),
                     "finish_reason": oc.finish_reason(reply.final, bool(reply.tool_calls))}],
        "usage": oc.usage(reply.final.metrics),
    }


async def _chat_frames(gen: Generation, model: str, usage_wanted: bool) -> AsyncIterator[bytes]:
    head = {"id": oc.new_id("chatcmpl"), "object": "chat.completion.chunk", "created": oc.now(),
            "model": model, "system_fingerprint": oc.SYSTEM_FINGERPRINT}
    tail = {"usage": None} if usage_wanted else {}
    n_calls = 0
    first = True
    async for chunk in inference.generate(gen, get_scheduler()):
        if chunk.done:
            choice = {"index": 0, "delta": {}, "logprobs": None,
                      "finish_reason": oc.finish_reason(chunk, n_calls > 0)}
            yield compat.sse_frame({**head, "choices": [choice], **tail})
            if usage_wanted:
                yield compat.sse_frame({**head, "choices": [], "usage": oc.usage(chunk.metrics)})
            yield compat.sse_frame("[DONE]")
            return
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if chunk.thinking:
            delta["reasoning"] = chunk.thinking
        if chunk.content or first:
            delta["content"] = chunk.content
        if chunk.tool_calls:
            delta["tool_calls"] = oc.tool_calls_out(chunk.tool_calls, n_calls, stream=True)
            n_calls += len(chunk.tool_calls)
        first = False
        choice = {"index": 0, "delta": delta, "logprobs": oc.chat_logprobs_out(chunk.logprobs),
                  "finish_reason": None}
        yield compat.sse_frame({**head, "choices": [choice], **tail})


# -- legacy completions -------------------------------------------------------------------------


@bp.post("/v1/completions")
async def completions() -> Any:
    body = await read_json()
    if body.get("echo"):
        raise FieldError("'echo' is not supported by this server.", "echo", "unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise FieldError("'best_of' is not supported by this server.", "best_of", "unsupported_parameter")
    logprobs, top_logprobs = oc.completion_logprobs(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise FieldError("Invalid type for 'prompt': expected a string (or a list of one string); "
                         "batches and token ids are not supported.", "prompt", "invalid_type")
    suffix = compat.string(body, "suffix") or ""
    sampling = oc.sampling(body, ("max_tokens",))
    stops = compat.stop_list(body, "stop")
    stream = bool(compat.boolean(body, "stream"))
    usage_wanted = bool((compat.mapping(body, "stream_options") or {}).get("include_usage"))
    model = await compat.model_for(body)
    options = compat.options_for(model, sampling, stops)
    gen = Generation(model=model, prompt=prompt, suffix=suffix, options=options, logprobs=logprobs,
                     top_logprobs=top_logprobs)
    if stream:
        return await compat.sse_response(_completion_frames(gen, body["model"], usage_wanted), _error_frame)
    reply = await compat.collect(gen)
    return {
        **_completion_head(body["model"]),
        "choices": [{"text": reply.content, "index": 0,
                     "logprobs": oc.CompletionLogprobs().shape(reply.logprobs),
                     "finish_reason": oc.finish_reason(reply.final, False)}],
        "usage": oc.usage(reply.final.metrics),
    }


def _completion_head(model: str) -> dict[str, Any]:
    return {"id": oc.new_id("cmpl"), "object": "text_completion", "created": oc.now(), "model": model,
            "system_fingerprint": oc.SYSTEM_FINGERPRINT}


async def _completion_frames(gen: Generation, model: str, usage_wanted: bool) -> AsyncIterator[bytes]:
    head = _completion_head(model)
    logprobs = oc.CompletionLogprobs()
    async for chunk in inference.generate(gen, get_scheduler()):
        reason = oc.finish_reason(chunk, False) if chunk.done else None
        choice = {"text": chunk.content, "index": 0, "logprobs": logprobs.shape(chunk.logprobs),
                  "finish_reason": reason}
        yield compat.sse_frame({**head, "choices": [choice], **({"usage": None} if usage_wanted else {})})
        if chunk.done:
            if usage_wanted:
                yield compat.sse_frame({**head, "choices": [], "usage": oc.usage(chunk.metrics)})
            yield compat.sse_frame("[DONE]")


# -- embeddings ---------------------------------------------------------------------------------


@bp.post("/v1/embeddings")
async def embeddings() -> dict[str, Any]:
    body = await read_json()
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) and x for x in inputs):
        tokens = isinstance(inputs, list) and inputs and all(isinstance(x, int | list) for x in inputs)
        why = ("token ids are not supported (they would be read with this model's own vocabulary); send text"
               if tokens else "expected a non-empty string or a non-empty array of non-empty strings")
        raise FieldError(f"Invalid value for 'input': {why}.", "input", "invalid_value")
    encoding = compat.string(body, "encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise FieldError(f"Invalid value for 'encoding_format' = {encoding}. Supported values: ['float', "
                         "'base64'].", "encoding_format", "invalid_value")
    dimensions = compat.integer(body, "dimensions", minimum=1)
    model = await compat.model_for(body)
    gen = Generation(model=model, options=inference.merged_options(model, None))
    out = await _embed(gen, inputs, True)
    data = []
    for i, vector in enumerate(out["embeddings"]):
        vector = _normalize(vector, dimensions)
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    count = out["prompt_eval_count"]
    return {"object": "list", "data": data, "model": body["model"],
            "usage": {"prompt_tokens": count, "total_tokens": count}}


# -- models -------------------------------------------------------------------------------------


def _model_entry(name: str, namespace: str, modified: Any) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(modified.timestamp()), "owned_by": namespace}


@bp.get("/v1/models")
async def list_models() -> dict[str, Any]:
    stored = await trio.to_thread.run_sync(get_store().list)
    return {"object": "list", "data": [
        _model_entry(m.name.display, m.name.namespace, m.modified_at) for m in stored]}


@bp.get("/v1/models/<path:name>")
async def retrieve_model(name: str) -> dict[str, Any]:
    model = await inference.resolve_model(get_store(), name)
    return _model_entry(name, parse_name(name).namespace, model.modified_at)


# -- responses ----------------------------------------------------------------------------------


@bp.post("/v1/responses")
async def create_response() -> Any:
    body = await read_json()
    responses.refuse_state(body)
    sampling = oc.sampling(body, ("max_output_tokens",))
    messages = responses.messages(body)
    tools, fmt = responses.tools(body)
    think = oc.think(body)
    stream = bool(compat.boolean(body, "stream"))
    model = await compat.model_for(body)
    gen = Generation(model=model, messages=messages, tools=tools, format=inference.check_format(fmt),
                     options=compat.options_for(model, sampling), think=think)
    responder = responses.Responder(body)
    if not stream:
        return responder.whole(await compat.collect(gen))

    async def frames() -> AsyncIterator[bytes]:
        chunks = inference.generate(gen, get_scheduler())
        first = await chunks.__anext__()  # errors before any event keep their HTTP status
        for event in responder.start():
            yield responses.sse(event)
        chunk: Chunk | None = first
        while chunk is not None:
            events = responder.finish(chunk) if chunk.done else responder.feed(chunk)
            for event in events:
                yield responses.sse(event)
            chunk = await anext(chunks, None)

    return await compat.sse_response(frames(), lambda exc: responses.sse(responder.failed(exc)))
