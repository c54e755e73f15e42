"""What the built-in renderers and parsers share: their interfaces, think values, and stream helpers.

A *renderer* builds a model's prompt in code from the chat (messages, tools, think), where other models
use a TEMPLATE.  A *parser* splits the model's streamed output into content, thinking and tool calls.
Both follow Ollama's ``model/renderers`` and ``model/parsers`` behaviour, named as Ollama names them in
a Modelfile's ``RENDERER`` and ``PARSER`` lines.

Messages and tools are the API's own dicts (``{"role", "content", "thinking", "tool_calls", ...}`` and
``{"type": "function", "function": {"name", "description", "parameters"}}``); a tool call is
``{"function": {"index": i, "name": str, "arguments": dict}}`` as the template path produces it.
"""

from __future__ import annotations

import logging
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from appliance.api.gojson import go_marshal

log = logging.getLogger("appliance.prompt.builtin")

#: ``think`` as a request gives it: absent, a switch, or a level.
ThinkValue = bool | str | None
#: The levels Ollama accepts (``api.ThinkValue``); any of them turns thinking on.
THINK_LEVELS = ("high", "medium", "low", "max")

Message = Mapping[str, Any]
Tool = Mapping[str, Any]
ToolCall = dict[str, Any]


def think_on(think: ThinkValue) -> bool:
    """Whether ``think`` asks for thinking (``ThinkValue.Bool``): true or any level."""
    return think is True or (isinstance(think, str) and think in THINK_LEVELS)


def think_level(think: ThinkValue) -> str:
    """The level ``think`` stands for (``ThinkValue.String``): ``true`` is "medium", ``false`` none."""
    if isinstance(think, str):
        return think
    return "medium" if think is True else ""


class Renderer(ABC):
    """Builds the prompt text for a chat."""

    #: The text the model's tokenizer must not add again in front of the prompt (it is in it).
    leading_bos = ""

    @abstractmethod
    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        """The whole prompt, ending where the model's answer starts."""


class Parser(ABC):
    """Splits streamed output: ``init`` once, then ``add`` each chunk, the last with ``done=True``."""

    has_tool_support = False
    has_thinking_support = False

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        """Prepare for one reply; return the tools as the prompt should show them (some rename them)."""
        return list(tools) if tools else None

    @abstractmethod
    def add(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        """Add a chunk of output; return the content, thinking and tool calls it decides."""


class Passthrough(Parser):
    """Everything is content (Ollama's ``passthrough``)."""

    def add(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        return text, "", []


def is_space(char: str) -> bool:
    """``unicode.IsSpace``: Python's ``str.isspace`` also counts the separators U+001C-U+001F."""
    return (char.isspace() and unicodedata.category(char) != "Cc") or char in "\t\n\v\f\r\x85"


def lstrip_space(text: str) -> str:
    i = 0
    while i < len(text) and is_space(text[i]):
        i += 1
    return text[i:]


def rstrip_space(text: str) -> str:
    return text[: len(text) - trailing_space_len(text)]


def trailing_space_len(text: str) -> int:
    n = 0
    while n < len(text) and is_space(text[len(text) - 1 - n]):
        n += 1
    return n


def overlap(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that starts ``tag``."""
    for n in range(min(len(text), len(tag)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def undecided_start(text: str, *tags: str) -> int:
    """Where the tail that may still turn out to be one of ``tags`` starts in ``text``.

    That tail is a partial tag at the end plus the whitespace before it (whitespace in front of a tag
    is dropped), or else the trailing whitespace (it may be the last thing before a tag, or the end).
    """
    end = len(text) - max((overlap(text, tag) for tag in tags), default=0)
    return end - trailing_space_len(text[:end])


def split_at_first_tag(text: str, *tags: str) -> tuple[str, str | None, str]:
    """``text`` split at the earliest of ``tags``: ``(before, tag, after)``.

    With none of them in it, ``(decided, None, undecided)``: everything but the tail that may still
    turn out to be one of them (see ``undecided_start``), and that tail, to keep until more arrives.
    """
    found = [(at, tag) for tag in tags if (at := text.find(tag)) >= 0]
    if not found:
        cut = undecided_start(text, *tags)
        return text[:cut], None, text[cut:]
    at, tag = min(found)
    return text[:at], tag, text[at + len(tag):]


class SpaceEater:
    """A streaming parser's buffer, whose leading whitespace is dropped when ``_eat_space`` says so."""

    _buf: str
    _eat_space: bool

    def take_leading_space(self) -> bool:
        """Drop the leading whitespace if asked to; False when nothing is left yet (wait for more).

        The flag stays set until something else arrives, so the whitespace is dropped however it is split.
        """
        if self._eat_space:
            self._buf = lstrip_space(self._buf)
            if not self._buf:
                return False
            self._eat_space = False
        return True


def make_call(index: int, name: str, arguments: dict[str, Any]) -> ToolCall:
    return {"function": {"index": index, "name": name, "arguments": arguments}}


class StreamParser(Parser):
    """A parser that buffers the output and decides it one ``_step`` at a time.

    ``add`` appends the chunk and steps while a step makes progress; on the last chunk ``_finish`` is
    given what is still held back.  Tool calls are numbered in the order they are found.
    """

    #: The parser's name in the warnings it logs.
    name = ""
    _buf: str
    _count: int

    def add(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        self._buf += text
        content: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCall] = []
        while self._step(content, thinking, calls):
            pass
        if done:  # nothing more comes: what was held back is decided now
            rest, self._buf = self._buf, ""
            self._finish(rest, content, thinking, calls)
        return "".join(content), "".join(thinking), calls

    @abstractmethod
    def _step(self, content: list[str], thinking: list[str], calls: list[ToolCall]) -> bool:
        """Decide some of ``_buf``; False when nothing more can be decided until more arrives."""

    @abstractmethod
    def _finish(self, rest: str, content: list[str], thinking: list[str], calls: list[ToolCall]) -> None:
        """Decide ``rest``, what was still held back when the output ended."""

    def _take_until(self, out: list[str], *tags: str) -> str | None:
        """Move the text in front of the earliest of ``tags`` from ``_buf`` to ``out`` (the whitespace
        just before the tag dropped) and return that tag, which is taken too; with none of them in the
        buffer, move what is decided and return None (wait for more; see ``split_at_first_tag``)."""
        before, tag, self._buf = split_at_first_tag(self._buf, *tags)
        out.append(before if tag is None else rstrip_space(before))
        return tag

    def _new_call(self, name: str, arguments: dict[str, Any]) -> ToolCall:
        call = make_call(self._count, name, arguments)
        self._count += 1
        return call

    def _add_call(self, parsed: tuple[str, dict[str, Any]] | None, raw: str, as_written: str,
                  content: list[str], calls: list[ToolCall]) -> None:
        """A parsed call as the next tool call; one that did not parse (``raw``) is passed on as
        content, ``as_written`` (its tags and all)."""
        if parsed is None:
            log.warning("%s parser: not a tool call, passed on as content: %.200r", self.name, raw)
            content.append(as_written)
        else:
            calls.append(self._new_call(*parsed))


def go_json(value: Any, *, spaces: bool = False) -> str:
    """``json.Marshal`` of a value whose dicts are in Go struct (or ordered map) order.

    ``spaces`` puts a space after every ``:`` and ``,`` outside strings (Ollama's ``marshalWithSpaces``).
    """
    text = go_marshal(value, sort_keys=False).decode()
    if not spaces:
        return text
    out: list[str] = []
    in_string = escaped = False
    for char in text:
        out.append(char)
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in ":,":
            out.append(" ")
    return "".join(out)


def _property_type(value: Any) -> Any:
    """``api.PropertyType`` marshals one type as a string, several as a list."""
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


def go_property(prop: Any) -> Any:
    """A JSON-schema property in ``api.ToolProperty`` field order (unknown keys dropped, as Go does)."""
    if not isinstance(prop, Mapping):
        return prop
    out: dict[str, Any] = {}
    if prop.get("anyOf"):
        out["anyOf"] = [go_property(p) for p in prop["anyOf"]]
    if prop.get("type"):
        out["type"] = _property_type(prop["type"])
    if prop.get("items") is not None:
        out["items"] = prop["items"]
    if prop.get("description"):
        out["description"] = prop["description"]
    if prop.get("enum"):
        out["enum"] = prop["enum"]
    if isinstance(prop.get("properties"), Mapping):
        out["properties"] = {k: go_property(v) for k, v in prop["properties"].items()}
    if prop.get("required"):
        out["required"] = prop["required"]
    return out


def go_parameters(params: Any) -> dict[str, Any]:
    """``api.ToolFunctionParameters`` in field order."""
    params = params if isinstance(params, Mapping) else {}
    out: dict[str, Any] = {"type": params.get("type") or ""}
    if params.get("$defs") is not None:
        out["$defs"] = params["$defs"]
    if params.get("items") is not None:
        out["items"] = params["items"]
    if params.get("required"):
        out["required"] = params["required"]
    properties = params.get("properties")
    out["properties"] = ({k: go_property(v) for k, v in properties.items()}
                         if isinstance(properties, Mapping) else None)
    return out


def function_of(tool: Tool) -> Mapping[str, Any]:
    fn = tool.get("function")
    return fn if isinstance(fn, Mapping) else {}


def go_tool(tool: Tool) -> dict[str, Any]:
    """``api.Tool`` in field order, as Go marshals it."""
    fn = function_of(tool)
    function: dict[str, Any] = {"name": fn.get("name") or ""}
    if fn.get("description"):
        function["description"] = fn["description"]
    function["parameters"] = go_parameters(fn.get("parameters"))
    out: dict[str, Any] = {"type": tool.get("type") or ""}
    if tool.get("items") is not None:
        out["items"] = tool["items"]
    out["function"] = function
    return out


def call_name_and_arguments(call: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]]:
    fn = call.get("function")
    fn = fn if isinstance(fn, Mapping) else {}
    arguments = fn.get("arguments")
    return str(fn.get("name") or ""), arguments if isinstance(arguments, Mapping) else {}


def system_texts(messages: Sequence[Message]) -> list[str]:
    return [str(m.get("content") or "") for m in messages if m.get("role") == "system"]


def chatml_tool_response(messages: Sequence[Message], i: int, content: str) -> str:
    """Tool result ``messages[i]`` as Qwen's ChatML prompts write it: a run of results shares one user
    turn, each in its own ``<tool_response>``."""
    out: list[str] = []
    if i == 0 or messages[i - 1].get("role") != "tool":
        out.append("<|im_start|>user")
    out.append(f"\n<tool_response>\n{content}\n</tool_response>")
    if i == len(messages) - 1 or messages[i + 1].get("role") != "tool":
        out.append("<|im_end|>\n")
    return "".join(out)
