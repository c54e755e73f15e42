"""Qwen 3.5: a ``<think>`` trace, then Qwen3-Coder's XML tool calls, in ChatML turns.

Parser ``qwen3.5``: thinks unless ``think`` is false; a ``<tool_call>`` before ``</think>`` ends the
trace (some checkpoints forget to close it).  Renderer ``qwen3.5``: tools as JSON lines in ``<tools>``
with the XML call format spelled out, the system prompt after them; a turn without thinking is given an
empty trace (``<think>\\n\\n</think>\\n\\n``) so the model answers at once.  Renderer ``ornith`` is the
same format with every assistant turn's trace kept in the history.
"""

from __future__ import annotations

from collections.abc import Sequence

from appliance.prompt.builtin.base import (
    Message,
    Renderer,
    ThinkValue,
    Tool,
    call_name_and_arguments,
    chatml_tool_response,
    go_json,
    go_tool,
    lstrip_space,
    rstrip_space,
    think_on,
)
from appliance.prompt.builtin.qwen3coder import CALL_FORMAT, Qwen3CoderParser, argument_text
from appliance.prompt.builtin.trace import TraceParser

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
TOOL_OPEN = "<tool_call>"

_TOOLS_INTRO = "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>"
_TOOLS_OUTRO = "\n</tools>" + CALL_FORMAT


def qwen35_parser() -> TraceParser:
    return TraceParser(Qwen3CoderParser(), ends=(TOOL_OPEN,))


def trim(text: str) -> str:
    """``strings.TrimSpace``."""
    return lstrip_space(rstrip_space(text))


def split_reasoning(content: str, thinking: str, keep_trace: bool) -> tuple[str, str]:
    """The reasoning of an assistant turn and its answer: its ``thinking`` field, else a ``<think>`` in
    its content (taken out of the answer either way)."""
    if keep_trace and thinking:
        return trim(thinking), content
    reasoning = ""
    close = content.find(THINK_CLOSE)
    if close >= 0:
        before = content[:close]
        opened = before.rfind(THINK_OPEN)
        reasoning = before[opened + len(THINK_OPEN):] if opened >= 0 else before
        content = content[close + len(THINK_CLOSE):].lstrip("\n")
    return trim(reasoning), content


def _is_tool_response(content: str) -> bool:
    return content.startswith("<tool_response>") and content.endswith("</tool_response>")


def xml_calls(message: Message, content: str) -> str:
    """An assistant turn's tool calls as Qwen3-Coder XML blocks, after its answer."""
    out: list[str] = []
    for j, call in enumerate(message.get("tool_calls") or ()):
        name, arguments = call_name_and_arguments(call)
        out.append(("\n\n" if trim(content) else "") if j == 0 else "\n")
        out.append(f"<tool_call>\n<function={name}>\n")
        out.extend(f"<parameter={key}>\n{argument_text(value)}\n</parameter>\n"
                   for key, value in arguments.items())
        out.append("</function>\n</tool_call>")
    return "".join(out)


class Qwen35Renderer(Renderer):
    def __init__(self, *, every_trace: bool = False) -> None:
        self._every_trace = every_trace  # ornith: history turns keep their trace too

    def render(self, messages: Sequence[Message], tools: Sequence[Tool] | None, think: ThinkValue) -> str:
        thinking = True if think is None else think_on(think)
        out: list[str] = []
        first_system = bool(messages) and messages[0].get("role") == "system"
        system = trim(str(messages[0].get("content") or "")) if first_system else ""
        if tools:
            out.append(_TOOLS_INTRO)
            out.extend("\n" + go_json(go_tool(tool), spaces=True) for tool in tools)
            out.append(_TOOLS_OUTRO)
            out.append(("\n\n" + system if system else "") + "<|im_end|>\n")
        elif first_system:
            out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
        last_query = len(messages) - 1
        for i in range(len(messages) - 1, -1, -1):
            text = trim(str(messages[i].get("content") or ""))
            if messages[i].get("role") == "user" and not _is_tool_response(text):
                last_query = i
                break
        for i, message in enumerate(messages):
            role, content = message.get("role"), trim(str(message.get("content") or ""))
            last = i == len(messages) - 1
            prefill = last and role == "assistant"
            if role == "user" or (role == "system" and i != 0):
                out.append(f"<|im_start|>{role}\n{content}<|im_end|>\n")
            elif role == "assistant":
                keep_trace = self._every_trace or (thinking and i > last_query)
                reasoning, content = split_reasoning(content, str(message.get("thinking") or ""), keep_trace)
                out.append("<|im_start|>assistant\n")
                if keep_trace:
                    out.append(f"{THINK_OPEN}\n{reasoning}\n{THINK_CLOSE}\n\n")
                out.append(content + xml_calls(message, content))
                if not prefill:
                    out.append("<|im_end|>\n")
            elif role == "tool":
                out.append(chatml_tool_response(messages, i, content))
            if last and not prefill:
                out.append("<|im_start|>assistant\n")
                out.append("<think>\n" if thinking else "<think>\n\n</think>\n\n")
        return "".join(out)
