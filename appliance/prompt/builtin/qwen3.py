"""Qwen 3: ``<think>`` traces and JSON tool calls in ``<tool_call>`` tags, ChatML turns.

Parsers ``qwen3`` (no thinking), ``qwen3-thinking`` (thinks unless ``think`` is false), and
``qwen3-vl-instruct`` / ``qwen3-vl-thinking`` (the latter always thinks, whatever ``think`` says: its
trace is reported as thinking, never as content).  Renderers ``qwen3-vl-instruct`` and
``qwen3-vl-thinking``: the Qwen 3 chat format, tools as JSON lines in ``<tools>``.

The prompt of a thinking turn ends with ``<think>``, so the output starts inside the trace; a model that
writes the opening tag again anyway has it dropped.  A ``<tool_call>`` before ``</think>`` ends the trace.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any

from appliance.prompt.builtin.base import (
    Message,
    Renderer,
    StreamParser,
    ThinkValue,
    Tool,
    ToolCall,
    call_name_and_arguments,
    chatml_tool_response,
    go_json,
    go_tool,
    lstrip_space,
    rstrip_space,
    think_on,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"


class _State(enum.Enum):
    THINKING_WS = enum.auto()  # after the opening tag: dropping whitespace
    THINKING = enum.auto()
    CONTENT_WS = enum.auto()  # after </think> or </tool_call>: dropping whitespace
    CONTENT = enum.auto()
    TOOL_WS = enum.auto()  # after <tool_call>: dropping whitespace
    TOOL = enum.auto()  # collecting a call up to </tool_call>


class Qwen3Parser(StreamParser):
    name = "qwen3"
    has_tool_support = True

    def __init__(self, *, thinking: bool, default_thinking: bool, always_thinking: bool = False) -> None:
        self.has_thinking_support = thinking
        self._default_thinking = default_thinking
        self._always_thinking = always_thinking  # qwen3-vl-thinking: think=false cannot stop it
        self._state = _State.CONTENT
        self._buf = ""
        self._maybe_open = False  # a leading <think> may come even though the prompt wrote it
        self._count = 0

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._buf, self._count = "", 0
        enabled = self._default_thinking if think is None else think_on(think)
        if self._always_thinking:
            prefill = last_message is not None and last_message.get("role") == "assistant"
            enabled = not (prefill and last_message and last_message.get("content"))
        if self.has_thinking_support and enabled:
            self._state, self._maybe_open = _State.THINKING, True
        else:
            self._state, self._maybe_open = _State.CONTENT, False
        return super().init(tools, last_message, think)

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        if self._state in (_State.TOOL, _State.TOOL_WS):
            content.append(TOOL_OPEN + rest)  # an unfinished call is not lost
        elif rest.strip():  # trailing whitespace dropped
            (thinking if self._state is _State.THINKING else content).append(rstrip_space(rest))

    def _eat_space_then(self, state: _State) -> bool:
        self._buf = lstrip_space(self._buf)
        if not self._buf:
            return False
        self._state = state
        return True

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        state = self._state
        if state is _State.THINKING_WS:
            return self._eat_space_then(_State.THINKING)
        if state is _State.CONTENT_WS:
            return self._eat_space_then(_State.CONTENT)
        if state is _State.TOOL_WS:
            return self._eat_space_then(_State.TOOL)
        if state is _State.THINKING:
            return self._step_thinking(thinking)
        if state is _State.CONTENT:
            return self._step_content(content)
        return self._step_tool(content, calls)

    def _step_thinking(self, thinking: list[str]) -> bool:
        if self._maybe_open:
            stripped = lstrip_space(self._buf)
            if stripped.startswith(THINK_OPEN):
                self._buf = lstrip_space(stripped[len(THINK_OPEN):])
                if not self._buf:
                    return False
                self._maybe_open = False
                return True
            if THINK_OPEN.startswith(stripped):
                return False
            self._buf, self._maybe_open = stripped, False  # nor does a trace start with blank lines
        tag = self._take_until(thinking, THINK_CLOSE, TOOL_OPEN)
        if tag is None:
            return False
        self._buf = lstrip_space(self._buf)
        if tag == TOOL_OPEN:
            self._state = _State.TOOL if self._buf else _State.TOOL_WS
        else:
            self._state = _State.CONTENT if self._buf else _State.CONTENT_WS
        return True

    def _step_content(self, content: list[str]) -> bool:
        if self._take_until(content, TOOL_OPEN) is None:
            return False
        self._buf = lstrip_space(self._buf)
        self._state = _State.TOOL if self._buf else _State.TOOL_WS
        return True

    def _step_tool(self, content: list[str], calls: list[ToolCall]) -> bool:
        end = self._buf.find(TOOL_CLOSE)
        if end < 0:
            return False
        raw = rstrip_space(self._buf[:end])
        self._buf = self._buf[end + len(TOOL_CLOSE):]
        self._state = _State.CONTENT_WS
        self._add_call(parse_json_call(raw), raw, f"{TOOL_OPEN}{raw}{TOOL_CLOSE}", content, calls)
        return True


def parse_json_call(raw: str) -> tuple[str, dict[str, Any]] | None:
    """``{"name": ..., "arguments": {...}}``; None when it is not one."""
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        return None
    arguments = value.get("arguments")
    if arguments is None:
        return value["name"], {}
    return (value["name"], arguments) if isinstance(arguments, dict) else None


_TOOLS_HEADER = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)


def _is_tool_response(message: Message) -> bool:
    content = str(message.get("content") or "")
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


class Qwen3VLRenderer(Renderer):
    """Qwen 3 (VL) chat format; images stay where the content's ``[img]`` tags put them."""

    def __init__(self, *, thinking: bool) -> None:
        self._thinking = thinking

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        thinking = self._thinking if think is None else think_on(think)
        out: list[str] = []
        first_system = bool(messages) and messages[0].get("role") == "system"
        if tools:
            out.append("<|im_start|>system\n")
            if first_system:
                out.append(str(messages[0].get("content") or "") + "\n\n")
            out.append(_TOOLS_HEADER)
            for tool in tools:
                out.append("\n" + go_json(go_tool(tool), spaces=True))
            out.append(_TOOLS_FOOTER)
        elif first_system:
            out.append(f"<|im_start|>system\n{messages[0].get('content') or ''}<|im_end|>\n")
        # The last user message that is a real query, not a tool response.
        last_query = len(messages) - 1
        for i in range(len(messages) - 1, -1, -1):
            if messages[i].get("role") == "user" and not _is_tool_response(messages[i]):
                last_query = i
                break
        for i, message in enumerate(messages):
            role, content = message.get("role"), str(message.get("content") or "")
            last = i == len(messages) - 1
            prefill = last and role == "assistant"
            if role == "user" or (role == "system" and i != 0):
                out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            elif role == "assistant":
                out.append(self._assistant(message, content, thinking and i > last_query, last))
                if not prefill:
                    out.append("<|im_end|>\n")
            elif role == "tool":
                out.append(chatml_tool_response(messages, i, content))
            if last and not prefill:
                out.append("<|im_start|>assistant\n")
                if thinking:
                    out.append("<think>\n")
        return "".join(out)

    @staticmethod
    def _assistant(message: Message, content: str, current_thinking_turn: bool, last: bool) -> str:
        reasoning = str(message.get("thinking") or "")
        out = ["<|im_start|>assistant\n"]
        if current_thinking_turn and (last or reasoning):
            out.append("<think>\n" + reasoning.strip("\n"))
            if content:
                out.append("\n</think>\n\n" + content.lstrip("\n"))
        else:
            out.append(content)
        for j, call in enumerate(message.get("tool_calls") or ()):
            name, arguments = call_name_and_arguments(call)
            if j > 0 or content:
                out.append("\n")
            out.append(f'<tool_call>\n{{"name": "{name}", "arguments": '
                       f"{go_json(dict(arguments), spaces=True)}}}\n</tool_call>")
        return "".join(out)
