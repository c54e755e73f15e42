"""PARSER/RENDERER ``olmo3`` and ``olmo3-think`` (and the ``nemotron-3-nano`` parser, Qwen 3.5's format)."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.prompt.builtin.olmo3 import parse_calls
from tests.prompt.test_builtin_parsers import WEATHER, call, run
from tests.prompt.test_builtin_renderers import render

# (parser, think, output, content, thinking, calls)
CASES: list[tuple[str, Any, str, str, str, list[dict[str, Any]]]] = [
    ("olmo3", None, "Sure. <function_calls>get_weather(location=\"Paris\", days=3)\nnow(tz=null, utc=True, "
     "tags=['a', \"b\"], opts={\"x\": -1.5})</function_calls> Done.", "Sure.  Done.", "",
     [call(0, "get_weather", location="Paris", days=3),
      call(1, "now", tz=None, utc=True, tags=["a", "b"], opts={"x": -1.5})]),
    ("olmo3", None, "a <function_calls>import os</function_calls>", "a <function_calls>import os</function_calls>",
     "", []),
    ("olmo3", None, "x <function_calls>f(a=1)", "x <function_calls>f(a=1)", "", []),
    ("olmo3", None, "keeps  spacing\n", "keeps  spacing\n", "", []),
    ("olmo3-think", False, "Always thinks.</think>\n\nAnswer", "Answer", "Always thinks.", []),
    ("olmo3-think", None, "no close tag", "", "no close tag", []),
    ("nemotron-3-nano", None, "<think>\nPlan.\n</think>\n<tool_call>\n<function=get_weather>\n<parameter=days>\n2\n"
     "</parameter>\n</function>\n</tool_call>\n", "", "Plan.", [call(0, "get_weather", days=2)]),
    ("nemotron-3-nano", False, "Hi.", "Hi.", "", []),
]


@pytest.mark.parametrize(("name", "think", "output", "content", "thinking", "calls"), CASES)
def test_parser_split_at_every_boundary(name: str, think: Any, output: str, content: str, thinking: str,
                                        calls: list[dict[str, Any]]) -> None:
    expected = (content, thinking, calls)
    assert run(name, [output], tools=[WEATHER], think=think) == expected
    for cut in range(1, len(output)):
        assert run(name, [output[:cut], output[cut:]], tools=[WEATHER], think=think) == expected, cut
    assert run(name, list(output), tools=[WEATHER], think=think) == expected


@pytest.mark.parametrize("raw", ["f(1)", "f(**x)", "a.b(x=1)", "f(x=y)", "f(x=1+2j)", "f(x={1, 2})", "f(" * 300])
def test_only_keyword_literals_are_calls(raw: str) -> None:
    assert parse_calls(raw) is None


def test_olmo3_renderer_default_system_tools_and_environment() -> None:
    messages = [{"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [
                    {"function": {"name": "get_weather", "arguments": {"location": "Paris", "days": 2}}}]},
                {"role": "tool", "content": "22C"}]
    assert render("olmo3", messages, [WEATHER]) == (
        "<|im_start|>system\nYou are a helpful function-calling AI assistant. You are provided with function "
        "signatures within <functions></functions> XML tags. You may call one or more functions to assist with "
        "the user query. Output any function calls within <function_calls></function_calls> XML tags. Do not "
        'make assumptions about what values to plug into functions.<functions>[{"type": "function", "function": '
        '{"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}, '
        '"days": {"type": "integer"}}}}}]</functions><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n'
        '<|im_start|>assistant\n<function_calls>get_weather(days=2, location="Paris")</function_calls><|im_end|>\n'
        "<|im_start|>environment\n22C<|im_end|>\n<|im_start|>assistant\n")


def test_olmo3_renderer_own_system_and_prefill() -> None:
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hel"}]
    assert render("olmo3.1", messages) == (
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHel")
    assert render("olmo3.1", messages[1:2]).startswith(
        "<|im_start|>system\nYou are Olmo, a helpful AI assistant built by Ai2. Your date cutoff is December "
        "2024, and your model weights are available at https://huggingface.co/allenai. You do not currently "
        "have access to any functions. <functions></functions><|im_end|>\n")


def test_olmo3_think_renderer() -> None:
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                {"role": "tool", "content": "ignored"}, {"role": "user", "content": "2+2?"}]
    assert render("olmo3-32b-think", messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>")
    assert render("olmo3-think", [{"role": "system", "content": "Math only."}, *messages[3:]]) == (
        "<|im_start|>system\nMath only. You do not currently have access to any functions. <functions></functions>"
        "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>")
