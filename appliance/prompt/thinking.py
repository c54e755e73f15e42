"""Splitting a model's reasoning trace (``<think>…</think>``) from its answer while it streams.

Behaviour follows Ollama's thinking parser:

- Whitespace before the opening tag is tolerated; if the first non-whitespace text is not the opening
  tag, the model skipped thinking and everything (whitespace included) is content.
- Whitespace right after the opening tag and right after the closing tag is dropped, so neither the
  thinking nor the content starts with the blank lines models put around the tags.
- Only the first thinking block counts: tags appearing later are ordinary content.
- Tags may be split across chunks anywhere; a partial tag is held back until it is decided.

``started_in_thinking=True`` is for templates whose prompt already ends with the opening tag (the model
starts inside the trace), as Ollama does by feeding the opening tag before the output.
"""

from __future__ import annotations

import enum

# Whitespace before the first tag is held back while undecided; past this much, stop waiting.
MAX_HELD_CHARS = 64 * 1024


class _State(enum.Enum):
    LOOKING_FOR_OPENING = enum.auto()  # nothing but whitespace (or part of the opening tag) so far
    OPENED = enum.auto()  # opening tag seen; dropping whitespace before the trace
    THINKING = enum.auto()  # inside the trace
    CLOSED = enum.auto()  # closing tag seen; dropping whitespace before the content
    CONTENT = enum.auto()  # everything from here on is content


def partial_suffix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag`` (0 if none)."""
    for n in range(min(len(text), len(tag) - 1), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ThinkingParser:
    """Stream splitter: ``feed(chunk) -> (thinking_delta, content_delta)``, then ``flush()`` at the end."""

    def __init__(
        self,
        opening: str = "<think>",
        closing: str = "</think>",
        *,
        started_in_thinking: bool = False,
    ) -> None:
        if not opening or not closing:
            raise ValueError("thinking tags must not be empty")
        self.opening = opening
        self.closing = closing
        self._state = _State.OPENED if started_in_thinking else _State.LOOKING_FOR_OPENING
        self._held = ""

    @property
    def thinking_done(self) -> bool:
        """True once the trace is over (or was skipped): everything from now on is content."""
        return self._state in (_State.CLOSED, _State.CONTENT)

    def feed(self, text: str) -> tuple[str, str]:
        """Add a chunk of model output; return the thinking and content that are now decided."""
        buf = self._held + text
        self._held = ""
        thinking = ""

        if self._state is _State.LOOKING_FOR_OPENING:
            stripped = buf.lstrip()
            if stripped.startswith(self.opening):
                buf = stripped[len(self.opening) :]
                self._state = _State.OPENED
            elif self.opening.startswith(stripped) and len(buf) <= MAX_HELD_CHARS:
                self._held = buf  # only whitespace and maybe the start of the tag: undecided
                return "", ""
            else:
                self._state = _State.CONTENT
                return "", buf

        if self._state is _State.OPENED:
            buf = buf.lstrip()
            if not buf:
                return "", ""
            self._state = _State.THINKING

        if self._state is _State.THINKING:
            end = buf.find(self.closing)
            if end < 0:
                keep = partial_suffix_len(buf, self.closing)
                self._held = buf[len(buf) - keep :]
                return buf[: len(buf) - keep], ""
            thinking, buf = buf[:end], buf[end + len(self.closing) :]
            self._state = _State.CLOSED

        if self._state is _State.CLOSED:
            buf = buf.lstrip()
            if not buf:
                return thinking, ""
            self._state = _State.CONTENT

        return thinking, buf

    def flush(self) -> tuple[str, str]:
        """End of output: return whatever was held back while undecided."""
        held, self._held = self._held, ""
        if self._state is _State.LOOKING_FOR_OPENING:
            self._state = _State.CONTENT
            return "", held
        if self._state is _State.THINKING:
            return held, ""
        return "", ""
