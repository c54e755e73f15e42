"""Anthropic-compatible routes: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

A client built for Anthropic works by changing only its base URL (the API key and
``anthropic-version`` are accepted and not checked).  Generations go through
:func:`inference.generate`; errors leave as ``{"type": "error", "error": {"type", "message"}}``.

Beyond Ollama: ``tool_choice`` is honoured (any/tool constrain the reply to a call, see
:func:`compat.forced_call_format`; none drops the tools), ``stop_sequence`` is reported with the
string that matched, ``count_tokens`` counts with the model's own tokenizer, and ``max_tokens`` is
required as Anthropic requires it.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from quart import Blueprint

from appliance.errors import ApplianceError
from appliance.server import compat, inference
from appliance.server.compat import FieldError
from appliance.server.inference import Chunk, Generation
from appliance.server.native import get_scheduler
from appliance.server.requests import read_json

log = logging.getLogger("appliance.server.anthropic")

bp = Blueprint("anthropic", __name__)

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 529: "overloaded_error"}
_CHOICES = {"auto": "auto", "any": "required", "tool": "tool", "none": "none"}


def error_body(exc: ApplianceError) -> dict[str, Any]:
    kind = _ERROR_TYPES.get(exc.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": str(exc)},
            "request_id": compat.random_id("req_")}



compat.register_error_handlers(bp, error_body)


# -- request -> Generation ----------------------------------------------------------------------


def _text_blocks(value: Any, where: str) -> str:
    """A string, or text blocks joined by newlines (system prompts, tool results)."""
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise FieldError(f"{where}: Input should be a valid string or a list of text blocks", where)
    texts = []
    for j, block in enumerate(value):
        text = block.get("text") if isinstance(block, dict) and block.get("type") == "text" else None
        if not isinstance(text, str):
            raise FieldError(f"{where}.{j}: expected a text block", f"{where}.{j}")
        texts.append(text)
    return "\n".join(texts)


def _image(block: dict[str, Any], where: str) -> str:
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64":
        raise FieldError(f"{where}.source: only base64 image sources are supported", f"{where}.source")
    data = source.get("data")
    try:
        base64.b64decode(data if isinstance(data, str) else "-", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FieldError(f"{where}.source.data: invalid base64 image data", f"{where}.source.data") from exc
    return str(data)


def _tool_result(block: dict[str, Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    call_id = block.get("tool_use_id")
    if not isinstance(call_id, str):
        raise FieldError(f"{where}.tool_use_id: Field required", f"{where}.tool_use_id")
    content = block.get("content")
    if isinstance(content, list):
        images = [_image(b, f"{where}.content.{k}") for k, b in enumerate(content)
                  if isinstance(b, dict) and b.get("type") == "image"]
        compat.check_images(images, where)
        content = [b for b in content if not (isinstance(b, dict) and b.get("type") == "image")]
    else:
        images = []
    text = _text_blocks(content, f"{where}.content")
    message: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
    if images:
        message["images"] = images
    if call_id in names:
        message["tool_name"] = names[call_id]
    return message


def _message(msg: Any, where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: its tool results first, then what it says."""
    if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
        raise FieldError(f"{where}.role: Input should be 'user' or 'assistant'", f"{where}.role")
    role, content = msg["role"], msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise FieldError(f"{where}.content: Input should be a valid string or a list of content blocks",
                         f"{where}.content")
    results, texts, images, calls, thinking = [], [], [], [], ""
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(compat.string(block, "text", f"{at}.text", required=True))
        elif kind == "image":
            images.append(_image(block, at))
        elif kind == "tool_use" and role == "assistant":
            name = compat.string(block, "name", f"{at}.name", required=True) or ""
            call_id = compat.string(block, "id", f"{at}.id") or ""
            arguments = block.get("input") if isinstance(block.get("input"), dict) else {}
            names[call_id] = name
            calls.append({"id": call_id, "function": {"name": name, "arguments": arguments}})
        elif kind == "tool_result" and role == "user":
            results.append(_tool_result(block, at, names))
        elif kind == "thinking" and role == "assistant":
            thinking += str(block.get("thinking") or "")
        elif kind != "redacted_thinking":
            raise FieldError(f"{at}.type: unsupported content block {kind!r} in a {role} message",
                             f"{at}.type")
    compat.check_images(images, where)
    out = list(results)
    if texts or calls or thinking or images or not results:
        message: dict[str, Any] = {"role": role, "content": "\n".join(t or "" for t in texts)}
        if images:
            message["images"] = images
        if calls:
            message["tool_calls"] = calls
        if thinking:
            message["thinking"] = thinking
        out.append(message)
    return out


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """``output_config.format`` (structured output) as a JSON schema; ``effort`` is accepted and ignored."""
    spec = (compat.mapping(body, "output_config") or {}).get("format")
    if spec is None:
        return None
    schema = spec.get("schema") if isinstance(spec, dict) and spec.get("type") == "json_schema" else None
    if not isinstance(schema, dict):
        raise FieldError("output_config.format: expected {\"type\": \"json_schema\", \"schema\": {...}}",
                         "output_config.format")
    return schema


def _tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    tools = []
    for i, tool in enumerate(compat.array(body, "tools") or []):
        if not isinstance(tool, dict) or tool.get("type") not in (None, "custom"):
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise FieldError(f"tools.{i}: server tool {kind!r} is not supported; declare client tools with "
                             "name, description and input_schema", f"tools.{i}")
        tools.append(compat.function_tool(tool.get("name"), tool.get("description"), tool.get("input_schema"),
                                          f"tools.{i}"))
    fmt = _output_format(body)
    choice = compat.mapping(body, "tool_choice")
    if choice is None:
        return tools or None, fmt
    mode = _CHOICES.get(choice.get("type"))  # type: ignore[arg-type]
    if mode is None:
        raise FieldError(f"tool_choice.type: {choice.get('type')!r}; use auto, any, tool or none",
                         "tool_choice.type")
    return compat.choose_tools(tools, mode, choice.get("name"), fmt, "tool_choice")


def _think(body: dict[str, Any]) -> bool | None:
    thinking = compat.mapping(body, "thinking")
    if thinking is None:
        return None
    compat.integer(thinking, "budget_tokens", "thinking.budget_tokens")  # accepted, not enforced
    if thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        raise FieldError("thinking.type: use enabled, adaptive or disabled", "thinking.type")
    return thinking["type"] != "disabled"


async def _generation(body: dict[str, Any], *, counting: bool = False) -> Generation:
    """Check every field (each error names it) and build the generation."""
    max_tokens = compat.integer(body, "max_tokens", minimum=1, required=not counting)
    sampling = {"num_predict": max_tokens, "temperature": compat.number(body, "temperature"),
                "top_p": compat.number(body, "top_p"), "top_k": compat.integer(body, "top_k")}
    stops = compat.typed(body, "stop_sequences", list, "an array of strings") or []
    if not all(isinstance(s, str) for s in stops):
        raise FieldError("stop_sequences: Input should be a list of strings", "stop_sequences")
    raw = compat.array(body, "messages", required=True) or []
    if not raw and not counting:
        raise FieldError("messages: at least one message is required", "messages")
    names: dict[str, str] = {}
    messages = [m for i, msg in enumerate(raw) for m in _message(msg, f"messages.{i}", names)]
    system = _text_blocks(body.get("system"), "system")
    if system:
        messages.insert(0, {"role": "system", "content": system})
    tools, fmt = _tools(body)
    think = _think(body)
    model = await compat.model_for(body)
    return Generation(model=model, messages=messages, tools=tools, format=fmt, think=think,
                      options=compat.options_for(model, sampling), stop_sequences=stops)


# -- routes -------------------------------------------------------------------------------------


def _stop_reason(final: Chunk, called: bool) -> str:
    if called:
        return "tool_use"
    if final.done_reason == "length":
        return "max_tokens"
    return "stop_sequence" if final.stop_sequence else "end_turn"


def _usage(metrics: dict[str, Any]) -> dict[str, int]:
    return {"input_tokens": int(metrics.get("prompt_eval_count", 0)),
            "output_tokens": int(metrics.get("eval_count", 0)),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _tool_use(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    return {"type": "tool_use", "id": compat.random_id("toolu_"), "name": function.get("name", ""),
            "input": function.get("arguments") or {}}


@bp.post("/v1/messages")
async def messages() -> Any:
    body = await read_json()
    gen = await _generation(body)
    message_id = compat.random_id("msg_")
    if compat.boolean(body, "stream"):
        events = _MessageStream(message_id, body["model"])
        return await compat.sse_response(events.frames(gen), events.error_frame)
    reply = await compat.collect(gen)
    content: list[dict[str, Any]] = []
    if reply.thinking:
        content.append({"type": "thinking", "thinking": reply.thinking, "signature": ""})
    if reply.content:
        content.append({"type": "text", "text": reply.content})
    content += [_tool_use(call) for call in reply.tool_calls]
    return {"id": message_id, "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": _stop_reason(reply.final, bool(reply.tool_calls)),
            "stop_sequence": reply.final.stop_sequence, "usage": _usage(reply.final.metrics)}


@bp.post("/v1/messages/count_tokens")
async def count_tokens() -> dict[str, int]:
    body = await read_json()
    gen = await _generation(body, counting=True)
    return {"input_tokens": await inference.count_prompt_tokens(gen, get_scheduler())}


class _MessageStream:
    """Chunks as Anthropic's stream: message_start, blocks (start, deltas, stop), message_delta, stop."""

    def __init__(self, message_id: str, model: str) -> None:
        self.message_id, self.model = message_id, model
        self.index = -1
        self.open: str | None = None  # the kind of content block being streamed
        self.called = self.pinged = False

    async def frames(self, gen: Generation) -> AsyncIterator[bytes]:
        chunks = inference.generate(gen, get_scheduler())
        chunk: Chunk | None = await chunks.__anext__()  # errors before any event keep their HTTP status
        yield self._frame({"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": self.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": _usage({})}})
        while chunk is not None:
            for frame in self._finish(chunk) if chunk.done else self._feed(chunk):
                yield frame
            chunk = await anext(chunks, None)

    def error_frame(self, exc: ApplianceError) -> bytes:
        return self._frame(error_body(exc))

    def _frame(self, data: dict[str, Any]) -> bytes:
        return compat.sse_frame(data, data["type"])

    def _feed(self, chunk: Chunk) -> list[bytes]:
        frames: list[bytes] = []
        if chunk.thinking:
            frames += self._block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            frames.append(self._delta({"type": "thinking_delta", "thinking": chunk.thinking}))
        if chunk.content:
            frames += self._block("text", {"type": "text", "text": ""})
            frames.append(self._delta({"type": "text_delta", "text": chunk.content}))
        for call in chunk.tool_calls:
            block = _tool_use(call)
            frames += self._block("tool_use", {**block, "input": {}}, always=True)
            frames.append(self._delta({"type": "input_json_delta",
                                       "partial_json": json.dumps(block["input"], ensure_ascii=False)}))
            frames += self._close()
            self.called = True
        return frames

    def _finish(self, final: Chunk) -> list[bytes]:
        frames = self._close() + self._ping()
        usage = _usage(final.metrics)
        frames.append(self._frame({
            "type": "message_delta",
            "delta": {"stop_reason": _stop_reason(final, self.called), "stop_sequence": final.stop_sequence},
            "usage": {"input_tokens": usage["input_tokens"], "output_tokens": usage["output_tokens"]}}))
        frames.append(self._frame({"type": "message_stop"}))
        return frames

    def _block(self, kind: str, start: dict[str, Any], always: bool = False) -> list[bytes]:
        if self.open == kind and not always:
            return []
        frames = self._close()
        self.index += 1
        self.open = kind
        frames.append(self._frame({"type": "content_block_start", "index": self.index,
                                   "content_block": start}))
        return frames + self._ping()

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return self._frame({"type": "content_block_delta", "index": self.index, "delta": delta})

    def _close(self) -> list[bytes]:
        if self.open is None:
            return []
        self.open = None
        return [self._frame({"type": "content_block_stop", "index": self.index})]

    def _ping(self) -> list[bytes]:
        if self.pinged:
            return []
        self.pinged = True
        return [self._frame({"type": "ping"})]
