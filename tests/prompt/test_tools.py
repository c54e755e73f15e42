from __future__ import annotations

import json
import random
from typing import Any

import pytest

from appliance.prompt.tools import MAX_HELD_CHARS, ToolCallParser, infer_tool_call_tag, tool_names


def tool(name: str) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}}},
    }


TOOLS = [tool(n) for n in ("get_temperature", "get_conditions", "say_hello", "say_hello_world", "add")]

QWEN_GO = (
    "{{- if .ToolCalls }}\n{{- range .ToolCalls }}\n<tool_call>\n"
    '{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}\n'
    "</tool_call>\n{{- end }}{{ end }}"
)
MISTRAL_GO = (
    '{{- if .ToolCalls }}[TOOL_CALLS] [{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", '
    '"arguments": {{ .Function.Arguments }}}{{- end }}]</s>{{- end }}'
)
LLAMA_GO = (
    '{{- if .ToolCalls }}{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", '
    '"parameters": {{ .Function.Arguments }}}{{ end }}{{ end }}'
)
QWEN_JINJA = (
    "{%- if tools %}For each function call, return a json object within <tool_call></tool_call> XML tags"
    "{%- endif %}{%- for message in messages %}{{ message.content }}{%- endfor %}"
)
MISTRAL_JINJA = "{%- if tools %}[AVAILABLE_TOOLS]{{ tools|tojson }}[/AVAILABLE_TOOLS]{% endif %}[TOOL_CALLS]"
LLAMA_JINJA = "{%- if builtin_tools is defined %}<|python_tag|>{{ x }}{% endif %}{{ '<|eot_id|>' }}"
CHATML_JINJA = "{% for message in messages %}<|im_start|>{{ message.role }}{% endfor %}"


@pytest.mark.parametrize(
    ("template", "tag"),
    [
        (None, None),
        ("", None),
        (QWEN_GO, "<tool_call>"),
        (MISTRAL_GO, "[TOOL_CALLS]"),
        (LLAMA_GO, None),
        ("{{if .ToolCalls}}{{end}}", None),
        ("{{if .ToolCalls}}{{range .ToolCalls}}{{ . }}{{end}}{{end}}", None),
        ("{{if .ToolCalls}}[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
        ("{{if .ToolCalls}}\n [ {{range .ToolCalls}}{{ . }}{{end}}]{{end}}", None),
        ("{{if .ToolCalls}}functools[{{range .ToolCalls}}{{ . }}{{end}}]{{end}}", "functools"),
        ("{{if .ToolCalls}}```json\n{{end}}", "```json"),
        ("{{if .ToolCalls}}First text{{if .Something}}inner{{end}}Second{{end}}", "First text"),
        (
            "{{if .Content}}{{.Content}}{{- else if .ToolCalls }}\nAction: ```json\n[{{end}}",
            "Action: ```json",
        ),
        ('{{if .ToolCalls}}\r\n{{range .ToolCalls}}\r\n{"name": 1}{{end}}{{end}}', None),
        (
            '{{if .ToolCalls}}{{range .ToolCalls}}<tool_call>{"name": 1}</tool_call>{{end}}{{end}}',
            "<tool_call>",
        ),
        ("{{ if .ToolCalls }}{{ $x := 1 }}<tool_call>{{ end }}", None),
        (QWEN_JINJA, "<tool_call>"),
        (MISTRAL_JINJA, "[TOOL_CALLS]"),
        (LLAMA_JINJA, "<|python_tag|>"),
        (CHATML_JINJA, None),
    ],
)
def test_infer_tool_call_tag(template: str | None, tag: str | None) -> None:
    assert infer_tool_call_tag(template) == tag


def test_tool_names_ignores_malformed_entries() -> None:
    tools: list[Any] = [
        tool("a"),
        {"name": "b"},
        {"function": {"name": ""}},
        {"function": "c"},
        "d",
        None,
        {"function": {}},
    ]
    assert tool_names(tools) == {"a", "b"}
    assert tool_names(None) == frozenset()


def run(parser: ToolCallParser, chunks: list[str]) -> tuple[str, list[dict[str, Any]]]:
    content, calls = "", []
    for chunk in chunks:
        c, found = parser.feed(chunk)
        content += c
        calls += found
    c, found = parser.flush()
    return content + c, calls + found


def calls_of(*pairs: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"function": {"index": i, "name": n, "arguments": a}} for i, (n, a) in enumerate(pairs)]


TEMP_NY = ("get_temperature", {"city": "New York"})
COND_TOKYO = ("get_conditions", {"location": "Tokyo"})

# (id, tag, model output, expected content, expected calls).  tag "" means bare JSON only.
CASES: list[tuple[str, str, str, str, list[tuple[str, dict[str, Any]]]]] = [
    ("plain text", "<tool_call>", "Hello, how can I help?", "Hello, how can I help?", []),
    ("empty", "<tool_call>", "", "", []),
    (
        "one call",
        "<tool_call>",
        '<tool_call>{"name": "get_conditions", "arguments": {"location": "Tokyo"}}</tool_call>',
        "",
        [COND_TOKYO],
    ),
    (
        "qwen layout with newlines",
        "<tool_call>",
        '<tool_call>\n{"name": "get_temperature", "arguments": {"city": "New York"}}\n</tool_call>\n',
        "",
        [TEMP_NY],
    ),
    (
        "text before a call",
        "<tool_call>",
        'Let me check. <tool_call>{"name": "get_temperature", "arguments": {"city": "New York"}}</tool_call>',
        "Let me check. ",
        [TEMP_NY],
    ),
    (
        "two calls and text after",
        "<tool_call>",
        'Both! <tool_call>{"name": "get_temperature", "arguments": {"city": "New York"}}</tool_call>\n'
        '<tool_call>{"name": "get_conditions", "arguments": {"location": "Tokyo"}}</tool_call>\nDone.',
        "Both! Done.",
        [TEMP_NY, COND_TOKYO],
    ),
    (
        "empty arguments, missing arguments",
        "<tool_call>",
        '<tool_call>{"name": "say_hello", "arguments": {}}</tool_call>'
        '<tool_call>{"name": "say_hello_world"}</tool_call>',
        "",
        [("say_hello", {}), ("say_hello_world", {})],
    ),
    (
        "arguments before name, spelled parameters",
        "<tool_call>",
        '<tool_call>{"parameters": {"a": "5", "b": "10"}, "name": "add"}</tool_call>',
        "",
        [("add", {"a": "5", "b": "10"})],
    ),
    (
        "arguments as a JSON string",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": [2, {\\"c\\": \\"}\\"}]}"}'
        "</tool_call>",
        "",
        [("add", {"a": 1, "b": [2, {"c": "}"}]})],
    ),
    (
        "braces, brackets, quotes and escapes inside strings",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": {"code": "for { x[\\"}\\"] } \\\\", '
        '"n": {"deep": [1, [2, {"x": "]"}]]}}}'
        "</tool_call>",
        "",
        [("add", {"code": 'for { x["}"] } \\', "n": {"deep": [1, [2, {"x": "]"}]]}})],
    ),
    (
        "unicode",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": {"s": "é🙂\\u00e9"}}</tool_call>',
        "",
        [("add", {"s": "é🙂é"})],
    ),
    (
        "unknown name stays content",
        "<tool_call>",
        '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call> after',
        '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call> after',
        [],
    ),
    (
        "good call then unknown one",
        "<tool_call>",
        '<tool_call>{"name": "say_hello"}</tool_call>\n<tool_call>{"name": "nope"}</tool_call>',
        '<tool_call>{"name": "nope"}</tool_call>',
        [("say_hello", {})],
    ),
    (
        "malformed JSON stays content",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>',
        '<tool_call>{"name": "add", "arguments": {"a": 1,}}</tool_call>',
        [],
    ),
    (
        "unclosed call at the end",
        "<tool_call>",
        '<tool_call>{"name": "add", "arg',
        '<tool_call>{"name": "add", "arg',
        [],
    ),
    (
        "tag then prose",
        "<tool_call>",
        "<tool_call> is how I call tools",
        "<tool_call> is how I call tools",
        [],
    ),
    ("lonely tag", "<tool_call>", "<tool_call>", "<tool_call>", []),
    ("partial tag at the end", "<tool_call>", "see <tool_ca", "see <tool_ca", []),
    (
        "arguments not an object",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": [1]}',
        '<tool_call>{"name": "add", "arguments": [1]}',
        [],
    ),
    (
        "bad arguments string",
        "<tool_call>",
        '<tool_call>{"name": "add", "arguments": "{x"}',
        '<tool_call>{"name": "add", "arguments": "{x"}',
        [],
    ),
    (
        "single-quoted pseudo JSON",
        "<tool_call>",
        "<tool_call>{'name': 'add'}",
        "<tool_call>{'name': 'add'}",
        [],
    ),
    (
        "bare JSON also accepted with a tag",
        "<tool_call>",
        '  {"name": "add", "arguments": {"a": 1}}',
        "",
        [("add", {"a": 1})],
    ),
    ("bare JSON that is not a call", "<tool_call>", '{"answer": 42} ok', '{"answer": 42} ok', []),
    (
        "OpenAI-style wrapper",
        "<tool_call>",
        '<tool_call>{"type": "function", "function": {"name": "add", "arguments": "{\\"a\\": 2}"}}'
        "</tool_call>",
        "",
        [("add", {"a": 2})],
    ),
    ("name as the key", "<tool_call>", '<tool_call>{"add": {"a": 3}}</tool_call>', "", [("add", {"a": 3})]),
    (
        "mistral list",
        "[TOOL_CALLS]",
        '[TOOL_CALLS] [{"name": "get_temperature", "arguments": {"city": "New York"}}, '
        '{"name": "get_conditions", "arguments": {"location": "Tokyo"}}]',
        "",
        [TEMP_NY, COND_TOKYO],
    ),
    (
        "mistral list with one unknown name",
        "[TOOL_CALLS]",
        '[TOOL_CALLS] [{"name": "add"}, {"name": "nope"}]',
        '[TOOL_CALLS] [{"name": "add"}, {"name": "nope"}]',
        [],
    ),
    (
        "mistral name[ARGS] form",
        "[TOOL_CALLS]",
        '[TOOL_CALLS]add[ARGS]{"a": 1}[TOOL_CALLS]get_conditions[ARGS]{"location": "Tokyo"}',
        "",
        [("add", {"a": 1}), COND_TOKYO],
    ),
    (
        "mistral name[ARGS] unknown",
        "[TOOL_CALLS]",
        '[TOOL_CALLS]nope[ARGS]{"a": 1}',
        '[TOOL_CALLS]nope[ARGS]{"a": 1}',
        [],
    ),
    ("mistral text then list", "[TOOL_CALLS]", 'Ok [TOOL_CALLS][{"name": "add"}]', "Ok ", [("add", {})]),
    ("mistral bare list", "[TOOL_CALLS]", '[{"name": "add"}]', "", [("add", {})]),
    ("mistral closing tag", "[TOOL_CALLS]", '[TOOL_CALLS][{"name": "add"}][/TOOL_CALLS]', "", [("add", {})]),
    ("brackets are content", "[TOOL_CALLS]", "[1, 2] and [TOOL_CALLS", "[1, 2] and [TOOL_CALLS", []),
    (
        "llama python tag",
        "<|python_tag|>",
        '<|python_tag|>{"name": "get_conditions", "parameters": {"location": "Tokyo"}}',
        "",
        [COND_TOKYO],
    ),
    ("llama bare", "", '{"name": "get_conditions", "parameters": {"location": "Tokyo"}}', "", [COND_TOKYO]),
    (
        "bare, two objects",
        "",
        '{"name": "add", "parameters": {}}; {"name": "say_hello", "parameters": {}}',
        "",
        [("add", {}), ("say_hello", {})],
    ),
    ("bare list", "", '\n[{"name": "add"}, {"name": "say_hello"}]', "", [("add", {}), ("say_hello", {})]),
    ("bare, text first", "", 'Sure: {"name": "add"}', 'Sure: {"name": "add"}', []),
    ("bare, not a call", "", '{"name": "jeff"}{"name": "add"}', '{"name": "jeff"}{"name": "add"}', []),
    ("bare, code", "", 'for { fmt.Println("hello") }', 'for { fmt.Println("hello") }', []),
    ("bare, call then prose", "", '{"name": "add"}\nThe sum follows.', "The sum follows.", [("add", {})]),
    ("bare, unbalanced", "", '{"name": "add"]', '{"name": "add"]', []),
    ("bare, trailing bracket", "", '[{"name": "add"}]]', "]", [("add", {})]),
    ("bare, whitespace only", "", "  \n", "  \n", []),
    (
        "command-r style tool_name",
        "Action: ```json",
        'Action: ```json\n[{"tool_name": "add", "parameters": {"a": 1}}]```',
        "```",
        [("add", {"a": 1})],
    ),
]


@pytest.mark.parametrize(
    ("tag", "output", "content", "calls"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_parse_whole_and_at_every_split(
    tag: str, output: str, content: str, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    expected = (content, calls_of(*calls))
    assert run(ToolCallParser(TOOLS, tag=tag), [output]) == expected
    for i in range(len(output) + 1):
        assert run(ToolCallParser(TOOLS, tag=tag), [output[:i], output[i:]]) == expected, i
    assert run(ToolCallParser(TOOLS, tag=tag), list(output)) == expected


def test_template_decides_the_tag() -> None:
    output = 'Hi <tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
    assert run(ToolCallParser(TOOLS, QWEN_GO), [output]) == ("Hi ", calls_of(("add", {"a": 1})))
    assert ToolCallParser(TOOLS, QWEN_JINJA).tag == "<tool_call>"
    assert ToolCallParser(TOOLS, MISTRAL_GO).tag == "[TOOL_CALLS]"
    assert ToolCallParser(TOOLS, LLAMA_GO).tag is None
    assert ToolCallParser(TOOLS, QWEN_GO, tag="").tag is None
    # Without the tag, a tagged call in mid-text is just text.
    assert run(ToolCallParser(TOOLS, LLAMA_GO), [output]) == (output, [])


def test_content_streams_while_no_call_is_possible() -> None:
    parser = ToolCallParser(TOOLS, tag="<tool_call>")
    assert parser.feed("Hello") == ("Hello", [])
    assert parser.feed(" wor") == (" wor", [])
    assert parser.feed("ld <tool") == ("ld ", [])
    assert parser.feed("s are neat") == ("<tools are neat", [])
    assert parser.feed(' <tool_call>{"name": "add", "arguments": {"a"') == (" ", [])
    assert parser.feed(": 1}}") == ("", calls_of(("add", {"a": 1})))
    assert parser.feed("</tool_call>") == ("", [])
    assert parser.feed(" done") == ("done", [])
    assert parser.flush() == ("", [])


def test_bare_mode_gives_up_at_once_on_prose() -> None:
    parser = ToolCallParser(TOOLS)
    assert parser.feed("  ") == ("", [])
    assert parser.feed("The") == ("  The", [])
    assert parser.feed(' {"name": "add"}') == (' {"name": "add"}', [])


def test_calls_are_numbered_across_feeds() -> None:
    parser = ToolCallParser(TOOLS, tag="<tool_call>")
    _, first = parser.feed('<tool_call>{"name": "add"}</tool_call>')
    _, second = parser.feed('<tool_call>{"name": "say_hello"}</tool_call>')
    assert [c["function"]["index"] for c in first + second] == [0, 1]


def test_no_tools_means_no_calls() -> None:
    output = '<tool_call>{"name": "add", "arguments": {}}</tool_call>'
    assert run(ToolCallParser([], tag="<tool_call>"), [output]) == (output, [])
    assert run(ToolCallParser(None), ['{"name": "add"}']) == ('{"name": "add"}', [])


def test_runaway_call_is_released_as_content_within_the_bound() -> None:
    parser = ToolCallParser(TOOLS, tag="<tool_call>")
    released = ""
    chunk = '"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", '
    first, _ = parser.feed('<tool_call>{"name": "add", "arguments": [')
    sent = 0
    while not released:
        released, calls = parser.feed(chunk)
        sent += len(chunk)
        assert not calls
        assert sent <= MAX_HELD_CHARS + len(chunk)
    assert first == ""
    assert released.startswith("<tool_call>{")
    more, _ = parser.feed(chunk)
    assert more == chunk  # after giving up, content passes straight through


def test_endless_whitespace_after_a_call_is_not_held_forever() -> None:
    parser = ToolCallParser(TOOLS, tag="<tool_call>")
    _, calls = parser.feed('<tool_call>{"name": "add"}</tool_call>')
    assert len(calls) == 1
    held = 0
    while parser.feed(" " * 1024) == ("", []):
        held += 1024
    assert held <= MAX_HELD_CHARS
    # Past the bound the parser stopped waiting: whitespace now passes straight through.
    assert parser.feed("  after") == ("  after", [])


@pytest.mark.parametrize("tag", ["", "{", "["])
def test_ollama_bare_tags_mean_bare_json(tag: str) -> None:
    parser = ToolCallParser(TOOLS, tag=tag)
    assert parser.tag is None
    assert run(parser, ['{"name": "add"}']) == ("", calls_of(("add", {})))


def test_deeply_nested_json_is_content_not_a_crash() -> None:
    output = "[" * 5000 + "]" * 5000
    assert run(ToolCallParser(TOOLS), [output]) == (output, [])


def test_argument_order_is_kept() -> None:
    args = {"z": 1, "a": 2, "m": {"y": 1, "b": 2}}
    content, calls = run(ToolCallParser(TOOLS), [json.dumps({"name": "add", "arguments": args})])
    assert content == ""
    assert list(calls[0]["function"]["arguments"]) == ["z", "a", "m"]
    assert calls[0]["function"]["arguments"] == args


def test_a_long_call_fed_a_few_characters_at_a_time() -> None:
    payload = json.dumps({"name": "add", "arguments": {"text": 'a{b}[c]\\"' * 5000}})
    assert 50_000 < len(payload) < MAX_HELD_CHARS
    parser = ToolCallParser(TOOLS)
    calls = []
    for i in range(0, len(payload), 3):
        content, found = parser.feed(payload[i : i + 3])
        assert content == ""
        calls += found
    assert len(calls) == 1
    assert calls[0]["function"]["arguments"]["text"] == 'a{b}[c]\\"' * 5000


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "[TOOL_CALLS]",
    "[/TOOL_CALLS]",
    "add[ARGS]",
    "[ARGS]",
    '{"name": "add", "arguments": {"a": "}"}}',
    '{"name": "nope"}',
    '[{"name": "say_hello"}]',
    '{"name": "add", "arguments": "{\\"x\\": 1}"}',
    '{"a": "\\\\"}',
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    " ",
    "\n",
    ",",
    "hello",
    "é🙂",
]


@pytest.mark.parametrize("tag", ["<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", ""])
def test_random_outputs_give_the_same_result_however_split(tag: str) -> None:
    rng = random.Random(f"tools-{tag}")
    for _ in range(300):
        output = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        expected = run(ToolCallParser(TOOLS, tag=tag), [output])
        content, calls = expected
        assert [c["function"]["index"] for c in calls] == list(range(len(calls)))
        cuts = sorted(rng.sample(range(len(output) + 1), min(4, len(output) + 1)))
        chunks = [output[a:b] for a, b in zip([0, *cuts], [*cuts, len(output)], strict=True)]
        assert run(ToolCallParser(TOOLS, tag=tag), chunks) == expected, (output, chunks)
        assert run(ToolCallParser(TOOLS, tag=tag), list(output)) == expected, output
        if not calls:
            assert content == output  # nothing is ever lost
