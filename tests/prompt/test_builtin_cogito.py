# ruff: noqa: RUF001  (Cogito uses DeepSeek's special tokens, written with fullwidth bars)
"""PARSER/RENDERER ``cogito``: DeepSeek's tokens, calls as a name and a fenced JSON block."""

from __future__ import annotations

from typing import Any

import pytest

from tests.prompt.test_builtin_parsers import WEATHER, call, run
from tests.prompt.test_builtin_renderers import render

BOS = "<｜begin▁of▁sentence｜>"
SYSTEM = "You are Cogito, an AI assistant created by Deep Cogito, which is an AI research lab based in San Francisco."
CALL = ("<｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n```json\n{\"location\": \"Paris\"}\n```"
        "<｜tool▁call▁end｜>")

# (tools, think, output, content, thinking, calls)
CASES: list[tuple[bool, Any, str, str, str, list[dict[str, Any]]]] = [
    (False, True, "Let me think.\n</think>\n\nParis.", "Paris.", "Let me think.", []),
    (False, False, "Paris.", "Paris.", "", []),
    (True, True, "Checking. <｜tool▁calls▁begin｜>" + CALL + "\n" + CALL + "<｜tool▁calls▁end｜> ok", "Checking.ok", "",
     [call(0, "get_weather", location="Paris"), call(1, "get_weather", location="Paris")]),
    (True, None, "A<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>72F<｜tool▁output▁end｜><｜tool▁outputs▁end｜> B",
     "AB", "", []),
    (True, None, "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>f{}<｜tool▁call▁end｜>",
     "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f{}<｜tool▁call▁end｜>", "", []),  # no fenced JSON: content
]


@pytest.mark.parametrize(("with_tools", "think", "output", "content", "thinking", "calls"), CASES)
def test_parser_split_at_every_boundary(with_tools: bool, think: Any, output: str, content: str, thinking: str,
                                        calls: list[dict[str, Any]]) -> None:
    tools = [WEATHER] if with_tools else None
    expected = (content, thinking, calls)
    assert run("cogito", [output], tools=tools, think=think) == expected
    for cut in range(1, len(output)):
        assert run("cogito", [output[:cut], output[cut:]], tools=tools, think=think) == expected, cut
    assert run("cogito", list(output), tools=tools, think=think) == expected


def test_renderer_thinking_system_and_history() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Weather?"}]
    assert render("cogito", messages, think=True) == (
        f"{BOS}Enable deep thinking subroutine.\n\n{SYSTEM}\n\nBe brief.\n\n<｜User｜>Hi<｜Assistant｜>"
        "Hello!<｜end▁of▁sentence｜><｜User｜>Weather?<｜Assistant｜><think>\n")
    assert render("cogito", messages[1:2]) == f"{BOS}{SYSTEM}<｜User｜>Hi<｜Assistant｜>"


def test_renderer_tools_calls_and_outputs() -> None:
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather <now>",
                                             "parameters": {"type": "object", "properties": {}}}}
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
                {"role": "tool", "content": "22C"}, {"role": "tool", "content": "sunny"}]
    assert render("cogito", messages, [tool]) == (
        f"{BOS}{SYSTEM}\nYou have the following functions available:\n```json\n{{\n    \"type\": \"function\",\n"
        "    \"function\": {\n        \"name\": \"get_weather\",\n        \"description\": \"Weather \\u003cnow\\u003e\",\n"
        "        \"parameters\": {\n            \"type\": \"object\",\n            \"properties\": {}\n        }\n"
        "    }\n}\n```\n<｜User｜>Weather?<｜Assistant｜><｜tool▁calls▁begin｜>" + CALL.replace(": ", ":") +
        "<｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>22C"
        "<｜tool▁output▁end｜>\n<｜tool▁output▁begin｜>sunny<｜tool▁output▁end｜><｜tool▁outputs▁end｜><｜Assistant｜>")
