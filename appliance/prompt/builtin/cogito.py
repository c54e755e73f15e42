# ruff: noqa: RUF001, RUF002  (Cogito uses DeepSeek's special tokens, written with fullwidth bars)
"""Cogito: DeepSeek's turn tokens, with calls as ``function<｜tool▁sep｜>NAME`` and a fenced JSON block.

A call is ``<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\\n```json\\n{...}\\n```
<｜tool▁call▁end｜>`` inside ``<｜tool▁calls▁begin｜>...<｜tool▁calls▁end｜>``.
Parser ``cogito``: thinks only when ``think`` asks for it and the request has no tools (the prompt
then ends with ``<think>``); tool outputs the model writes itself are dropped.  Renderer ``cogito``:
Deep Cogito's default system prompt, "Enable deep thinking subroutine." when thinking, and the tools
as indented JSON blocks.
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
    go_json,
    go_tool,
    lstrip_space,
    rstrip_space,
    think_on,
)
from appliance.prompt.builtin.deepseek3 import (
    BOS,
    CALL_BEGIN,
    CALL_END,
    CALLS_BEGIN,
    CALLS_END,
    EOS,
    OUTPUT_BEGIN,
    OUTPUT_END,
    SEP,
)
from appliance.prompt.builtin.trace import TraceParser, prefilled

OUTPUTS_BEGIN, OUTPUTS_END = "<｜tool▁outputs▁begin｜>", "<｜tool▁outputs▁end｜>"
_FENCE_OPEN, _FENCE_CLOSE = "\n```json\n", "\n```"


class _State(enum.Enum):
    CONTENT = enum.auto()
    CALLS = enum.auto()
    OUTPUTS = enum.auto()


class _CogitoAnswer(SpaceEater, StreamParser):
    name = "cogito"
    has_tool_support = True

    def __init__(self) -> None:
        self._state = _State.CONTENT
        self._buf = ""
        self._count = 0
        self._eat_space = False  # after calls or outputs, however the whitespace arrives

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._state, self._buf, self._count, self._eat_space = _State.CONTENT, "", 0, False
        return super().init(tools, last_message, think)

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        if self._state is _State.CALLS and rest:
            content.append(CALLS_BEGIN + rest)  # unfinished calls are not lost
        elif self._state is _State.CONTENT and rest.strip():
            content.append(rstrip_space(rest))

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        if not self.take_leading_space():
            return False
        buf = self._buf
        if self._state is _State.CONTENT:
            tag = self._take_until(content, CALLS_BEGIN, OUTPUTS_BEGIN)
            if tag is None:
                return False
            self._state = _State.CALLS if tag == CALLS_BEGIN else _State.OUTPUTS
            return True
        if self._state is _State.OUTPUTS:  # the model imagining tool results: dropped
            end = buf.find(OUTPUTS_END)
            if end < 0:
                return False
            self._buf, self._state, self._eat_space = buf[end + len(OUTPUTS_END):], _State.CONTENT, True
            return True
        begin, calls_end = buf.find(CALL_BEGIN), buf.find(CALLS_END)
        if begin >= 0 and (calls_end < 0 or begin < calls_end):
            end = buf.find(CALL_END, begin)
            if end < 0:
                return False
            raw = buf[begin + len(CALL_BEGIN):end]
            self._buf, self._eat_space = buf[end + len(CALL_END):], True
            self._add_call(parse_call(raw), raw, CALL_BEGIN + raw + CALL_END, content, calls)
            return True
        if calls_end >= 0:
            self._buf, self._state, self._eat_space = buf[calls_end + len(CALLS_END):], _State.CONTENT, True
            return True
        return False


def parse_call(raw: str) -> tuple[str, dict[str, Any]] | None:
    """``function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```''; None when it is not one."""
    _, sep, rest = raw.partition(SEP)
    name, fence, arguments = rest.partition(_FENCE_OPEN)
    name = lstrip_space(rstrip_space(name))
    end = arguments.find(_FENCE_CLOSE)
    if not (sep and fence and name) or end < 0:
        return None
    try:
        value = json.loads(arguments[:end])
    except (ValueError, RecursionError):
        return None
    return (name, value) if isinstance(value, dict) else None


class CogitoParser(TraceParser):
    def __init__(self) -> None:
        super().__init__(_CogitoAnswer(), default_thinking=False)
        self._tools_given = False

    def thinks(self, last_message: Message | None, think: ThinkValue) -> bool:
        return think_on(think) and not prefilled(last_message) and not self._tools_given

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._tools_given = bool(tools)  # with tools the prompt does not open a trace
        return super().init(tools, last_message, think)


_DEFAULT_SYSTEM = ("You are Cogito, an AI assistant created by Deep Cogito, which is an AI research lab "
                   "based in San Francisco.")


def _indented(tool: Tool) -> str:
    """``json.MarshalIndent(tool, "", "    ")``: Go's escaping of <, > and & kept."""
    text = json.dumps(json.loads(go_json(go_tool(tool))), indent=4, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


class CogitoRenderer(Renderer):
    leading_bos = BOS

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        thinking = think_on(think)
        has_system = bool(messages) and messages[0].get("role") == "system"
        system = str(messages[0].get("content") or "") if has_system else ""
        chat = messages[1:] if has_system else messages
        if thinking:
            prompt = "Enable deep thinking subroutine.\n\n" + _DEFAULT_SYSTEM
            prompt += f"\n\n{system}\n\n" if system else ""
        else:
            prompt = _DEFAULT_SYSTEM + (f"\n\n{system}" if system else "")
        if tools:
            prompt += "\nYou have the following functions available:\n"
            prompt += "".join(f"```json\n{_indented(tool)}\n```\n" for tool in tools)
        out = [BOS + prompt]
        outputs_open = last_user = False
        for i, message in enumerate(chat):
            role, content = message.get("role"), str(message.get("content") or "")
            if role in ("user", "assistant", "tool"):
                last_user = role == "user"
            if role == "user":
                out.append(f"<｜User｜>{content}<｜Assistant｜>")
            elif role == "assistant" and message.get("tool_calls"):
                out.append(content + CALLS_BEGIN)
                blocks = []
                for call in message["tool_calls"]:
                    name, arguments = call_name_and_arguments(call)
                    blocks.append(f"{CALL_BEGIN}function{SEP}{name}\n```json\n{go_json(dict(arguments))}\n```"
                                  + CALL_END)
                out.append("\n".join(blocks) + CALLS_END + EOS)
            elif role == "assistant":
                out.append(content + EOS)
            elif role == "tool":
                if not outputs_open:
                    out.append(OUTPUTS_BEGIN)
                    outputs_open = True
                out.append(f"{OUTPUT_BEGIN}{content}{OUTPUT_END}")
                if i + 1 < len(chat) and chat[i + 1].get("role") == "tool":
                    out.append("\n")
                else:
                    out.append(OUTPUTS_END)
                    outputs_open = False
        if not last_user:
            out.append("<｜Assistant｜>")
        if thinking:
            out.append("<think>\n")
        return "".join(out)
