"""PARSER/RENDERER ``gemma4``: ``<|channel>thought`` traces, calls in Gemma's object notation, ``<|turn>``s."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.prompt.builtin.gemma4 import parse_call, to_json
from tests.prompt.test_builtin_parsers import WEATHER, call, run
from tests.prompt.test_builtin_renderers import render

Q = '<|"|>'

# (parser, think, output, content, thinking, calls)
CASES: list[tuple[str, Any, str, str, str, list[dict[str, Any]]]] = [
    ("gemma4", True, "<|channel>thought\nThe user greets.<channel|>\n\nHello!", "Hello!", "The user greets.", []),
    ("gemma4", False, "<|channel>thought\nUnasked trace.<channel|>Hello!", "Hello!", "", []),  # dropped
    ("gemma4", True, "Plain answer ", "Plain answer", "", []),
    ("gemma4", True, "Checking. <|tool_call>call:get_weather{location:" + Q + "Paris, FR" + Q + ",days:3}"
     "<tool_call|><tool_call|>\n", "Checking.", "", [call(0, "get_weather", location="Paris, FR", days=3)]),
    ("gemma4", None, "<|tool_call>call:get_weather{location:" + Q + "a{b:c}" + Q + "}<tool_call|><|tool_response>"
     "<|tool_call>call:f{x:[1,2.5,true,null],y:{z:" + Q + "w" + Q + "}}<tool_call|>Done.", "Done.", "",
     [call(0, "get_weather", location="a{b:c}"), call(1, "f", x=[1, 2.5, True, None], y={"z": "w"})]),
    ("gemma4", None, "<|tool_call>call:get_weather{location:" + Q + "Rome}", "", "",
     [call(0, "get_weather", location="Rome")]),  # cut off at a stop: the string is closed
    ("gemma4", None, "<|tool_call>not a call<tool_call|>", "<|tool_call>not a call<tool_call|>", "", []),
    ("gemma4-no-thinking", True, "<|channel>thought\nx<channel|>y", "y", "", []),
]


@pytest.mark.parametrize(("name", "think", "output", "content", "thinking", "calls"), CASES)
def test_parser_split_at_every_boundary(name: str, think: Any, output: str, content: str, thinking: str,
                                        calls: list[dict[str, Any]]) -> None:
    expected = (content, thinking, calls)
    assert run(name, [output], tools=[WEATHER], think=think) == expected
    for cut in range(1, len(output)):
        assert run(name, [output[:cut], output[cut:]], tools=[WEATHER], think=think) == expected, cut
    assert run(name, list(output), tools=[WEATHER], think=think) == expected


def test_parser_after_a_tool_result_starts_in_the_trace() -> None:
    last = {"role": "tool", "content": "22C"}
    assert run("gemma4", ["It is warm.<channel|>It's 22C."], last=last, think=True) == (
        "It's 22C.", "It is warm.", [])


def test_call_notation() -> None:
    assert to_json("{a:" + Q + 'say "hi"' + Q + ', b_2: {c:"x,y:z"}}') == '{"a":"say \\"hi\\"", "b_2": {"c":"x,y:z"}}'
    assert parse_call("call:f{}") == ("f", {})
    assert parse_call("call:{a:1}") is None and parse_call("f{a:1}") is None and parse_call("call:f{a:}") is None


BASH = {"type": "function", "function": {"name": "bash", "description": "Run a command", "parameters": {
    "type": "object", "required": ["command"], "properties": {
        "command": {"type": "string", "description": "The command"}}}}}
RICH = {"type": "function", "function": {"name": "plan", "description": "Make a plan", "parameters": {
    "type": "object", "properties": {
        "mode": {"type": "string", "enum": ["fast", "slow"]},
        "steps": {"type": "array", "description": "Steps", "items": {"type": "object", "required": ["id"],
                                                                      "properties": {"id": {"type": "integer"}}}},
        "limit": {"type": ["integer", "null"]},
        "options": {"type": "object", "properties": {"dry": {"type": "boolean", "description": "Dry run"}},
                    "required": ["dry"]},
        "extra": {"type": "object"}}}}}


def test_renderer_declares_tools_in_the_system_turn() -> None:
    assert render("gemma4", [{"role": "system", "content": " Be helpful. "}, {"role": "user", "content": "Hi"}],
                  [BASH, RICH], think=True) == (
        "<bos><|turn>system\n<|think|>\nBe helpful."
        f"<|tool>declaration:bash{{description:{Q}Run a command{Q},parameters:{{properties:{{command:{{"
        f"description:{Q}The command{Q},type:{Q}STRING{Q}}}}},required:[{Q}command{Q}],type:{Q}OBJECT{Q}}}}}<tool|>"
        f"<|tool>declaration:plan{{description:{Q}Make a plan{Q},parameters:{{properties:{{"
        f"extra:{{properties:{{}},type:{Q}OBJECT{Q}}},"
        f"limit:{{type:{Q}['INTEGER', 'NULL']{Q}}},"
        f"mode:{{enum:[{Q}fast{Q},{Q}slow{Q}],type:{Q}STRING{Q}}},"
        f"options:{{properties:{{dry:{{description:{Q}Dry run{Q},type:{Q}BOOLEAN{Q}}}}},required:[{Q}dry{Q}],"
        f"type:{Q}OBJECT{Q}}},"
        f"steps:{{description:{Q}Steps{Q},items:{{properties:{{id:{{type:{Q}INTEGER{Q}}}}},required:[{Q}id{Q}],"
        f"type:{Q}OBJECT{Q}}},type:{Q}ARRAY{Q}}}}},type:{Q}OBJECT{Q}}}}}<tool|>"
        "<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n")


def test_renderer_plain_chat_and_history_traces() -> None:
    assert render("gemma4", [{"role": "user", "content": "Hello"}]) == "<bos><|turn>user\nHello<turn|>\n<|turn>model\n"
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "<|channel>thought\nold<channel|>Hello!", "thinking": "old"},
                {"role": "user", "content": "More"}]
    assert render("gemma4", messages) == (
        "<bos><|turn>user\nHi<turn|>\n<|turn>model\nHello!<turn|>\n<|turn>user\nMore<turn|>\n<|turn>model\n")
    assert render("gemma4-large", messages, think=False).endswith(
        "<|turn>model\n<|channel>thought\n<channel|>")


def test_renderer_folds_tool_results_into_the_model_turn() -> None:
    call_turn = {"role": "assistant", "thinking": "Need ls.", "tool_calls": [
        {"id": "call_1", "function": {"name": "bash", "arguments": {"command": "ls", "all": True}}}]}
    messages = [{"role": "user", "content": "List files"}, call_turn,
                {"role": "tool", "tool_call_id": "call_1", "content": "a.txt\nb.txt"}]
    assert render("gemma4", messages, [BASH], think=True) == (
        f"<bos><|turn>system\n<|think|>\n<|tool>declaration:bash{{description:{Q}Run a command{Q},parameters:{{"
        f"properties:{{command:{{description:{Q}The command{Q},type:{Q}STRING{Q}}}}},required:[{Q}command{Q}],"
        f"type:{Q}OBJECT{Q}}}}}<tool|><turn|>\n<|turn>user\nList files<turn|>\n<|turn>model\n"
        f"<|channel>thought\nNeed ls.\n<channel|><|tool_call>call:bash{{all:true,command:{Q}ls{Q}}}<tool_call|>"
        f"<|tool_response>response:bash{{value:{Q}a.txt\nb.txt{Q}}}<tool_response|><|channel>thought\n")
    answered = [*messages, {"role": "assistant", "content": "Two files."}, {"role": "user", "content": "Thanks"}]
    assert render("gemma4", answered).endswith(
        "<tool_response|>Two files.<turn|>\n<|turn>user\nThanks<turn|>\n<|turn>model\n")
    pending = [{"role": "user", "content": "List files"},
               {"role": "assistant", "content": "Checking.", "tool_calls": call_turn["tool_calls"]}]
    assert render("gemma4", pending).endswith(
        f"<|turn>model\n<|tool_call>call:bash{{all:true,command:{Q}ls{Q}}}<tool_call|>Checking.<|tool_response>")
