"""Splitting a model's streamed output into content, thinking and tool calls, the way its config asks.

A model whose config names a built-in ``parser`` (Modelfile ``PARSER``) is split by it.  Otherwise a
thinking-capable model's ``<think>`` trace goes through :class:`ThinkingParser` and tool calls through
:class:`ToolCallParser`.  Unlike upstream, which splits the trace only when thinking was asked for, a
thinking-capable model's trace is split off even with ``think: false``: a model that thinks regardless
(DeepSeek-R1, gpt-oss) must not leak its trace into the answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from appliance.prompt import builtin
from appliance.prompt.builtin.base import ThinkValue, Tool, ToolCall, log
from appliance.prompt.thinking import ThinkingParser
from appliance.prompt.tools import ToolCallParser

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
GPT_OSS_FAMILIES = ("gptoss", "gpt-oss")


def uses_harmony(config: Mapping[str, Any], template: str | None) -> bool:
    """gpt-oss with a harmony template is parsed as harmony even without a PARSER line (as upstream)."""
    return (config.get("model_family") in GPT_OSS_FAMILIES and bool(template)
            and "<|start|>" in (template or "") and "<|end|>" in (template or ""))


def parser_name(config: Mapping[str, Any], template: str | None) -> str | None:
    """The built-in parser a model's output goes through, if any."""
    name = config.get("parser")
    if isinstance(name, str) and name:
        if name not in builtin.PARSERS:
            log.warning("unknown parser %r in the model's config: output is split by its template", name)
            return None
        return name
    return "harmony" if uses_harmony(config, template) else None


def renderer(config: Mapping[str, Any]) -> builtin.Renderer | None:
    """The built-in renderer that builds a model's prompt, if its config names one this server has."""
    name = config.get("renderer")
    if not isinstance(name, str) or not name:
        return None
    found = builtin.renderer_for(name)
    if found is None:
        log.warning("unknown renderer %r in the model's config: the prompt comes from its template", name)
    return found


def effective_think(config: Mapping[str, Any], template: str | None, think: ThinkValue) -> ThinkValue:
    """harmony knows low/medium/high only: "max" is "high" there (as upstream)."""
    if think == "max" and parser_name(config, template) == "harmony":
        return "high"
    return think


class OutputSplitter:
    """``feed(text)`` and, at the end, ``flush()``, each giving ``(content, thinking, tool_calls)``.

    Built before the prompt: a built-in parser may rename the request's tools, and the prompt must
    show them as renamed (``prompt_tools``).  Call :meth:`prompt_ready` with the prompt once it is built.
    """

    def __init__(self, *, parser: str | None, template: str | None, tools: Sequence[Tool] | None,
                 last_message: Mapping[str, Any] | None, think: ThinkValue, thinking_capable: bool) -> None:
        self._builtin = builtin.parser_for(parser)
        self.prompt_tools: list[dict[str, Any]] | None = [dict(t) for t in tools] if tools else None
        self._tools: ToolCallParser | None = None
        self._thinking: ThinkingParser | None = None
        self._wants_thinking = False
        if self._builtin is not None:
            shown = self._builtin.init(tools, last_message, think)
            self.prompt_tools = [dict(t) for t in shown] if shown else None
            if tools and not self._builtin.has_tool_support:
                self._tools = ToolCallParser(tools, template)
            return
        self._wants_thinking = thinking_capable
        if tools:
            self._tools = ToolCallParser(tools, template)

    def prompt_ready(self, prompt: str) -> None:
        """The prompt is known: a template that ends it with ``<think>`` starts the reply in the trace."""
        if self._wants_thinking:
            self._thinking = ThinkingParser(THINK_OPEN, THINK_CLOSE,
                                            started_in_thinking=prompt.rstrip().endswith(THINK_OPEN))

    def feed(self, text: str) -> tuple[str, str, list[ToolCall]]:
        return self._split(text, done=False)

    def flush(self) -> tuple[str, str, list[ToolCall]]:
        return self._split("", done=True)

    def _split(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        thinking = ""
        calls: list[ToolCall] = []
        if self._builtin is not None:
            text, thinking, calls = self._builtin.add(text, done)
        elif self._thinking is not None:
            thinking, text = self._thinking.feed(text) if text else ("", "")
            if done:
                more_thinking, more_text = self._thinking.flush()
                thinking, text = thinking + more_thinking, text + more_text
        if self._tools is not None:
            text, found = self._tools.feed(text) if text else ("", [])
            calls = calls + found
            if done:
                rest, more = self._tools.flush()
                text, calls = text + rest, calls + more
        return text, thinking, calls
