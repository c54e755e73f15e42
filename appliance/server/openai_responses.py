"""OpenAI's Responses API, stateless: request items -> chat messages, chunks -> output items and events.

Like Ollama, nothing is stored: ``previous_response_id`` and ``conversation`` are refused, and a
client keeps the conversation by sending back the items it got (messages, ``function_call``,
``function_call_output``, ``reasoning``).  Beyond Ollama, ``tool_choice`` is honoured (see
:func:`compat.forced_call_format`) and a reply cut short by ``max_output_tokens`` is ``incomplete``.
"""

from __future__ import annotations

import time
from typing import Any

from appliance.errors import ApplianceError
from appliance.server import compat
from appliance.server import openai_convert as oc
from appliance.server.compat import FieldError, Reply
from appliance.server.inference import Chunk

_MESSAGE_ROLES = {"user": "user", "system": "system", "developer": "system", "assistant": "assistant"}


def refuse_state(body: dict[str, Any]) -> None:
    for key in ("previous_response_id", "conversation"):
        if body.get(key) is not None:
            raise FieldError(f"'{key}' is not supported: this server keeps no state between responses; send "
                             "the earlier items in 'input' instead.", key, "unsupported_parameter")
    if body.get("background"):
        raise FieldError("'background' is not supported.", "background", "unsupported_parameter")
    oc.refuse_logprobs(body, "top_logprobs")


def messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """``instructions`` and ``input`` as chat messages."""
    out: list[dict[str, Any]] = []
    instructions = compat.string(body, "instructions")
    if instructions:
        out.append({"role": "system", "content": instructions})
    raw = compat.typed(body, "input", (str, list), "a string or an array of input items", required=True)
    if isinstance(raw, str):
        return [*out, {"role": "user", "content": raw}]
    names: dict[str, str] = {}
    thinking = ""
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise FieldError(f"Invalid type for '{where}': expected an object.", where, "invalid_type")
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            message = _message(item, where)
            if message["role"] == "assistant" and thinking:
                message["thinking"], thinking = thinking, ""
            out.append(message)
        elif kind == "function_call":
            call_id = compat.string(item, "call_id", f"{where}.call_id", required=True) or ""
            name = compat.string(item, "name", f"{where}.name", required=True) or ""
            names[call_id] = name
            call = {"id": call_id, "function": {"name": name, "arguments": oc.decode_arguments(
                item.get("arguments"), where)}}
            if out and out[-1]["role"] == "assistant" and "tool_calls" in out[-1]:
                out[-1]["tool_calls"].append(call)
            else:
                out.append({"role": "assistant", "content": "", "tool_calls": [call]})
                if thinking:
                    out[-1]["thinking"], thinking = thinking, ""
        elif kind == "function_call_output":
            call_id = compat.string(item, "call_id", f"{where}.call_id", required=True) or ""
            output = item.get("output")
            text = output if isinstance(output, str) else _message(
                {"role": "user", "content": output}, f"{where}.output")["content"]
            tool = {"role": "tool", "content": text, "tool_call_id": call_id}
            if call_id in names:
                tool["tool_name"] = names[call_id]
            out.append(tool)
        elif kind == "reasoning":
            parts = (item.get("summary") or []) + (item.get("content") or [])
            thinking += "".join(p.get("text", "") for p in parts if isinstance(p, dict))
        else:
            raise FieldError(f"Invalid value for '{where}.type': {kind!r}; this server takes message, "
                             "function_call, function_call_output and reasoning items.", f"{where}.type",
                             "invalid_value")
    return out


def _message(item: dict[str, Any], where: str) -> dict[str, Any]:
    role = _MESSAGE_ROLES.get(item.get("role"))  # type: ignore[arg-type]
    if role is None:
        raise FieldError(f"Invalid value for '{where}.role': {item.get('role')!r}.", f"{where}.role",
                         "invalid_value")
    converted = oc.chat_messages([{"role": role, "content": item.get("content")}])[0]
    return converted


def tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]] | None, Any]:
    """Function tools (flat, as the Responses API writes them) after ``tool_choice``, and the format."""
    found = []
    for i, tool in enumerate(compat.array(body, "tools") or []):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise FieldError(f"Invalid value for 'tools[{i}]': only function tools are supported.",
                             f"tools[{i}]", "invalid_value")
        found.append(compat.function_tool(tool.get("name"), tool.get("description"), tool.get("parameters"),
                                          f"tools[{i}]"))
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        return compat.choose_tools(found, "tool", choice.get("name"), text_format(body), "tool_choice")
    return compat.choose_tools(found, choice, None, text_format(body), "tool_choice")


def text_format(body: dict[str, Any]) -> Any:
    spec = (compat.mapping(body, "text") or {}).get("format")
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise FieldError("Invalid type for 'text.format': expected an object.", "text.format", "invalid_type")
    kind = spec.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema" and isinstance(spec.get("schema"), dict):
        return spec["schema"]
    raise FieldError(f"Invalid value for 'text.format': {kind!r} without a schema object.", "text.format",
                     "invalid_value")


def _usage(metrics: dict[str, Any]) -> dict[str, Any]:
    prompt, output = int(metrics.get("prompt_eval_count", 0)), int(metrics.get("eval_count", 0))
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": prompt + output}


class Responder:
    """One response: its envelope, its output items, and its stream events in order."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body
        self.id = compat.random_id("resp_", 32)
        self.created = int(time.time())
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the reasoning or message item being streamed

    def envelope(self, status: str, final: Chunk | None = None, error: ApplianceError | None = None
                 ) -> dict[str, Any]:
        body = self.body
        incomplete = final is not None and final.done_reason == "length"
        fmt = ((body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None)
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": {"code": "server_error", "message": str(error)} if error else None,
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": body.get("model"), "output": list(self.output) if final else [],
            "parallel_tool_calls": body.get("parallel_tool_calls", True), "previous_response_id": None,
            "reasoning": {"effort": (body.get("reasoning") or {}).get("effort"), "summary": None},
            "store": False, "temperature": body.get("temperature", 1.0),
            "text": {"format": fmt or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0), "truncation": "disabled",
            "usage": _usage(final.metrics) if final else None, "metadata": body.get("metadata") or {},
        }

    def whole(self, reply: Reply) -> dict[str, Any]:
        """The response object for a non-streaming request."""
        self.feed(Chunk(thinking=reply.thinking, content=reply.content, tool_calls=reply.tool_calls))
        self._close()  # the events are dropped; the items are in self.output
        final = reply.final
        return self.envelope("incomplete" if final.done_reason == "length" else "completed", final)

    # -- events ---------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        return [self._event("response.created", response=self.envelope("in_progress")),
                self._event("response.in_progress", response=self.envelope("in_progress"))]

    def feed(self, chunk: Chunk) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if chunk.thinking:
            item = self._item("reasoning", events)
            item["_text"] += chunk.thinking
            events.append(self._event("response.reasoning_summary_text.delta", item_id=item["id"],
                                      output_index=len(self.output), summary_index=0, delta=chunk.thinking))
        if chunk.content:
            item = self._item("message", events)
            item["_text"] += chunk.content
            events.append(self._event("response.output_text.delta", item_id=item["id"],
                                      output_index=len(self.output), content_index=0, delta=chunk.content,
                                      logprobs=[]))
        for call in oc.tool_calls_out(chunk.tool_calls, 0, stream=False):
            events += self._close()
            item = {"id": compat.random_id("fc_"), "type": "function_call", "status": "completed",
                    "call_id": call["id"], "name": call["function"]["name"],
                    "arguments": call["function"]["arguments"]}
            index = len(self.output)
            events += [
                self._event("response.output_item.added", output_index=index,
                            item={**item, "status": "in_progress", "arguments": ""}),
                self._event("response.function_call_arguments.delta", item_id=item["id"], output_index=index,
                            delta=item["arguments"]),
                self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            name=item["name"], arguments=item["arguments"]),
                self._event("response.output_item.done", output_index=index, item=item),
            ]
            self.output.append(item)
        return events

    def finish(self, final: Chunk) -> list[dict[str, Any]]:
        incomplete = final.done_reason == "length"
        events = self._close()
        kind = "response.incomplete" if incomplete else "response.completed"
        return [*events, self._event(kind, response=self.envelope(
            "incomplete" if incomplete else "completed", final))]

    def failed(self, exc: ApplianceError) -> dict[str, Any]:
        return self._event("response.failed", response=self.envelope("failed", error=exc))

    def _item(self, kind: str, events: list[dict[str, Any]]) -> dict[str, Any]:
        """The open item of ``kind``, closing another one and opening it (with its events) if needed."""
        if self.open is None or self.open["type"] != kind:
            events += self._close()
            if kind == "reasoning":
                events += self._open({"id": compat.random_id("rs_"), "type": "reasoning", "summary": []})
            else:
                events += self._open({"id": compat.random_id("msg_"), "type": "message",
                                      "status": "in_progress", "role": "assistant", "content": []})
        assert self.open is not None
        return self.open

    def _open(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        self.open = {**item, "_text": ""}
        index = len(self.output)
        events = [self._event("response.output_item.added", output_index=index, item=item)]
        if item["type"] == "reasoning":
            events.append(self._event("response.reasoning_summary_part.added", item_id=item["id"],
                                      output_index=index, summary_index=0,
                                      part={"type": "summary_text", "text": ""}))
        else:
            events.append(self._event("response.content_part.added", item_id=item["id"], output_index=index,
                                      content_index=0, part={"type": "output_text", "text": "",
                                                             "annotations": [], "logprobs": []}))
        return events

    def _close(self) -> list[dict[str, Any]]:
        if self.open is None:
            return []
        item, self.open = self.open, None
        text, index = item.pop("_text"), len(self.output)
        if item["type"] == "reasoning":
            part = {"type": "summary_text", "text": text}
            item["summary"] = [part]
            events = [
                self._event("response.reasoning_summary_text.done", item_id=item["id"], output_index=index,
                            summary_index=0, text=text),
                self._event("response.reasoning_summary_part.done", item_id=item["id"], output_index=index,
                            summary_index=0, part=part),
            ]
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item.update(status="completed", content=[part])
            events = [
                self._event("response.output_text.done", item_id=item["id"], output_index=index,
                            content_index=0, text=text, logprobs=[]),
                self._event("response.content_part.done", item_id=item["id"], output_index=index,
                            content_index=0, part=part),
            ]
        self.output.append(item)
        return [*events, self._event("response.output_item.done", output_index=index, item=item)]


def sse(event: dict[str, Any]) -> bytes:
    return compat.sse_frame(event, event["type"])


