# ruff: noqa: RUF001  (DeepSeek's special tokens are written with fullwidth bars)
"""Built-in renderers (RENDERER qwen3-coder, qwen3-vl-*, deepseek3.1): prompts byte for byte as upstream's."""

from __future__ import annotations

import pytest

from appliance.errors import BadRequest
from appliance.prompt.builtin import RENDERERS, check_names, renderer_for, think_level, think_on

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "parameters": {"type": "object", "required": ["unit"], "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "The unit of temperature"}}}}}

CHAT_WITH_TOOL_TURN = [
    {"role": "system", "content": "You are a helpful assistant with access to tools."},
    {"role": "user", "content": "What is the weather like in San Francisco?"},
    {"role": "assistant", "content": "I'll check the weather in San Francisco for you.",
     "tool_calls": [{"function": {"name": "get_weather", "arguments": {"unit": "fahrenheit"}}}]},
    {"role": "tool", "content": '{"temperature": 68}', "tool_name": "get_weather"},
    {"role": "user", "content": "That sounds nice! What about New York?"},
]


def render(name: str, messages: list[dict[str, object]], tools: object = None, think: object = None) -> str:
    renderer = renderer_for(name)
    assert renderer is not None
    return renderer.render(messages, tools, think)  # type: ignore[arg-type]


def test_qwen3_coder_basic() -> None:
    assert render("qwen3-coder", [{"role": "system", "content": "You are a helpful assistant."},
                                  {"role": "user", "content": "Hello, how are you?"}]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello, how are you?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_coder_tools_calls_and_responses() -> None:
    prompt = render("qwen3-coder", CHAT_WITH_TOOL_TURN, [WEATHER_TOOL])
    assert prompt.startswith(
        "<|im_start|>system\nYou are a helpful assistant with access to tools.\n\n# Tools\n\n"
        "You have access to the following functions:\n\n<tools>\n<function>\n<name>get_weather</name>\n"
        "<description>Get the current weather in a given location</description>\n<parameters>\n<parameter>\n"
        "<name>unit</name>\n<type>string</type>\n<description>The unit of temperature</description>\n"
        '<enum>["celsius","fahrenheit"]</enum>\n</parameter>\n<required>["unit"]</required>\n</parameters>\n'
        "</function>\n</tools>\n\nIf you choose to call a function ONLY reply in the following format")
    assert prompt.endswith(
        "</IMPORTANT><|im_end|>\n<|im_start|>user\nWhat is the weather like in San Francisco?<|im_end|>\n"
        "<|im_start|>assistant\nI'll check the weather in San Francisco for you.\n\n<tool_call>\n"
        "<function=get_weather>\n<parameter=unit>\nfahrenheit\n</parameter>\n</function>\n</tool_call><|im_end|>\n"
        '<|im_start|>user\n<tool_response>\n{"temperature": 68}\n</tool_response><|im_end|>\n'
        "<|im_start|>user\nThat sounds nice! What about New York?<|im_end|>\n<|im_start|>assistant\n")


def test_qwen3_coder_default_system_with_tools_and_prefill() -> None:
    prompt = render("qwen3-coder", [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hel"}],
                    [WEATHER_TOOL])
    assert prompt.startswith("<|im_start|>system\nYou are Qwen, a helpful AI assistant that can interact")
    assert prompt.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHel")


def test_qwen3_coder_consecutive_tool_responses_share_one_user_turn() -> None:
    prompt = render("qwen3-coder", [{"role": "user", "content": "q"}, {"role": "tool", "content": "a"},
                                    {"role": "tool", "content": "b"}])
    assert prompt.endswith("<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n"
                           "</tool_response><|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize(("name", "think", "tail"), [
    ("qwen3-vl-thinking", None, "<|im_start|>assistant\n<think>\n"),
    ("qwen3-vl-thinking", True, "<|im_start|>assistant\n<think>\n"),
    ("qwen3-vl-thinking", False, "<|im_start|>assistant\n"),
    ("qwen3-vl-instruct", None, "<|im_start|>assistant\n"),
    ("qwen3-vl-instruct", "high", "<|im_start|>assistant\n<think>\n"),
])
def test_qwen3_vl_think_switch(name: str, think: object, tail: str) -> None:
    prompt = render(name, [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"}], think=think)
    assert prompt == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n" + tail


def test_qwen3_vl_tools_as_json_lines_and_calls() -> None:
    prompt = render("qwen3-vl-instruct", CHAT_WITH_TOOL_TURN, [WEATHER_TOOL])
    assert prompt.startswith(
        "<|im_start|>system\nYou are a helpful assistant with access to tools.\n\n# Tools\n\nYou may call one or "
        "more functions to assist with the user query.\n\nYou are provided with function signatures within "
        '<tools></tools> XML tags:\n<tools>\n{"type": "function", "function": {"name": "get_weather", '
        '"description": "Get the current weather in a given location", "parameters": {"type": "object", '
        '"required": ["unit"], "properties": {"unit": {"type": "string", "description": "The unit of '
        'temperature", "enum": ["celsius", "fahrenheit"]}}}}}\n</tools>\n\n')
    assert ("<|im_start|>assistant\nI'll check the weather in San Francisco for you.\n<tool_call>\n"
            '{"name": "get_weather", "arguments": {"unit": "fahrenheit"}}\n</tool_call><|im_end|>\n') in prompt


def test_qwen3_vl_thinking_keeps_the_trace_of_the_current_turn_only() -> None:
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "thinking": "old"},
                {"role": "user", "content": "c"}, {"role": "assistant", "content": "d", "thinking": "new"}]
    prompt = render("qwen3-vl-thinking", messages)
    assert "old" not in prompt
    assert prompt.endswith("<|im_start|>assistant\n<think>\nnew\n</think>\n\nd")  # a prefill: no <|im_end|>


@pytest.mark.parametrize(("messages", "think", "expected"), [
    ([{"role": "user", "content": "Hello, how are you?"}], False,
     "<｜begin▁of▁sentence｜><｜User｜>Hello, how are you?<｜Assistant｜></think>"),
    ([{"role": "system", "content": "First instruction"}, {"role": "system", "content": "Second instruction"},
      {"role": "user", "content": "Hello"}], False,
     "<｜begin▁of▁sentence｜>First instruction\n\nSecond instruction<｜User｜>Hello<｜Assistant｜></think>"),
    ([{"role": "user", "content": "Hello, how are you?"}], True,
     "<｜begin▁of▁sentence｜><｜User｜>Hello, how are you?<｜Assistant｜><think>"),
    ([{"role": "user", "content": "What is the capital of France?"},
      {"role": "assistant", "content": "The capital of France is Paris."}, {"role": "user", "content": "Fantastic!"}],
     False, "<｜begin▁of▁sentence｜><｜User｜>What is the capital of France?<｜Assistant｜></think>The capital of "
     "France is Paris.<｜end▁of▁sentence｜><｜User｜>Fantastic!<｜Assistant｜></think>"),
    ([{"role": "user", "content": "What's the weather in Paris?"},
      {"role": "assistant", "content": "I'll check the weather for you.",
       "tool_calls": [{"function": {"name": "get_weather", "arguments": {"location": "Paris"}}}]}], False,
     "<｜begin▁of▁sentence｜><｜User｜>What's the weather in Paris?<｜Assistant｜></think>I'll check the weather "
     "for you.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"location\":\"Paris\"}"
     "<｜tool▁call▁end｜><｜tool▁calls▁end｜><｜end▁of▁sentence｜>"),
    ([{"role": "user", "content": "w?"}, {"role": "tool", "content": "72F"}], True,
     "<｜begin▁of▁sentence｜><｜User｜>w?<｜tool▁output▁begin｜>72F<｜tool▁output▁end｜>"),
    ([{"role": "user", "content": "w?"}, {"role": "tool", "content": "72F"},
      {"role": "assistant", "content": "It is 72F."}], True,
     "<｜begin▁of▁sentence｜><｜User｜>w?<｜tool▁output▁begin｜>72F<｜tool▁output▁end｜>It is 72F."
     "<｜end▁of▁sentence｜>"),
])
def test_deepseek31(messages: list[dict[str, object]], think: object, expected: str) -> None:
    assert render("deepseek3.1", messages, think=think) == expected


def test_deepseek31_tools_section() -> None:
    prompt = render("deepseek3.1", [{"role": "user", "content": "hi"}], [WEATHER_TOOL], think=False)
    assert ('\n\n## Tools\nYou have access to the following tools:\n\n### get_weather\nDescription: Get the '
            'current weather in a given location\n\nParameters: {"type":"object","required":["unit"],"properties":'
            '{"unit":{"type":"string","description":"The unit of temperature","enum":["celsius","fahrenheit"]}}}\n'
            "\nIMPORTANT: ALWAYS adhere to this exact format for tool use:\n") in prompt


def test_think_values() -> None:
    assert [think_on(v) for v in (None, False, True, "low", "medium", "high", "max", "bogus")] == [
        False, False, True, True, True, True, True, False]
    assert [think_level(v) for v in (None, False, True, "low", "max")] == ["", "", "medium", "low", "max"]


def test_names_are_checked() -> None:
    check_names("qwen3-coder", "qwen3")
    check_names(None, None)
    with pytest.raises(BadRequest, match="unknown parser 'x'"):
        check_names(None, "x")
    with pytest.raises(BadRequest, match="unknown renderer 'qwen3'"):
        check_names("qwen3", "qwen3")
    assert renderer_for("nope") is None and set(RENDERERS) >= {"qwen3-coder", "deepseek3.1"}
