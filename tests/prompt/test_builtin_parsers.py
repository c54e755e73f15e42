# ruff: noqa: RUF001  (DeepSeek's special tokens are written with fullwidth bars)
"""Built-in output parsers (PARSER qwen3, qwen3-coder, deepseek3, harmony) on upstream-like token streams.

Every case is also streamed split at every boundary (and one character at a time): a tag cut anywhere
must give the same content, thinking and tool calls as the whole text at once.
"""

from __future__ import annotations

from typing import Any

import pytest

from appliance.prompt.builtin import PARSERS, parser_for
from appliance.prompt.builtin.harmony import FunctionNames, parse_header
from appliance.prompt.builtin.qwen3coder import typed_value

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"location": {"type": "string"}, "days": {"type": "integer"}}}}}


def run(name: str, chunks: list[str], *, tools: Any = None, last: Any = None,
        think: Any = None) -> tuple[str, str, list[dict[str, Any]]]:
    parser = parser_for(name)
    assert parser is not None
    parser.init(tools, last, think)
    content = thinking = ""
    calls: list[dict[str, Any]] = []
    for i, chunk in enumerate(chunks):
        c, t, found = parser.add(chunk, i == len(chunks) - 1)
        content, thinking, calls = content + c, thinking + t, calls + found
    if not chunks:
        c, t, calls = parser.add("", True)
        content, thinking = content + c, thinking + t
    return content, thinking, calls


def call(index: int, name: str, **arguments: Any) -> dict[str, Any]:
    return {"function": {"index": index, "name": name, "arguments": arguments}}


# (parser, think, output, content, thinking, calls)
CASES: list[tuple[str, Any, str, str, str, list[dict[str, Any]]]] = [
    # qwen3-thinking: the prompt ends with <think>, so the output starts inside the trace
    ("qwen3-thinking", True, "Let me think...</think>Answer.", "Answer.", "Let me think...", []),
    ("qwen3-thinking", None, "Let me think...</think>Answer.", "Answer.", "Let me think...", []),
    ("qwen3-thinking", "low", "<think>\nLet me think...</think>Answer.", "Answer.", "Let me think...", []),
    ("qwen3-thinking", True, "  hmm\n\n</think>\n\n  Paris.\n", "Paris.", "hmm", []),
    ("qwen3-thinking", False, "Direct answer", "Direct answer", "", []),
    ("qwen3-thinking", True, "I should call a tool <tool_call>\n{\"name\": \"get_weather\", \"arguments\": "
     "{\"location\": \"Paris\"}}\n</tool_call>", "", "I should call a tool",
     [call(0, "get_weather", location="Paris")]),
    ("qwen3-thinking", True, "still thinking when cut off", "", "still thinking when cut off", []),
    ("qwen3", None, "Direct answer", "Direct answer", "", []),
    ("qwen3", True, "<think>x</think>y", "<think>x</think>y", "", []),  # no thinking support: all content
    ("qwen3", None, "<tool_call>{\"name\":\"get_weather\",\"arguments\":{\"location\":\"San Francisco\","
     "\"unit\":\"celsius\"}}</tool_call>", "", "",
     [call(0, "get_weather", location="San Francisco", unit="celsius")]),
    ("qwen3", None, "Sure. <tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": "
     "\"b\"}</tool_call> done", "Sure.done", "", [call(0, "a"), call(1, "b")]),
    ("qwen3", None, "x <tool_call>not json</tool_call>", "x<tool_call>not json</tool_call>", "", []),
    ("qwen3", None, "x <tool_call>{\"name\": \"a\"", "x<tool_call>{\"name\": \"a\"", "", []),
    ("qwen3", None, "a < b and <tool_ca is not a tag", "a < b and <tool_ca is not a tag", "", []),
    # qwen3-vl-thinking always thinks: think=false does not move the trace into content
    ("qwen3-vl-thinking", False, "trace</think>answer", "answer", "trace", []),
    ("qwen3-vl-instruct", None, "answer", "answer", "", []),
    # qwen3-coder: XML-like calls, values typed by the tool's schema
    ("qwen3-coder", None, "Let me check.\n<tool_call>\n<function=get_weather>\n<parameter=location>\n"
     "San Francisco\n</parameter>\n<parameter=days>\n3\n</parameter>\n</function>\n</tool_call>",
     "Let me check.", "", [call(0, "get_weather", location="San Francisco", days=3)]),
    ("qwen3-coder", None, "<tool_call><function=get_weather><parameter=location>Paris</parameter></function>"
     "</tool_call><tool_call><function=other><parameter=n>\n2\n</parameter></function></tool_call>", "", "",
     [call(0, "get_weather", location="Paris"), call(1, "other", n="2")]),
    ("qwen3-coder", None, "no calls <here>", "no calls <here>", "", []),
    ("qwen3-coder", None, "<tool_call>garbage</tool_call> after", "<tool_call>garbage</tool_call>after", "", []),
    # deepseek3: </think> ends the trace; tool calls between DeepSeek's special tokens
    ("deepseek3", True, "I think</think>Answer", "Answer", "I think", []),
    ("deepseek3", None, "Plain answer", "Plain answer", "", []),
    ("deepseek3", False, "Plain answer", "Plain answer", "", []),
    ("deepseek3", True, "Need weather.</think>\n\nChecking.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather"
     "<｜tool▁sep｜>{\"location\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>"
     "{\"location\": \"Rome\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>", "Checking.", "Need weather.",
     [call(0, "get_weather", location="Paris"), call(1, "get_weather", location="Rome")]),
    ("deepseek3", False, "A<｜tool▁output▁begin｜>72F<｜tool▁output▁end｜> B", "A72F B", "", []),
    # harmony: channels; the prompt holds the first <|start|>assistant
    ("harmony", "medium", "<|channel|>analysis<|message|>User says hi.<|end|><|start|>assistant<|channel|>final"
     "<|message|>Hello!", "Hello!", "User says hi.", []),
    ("harmony", False, "<|channel|>analysis<|message|>Can't stop thinking.<|end|><|start|>assistant"
     "<|channel|>final<|message|>Hi", "Hi", "Can't stop thinking.", []),
    ("harmony", True, "<|channel|>commentary<|message|>A preamble.<|end|>", "A preamble.", "", []),
    ("harmony", True, "<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>"
     "commentary to=functions.get_weather <|constrain|>json<|message|>{\"location\": \"Paris\"}", "",
     "Need weather.", [call(0, "get_weather", location="Paris")]),
]


@pytest.mark.parametrize(("name", "think", "output", "content", "thinking", "calls"), CASES)
def test_whole_output(name: str, think: Any, output: str, content: str, thinking: str,
                      calls: list[dict[str, Any]]) -> None:
    assert run(name, [output], tools=[WEATHER], think=think) == (content, thinking, calls)


@pytest.mark.parametrize(("name", "think", "output", "content", "thinking", "calls"), CASES)
def test_output_split_at_every_boundary(name: str, think: Any, output: str, content: str, thinking: str,
                                        calls: list[dict[str, Any]]) -> None:
    expected = (content, thinking, calls)
    for cut in range(1, len(output)):
        assert run(name, [output[:cut], output[cut:]], tools=[WEATHER], think=think) == expected, cut
    assert run(name, list(output), tools=[WEATHER], think=think) == expected


def test_a_split_think_tag_never_reaches_content_mid_stream() -> None:
    parser = parser_for("qwen3-thinking")
    assert parser is not None
    parser.init(None, None, True)
    seen: list[tuple[str, str]] = []
    for piece in ["<th", "ink>", "Let me ", "think.</", "thi", "nk>", "\n\nAnswer", "."]:
        content, thinking, _ = parser.add(piece, False)
        seen.append((content, thinking))
    assert "".join(c for c, _ in seen) == "Answer."
    assert "".join(t for _, t in seen) == "Let me think."
    assert all("<" not in c and "<" not in t for c, t in seen)


def test_prefilled_answer_continues_as_content() -> None:
    last = {"role": "assistant", "content": "The answer is"}
    assert run("deepseek3", [" 42."], last=last, think=True) == (" 42.", "", [])
    assert run("qwen3-vl-thinking", [" 42."], last=last, think=True) == (" 42.", "", [])
    assert run("harmony", [" 42."], last=last, think=True) == (" 42.", "", [])
    thinking_only = {"role": "assistant", "content": "", "thinking": "Hmm"}
    assert run("harmony", [", so 6.<|end|>"], last=thinking_only) == ("", ", so 6.", [])


def test_harmony_renames_tools_and_maps_calls_back() -> None:
    parser = parser_for("harmony")
    assert parser is not None
    tools = [{"type": "function", "function": {"name": "get-weather.now"}},
             {"type": "function", "function": {"name": "get weather now"}},
             {"type": "function", "function": {"name": "browser.search"}}]
    shown = parser.init(tools, None, "high")
    assert [t["function"]["name"] for t in shown or []] == ["get_weather_now", "get_weather_now_2",
                                                            "browser.search"]
    out = parser.add("<|channel|>commentary to=functions.get_weather_now_2 <|constrain|>json<|message|>"
                     '{"q": 1}', True)
    assert out == ("", "", [call(0, "get weather now", q=1)])


def test_harmony_bad_arguments_are_content_not_lost() -> None:
    out = run("harmony", ["<|channel|>commentary to=functions.f<|message|>{oops"])
    assert out == ("{oops", "", [])


@pytest.mark.parametrize(("header", "expected"), [
    ("assistant<|channel|>analysis", ("assistant", "analysis", "")),
    ("assistant<|channel|>commentary to=functions.get_weather <|constrain|>json",
     ("assistant", "commentary", "functions.get_weather")),
    ("assistant to=functions.f<|channel|>commentary<|constrain|>json", ("assistant", "commentary", "functions.f")),
    ("to=functions.f<|channel|>commentary", ("tool", "commentary", "functions.f")),
    ("", ("", "", "")),
])
def test_harmony_headers(header: str, expected: tuple[str, str, str]) -> None:
    assert parse_header(header) == expected


def test_harmony_function_names_are_identifiers() -> None:
    names = FunctionNames()
    assert [names.add(n) for n in ("2fast", "a/b?", "!!!", "$ok")] == ["_2fast", "ab", "unnamed", "$ok"]
    assert names.original("ab") == "a/b?" and names.original("unknown") == "unknown"


@pytest.mark.parametrize(("raw", "types", "value"), [
    ("null", ["string"], None),
    ("NULL", [], None),
    ("hello", [], "hello"),
    ("42", ["integer"], 42),
    ("-7", ["integer"], -7),
    ("4.5", ["integer"], "4.5"),
    ("4.0", ["number"], 4),
    ("4.5", ["number"], 4.5),
    ("1e3", ["number"], 1000),
    ("nan", ["number"], "nan"),
    ("True", ["boolean"], True),
    ("yes", ["boolean"], False),
    ("yes", ["boolean", "string"], "yes"),
    ("123", ["string", "number"], 123),
    ("[1, 2]", ["array"], [1, 2]),
    ('{"a": 1}', ["object"], {"a": 1}),
    ("[1", ["array"], "[1"),
    ("x", ["integer", "number"], "x"),
])
def test_qwen3_coder_values_take_the_schema_type(raw: str, types: list[str], value: Any) -> None:
    assert typed_value(raw, types) == value and type(typed_value(raw, types)) is type(value)


def test_qwen3_coder_any_of_types() -> None:
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {
        "n": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}}}}
    assert run("qwen3-coder", ["<tool_call><function=f><parameter=n>\n5\n</parameter></function></tool_call>"],
               tools=[tool]) == ("", "", [call(0, "f", n=5)])


def test_every_registered_parser_splits_plain_text_into_content_or_thinking() -> None:
    for name in PARSERS:
        content, thinking, calls = run(name, ["plain ", "words"], think=False)
        assert (content + thinking, calls) == ("plain words", []), name


def test_unknown_parser_is_none() -> None:
    assert parser_for("no-such-parser") is None and parser_for(None) is None
