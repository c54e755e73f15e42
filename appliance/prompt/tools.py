"""Finding tool calls in a model's streamed output, for models that write them as JSON.

Conventions handled (the tag comes from the template, see ``infer_tool_call_tag``)::

    <tool_call>{"name": "f", "arguments": {...}}</tool_call>     ChatML / Qwen / Hermes / SmolLM
    [TOOL_CALLS] [{"name": "f", "arguments": {...}}, ...]         Mistral
    [TOOL_CALLS]f[ARGS]{...}                                      Mistral (newer tokenizers)
    <|python_tag|>{"name": "f", "parameters": {...}}              Llama 3.x
    {"name": "f", "parameters": {...}}   [{...}, {...}]           bare JSON at the start of the output

A call object may spell its arguments ``arguments`` or ``parameters``, give them as a JSON string, wrap
itself OpenAI-style in ``{"function": {...}}``, or be ``{"f": {...}}``.  Like Ollama, only names from
the request's tools count.  Unlike Ollama, which drops whatever follows a tag once it has seen one,
nothing is ever lost here: a tag followed by something that is not a call for a known tool, malformed
JSON, and text after the calls are all passed on as content.  Content is held back only while it could
still be the start of a tool call, and never more than ``MAX_HELD_CHARS``.

Not handled: formats whose arguments are not JSON (FunctionGemma's ``call:f{k:<escape>v<escape>}``,
DeepSeek's ``<|tool▁call▁begin|>``, Qwen3-Coder's XML); their text comes through as content.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from appliance.prompt.thinking import partial_suffix_len

MAX_HELD_CHARS = 64 * 1024

# Tags recognised anywhere in a template's text, in order of preference.
KNOWN_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")

_GO_ACTION = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_GO_TOOLCALLS_IF = re.compile(r"^-?\s*(else\s+)?if\b.*\.ToolCalls\b", re.DOTALL)
_GO_DESCEND = re.compile(r"^-?\s*(if|range|with|else\s+if|/\*)")
_SEPARATORS = " \t\r\n,;"
_NAMED_ARGS = re.compile(r"([A-Za-z_][\w.\-]*)\[ARGS\]")
_PARTIAL_NAMED_ARGS = re.compile(r"[A-Za-z_][\w.\-]*(\[(A(R(G(S)?)?)?)?)?")
_STRUCTURAL = re.compile(r'[{}\[\]"]')
_IN_STRING = re.compile(r'["\\]')


def infer_tool_call_tag(template: str | None) -> str | None:
    """The text a model writes before its tool calls, or None when calls are bare JSON.

    A Go template (Ollama's TEMPLATE) is read the way Ollama reads it: the first text inside
    ``{{ if .ToolCalls }}``, up to any ``{`` or ``[`` that starts the JSON.  Otherwise (Jinja templates)
    the first of ``KNOWN_TAGS`` found in the template's text.
    """
    if not template:
        return None
    tag = _go_tool_call_text(template)
    if tag is not None:
        return tag or None
    return next((known for known in KNOWN_TAGS if known in template), None)


def _go_tool_call_text(template: str) -> str | None:
    """ "" when the Go template writes bare JSON, None when it has no ``if .ToolCalls``."""
    actions = list(_GO_ACTION.finditer(template))
    for i, action in enumerate(actions):
        if not _GO_TOOLCALLS_IF.match(action.group(1)):
            continue
        pos = action.end()
        for following in [*actions[i + 1 :], None]:
            text = template[pos : following.start() if following else len(template)]
            if text.strip():
                # Cut where the JSON starts; a trailing list opener is part of the JSON too.
                return text.split("{", 1)[0].strip().rstrip("[").rstrip()
            if following is None or not _GO_DESCEND.match(following.group(1)):
                return ""
            pos = following.end()
    return None


def _closing_tag(tag: str | None) -> str | None:
    """``<x>`` closes with ``</x>``, ``[X]`` with ``[/X]``; other tags have no closing form."""
    if tag and re.fullmatch(r"<\w+>", tag):
        return "</" + tag[1:]
    if tag and re.fullmatch(r"\[\w+\]", tag):
        return "[/" + tag[1:]
    return None


def tool_names(tools: Iterable[Any] | None) -> frozenset[str]:
    """The function names of an API tool list (``[{"type": "function", "function": {"name": ...}}]``)."""
    names = set()
    for tool in tools or ():
        if not isinstance(tool, Mapping):
            continue
        function = tool.get("function")
        name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
        if isinstance(name, str) and name:
            names.add(name)
    return frozenset(names)


class _State(enum.Enum):
    START = enum.auto()  # only whitespace so far: a tag or bare JSON may still come
    CONTENT = enum.auto()  # passing content through, watching for the tag
    CALLS = enum.auto()  # after a tag or inside bare JSON: reading call values
    DONE = enum.auto()  # everything from here on is content


class ToolCallParser:
    """Stream splitter: ``feed(chunk) -> (content_delta, calls)``, then ``flush()`` at the end.

    Each call is ``{"function": {"index": i, "name": str, "arguments": dict}}``, numbered from 0 in the
    order found (Ollama's ``api.ToolCall``; ids are the caller's business).  ``tag`` overrides the one
    inferred from ``template``; ``""`` (or Ollama's ``"{"``) means bare JSON only.
    """

    def __init__(
        self,
        tools: Iterable[Any] | None,
        template: str | None = None,
        *,
        tag: str | None = None,
    ) -> None:
        self._names = tool_names(tools)
        self.tag = tag if tag is not None else infer_tool_call_tag(template)
        if self.tag in ("", "{", "["):
            self.tag = None  # Ollama spells "bare JSON" as the tag "{"
        self._closing = _closing_tag(self.tag)
        self._named_args = self.tag == "[TOOL_CALLS]"  # Mistral's "name[ARGS]{...}" form
        self._state = _State.START
        self._buf = ""
        self._raw = ""  # consumed since the last call or tag; given back if no call follows
        self._committed = False  # a call was found since the last tag
        self._pending_name: str | None = None  # from "name[ARGS]", waiting for its arguments
        self._count = 0
        self._scanning = False  # a JSON value starts at _buf[0] and is being scanned
        self._scan_pos = self._depth = 0
        self._in_string = False

    def feed(self, text: str) -> tuple[str, list[dict[str, Any]]]:
        """Add a chunk of model output; return the content and the complete tool calls it decides."""
        self._buf += text
        return self._run(final=False)

    def flush(self) -> tuple[str, list[dict[str, Any]]]:
        """End of output: decide everything still held back (incomplete calls become content)."""
        return self._run(final=True)

    def _run(self, final: bool) -> tuple[str, list[dict[str, Any]]]:
        out: list[str] = []
        calls: list[dict[str, Any]] = []
        step = {
            _State.START: self._step_start,
            _State.CONTENT: self._step_content,
            _State.CALLS: self._step_calls,
        }
        while self._state is not _State.DONE and step[self._state](out, calls, final):
            pass
        if self._state is _State.DONE:
            out.append(self._buf)
            self._buf = ""
        return "".join(out), calls

    # Each step returns True when it changed something and another step may follow.

    def _step_start(self, out: list[str], calls: list[dict[str, Any]], final: bool) -> bool:
        stripped = self._buf.lstrip()
        if self.tag and stripped.startswith(self.tag):
            self._enter_calls(self._buf[: len(self._buf) - len(stripped)] + self.tag)
            self._buf = stripped[len(self.tag) :]
            return True
        undecided = not stripped or bool(self.tag and self.tag.startswith(stripped))
        if undecided and not final and len(self._buf) <= MAX_HELD_CHARS:
            return False
        if stripped[:1] in ("{", "["):
            self._enter_calls(self._buf[: len(self._buf) - len(stripped)])
            self._buf = stripped
            return True
        self._state = _State.CONTENT if self.tag else _State.DONE
        return True

    def _step_content(self, out: list[str], calls: list[dict[str, Any]], final: bool) -> bool:
        assert self.tag
        at = self._buf.find(self.tag)
        if at >= 0:
            out.append(self._buf[:at])
            self._enter_calls(self.tag)
            self._buf = self._buf[at + len(self.tag) :]
            return True
        keep = 0 if final else partial_suffix_len(self._buf, self.tag)
        out.append(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _enter_calls(self, consumed: str) -> None:
        self._state = _State.CALLS
        self._raw = consumed
        self._committed = False

    def _step_calls(self, out: list[str], calls: list[dict[str, Any]], final: bool) -> bool:
        if self._scanning:
            end = self._scan()
            if end is not None:
                self._finish_value(end, out, calls)
                return True
            if final or len(self._buf) + len(self._raw) > MAX_HELD_CHARS:
                self._give_up(out, len(self._buf))
                return True
            return False

        rest = self._buf.lstrip(_SEPARATORS)
        if rest != self._buf:
            self._raw += self._buf[: len(self._buf) - len(rest)]
            self._buf = rest
        buf = self._buf
        if not buf:
            if final or len(self._raw) > MAX_HELD_CHARS:
                self._give_up(out, 0)
                return True
            return False
        if self._closing and buf.startswith(self._closing):
            self._consume(self._closing)
            return True
        if self.tag and buf.startswith(self.tag):
            if self._committed:
                self._raw = ""  # separators between two tagged calls are dropped
            self._consume(self.tag)
            self._committed = False
            return True
        expect_name = self._named_args and self._pending_name is None
        if expect_name and (named := _NAMED_ARGS.match(buf)):
            self._pending_name = named.group(1)
            self._consume(named.group(0))
            return True
        if buf[0] in "{[" and not self._could_be_tag(buf):
            self._scanning = True
            self._scan_pos = self._depth = 0
            self._in_string = False
            return True
        undecided = self._could_be_tag(buf) or (
            expect_name and _PARTIAL_NAMED_ARGS.fullmatch(buf) is not None
        )
        if undecided and not final and len(buf) + len(self._raw) <= MAX_HELD_CHARS:
            return False
        self._give_up(out, 0)
        return True

    def _could_be_tag(self, buf: str) -> bool:
        return any(tag and tag.startswith(buf) and tag != buf for tag in (self.tag, self._closing))

    def _consume(self, text: str) -> None:
        self._raw += text
        self._buf = self._buf[len(text) :]

    def _scan(self) -> int | None:
        """End (exclusive) of the JSON value at the start of the buffer, or None while incomplete.

        Scanning resumes where the previous chunk stopped, so a long value costs linear time.
        """
        buf, i = self._buf, self._scan_pos
        while True:
            if self._in_string:
                match = _IN_STRING.search(buf, i)
                if match is None:
                    i = len(buf)
                    break
                if match.group() == "\\":
                    if match.end() >= len(buf):
                        i = match.start()  # the escaped character has not arrived yet
                        break
                    i = match.end() + 1
                    continue
                self._in_string = False
                i = match.end()
                continue
            match = _STRUCTURAL.search(buf, i)
            if match is None:
                i = len(buf)
                break
            char, i = match.group(), match.end()
            if char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            else:
                self._depth -= 1
                if self._depth <= 0:
                    return i
        self._scan_pos = i
        return None

    def _finish_value(self, end: int, out: list[str], calls: list[dict[str, Any]]) -> None:
        self._scanning = False
        found = self._decode_calls(self._buf[:end])
        if not found:
            self._give_up(out, end)
            return
        for name, arguments in found:
            calls.append({"function": {"index": self._count, "name": name, "arguments": arguments}})
            self._count += 1
        self._buf = self._buf[end:]
        self._raw = ""
        self._committed = True
        self._pending_name = None

    def _give_up(self, out: list[str], length: int) -> None:
        """What was read since the last call is not a call: pass it and ``length`` more chars on."""
        if not self._committed:
            out.append(self._raw)  # e.g. the tag itself; after a call, only separators were read
        out.append(self._buf[:length])
        self._buf = self._buf[length:]
        self._raw = ""
        self._scanning = False
        self._pending_name = None
        self._state = _State.CONTENT if self.tag else _State.DONE

    def _decode_calls(self, text: str) -> list[tuple[str, dict[str, Any]]] | None:
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return None
        if self._pending_name is None:
            return self._calls_in(value)
        call = self._call(self._pending_name, value)  # the value is the arguments of "name[ARGS]"
        return [call] if call else None

    def _calls_in(self, value: Any) -> list[tuple[str, dict[str, Any]]] | None:
        """The calls a decoded JSON value stands for: one object, or a list of objects, all valid."""
        items = value if isinstance(value, list) else [value]
        found = [self._call_from_object(item) for item in items]
        if not found or not all(found):
            return None
        return [call for call in found if call]

    def _call_from_object(self, obj: Any) -> tuple[str, dict[str, Any]] | None:
        if not isinstance(obj, dict):
            return None
        if "name" not in obj and isinstance(obj.get("function"), dict):
            return self._call_from_object(obj["function"])  # OpenAI-style wrapper
        name = obj.get("name", obj.get("tool_name"))  # "tool_name": Command R
        if isinstance(name, str):
            arguments = obj.get("arguments", obj.get("parameters"))
            return self._call(name, arguments)
        if len(obj) == 1:  # {"get_weather": {"city": "Paris"}}
            ((name, arguments),) = obj.items()
            return self._call(name, arguments)
        return None

    def _call(self, name: str, arguments: Any) -> tuple[str, dict[str, Any]] | None:
        if name not in self._names:
            return None
        if arguments is None:
            return name, {}
        if isinstance(arguments, str):
            if not arguments.strip():
                return name, {}
            try:
                arguments = json.loads(arguments)
            except (ValueError, RecursionError):
                return None
        return (name, arguments) if isinstance(arguments, dict) else None
