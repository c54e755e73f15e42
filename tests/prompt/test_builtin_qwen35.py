"""PARSER/RENDERER ``qwen3.5`` (and ``ornith``): a ``<think>`` trace, Qwen3-Coder XML tool calls."""

from __future__ import annotations

from typing import Any

import pytest

from tests.prompt.test_builtin_parsers import WEATHER, call, run
from tests.prompt.test_builtin_renderers import render

# (think, output, content, thinking, calls)
CASES: list[tuple[Any, str, str, str, list[dict[str, Any]]]] = [
    (None, "Let me think...</think>Answer.", "Answer.", "Let me think...", []),
    (True, "<think>\nLet me think...</think>\n\nAnswer.", "Answer.", "Let me think...", []),
    (False, "Direct answer", "Direct answer", "", []),
    (None, "<tool_call><function=get_weather><parameter=location>\nSan Francisco\n</parameter><parameter=days>\n3"
     "\n</parameter></function></tool_call>", "", "", [call(0, "get_weather", location="San Francisco", days=3)]),
    (True, "Need weather lookup<tool_call><function=get_weather><parameter=location>\nSF\n</parameter></function>"
     "</tool_call>", "", "Need weather lookup", [call(0, "get_weather", location="SF")]),
    (True, "Need weather.</think>\n\nChecking.\n<tool_call>\n<function=get_weather>\n<parameter=days>\n2\n"
     "</parameter>\n</function>\n</tool_call>", "Checking.", "Need weather.", [call(0, "get_weather", days=2)]),
    (True, "cut off while thinking ", "", "cut off while thinking", []),
    ("high", "a </thinking> b</think>c", "c", "a </thinking> b", []),
]


@pytest.mark.parametrize(("think", "output", "content", "thinking", "calls"), CASES)
def test_parser_split_at_every_boundary(think: Any, output: str, content: str, thinking: str,
                                        calls: list[dict[str, Any]]) -> None:
    expected = (content, thinking, calls)
    assert run("qwen3.5", [output], tools=[WEATHER], think=think) == expected
    for cut in range(1, len(output)):
        assert run("qwen3.5", [output[:cut], output[cut:]], tools=[WEATHER], think=think) == expected, cut
    assert run("qwen3.5", list(output), tools=[WEATHER], think=think) == expected


def test_parser_prefill_continues_as_content() -> None:
    last = {"role": "assistant", "content": "The answer is"}
    assert run("qwen3.5", [" 42."], last=last) == (" 42.", "", [])
    assert run("ornith", ["trace</think>answer"]) == ("answer", "trace", [])


def tool(name: str, description: str, **properties: str) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "required": list(properties),
        "properties": {k: {"type": v} for k, v in properties.items()}}}}


MATH = [tool("add", "Add two numbers", a="integer", b="integer"),
        tool("multiply", "Multiply two numbers", x="integer", y="integer")]


def test_renderer_tools_system_after_them_and_grouped_responses() -> None:
    messages = [
        {"role": "system", "content": "  You are a calculator.\n"},
        {"role": "user", "content": "Run add and multiply."},
        {"role": "assistant", "content": "Running both.", "thinking": "Call add and multiply.", "tool_calls": [
            {"function": {"name": "add", "arguments": {"a": 2, "b": 3}}},
            {"function": {"name": "multiply", "arguments": {"x": 4, "y": [5]}}}]},
        {"role": "tool", "content": "5"},
        {"role": "tool", "content": "20"},
        {"role": "user", "content": "Sum them up."},
    ]
    prompt = render("qwen3.5", messages, MATH)
    head, _, tail = prompt.partition("\n</tools>\n\nIf you choose to call a function ONLY reply")
    assert head == (
        "<|im_start|>system\n# Tools\n\nYou have access to the following functions:\n\n<tools>\n"
        '{"type": "function", "function": {"name": "add", "description": "Add two numbers", "parameters": '
        '{"type": "object", "required": ["a", "b"], "properties": {"a": {"type": "integer"}, "b": {"type": '
        '"integer"}}}}}\n{"type": "function", "function": {"name": "multiply", "description": "Multiply two '
        'numbers", "parameters": {"type": "object", "required": ["x", "y"], "properties": {"x": {"type": '
        '"integer"}, "y": {"type": "integer"}}}}}')
    assert tail.endswith(  # the history's trace is dropped: it came before the last query
        "do not tell the user about function calls\n</IMPORTANT>\n\nYou are a calculator.<|im_end|>\n"
        "<|im_start|>user\nRun add and multiply.<|im_end|>\n<|im_start|>assistant\nRunning both.\n\n"
        "<tool_call>\n<function=add>\n<parameter=a>\n2\n</parameter>\n<parameter=b>\n3\n</parameter>\n"
        "</function>\n</tool_call>\n<tool_call>\n<function=multiply>\n<parameter=x>\n4\n</parameter>\n"
        "<parameter=y>\n[5]\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n5\n</tool_response>\n<tool_response>\n20\n</tool_response>"
        "<|im_end|>\n<|im_start|>user\nSum them up.<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_renderer_keeps_the_current_turns_traces() -> None:
    messages = [
        {"role": "user", "content": "Plan a picnic."},
        {"role": "assistant", "content": "Checking weather.", "thinking": "Need weather.",
         "tool_calls": [{"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]},
        {"role": "tool", "content": "<tool_response>22C</tool_response>"},
    ]
    assert render("qwen3.5", messages) == (
        "<|im_start|>user\nPlan a picnic.<|im_end|>\n<|im_start|>assistant\n<think>\nNeed weather.\n</think>\n\n"
        "Checking weather.\n\n<tool_call>\n<function=get_weather>\n<parameter=location>\nParis\n</parameter>\n"
        "</function>\n</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n<tool_response>22C"
        "</tool_response>\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_renderer_without_thinking_prefills_an_empty_trace() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                {"role": "assistant", "content": "<think>old</think>\n\nHi!"}, {"role": "user", "content": "again"}]
    assert render("qwen3.5", messages, think=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\nHi!"
        "<|im_end|>\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_renderer_prefill_and_ornith_history() -> None:
    messages = [{"role": "user", "content": "Write two words."},
                {"role": "assistant", "thinking": "Keep it short.", "content": "Hello world"}]
    assert render("qwen3.5", messages) == (
        "<|im_start|>user\nWrite two words.<|im_end|>\n<|im_start|>assistant\n<think>\nKeep it short.\n</think>\n\n"
        "Hello world")
    history = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "t"},
               {"role": "user", "content": "c"}]
    assert render("ornith", history, think=False) == (
        "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<think>\nt\n</think>\n\nb<|im_end|>\n"
        "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
