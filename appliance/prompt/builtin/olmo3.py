"""OLMo 3: ChatML turns, tools as a JSON list in ``<functions>``, calls as Python-like lines.

The model calls tools as ``<function_calls>get_weather(location="Paris", days=3)</function_calls>``, one
call per line.  Parser ``olmo3`` (no thinking) and renderer ``olmo3`` / ``olmo3.1`` (the latter with
Ai2's longer default system prompt); tool results come back as ``environment`` turns.  Parser
``olmo3-think``: the model always thinks, its prompt ends inside ``<think>``; renderers ``olmo3-think``
and ``olmo3-32b-think`` (no tools, their own default system prompts).
"""

from __future__ import annotations

import ast
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
    go_json,
    go_tool,
    log,
    overlap,
)
from appliance.prompt.builtin.trace import TraceParser

CALLS_OPEN, CALLS_CLOSE = "<function_calls>", "</function_calls>"
MAX_CALL_LINE = 64 << 10  # a call longer than this is not parsed (ast's work grows with it)
_LITERAL_NAMES = {"true": True, "True": True, "false": False, "False": False,
                  "null": None, "None": None, "nil": None}


def olmo3_think_parser() -> TraceParser:
    return TraceParser(follows_think=False)


class Olmo3Parser(StreamParser):
    name = "olmo3"
    has_tool_support = True

    def __init__(self) -> None:
        self._buf = ""
        self._in_calls = False
        self._count = 0

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._buf, self._in_calls, self._count = "", False, 0
        return super().init(tools, last_message, think)

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        if not self._in_calls:
            at = self._buf.find(CALLS_OPEN)
            if at < 0:  # the text around the calls is kept as the model wrote it
                cut = len(self._buf) - overlap(self._buf, CALLS_OPEN)
                content.append(self._buf[:cut])
                self._buf = self._buf[cut:]
                return False
            content.append(self._buf[:at])
            self._buf, self._in_calls = self._buf[at + len(CALLS_OPEN):], True
            return True
        end = self._buf.find(CALLS_CLOSE)
        if end < 0:
            return False
        raw = self._buf[:end]
        self._buf, self._in_calls = self._buf[end + len(CALLS_CLOSE):], False
        parsed = parse_calls(raw)
        if parsed is None:
            log.warning("olmo3 parser: not tool calls, passed on as content: %.200r", raw)
            content.append(CALLS_OPEN + raw + CALLS_CLOSE)
        else:
            calls.extend(self._new_call(name, arguments) for name, arguments in parsed)
        return True

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        content.append(CALLS_OPEN + rest if self._in_calls else rest)  # unfinished calls are not lost


def parse_calls(raw: str) -> list[tuple[str, dict[str, Any]]] | None:
    """``name(key=value, ...)`` lines; None when one of them is not a call."""
    calls = []
    for line in raw.strip().splitlines():
        line = line.strip()
        if not line:
            continue
        call = _parse_call(line) if len(line) <= MAX_CALL_LINE else None
        if call is None:
            return None
        calls.append(call)
    return calls


def _parse_call(line: str) -> tuple[str, dict[str, Any]] | None:
    try:
        node = ast.parse(line, mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args):
            return None
        arguments: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                return None
            arguments[keyword.arg] = _literal(keyword.value)
    except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None
    return node.func.id, arguments


def _literal(node: ast.expr) -> Any:
    """A JSON- or Python-spelled literal (``true``/``True``, ``null``/``None``); ValueError otherwise."""
    if isinstance(node, ast.Name):
        if node.id not in _LITERAL_NAMES:
            raise ValueError(node.id)
        return _LITERAL_NAMES[node.id]
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {str(_literal(k)) if k is not None else "": _literal(v) for k, v in zip(node.keys, node.values,
                                                                                        strict=True)}
    value = ast.literal_eval(node)
    if isinstance(value, complex | bytes | set):
        raise ValueError("not a JSON value")
    return value


_DEFAULT_SYSTEM = "You are a helpful function-calling AI assistant. "
_ABOUT_OLMO = ("You are Olmo, a helpful AI assistant built by Ai2. Your date cutoff is December 2024, and "
               "your model weights are available at https://huggingface.co/allenai.")
_DEFAULT_SYSTEM_31 = _ABOUT_OLMO + " "
_NO_FUNCTIONS = "You do not currently have access to any functions. "
_WITH_FUNCTIONS = (
    "You are provided with function signatures within <functions></functions> XML tags. You may call one or "
    "more functions to assist with the user query. Output any function calls within "
    "<function_calls></function_calls> XML tags. Do not make assumptions about what values to plug into "
    "functions."
)


def _call_line(call: Any) -> str:
    name, arguments = call_name_and_arguments(call)
    return f"{name}(" + ", ".join(f"{key}={go_json(arguments[key])}" for key in sorted(arguments)) + ")"


class Olmo3Renderer(Renderer):
    def __init__(self, *, olmo31: bool = False) -> None:
        self._olmo31 = olmo31

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        system = next((m for m in messages if m.get("role") == "system"), None)
        chat = [m for m in messages if m.get("role") != "system"]
        functions = go_json([go_tool(tool) for tool in tools], spaces=True) if tools else ""
        out = ["<|im_start|>system\n"]
        if system is not None:
            out.append(str(system.get("content") or ""))
            out.append(f"<functions>{functions}</functions>" if tools else "")
        else:
            out.append(_DEFAULT_SYSTEM_31 if self._olmo31 else _DEFAULT_SYSTEM)
            out.append(f"{_WITH_FUNCTIONS}<functions>{functions}</functions>" if tools
                       else f"{_NO_FUNCTIONS}<functions></functions>")
        out.append("<|im_end|>\n")
        for i, message in enumerate(chat):
            role, content = message.get("role"), str(message.get("content") or "")
            calls = message.get("tool_calls") or ()
            if role == "user":
                out.append(f"<|im_start|>user\n{content}<|im_end|>\n")
            elif role == "assistant":
                out.append("<|im_start|>assistant\n" + content)
                if calls:
                    out.append(CALLS_OPEN + "\n".join(_call_line(call) for call in calls) + CALLS_CLOSE)
                if i < len(chat) - 1 or calls:
                    out.append("<|im_end|>\n")
            elif role == "tool":
                out.append(f"<|im_start|>environment\n{content}<|im_end|>\n")
        last = chat[-1] if chat else {}
        if not (last.get("role") == "assistant" and not last.get("tool_calls") and last.get("content")):
            out.append("<|im_start|>assistant\n")
        return "".join(out)


_THINK_SYSTEM_SUFFIX = " You do not currently have access to any functions. <functions></functions>"
_THINK_SYSTEM_32B = "You are a helpful AI assistant."
_THINK_SYSTEM_31 = _ABOUT_OLMO


class Olmo3ThinkRenderer(Renderer):
    """No tools (tool turns are left out); the prompt always ends inside ``<think>``."""

    def __init__(self, *, olmo3_32b: bool = False) -> None:
        self._olmo3_32b = olmo3_32b

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        system = next((m for m in messages if m.get("role") == "system"), None)
        out = ["<|im_start|>system\n"]
        if system is not None:
            out.append(str(system.get("content") or "") + _THINK_SYSTEM_SUFFIX)
        else:
            out.append(_THINK_SYSTEM_32B if self._olmo3_32b else _THINK_SYSTEM_31)
        out.append("<|im_end|>\n")
        for message in messages:
            role, content = message.get("role"), str(message.get("content") or "")
            if role in ("user", "assistant"):
                out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
        out.append("<|im_start|>assistant\n<think>")
        return "".join(out)
