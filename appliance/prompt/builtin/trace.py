"""A thinking trace in front of the answer: the part several families' parsers share.

The prompt of a thinking turn opens the trace (``<think>`` and the like), so the output starts inside
it; a model that writes the opening tag again has it dropped.  The trace ends at its closing tag, or
at a tag that starts the answer's own syntax (a tool call some models write without closing the
trace first).  What follows goes to the family's answer parser (tool calls, or plain content).
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.prompt.builtin.base import (
    Message,
    Parser,
    Passthrough,
    ThinkValue,
    Tool,
    ToolCall,
    lstrip_space,
    rstrip_space,
    split_at_first_tag,
    think_on,
)


def prefilled(last_message: Message | None) -> bool:
    """Whether the chat ends with an assistant turn that has begun its answer (the reply continues it)."""
    return (last_message is not None and last_message.get("role") == "assistant"
            and bool(last_message.get("content")))


class TraceParser(Parser):
    """Thinking up to ``close`` (or one of ``ends``, which the answer parser then sees), then ``answer``.

    ``default_thinking`` is what a request without ``think`` gets (and every request, for a model that
    always thinks, ``follows_think=False``); a prefilled answer never thinks.
    """

    has_thinking_support = True

    def __init__(self, answer: Parser | None = None, *, open_tag: str = "<think>",
                 close_tag: str = "</think>", ends: Sequence[str] = (),
                 default_thinking: bool = True, follows_think: bool = True) -> None:
        self._answer = answer if answer is not None else Passthrough()
        self.has_tool_support = self._answer.has_tool_support
        self._open, self._close, self._ends = open_tag, close_tag, tuple(ends)
        self._default_thinking = default_thinking
        self._follows_think = follows_think
        self._thinking = False
        self._maybe_open = False
        self._eat_space = False  # at the start of the trace, or of the answer after it
        self._buf = ""

    def thinks(self, last_message: Message | None, think: ThinkValue) -> bool:
        """Whether this reply starts inside the trace."""
        enabled = self._default_thinking if think is None or not self._follows_think else think_on(think)
        return enabled and not prefilled(last_message)

    def init(self, tools: Sequence[Tool] | None, last_message: Message | None,
             think: ThinkValue) -> list[Tool] | None:
        self._buf = ""
        self._thinking = self._maybe_open = self._eat_space = self.thinks(last_message, think)
        return self._answer.init(tools, last_message, think)

    def add(self, text: str, done: bool) -> tuple[str, str, list[ToolCall]]:
        if not self._thinking:
            if self._eat_space:  # whitespace between the trace and the answer is dropped
                text = lstrip_space(self._buf + text)
                self._buf = ""
                if not text and not done:
                    return "", "", []
                self._eat_space = False
            return self._answer.add(text, done)
        self._buf += text
        thinking = self._step_trace()
        if self._thinking:
            if done:
                rest, self._buf = self._buf, ""
                if rest.strip():
                    thinking += rstrip_space(rest)
                content, more, calls = self._answer.add("", True)
                return content, thinking + more, calls
            return "", thinking, []
        rest, self._buf = self._buf, ""
        content, more, calls = self.add(rest, done)
        return content, thinking + more, calls

    def _step_trace(self) -> str:
        """The trace text decided so far; leaves ``_thinking`` False once the trace has ended."""
        if self._eat_space:
            self._buf = lstrip_space(self._buf)
            if self._maybe_open:
                if self._buf.startswith(self._open):
                    self._buf, self._maybe_open = lstrip_space(self._buf[len(self._open):]), False
                elif self._open.startswith(self._buf):
                    return ""  # empty, or maybe the opening tag: wait
            if not self._buf:
                return ""
            self._eat_space = self._maybe_open = False
        before, tag, after = split_at_first_tag(self._buf, self._close, *self._ends)
        if tag is None:
            self._buf = after
            return before
        self._thinking = False
        self._eat_space = tag == self._close
        self._buf = after if tag == self._close else tag + after  # the answer parser sees an end tag
        return rstrip_space(before)
