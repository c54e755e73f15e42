# ruff: noqa: RUF001, RUF002  (DeepSeek's special tokens are written with fullwidth bars)
"""DeepSeek V3.1 / R1: a ``</think>``-closed trace, and tool calls between DeepSeek's special tokens.

Parser ``deepseek3``: when thinking is on, the output starts inside the trace (the prompt ends with
``<think>``) up to ``</think>``; tool calls are
``<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>name<｜tool▁sep｜>{json}<｜tool▁call▁end｜>...<｜tool▁calls▁end｜>``.
Renderer ``deepseek3.1``: the V3.1 prompt, where ``</think>`` right after ``<｜Assistant｜>`` turns
thinking off.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from typing import Any

from appliance.prompt.builtin.base import (
    Message,
    Renderer,
    SpaceEater,
    StreamParser,
    ThinkValue,
    Tool,
    ToolCall,
    call_name_and_arguments,
    function_of,
    go_json,
    go_parameters,
    rstrip_space,
    split_at_first_tag,
    system_texts,
    think_on,
)

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
THINK_CLOSE = "</think>"
CALLS_BEGIN, CALLS_END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
CALL_BEGIN, CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁call▁end｜>"
SEP = "<｜tool▁sep｜>"
OUTPUT_BEGIN, OUTPUT_END = "<｜tool▁output▁begin｜>", "<｜tool▁output▁end｜>"


class _State(enum.Enum):
    THINKING = enum.auto()
    CONTENT = enum.auto()
    CALLS = enum.auto()
    OUTPUT = enum.auto()  # a tool output the model wrote itself: content


class DeepSeek3Parser(SpaceEater, StreamParser):
    name = "deepseek3"
    has_tool_support = True
    has_thinking_support = True

    def __init__(self) -> None:
        self._state = _State.CONTENT
        self._buf = ""
        self._count = 0
        self._eat_space = False  # whitespace after </think> or the calls is dropped, however it arrives

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._buf, self._count, self._eat_space = "", 0, False
        prefilled = (last_message is not None and last_message.get("role") == "assistant"
                     and bool(last_message.get("content")))
        self._state = _State.THINKING if think_on(think) and not prefilled else _State.CONTENT
        return super().init(tools, last_message, think)

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        if self._state is _State.CALLS:
            content.append(CALLS_BEGIN + rest)  # unfinished calls are not lost
        elif self._state is _State.OUTPUT:
            content.append(rest)
        elif rest.strip():
            (thinking if self._state is _State.THINKING else content).append(rstrip_space(rest))

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        if not self.take_leading_space():
            return False
        buf = self._buf
        if self._state is _State.THINKING:
            if self._take_until(thinking, THINK_CLOSE) is None:
                return False
            self._state, self._eat_space = _State.CONTENT, True
            return True
        if self._state is _State.CONTENT:
            before, tag, self._buf = split_at_first_tag(buf, CALLS_BEGIN, OUTPUT_BEGIN)
            if tag is None:
                content.append(before)
                return False
            if tag == CALLS_BEGIN:
                content.append(rstrip_space(before))
                self._state = _State.CALLS
            else:
                content.append(before)  # whitespace kept, as the reference does
                self._state = _State.OUTPUT
            return True
        if self._state is _State.OUTPUT:
            end = buf.find(OUTPUT_END)
            if end < 0:
                return False
            content.append(buf[:end])
            self._buf = buf[end + len(OUTPUT_END):]
            self._state = _State.CONTENT
            return True
        return self._step_calls(content, calls)

    def _step_calls(self, content: list[str], calls: list[ToolCall]) -> bool:
        buf = self._buf
        begin, calls_end = buf.find(CALL_BEGIN), buf.find(CALLS_END)
        if begin >= 0 and (calls_end < 0 or begin < calls_end):
            start = begin + len(CALL_BEGIN)
            end = buf.find(CALL_END, start)
            if end < 0:
                return False
            raw = buf[start:end]
            self._buf = buf[end + len(CALL_END):]
            self._eat_space = True
            self._add_call(_parse_call(raw), raw, CALL_BEGIN + raw + CALL_END, content, calls)
            return True
        if calls_end >= 0:
            self._buf = buf[calls_end + len(CALLS_END):]
            self._state, self._eat_space = _State.CONTENT, True
            return True
        return False


def _parse_call(raw: str) -> tuple[str, dict[str, Any]] | None:
    name, sep, arguments = raw.partition(SEP)
    if not sep or not name.strip():
        return None
    try:
        value = json.loads(arguments.strip())
    except (ValueError, RecursionError):
        return None
    return (name.strip(), value) if isinstance(value, dict) else None


_TOOL_RULES = (
    "\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n"
    f"{CALLS_BEGIN}{CALL_BEGIN}tool_call_name{SEP}tool_call_arguments{CALL_END}{{{{additional_tool_calls}}}}"
    f"{CALLS_END}\n\n"
    "Where:\n\n"
    "- `tool_call_name` must be an exact match to one of the available tools\n"
    "- `tool_call_arguments` must be valid JSON that strictly follows the tool's Parameters Schema\n"
    "- For multiple tool calls, chain them directly without separators or spaces\n"
)


class DeepSeek31Renderer(Renderer):
    leading_bos = BOS

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        thinking = think_on(think)
        out = [BOS, "\n\n".join(system_texts(messages))]
        if tools:
            out.append("\n\n## Tools\nYou have access to the following tools:\n")
            for tool in tools:
                fn = function_of(tool)
                out.append(f"\n### {fn.get('name') or ''}\nDescription: {fn.get('description') or ''}")
                out.append(f"\n\nParameters: {go_json(go_parameters(fn.get('parameters')))}\n")
            out.append(_TOOL_RULES)
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        after_user = after_tool = False
        for i, message in enumerate(messages):
            role, content = message.get("role"), str(message.get("content") or "")
            if role == "user":
                after_user, after_tool = True, False
                out.append("<｜User｜>" + content)
            elif role == "assistant" and message.get("tool_calls"):
                if after_user:
                    out.append("<｜Assistant｜></think>")
                after_user = after_tool = False
                out.append(content + CALLS_BEGIN)
                for call in message["tool_calls"]:
                    name, arguments = call_name_and_arguments(call)
                    out.append(f"{CALL_BEGIN}{name}{SEP}{go_json(dict(arguments))}{CALL_END}")
                out.append(CALLS_END + EOS)
            elif role == "assistant":
                if after_user:
                    current = i > last_user
                    out.append("<｜Assistant｜>")
                    out.append("<think>" if message.get("thinking") and thinking and current else "</think>")
                after_user = False
                if not after_tool and THINK_CLOSE in content:
                    content = content.split(THINK_CLOSE, 1)[1]
                after_tool = False
                out.append(content + EOS)
            elif role == "tool":
                after_user, after_tool = False, True
                out.append(f"{OUTPUT_BEGIN}{content}{OUTPUT_END}")
        if after_user and not after_tool:
            out.append("<｜Assistant｜>" + ("<think>" if thinking else "</think>"))
        return "".join(out)
