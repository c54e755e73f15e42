"""OpenAI wire shapes <-> the appliance's: chat messages, tools, options, usage, errors.

Follows Ollama's ``openai`` package where it has an opinion (temperature and top_p default to 1.0 as
OpenAI's do; ``reasoning`` carries the thinking; ``system_fingerprint`` is ``fp_ollama``) and goes
beyond it where OpenAI clients expect more: ``tool_choice`` is honoured, ``max_completion_tokens``
is read, stop strings add to the model's own, and unsupported fields fail with a 400 naming them.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import json
import secrets
import time
from typing import Any

from appliance.engine.protocol import MAX_TOP_LOGPROBS
from appliance.errors import ApplianceError, ModelNotFound
from appliance.server import compat
from appliance.server.compat import FieldError
from appliance.server.inference import Chunk

SYSTEM_FINGERPRINT = "fp_ollama"
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_IMAGE_PREFIXES = ("data:image/jpeg;base64,", "data:image/jpg;base64,", "data:image/png;base64,",
                   "data:image/webp;base64,", "data:image/gif;base64,", "data:;base64,")
# As upstream: OpenAI's scale clamped to Ollama's levels ("max" is the top one; harmony reads it as high).
_EFFORT: dict[str, bool | str] = {"none": False, "minimal": "low", "low": "low", "medium": "medium",
                                  "high": "high", "xhigh": "max", "max": "max", "ultra": "max"}


def error_body(exc: ApplianceError) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}`` for ``exc`` (OpenAI's error object)."""
    status = exc.status
    kind = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
            404: "not_found_error", 413: "invalid_request_error", 429: "rate_limit_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error")
    code = getattr(exc, "code", None)
    if code is None and isinstance(exc, ModelNotFound):
        code = "model_not_found"
    return {"error": {"message": str(exc), "type": kind, "param": getattr(exc, "param", None), "code": code}}


def new_id(prefix: str) -> str:
    """``chatcmpl-<n>`` / ``cmpl-<n>``, numbered like Ollama's."""
    return f"{prefix}-{secrets.randbelow(1_000_000_000)}"


def now() -> int:
    return int(time.time())


def sampling(body: dict[str, Any], max_tokens_keys: tuple[str, ...]) -> dict[str, Any]:
    """The options OpenAI spells as top-level fields, type-checked with the field named on error."""
    if body.get("n") not in (None, 1):
        raise FieldError("Invalid value for 'n': only n=1 is supported.", "n", "invalid_value")
    limit = None
    for key in max_tokens_keys:
        limit = compat.integer(body, key, minimum=1)
        if limit is not None:
            break
    temperature = compat.number(body, "temperature")
    top_p = compat.number(body, "top_p")
    return {
        "num_predict": limit,
        "temperature": 1.0 if temperature is None else temperature,
        "top_p": 1.0 if top_p is None else top_p,
        "seed": compat.integer(body, "seed"),
        "frequency_penalty": compat.number(body, "frequency_penalty"),
        "presence_penalty": compat.number(body, "presence_penalty"),
    }


def think(body: dict[str, Any]) -> bool | str | None:
    """``reasoning_effort`` (or ``reasoning.effort``) as Ollama's think value."""
    reasoning = compat.mapping(body, "reasoning")
    effort = (reasoning or {}).get("effort") if reasoning else body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in _EFFORT:
        raise FieldError(f"Invalid value for 'reasoning_effort': {effort!r}; use none, minimal, low, "
                         "medium, high, xhigh, max or ultra.", "reasoning_effort", "invalid_value")
    return _EFFORT[effort]


def refuse_logprobs(body: dict[str, Any], key: str = "logprobs") -> None:
    if body.get(key) not in (None, False, 0) or body.get("top_logprobs") not in (None, 0):
        raise FieldError(f"'{key}' is not supported by this server.", key, "unsupported_parameter")


def _top_logprobs(body: dict[str, Any], key: str) -> int:
    top = compat.integer(body, key, minimum=0) or 0
    if top > MAX_TOP_LOGPROBS:
        raise FieldError(f"Invalid value for '{key}': must be between 0 and {MAX_TOP_LOGPROBS}, got {top}.",
                         key, "invalid_value")
    return top


def chat_logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    """Chat's ``logprobs`` (a boolean) and ``top_logprobs`` (0-20), as Ollama maps them: top_logprobs
    without logprobs asks for nothing."""
    return bool(compat.boolean(body, "logprobs")), _top_logprobs(body, "top_logprobs")


def completion_logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    """The legacy ``logprobs`` (an integer, 0-20): the number of alternatives; as in Ollama, 0 asks for
    nothing."""
    top = _top_logprobs(body, "logprobs")
    return top > 0, top


def chat_logprobs_out(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A choice's ``logprobs``: ``{"content": [{token, logprob, bytes, top_logprobs}], "refusal": null}``."""
    if not entries:
        return None

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        return {"token": entry["token"], "logprob": entry["logprob"], "bytes": entry.get("bytes")}

    return {"content": [{**one(e), "top_logprobs": [one(t) for t in e.get("top_logprobs") or ()]}
                        for e in entries], "refusal": None}


class CompletionLogprobs:
    """The legacy completions' ``logprobs`` (``tokens``, ``token_logprobs``, ``top_logprobs`` as
    ``{token: logprob}``, ``text_offset``), chunk after chunk: each token's character offset in the
    completion's text comes from the bytes before it, so a character split over tokens counts once."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._chars = 0

    def shape(self, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
        if not entries:
            return None
        out: dict[str, list[Any]] = {key: [] for key in ("tokens", "token_logprobs", "top_logprobs",
                                                          "text_offset")}
        for entry in entries:
            out["tokens"].append(entry["token"])
            out["token_logprobs"].append(entry["logprob"])
            out["top_logprobs"].append({t["token"]: t["logprob"] for t in entry.get("top_logprobs") or ()})
            out["text_offset"].append(self._chars)
            self._chars += len(self._decoder.decode(bytes(entry.get("bytes") or ())))
        return out


def image_from_url(url: Any, where: str) -> str:
    """The base64 payload of a ``data:`` image URL (remote URLs are not fetched)."""
    if not isinstance(url, str):
        raise FieldError(f"Invalid type for '{where}': expected a string URL.", where, "invalid_type")
    if url.startswith(("http://", "https://")):
        raise FieldError("image URLs are not supported; send the image as base64 data", where,
                         "invalid_value")
    for prefix in _IMAGE_PREFIXES:
        if url.startswith(prefix):
            data = url[len(prefix):]
            try:
                base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise FieldError(f"invalid image data in '{where}'", where, "invalid_value") from exc
            return data
    raise FieldError(f"invalid image URL in '{where}': use data:image/<png|jpeg|webp>;base64,...", where,
                     "invalid_value")


def _content(content: Any, where: str) -> tuple[str, list[str]]:
    """A message's text and images from a string or a list of content parts."""
    if content is None or isinstance(content, str):
        return content or "", []
    if not isinstance(content, list):
        raise FieldError(f"Invalid type for '{where}': expected a string or an array of content parts, "
                         f"but got {compat.json_kind(content)} instead.", where, "invalid_type")
    texts, images = [], []
    for j, part in enumerate(content):
        at = f"{where}[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("text", "input_text", "output_text", "refusal"):
            text = compat.string(part, "refusal" if kind == "refusal" else "text", where=f"{at}.text")
            texts.append(text or "")
        elif kind in ("image_url", "input_image"):
            url = part.get("image_url")
            images.append(image_from_url(url.get("url") if isinstance(url, dict) else url, f"{at}.image_url"))
        else:
            raise FieldError(f"Invalid content part type {kind!r} in '{at}': this server supports text and "
                             "image_url parts.", f"{at}.type", "invalid_value")
    return "\n".join(texts), images


def tool_calls_in(calls: Any, where: str) -> list[dict[str, Any]]:
    """An assistant message's OpenAI tool calls as Ollama's (arguments decoded from their JSON string)."""
    if not isinstance(calls, list):
        raise FieldError(f"Invalid type for '{where}': expected an array.", where, "invalid_type")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise FieldError(f"Invalid tool call in '{where}[{j}]': expected a function with a name.",
                             f"{where}[{j}]", "invalid_value")
        arguments = decode_arguments(function.get("arguments"), f"{where}[{j}]")
        out.append({"id": call.get("id") or "",
                    "function": {"name": function["name"], "arguments": arguments}})
    return out


def decode_arguments(arguments: Any, where: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise FieldError(f"Invalid tool call arguments in '{where}': expected a JSON object string.",
                         f"{where}.function.arguments", "invalid_value")
    return value


def chat_messages(raw: Any) -> list[dict[str, Any]]:
    """OpenAI chat messages as the messages the prompt renderers take."""
    if not isinstance(raw, list):
        if raw is None:
            raise FieldError("Missing required parameter: 'messages'.", "messages",
                             "missing_required_parameter")
        raise FieldError(f"Invalid type for 'messages': expected an array of objects, but got "
                         f"{compat.json_kind(raw)} instead.", "messages", "invalid_type")
    if not raw:
        raise FieldError("Invalid 'messages': empty array. Expected an array with minimum length 1.",
                         "messages", "empty_array")
    names_by_id: dict[str, str] = {}
    out = []
    for i, msg in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise FieldError(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        # Any case, as upstream: its handler reads every message role in lower case.
        role = ROLES.get(msg["role"].lower()) if isinstance(msg.get("role"), str) else None
        if role is None:
            raise FieldError(f"Invalid value for '{where}.role': {msg.get('role')!r}; use system, developer, "
                             "user, assistant or tool.", f"{where}.role", "invalid_value")
        text, images = _content(msg.get("content"), f"{where}.content")
        message: dict[str, Any] = {"role": role, "content": text}
        if images:
            compat.check_images(images, where)
            message["images"] = images
        thinking = msg.get("reasoning") or msg.get("reasoning_content")
        if role == "assistant" and isinstance(thinking, str):
            message["thinking"] = thinking
        if role == "assistant" and msg.get("tool_calls") is not None:
            message["tool_calls"] = tool_calls_in(msg["tool_calls"], f"{where}.tool_calls")
            names_by_id.update({c["id"]: c["function"]["name"] for c in message["tool_calls"] if c["id"]})
        if role == "tool":
            call_id = msg.get("tool_call_id")
            name = msg.get("name") or names_by_id.get(call_id or "")
            if name:
                message["tool_name"] = name
            if isinstance(call_id, str):
                message["tool_call_id"] = call_id
        out.append(message)
    return out


def chat_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    """The request's tools after ``tool_choice``, and the format: forced call, response_format or None."""
    raw = compat.array(body, "tools")
    tools = []
    for i, tool in enumerate(raw or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type", "function") != "function":
            raise FieldError(f"Invalid value for 'tools[{i}]': only function tools are supported.",
                             f"tools[{i}]", "invalid_value")
        tools.append(compat.function_tool(function.get("name"), function.get("description"),
                                          function.get("parameters"), f"tools[{i}].function"))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        function = choice.get("function")
        name = function.get("name") if isinstance(function, dict) else choice.get("name")
        return compat.choose_tools(tools, "tool", name, response_format(body), "tool_choice")
    if choice is not None and not isinstance(choice, str):
        raise FieldError("Invalid type for 'tool_choice': expected a string or an object.", "tool_choice",
                         "invalid_type")
    return compat.choose_tools(tools, choice, None, response_format(body), "tool_choice")


def response_format(body: dict[str, Any]) -> Any:
    """``response_format`` as Ollama's format: "json", a JSON schema, or None for plain text."""
    spec = compat.mapping(body, "response_format")
    if spec is None:
        return None
    kind = spec.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (spec.get("json_schema") or {}).get("schema") if isinstance(spec.get("json_schema"), dict) \
            else None
        if not isinstance(schema, dict):
            raise FieldError("Missing required parameter: 'response_format.json_schema.schema'.",
                             "response_format.json_schema.schema", "missing_required_parameter")
        return schema
    raise FieldError(f"Invalid value for 'response_format.type': {kind!r}; use text, json_object or "
                     "json_schema.", "response_format.type", "invalid_value")


def usage(metrics: dict[str, Any]) -> dict[str, int]:
    prompt = int(metrics.get("prompt_eval_count", 0))
    completion = int(metrics.get("eval_count", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def finish_reason(chunk: Chunk, called: bool) -> str:
    reason = chunk.done_reason or "stop"
    return "tool_calls" if reason == "stop" and called else reason


def tool_calls_out(calls: list[dict[str, Any]], first_index: int, *, stream: bool) -> list[dict[str, Any]]:
    """Ollama's tool calls as OpenAI's: arguments as a JSON string; streamed ones carry their index."""
    out = []
    for i, call in enumerate(calls):
        function = call.get("function") or {}
        item: dict[str, Any] = {"id": call.get("id"), "type": "function", "function": {
            "name": function.get("name", ""),
            "arguments": json.dumps(function.get("arguments") or {}, ensure_ascii=False)}}
        if stream:
            item = {"index": first_index + i, **item}
        out.append(item)
    return out

