"""Qwen3-Coder: tool calls as XML-like blocks, and the ChatML prompt that describes tools that way.

The model writes::

    <tool_call>
    <function=get_weather>
    <parameter=city>
    Paris
    </parameter>
    </function>
    </tool_call>

Parameter values are text; each is typed by the tool's JSON schema (``integer``, ``number``,
``boolean``, ``array``, ``object``, unions through ``anyOf``), ``null`` is null, and anything that does
not fit its type stays a string.  No thinking.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
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
    chatml_tool_response,
    function_of,
    go_json,
    go_property,
    rstrip_space,
)

TOOL_OPEN, TOOL_CLOSE = "<tool_call>", "</tool_call>"

_FUNCTION = re.compile(r"<function=([^>]+)>")
_PARAMETER = re.compile(r"<parameter=([^>]+)>(.*?)(?:</parameter>|(?=<parameter=)|(?=</function>)|\Z)",
                        re.DOTALL)
_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


class _State(enum.Enum):
    CONTENT = enum.auto()
    TOOL = enum.auto()


class Qwen3CoderParser(SpaceEater, StreamParser):
    name = "qwen3-coder"
    has_tool_support = True

    def __init__(self) -> None:
        self._tools: list[Tool] = []
        self._state = _State.CONTENT
        self._buf = ""
        self._count = 0
        self._eat_space = False

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._tools, self._state, self._buf, self._count = list(tools or ()), _State.CONTENT, "", 0
        self._eat_space = False
        return super().init(tools, last_message, think)

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        if self._state is _State.CONTENT:
            if not self.take_leading_space():  # whitespace right after a call is dropped
                return False
            if self._take_until(content, TOOL_OPEN) is None:
                return False
            self._state = _State.TOOL
            return True
        end = self._buf.find(TOOL_CLOSE)
        if end < 0:
            return False
        raw = self._buf[:end]
        self._buf = self._buf[end + len(TOOL_CLOSE):]
        self._state, self._eat_space = _State.CONTENT, True
        self._add_call(parse_xml_call(raw, self._tools), raw, TOOL_OPEN + raw + TOOL_CLOSE, content, calls)
        return True

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        if self._state is _State.TOOL:
            content.append(TOOL_OPEN + rest)  # an unfinished call is not lost
        elif rest.strip():
            content.append(rstrip_space(rest))


def _schema_types(tools: Sequence[Tool], function: str, parameter: str) -> list[str]:
    for tool in tools:
        fn = function_of(tool)
        if fn.get("name") != function:
            continue
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, Mapping) else None
        prop = props.get(parameter) if isinstance(props, Mapping) else None
        if not isinstance(prop, Mapping):
            return []
        if prop.get("anyOf"):
            return [t for alt in prop["anyOf"] if isinstance(alt, Mapping) for t in _types(alt.get("type"))]
        return _types(prop.get("type"))
    return []


def _types(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []


def typed_value(raw: str, types: Sequence[str]) -> Any:
    """A parameter's text as the schema's type, in Ollama's order of preference (strings last)."""
    if raw.lower() == "null":
        return None
    if not types:
        return raw
    only = len(types) == 1
    if "boolean" in types:
        if raw.lower() in ("true", "false"):
            return raw.lower() == "true"
        if only:
            return False
    if "integer" in types:
        if _INTEGER.fullmatch(raw):
            return int(raw)
        if only:
            return raw
    if "number" in types:
        if _NUMBER.fullmatch(raw):
            number = float(raw)
            return int(number) if number.is_integer() else number
        if only:
            return raw
    for kind, python_type in (("array", list), ("object", dict)):
        if kind in types:
            try:
                value = json.loads(raw)
            except (ValueError, RecursionError):
                value = None
            if isinstance(value, python_type):
                return value
            if only:
                return raw
    return raw


def parse_xml_call(raw: str, tools: Sequence[Tool]) -> tuple[str, dict[str, Any]] | None:
    """``<function=name><parameter=k>v</parameter>...</function>``; None when there is no function."""
    function = _FUNCTION.search(raw)
    if function is None:
        return None
    name = function.group(1).strip()
    arguments: dict[str, Any] = {}
    for match in _PARAMETER.finditer(raw, function.end()):
        key, value = match.group(1).strip(), match.group(2)
        value = value.removeprefix("\n").removesuffix("\n")  # one newline each side, as the reference
        arguments[key] = typed_value(value, _schema_types(tools, name, key))
    return name, arguments


_DEFAULT_SYSTEM = "You are Qwen, a helpful AI assistant that can interact with a computer to solve tasks."
CALL_FORMAT = (
    "\n\nIf you choose to call a function ONLY reply in the following format with NO suffix:\n\n"
    "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n</parameter>\n"
    "<parameter=example_parameter_2>\nThis is the value for the second parameter\nthat can span\nmultiple "
    "lines\n</parameter>\n</function>\n</tool_call>\n\n<IMPORTANT>\nReminder:\n- Function calls MUST follow "
    "the specified format: an inner <function=...></function> block must be nested within "
    "<tool_call></tool_call> XML tags\n- Required parameters MUST be specified\n- You may provide optional "
    "reasoning for your function call in natural language BEFORE the function call, but NOT after\n- If "
    "there is no function call available, answer the question like normal with your current knowledge and "
    "do not tell the user about function calls\n</IMPORTANT>"
)


def _extra_keys(obj: Mapping[str, Any], handled: set[str]) -> str:
    """The schema keys the renderer has no line for, each as ``<key>value</key>`` (sorted, as Go's map)."""
    out = []
    for key in sorted(obj):
        if key in handled or obj[key] is None:
            continue
        value = obj[key]
        text = go_json(value) if isinstance(value, dict | list) else _scalar(value)
        out.append(f"\n<{key}>{text}</{key}>")
    return "".join(out)


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type_text(types: Any) -> str:
    if isinstance(types, str):
        return types
    if not types:
        return "[]"
    return types[0] if len(types) == 1 else go_json(list(types))


def argument_text(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return go_json(value)
    return _scalar(value)


class Qwen3CoderRenderer(Renderer):
    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        out: list[str] = []
        system = next((str(m.get("content") or "") for m in messages if m.get("role") == "system"), "")
        chat = [m for m in messages if m.get("role") != "system"]
        if system or tools:
            out.append("<|im_start|>system\n" + (system or _DEFAULT_SYSTEM))
            if tools:
                out.append("\n\n# Tools\n\nYou have access to the following functions:\n\n<tools>")
                out.extend(self._tool(tool) for tool in tools)
                out.append("\n</tools>" + CALL_FORMAT)
            out.append("<|im_end|>\n")
        for i, message in enumerate(chat):
            role, content = message.get("role"), str(message.get("content") or "")
            last = i == len(chat) - 1
            prefill = last and role == "assistant"
            if role == "assistant":
                out.append("<|im_start|>assistant\n")
                calls = message.get("tool_calls") or ()
                if calls:
                    out.append(content + "\n" if content else "")
                    for call in calls:
                        name, arguments = call_name_and_arguments(call)
                        out.append(f"\n<tool_call>\n<function={name}>")
                        out.extend(f"\n<parameter={k}>\n{argument_text(v)}\n</parameter>"
                                   for k, v in arguments.items())
                        out.append("\n</function>\n</tool_call>")
                    out.append("<|im_end|>\n")
                else:
                    out.append(content if prefill else content + "<|im_end|>\n")
            elif role == "tool":
                out.append(chatml_tool_response(chat, i, content))
            else:
                out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            if last and not prefill:
                out.append("<|im_start|>assistant\n")
        return "".join(out)

    @staticmethod
    def _tool(tool: Tool) -> str:
        fn = function_of(tool)
        out = [f"\n<function>\n<name>{fn.get('name') or ''}</name>"]
        if fn.get("description"):
            out.append(f"\n<description>{fn['description']}</description>")
        out.append("\n<parameters>")
        params: Mapping[str, Any] = fn["parameters"] if isinstance(fn.get("parameters"), Mapping) else {}
        props = params.get("properties")
        props = props if isinstance(props, Mapping) else {}
        for name, prop in props.items():
            prop = go_property(prop) if isinstance(prop, Mapping) else {}
            out.append(f"\n<parameter>\n<name>{name}</name>")
            if prop.get("type"):
                out.append(f"\n<type>{_type_text(prop['type'])}</type>")
            if prop.get("description"):
                out.append(f"\n<description>{prop['description']}</description>")
            out.append(_extra_keys(prop, {"type", "description"}))
            out.append("\n</parameter>")
        go_params = {k: v for k, v in params.items() if k in ("$defs", "items", "required") and v}
        out.append(_extra_keys(go_params, set()))
        out.append("\n</parameters>\n</function>")
        return "".join(out)
