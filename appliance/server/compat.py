"""What the OpenAI- and Anthropic-compatible blueprints share.

Typed request fields whose errors name the field, the sampling options both families spell alike,
forced tool calls, server-sent events and random ids.  Nothing here knows either wire format.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from string import ascii_letters, digits
from typing import Any

from quart import Response

from appliance.errors import ApplianceError, BadRequest
from appliance.server import inference
from appliance.server.inference import Chunk, Generation
from appliance.server.models import get_store
from appliance.server.native import _check_images, get_scheduler
from appliance.store.model import Model

SSE = "text/event-stream"

_JSON_TYPES = {
    bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
    dict: "an object", type(None): "null",
}


class FieldError(BadRequest):
    """A request field with the wrong type or value; ``param`` names it (OpenAI's error ``param``)."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def json_kind(value: Any) -> str:
    """The JSON type of ``value`` in words, for error messages (\"a string\")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


def typed(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str,
          *, required: bool = False, where: str | None = None) -> Any:
    """``body[key]`` if it is a ``kind`` (None when absent); FieldError naming ``where`` otherwise.

    ``what`` is the expected type in words ("a number").  Booleans never pass for numbers.
    """
    param = where or key
    value = body.get(key)
    if value is None:
        if required:
            raise FieldError(f"Missing required parameter: '{param}'.", param, "missing_required_parameter")
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        ok = False
    else:
        ok = isinstance(value, kinds) or (float in kinds and isinstance(value, int))
    if not ok:
        raise FieldError(f"Invalid type for '{param}': expected {what}, but got {json_kind(value)} instead.",
                         param, "invalid_type")
    return value


def number(body: Mapping[str, Any], key: str, where: str | None = None) -> float | None:
    return typed(body, key, float, "a number", where=where)  # type: ignore[no-any-return]


def integer(body: Mapping[str, Any], key: str, where: str | None = None, *, minimum: int | None = None,
            required: bool = False) -> int | None:
    value = typed(body, key, int, "an integer", where=where, required=required)
    if value is not None and minimum is not None and value < minimum:
        param = where or key
        raise FieldError(f"Invalid value for '{param}': must be at least {minimum}, got {value}.", param,
                         "invalid_value")
    return value  # type: ignore[no-any-return]


def string(body: Mapping[str, Any], key: str, where: str | None = None, *,
           required: bool = False) -> str | None:
    return typed(body, key, str, "a string", where=where, required=required)  # type: ignore[no-any-return]


def boolean(body: Mapping[str, Any], key: str, where: str | None = None) -> bool | None:
    return typed(body, key, bool, "a boolean", where=where)  # type: ignore[no-any-return]


def array(body: Mapping[str, Any], key: str, where: str | None = None, *,
          required: bool = False) -> list | None:
    return typed(body, key, list, "an array", where=where, required=required)  # type: ignore[no-any-return]


def mapping(body: Mapping[str, Any], key: str, where: str | None = None) -> dict | None:
    return typed(body, key, dict, "an object", where=where)  # type: ignore[no-any-return]


def stop_list(body: Mapping[str, Any], key: str) -> list[str]:
    """A stop field given as one string or a list of strings."""
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return list(value)
    raise FieldError(f"Invalid type for '{key}': expected a string or an array of strings, but got "
                     f"{json_kind(value)} instead.", key, "invalid_type")


async def model_for(body: Mapping[str, Any]) -> Model:
    """The stored model the request names (404 ModelNotFound if there is none)."""
    name = string(body, "model", required=True)
    if not name:
        raise FieldError("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    return await inference.resolve_model(get_store(), name)


def options_for(model: Model, sampling: dict[str, Any], stops: list[str] | None = None) -> dict[str, Any]:
    """The model's parameters with the request's sampling options over them.

    Request ``stops`` are added to the model's own stop strings rather than replacing them (Ollama
    replaces them, which lets a model whose end-of-turn marker is not an end-of-generation token run on).
    """
    request = {k: v for k, v in sampling.items() if v is not None}
    if stops:
        request["stop"] = [*(model.parameters.get("stop") or []), *stops]
    return inference.merged_options(model, request)


def check_images(images: list[str], where: str) -> None:
    """Images go through the native routes' check; they are decoded when the model is known to see them."""
    _check_images(images, where)


def function_tool(name: Any, description: Any, parameters: Any, where: str) -> dict[str, Any]:
    """One tool in Ollama's shape, checked."""
    if not isinstance(name, str) or not name:
        raise FieldError(f"Missing required parameter: '{where}.name'.", f"{where}.name",
                         "missing_required_parameter")
    if parameters is not None and not isinstance(parameters, dict):
        raise FieldError(f"Invalid type for '{where}': the parameters schema must be an object.", where,
                         "invalid_type")
    schema = parameters or {"type": "object", "properties": {}}
    function: dict[str, Any] = {"name": name, "parameters": schema}
    if isinstance(description, str):
        function["description"] = description
    return {"type": "function", "function": function}


def forced_call_format(tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A JSON schema admitting exactly one call of one of ``tools``, as the tool-call parser reads it.

    This is how "tool_choice: required" (or a named tool) is honoured: the reply is constrained by a
    grammar to ``{"name": ..., "arguments": {...}}``, which the model's tool-call parser then returns as
    a call.  Ollama has no such option; small models rarely call tools unprompted.
    """
    shapes = []
    for tool in tools:
        function = tool["function"]
        shapes.append({
            "type": "object",
            "properties": {"name": {"const": function["name"]},
                           "arguments": function.get("parameters") or {"type": "object"}},
            "required": ["name", "arguments"],
        })
    return shapes[0] if len(shapes) == 1 else {"anyOf": shapes}


def choose_tools(tools: list[dict[str, Any]], mode: str | None, name: str | None, fmt: Any,
                 param: str) -> tuple[list[dict[str, Any]] | None, Any]:
    """Tools and format after a tool choice: ``mode`` is auto, none, required (any) or tool (named).

    A forced choice replaces the format with :func:`forced_call_format`, so it cannot be combined
    with a structured-output format.
    """
    if mode in (None, "auto"):
        return tools or None, fmt
    if mode == "none":
        return None, fmt
    if not tools:
        raise FieldError(f"'{param}' {mode!r} needs 'tools'.", param, "invalid_value")
    forced = tools
    if mode == "tool":
        forced = [t for t in tools if t["function"]["name"] == name]
        if not forced:
            raise FieldError(f"Invalid value for '{param}': no tool named {name!r} in 'tools'.", param,
                             "invalid_value")
    elif mode != "required":
        raise FieldError(f"Invalid value for '{param}': {mode!r}.", param, "invalid_value")
    if fmt is not None:
        raise FieldError(f"A structured output format cannot be combined with a forced '{param}'.", param,
                         "invalid_value")
    return forced, forced_call_format(forced)


@dataclass
class Reply:
    """A whole generation, gathered for a non-streaming answer."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    final: Chunk = field(default_factory=lambda: Chunk(done=True, done_reason="stop"))


async def collect(gen: Generation) -> Reply:
    reply = Reply()
    async for chunk in inference.generate(gen, get_scheduler()):
        reply.content += chunk.content
        reply.thinking += chunk.thinking
        reply.tool_calls += chunk.tool_calls
        reply.logprobs += chunk.logprobs
        if chunk.done:
            reply.final = chunk
    return reply


def random_id(prefix: str, length: int = 24) -> str:
    alphabet = ascii_letters + digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def sse_frame(data: Any, event: str | None = None) -> bytes:
    """One server-sent event; ``data`` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


async def sse_response(
    frames: AsyncIterator[bytes], error_frame: Callable[[ApplianceError], bytes]
) -> Response:
    """Stream ``frames``; the first is awaited here so an early error still gets its real status.

    An error after the 200 went out travels in the stream as ``error_frame(exc)``.
    """
    try:
        first: bytes | None = await frames.__anext__()
    except StopAsyncIteration:
        first = None

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield first
        try:
            async for frame in frames:
                yield frame
        except ApplianceError as exc:
            yield error_frame(exc)

    response = Response(body(), content_type=SSE)
    response.headers["Cache-Control"] = "no-cache"
    return response


def register_error_handlers(bp: Any, error_body: Any) -> None:
    """Answer every error under ``bp`` in its API family's shape (``error_body(exc)``)."""
    import logging

    from quart import request
    from werkzeug.exceptions import HTTPException

    from appliance.errors import ApplianceError, public_message

    log = logging.getLogger(f"appliance.server.{bp.name}")

    @bp.errorhandler(ApplianceError)
    async def appliance_error(exc: ApplianceError) -> tuple[dict[str, Any], int]:
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc)
        return error_body(exc), exc.status

    @bp.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> tuple[dict[str, Any], int]:
        error = ApplianceError(exc.description or exc.name)
        error.status = exc.code or 500
        return error_body(error), error.status

    @bp.errorhandler(Exception)
    async def unexpected(exc: Exception) -> tuple[dict[str, Any], int]:
        log.exception("unhandled error in %s %s", request.method, request.path)
        error = ApplianceError(public_message(exc))
        return error_body(error), error.status
