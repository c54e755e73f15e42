"""gpt-oss's harmony format: messages in channels, tool calls addressed ``to=functions.name``.

The model's reply is a sequence of messages::

    <|channel|>analysis<|message|>thinking...<|end|>
    <|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{...}<|call|>
    <|start|>assistant<|channel|>final<|message|>the answer<|return|>

(the prompt already holds the first ``<|start|>assistant``).  ``analysis`` is thinking, ``final`` and
plain ``commentary`` are content, and a message with a recipient is a tool call whose JSON arguments
are decoded when the reply is done (``<|call|>`` and ``<|return|>`` end generation).  Harmony wants
function names that are TypeScript identifiers, so ``init`` renames the request's tools (``my-tool``
becomes ``my_tool``) and the calls are mapped back.  The trace cannot be switched off: with
``think: false`` it still comes back as thinking, never as content.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence

from appliance.prompt.builtin.base import (
    Message,
    Parser,
    ThinkValue,
    Tool,
    ToolCall,
    function_of,
    log,
    make_call,
    overlap,
)

START, END, MESSAGE = "<|start|>", "<|end|>", "<|message|>"
CHANNEL, CONSTRAIN = "<|channel|>", "<|constrain|>"
BUILT_IN_TOOLS = ("browser.open", "browser.search", "browser.find", "python")


class _Parse(enum.Enum):
    LOOKING_FOR_START = enum.auto()
    HEADER = enum.auto()
    CONTENT = enum.auto()


class _Route(enum.Enum):
    CONTENT = enum.auto()
    THINKING = enum.auto()
    TOOL = enum.auto()


def parse_header(raw: str) -> tuple[str, str, str]:
    """``(role, channel, recipient)`` of a message header such as ``assistant<|channel|>commentary to=x``."""
    if CONSTRAIN in raw:
        raw = raw.replace(CONSTRAIN, " " + CONSTRAIN, 1).strip()
    channel = ""
    at = raw.find(CHANNEL)
    if at >= 0:
        after = raw[at + len(CHANNEL):]
        end = next((i for i, c in enumerate(after) if c.isspace()), len(after))
        channel = after[:end]
        raw = (raw[:at] + after[end:]).strip()
    tokens = raw.split()
    if not tokens:
        return "", channel, ""
    role, recipient = tokens[0], ""
    if role.startswith("to="):
        role, recipient = "tool", role[3:]
    elif len(tokens) > 1 and tokens[1].startswith("to="):
        recipient = tokens[1][3:]
    return role, channel, recipient


class FunctionNames:
    """The user's function names and the identifiers harmony sees, both ways."""

    def __init__(self) -> None:
        self.to_harmony: dict[str, str] = {}
        self.to_user: dict[str, str] = {}

    def add(self, user_name: str) -> str:
        if user_name in BUILT_IN_TOOLS:
            name = user_name
        else:
            kept = (c for c in user_name if c.isalnum() or c in " -._$")
            base = "".join("_" if c in " -." else c for c in kept) or "unnamed"
            if base[0].isdigit():
                base = "_" + base
            name, n = base, 2
            while name in self.to_user:
                name, n = f"{base}_{n}", n + 1
        self.to_harmony[user_name] = name
        self.to_user[name] = user_name
        return name

    def original(self, harmony_name: str) -> str:
        return self.to_user.get(harmony_name, harmony_name)


class HarmonyParser(Parser):
    has_tool_support = True
    has_thinking_support = True

    def __init__(self) -> None:
        self._parse = _Parse.LOOKING_FOR_START
        self._route = _Route.CONTENT
        self._buf = ""
        self._names = FunctionNames()
        self._tool_name: str | None = None
        self._tool_args: list[str] = []

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        implicit = START + "assistant"
        if last_message is not None and last_message.get("role") == "assistant":
            if last_message.get("content"):
                implicit += CHANNEL + "final" + MESSAGE  # continuing a prefilled answer
            elif last_message.get("thinking"):
                implicit += CHANNEL + "analysis" + MESSAGE
        self._buf = implicit
        if not tools:
            return None
        renamed: list[Tool] = []
        for tool in tools:
            fn = dict(function_of(tool))
            if fn.get("name"):
                fn["name"] = self._names.add(str(fn["name"]))
            renamed.append({**tool, "function": fn})
        return renamed

    def add(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        self._buf += text
        out: dict[_Route, list[str]] = {route: [] for route in _Route}
        while self._step(out):
            pass
        if out[_Route.TOOL]:
            self._tool_args.extend(out[_Route.TOOL])
        content, thinking = "".join(out[_Route.CONTENT]), "".join(out[_Route.THINKING])
        calls: list[ToolCall] = []
        if done and self._parse is not _Parse.CONTENT and self._buf.strip():
            # Text outside any message (a model not speaking harmony): content, not lost.
            content += self._buf.removeprefix("assistant") if self._parse is _Parse.HEADER else self._buf
            self._buf = ""
        if done and self._tool_name is not None:
            raw = "".join(self._tool_args)
            name = self._names.original(self._tool_name.removeprefix("functions."))
            try:
                arguments = json.loads(raw) if raw.strip() else {}
            except (ValueError, RecursionError):
                arguments = None
            if isinstance(arguments, dict):
                calls.append(make_call(0, name, arguments))
            else:
                log.warning("harmony parser: arguments of %s are not a JSON object: %.200r", name, raw)
                content += raw  # not lost
            self._tool_name, self._tool_args = None, []
        return content, thinking, calls

    def _step(self, out: dict[_Route, list[str]]) -> bool:
        buf = self._buf
        if self._parse is _Parse.LOOKING_FOR_START:
            at = buf.find(START)
            if at < 0:
                return False
            self._buf, self._parse = buf[at + len(START):], _Parse.HEADER
            return True
        if self._parse is _Parse.HEADER:
            at = buf.find(MESSAGE)
            if at < 0:
                return False
            _, channel, recipient = parse_header(buf[:at])
            if recipient and channel in ("analysis", "commentary"):
                self._route, self._tool_name, self._tool_args = _Route.TOOL, recipient, []
            elif channel == "analysis":
                self._route = _Route.THINKING
            elif channel in ("commentary", "final"):
                self._route = _Route.CONTENT
            self._buf, self._parse = buf[at + len(MESSAGE):], _Parse.CONTENT
            return True
        at = buf.find(END)
        if at >= 0:
            out[self._route].append(buf[:at])
            self._buf, self._parse = buf[at + len(END):], _Parse.LOOKING_FOR_START
            self._route = _Route.CONTENT
            return True
        keep = overlap(buf, END)
        out[self._route].append(buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep:]
        return False
