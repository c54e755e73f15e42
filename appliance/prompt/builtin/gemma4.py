"""Gemma 4: ``<|turn>`` turns, a ``<|channel>thought`` trace, and calls in Gemma's own object notation.

The model writes its trace as ``<|channel>thought\\n...<channel|>`` and a call as
``<|tool_call>call:get_weather{location:<|"|>Paris<|"|>,days:3}<tool_call|>``: bare keys, and strings
between ``<|"|>`` marks.  Parser ``gemma4`` (``gemma4-no-thinking`` for checkpoints that never think):
a trace the request did not ask for is dropped, not shown as content.  Renderer ``gemma4`` (and
``gemma4-small``; ``gemma4-large`` prefills an empty trace when not thinking): tools are declared in the
system turn in the same notation, and tool results follow the call inside the model's turn.
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
    function_of,
    is_space,
    lstrip_space,
    rstrip_space,
    split_at_first_tag,
    think_on,
)

BOS = "<bos>"
Q = '<|"|>'  # Gemma 4's string delimiter
CHANNEL_OPEN, CHANNEL_CLOSE = "<|channel>", "<channel|>"
CALL_OPEN, CALL_CLOSE = "<|tool_call>", "<tool_call|>"
RESPONSE_OPEN = "<|tool_response>"
_CHANNEL_NAME = "thought\n"
_QUOTED = re.compile(re.escape(Q) + "(.*?)" + re.escape(Q), re.DOTALL)


class _State(enum.Enum):
    CONTENT = enum.auto()
    THINKING = enum.auto()
    CALL = enum.auto()
    AFTER_CALL = enum.auto()  # stray <tool_call|> / <|tool_response> right after a call are noise


class Gemma4Parser(SpaceEater, StreamParser):
    name = "gemma4"
    has_tool_support = True

    def __init__(self, *, thinking: bool = True) -> None:
        self.has_thinking_support = thinking
        self._tools: list[Tool] = []
        self._state = _State.CONTENT
        self._show_thinking = False
        self._strip_name = False
        self._eat_space = False
        self._buf = ""
        self._count = 0

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._tools, self._buf, self._count = list(tools or ()), "", 0
        self._show_thinking = self.has_thinking_support and think_on(think)
        after_tool = last_message is not None and last_message.get("role") == "tool"
        # After a tool result the prompt itself opens the trace (``<|channel>thought\n``).
        self._state = _State.THINKING if self._show_thinking and after_tool else _State.CONTENT
        self._strip_name = self._eat_space = False
        return super().init(tools, last_message, think)

    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        if self._state is _State.CALL:  # an unclosed call
            self._add_call(parse_call(rest), rest, CALL_OPEN + rest, content, calls)
        elif self._state is _State.THINKING:
            if self._show_thinking and rest.strip():
                thinking.append(rstrip_space(rest))
        elif rest.strip() and not (self._state is _State.AFTER_CALL and _noise_prefix(rest)):
            content.append(rstrip_space(rest))

    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        if not self.take_leading_space():
            return False
        buf = self._buf
        if self._state is _State.CONTENT:
            tag = self._take_until(content, CHANNEL_OPEN, CALL_OPEN)
            if tag is None:
                return False
            self._state = _State.THINKING if tag == CHANNEL_OPEN else _State.CALL
            self._strip_name = tag == CHANNEL_OPEN
            return True
        if self._state is _State.THINKING:
            if self._strip_name:
                if _CHANNEL_NAME.startswith(buf):
                    return False  # maybe the channel's name: wait
                self._strip_name = False
                self._buf = buf = buf.removeprefix(_CHANNEL_NAME)
            before, tag, self._buf = split_at_first_tag(buf, CHANNEL_CLOSE)
            if tag is None:
                if self._show_thinking:
                    thinking.append(before)
                return False
            if self._show_thinking:  # a trace nobody asked for is dropped
                thinking.append(rstrip_space(before))
            self._state, self._eat_space = _State.CONTENT, True
            return True
        if self._state is _State.CALL:
            end = buf.find(CALL_CLOSE)
            if end < 0:
                return False
            raw, self._buf = buf[:end], buf[end + len(CALL_CLOSE):]
            self._state, self._eat_space = _State.AFTER_CALL, True
            self._add_call(parse_call(raw), raw, CALL_OPEN + raw + CALL_CLOSE, content, calls)
            return True
        for noise in (CALL_CLOSE, RESPONSE_OPEN):
            if buf.startswith(noise):
                self._buf, self._eat_space = buf[len(noise):], True
                return True
        if _noise_prefix(buf):
            return False
        self._state = _State.CONTENT
        return True


def _noise_prefix(text: str) -> bool:
    return CALL_CLOSE.startswith(text) or RESPONSE_OPEN.startswith(text)


def parse_call(raw: str) -> tuple[str, dict[str, Any]] | None:
    """``call:NAME{key:value,...}``; None when it is not one."""
    if not raw.startswith("call:") or "{" not in raw:
        return None
    name, brace, arguments = raw[len("call:"):].partition("{")
    name = lstrip_space(rstrip_space(name))
    if not name:
        return None
    text = brace + arguments
    for candidate in (text, _close_string(text)):
        value = _loads(to_json(candidate))
        if isinstance(value, dict):
            return name, value
    return None


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _close_string(text: str) -> str:
    """A value cut off inside its string: close the string before the object's last brace."""
    if text.count(Q) % 2 == 0:
        return text
    end = len(rstrip_space(text))
    if end and text[end - 1] in "}]":
        end -= 1
    return text[:end] + Q + text[end:]


def to_json(text: str) -> str:
    """Gemma's object notation as JSON: ``<|"|>`` strings quoted, bare keys quoted."""
    strings: list[str] = []

    def hold(match: re.Match[str]) -> str:
        strings.append(match.group(1))
        return f"\x00{len(strings) - 1}\x00"

    text = _quote_keys(_QUOTED.sub(hold, text))
    return re.sub("\x00(\\d+)\x00", lambda m: json.dumps(strings[int(m.group(1))], ensure_ascii=False), text)


def _quote_keys(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == '"':  # a JSON string the model wrote itself: left alone
            end = _json_string_end(text, i)
            if end > 0:
                out.append(text[i:end])
                i = end
                continue
        out.append(char)
        i += 1
        if char not in "{,":
            continue
        while i < len(text) and is_space(text[i]):
            out.append(text[i])
            i += 1
        key_end = i
        while key_end < len(text) and (text[key_end] == "_" or text[key_end].isalnum()):
            key_end += 1
        if i < key_end < len(text) and text[key_end] == ":":
            out.append(f'"{text[i:key_end]}":')
            i = key_end + 1
    return "".join(out)


def _json_string_end(text: str, start: int) -> int:
    escaped = False
    for i in range(start + 1, len(text)):
        if text[i] == '"' and not escaped:
            return i + 1
        escaped = text[i] == "\\" and not escaped
    return -1


# -- the prompt -----------------------------------------------------------------------------------------


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def argument_value(value: Any) -> str:
    """A call's argument in Gemma's notation (keys bare and sorted, as the chat template writes them)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return Q + value + Q
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _number(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{argument_value(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(argument_value(v) for v in value) + "]"
    return str(value)


def _schema_value(value: Any) -> str:
    """A schema value as the template writes one: like an argument, but with quoted keys."""
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{Q}{k}{Q}:{_schema_value(value[k])}" for k in sorted(value)) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_schema_value(v) for v in value) + "]"
    return argument_value(value)


def _type_names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.upper()]
    return [v.upper() for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _strings(values: Any) -> str:
    return "[" + ",".join(Q + str(v) + Q for v in values) + "]"


def _type_field(names: list[str]) -> str:
    return "type:" + (Q + names[0] + Q if len(names) == 1 else _strings(names))


def _top_level(prop: Mapping[str, Any]) -> dict[str, Any]:
    """A tool's own property as the template sees it: a union type is one odd string (as upstream)."""
    types = prop.get("type")
    types = [types] if isinstance(types, str) else [t for t in types or () if isinstance(t, str)]
    if not types and prop.get("anyOf"):
        branches = [b for b in prop["anyOf"] if isinstance(b, Mapping)]
        if all(set(b) == {"type"} for b in branches):
            for b in branches:
                types += [t for t in _type_names(b["type"]) if t not in types]
    out: dict[str, Any] = {}
    if types:
        out["type"] = types[0] if len(types) == 1 else "[" + ", ".join(f"'{t.upper()}'" for t in types) + "]"
    for key in ("description", "enum", "items"):
        if prop.get(key):
            out[key] = prop[key]
    if isinstance(prop.get("properties"), Mapping):
        out["properties"] = {k: _top_level(v) for k, v in prop["properties"].items()
                             if isinstance(v, Mapping)}
    if prop.get("required"):
        out["required"] = prop["required"]
    return out


_STANDARD_KEYS = ("description", "type", "properties", "required", "nullable")


def _properties(props: Mapping[str, Any]) -> str:
    out: list[str] = []
    for name in sorted(props):
        prop = props[name]
        if name in _STANDARD_KEYS or not isinstance(prop, Mapping):
            continue
        fields: list[str] = []
        if isinstance(prop.get("description"), str) and prop["description"]:
            fields.append(f"description:{Q}{prop['description']}{Q}")
        names = _type_names(prop.get("type"))
        kind = names[0] if names else ""
        if kind == "STRING" and isinstance(prop.get("enum"), list) and prop["enum"]:
            fields.append("enum:" + _strings(_go_text(v) for v in prop["enum"]))
        if kind == "ARRAY" and isinstance(prop.get("items"), Mapping) and prop["items"]:
            fields.append("items:{" + _items(prop["items"]) + "}")
        if prop.get("nullable") is True:
            fields.append("nullable:true")
        if kind == "OBJECT":
            nested = prop.get("properties")
            fields.append("properties:{" + _properties(nested if isinstance(nested, Mapping) else prop) + "}")
            required = [r for r in prop.get("required") or () if isinstance(r, str)]
            if required:
                fields.append("required:" + _strings(required))
        if names:
            fields.append(_type_field(names))
        out.append(f"{name}:{{{','.join(fields)}}}")
    return ",".join(out)


def _go_text(value: Any) -> str:
    return value if isinstance(value, str) else argument_value(value)


def _items(items: Mapping[str, Any]) -> str:
    out: list[str] = []
    for key in sorted(items):
        value = items[key]
        if value is None:
            continue
        if key == "properties":
            out.append("properties:{" + (_properties(value) if isinstance(value, Mapping) else "") + "}")
        elif key == "required":
            out.append("required:" + _strings(v for v in value if isinstance(v, str)))
        elif key == "type":
            names = _type_names(value)
            if names:
                out.append(_type_field(names))
        else:
            out.append(f"{key}:{_schema_value(value)}")
    return ",".join(out)


def declaration(tool: Tool) -> str:
    """A tool as the system turn declares it."""
    fn = function_of(tool)
    out = [f"<|tool>declaration:{fn.get('name') or ''}{{description:{Q}{fn.get('description') or ''}{Q}"]
    params = fn.get("parameters")
    params = params if isinstance(params, Mapping) else {}
    props = params.get("properties")
    if isinstance(props, Mapping) or params.get("type"):
        fields: list[str] = []
        if isinstance(props, Mapping) and props:
            typed = {k: _top_level(v) for k, v in props.items() if isinstance(v, Mapping)}
            fields.append("properties:{" + _properties(typed) + "}")
        if params.get("required"):
            fields.append("required:" + _strings(params["required"]))
        if params.get("type"):
            fields.append(f"type:{Q}{str(params['type']).upper()}{Q}")
        out.append(",parameters:{" + ",".join(fields) + "}")
    out.append("}<tool|>")
    return "".join(out)


def _trim(text: str) -> str:
    return lstrip_space(rstrip_space(text))


def strip_trace(text: str) -> str:
    """An answer without the ``<|channel>...<channel|>`` traces in it (an unclosed one cuts it off)."""
    out: list[str] = []
    while True:
        start = text.find(CHANNEL_OPEN)
        if start < 0:
            out.append(text)
            break
        out.append(text[:start])
        end = text.find(CHANNEL_CLOSE, start)
        if end < 0:
            break
        text = text[end + len(CHANNEL_CLOSE):]
    return _trim("".join(out))


def _response_name(message: Message, calls: Sequence[Mapping[str, Any]]) -> str:
    name = str(message.get("tool_name") or "") or "unknown"
    call_id = message.get("tool_call_id")
    if call_id:
        for call in calls:
            if call.get("id") == call_id:
                return call_name_and_arguments(call)[0]
    return name


class Gemma4Renderer(Renderer):
    leading_bos = BOS

    def __init__(self, *, empty_trace_without_thinking: bool = False) -> None:
        self._empty_trace = empty_trace_without_thinking

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        out = [BOS]
        has_system = bool(messages) and messages[0].get("role") in ("system", "developer")
        chat = messages[1:] if has_system else messages
        thinking = think_on(think)
        if has_system or tools or thinking:
            out.append("<|turn>system\n" + ("<|think|>\n" if thinking else ""))
            if has_system:
                out.append(_trim(str(messages[0].get("content") or "")))
            out.extend(declaration(tool) for tool in tools or ())
            out.append("<turn|>\n")
        last_user = max((i for i, m in enumerate(chat) if m.get("role") == "user"), default=-1)
        previous = previous_role = ""
        for i, message in enumerate(chat):
            if message.get("role") == "tool":
                continue  # folded into the turn of the call it answers
            previous = ""
            role = "model" if message.get("role") == "assistant" else str(message.get("role") or "")
            if not (role == "model" and previous_role == "assistant"):  # adjacent answers share a turn
                out.append(f"<|turn>{role}\n")
            if role == "model" and message.get("thinking") and i > last_user:
                out.append(f"{CHANNEL_OPEN}thought\n{message['thinking']}\n{CHANNEL_CLOSE}")
            calls = list(message.get("tool_calls") or ())
            for call in calls:
                name, arguments = call_name_and_arguments(call)
                out.append(f"{CALL_OPEN}call:{name}" + argument_value(dict(arguments)) + CALL_CLOSE)
                previous = "tool_call"
            answered = False
            for k in range(i + 1, len(chat)) if calls else ():
                if chat[k].get("role") != "tool":
                    break
                value = argument_value(str(chat[k].get("content") or ""))
                out.append(f"{RESPONSE_OPEN}response:{_response_name(chat[k], calls)}{{value:{value}}}"
                           "<tool_response|>")
                answered, previous = True, "tool_response"
            content = str(message.get("content") or "")
            content = strip_trace(content) if role == "model" else _trim(content)
            out.append(content)
            following = next((m.get("role") for m in chat[i + 1:] if m.get("role") != "tool"), "")
            continues = role == "model" and following == "assistant" and (not calls or answered)
            if previous == "tool_call" and not answered:
                out.append(RESPONSE_OPEN)
            elif not continues and not (answered and not _trim(content) and not following):
                out.append("<turn|>\n")
            previous_role = str(message.get("role") or "")
        if previous not in ("tool_response", "tool_call"):
            out.append("<|turn>model\n")
            if self._empty_trace and not thinking:
                out.append(f"{CHANNEL_OPEN}thought\n{CHANNEL_CLOSE}")
        elif previous == "tool_response" and thinking:
            out.append(f"{CHANNEL_OPEN}thought\n")
        return "".join(out)
