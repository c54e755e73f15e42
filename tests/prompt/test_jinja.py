from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import gguf
import pytest

from appliance.errors import BadRequest
from appliance.prompt.jinja import (
    MAX_RENDERED_CHARS,
    MAX_TEMPLATE_CHARS,
    ChatTemplateError,
    render_chat_template,
    validate_chat_template,
)


def smollm2_template(path: Path) -> str:
    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    return bytes(field.parts[field.data[0]]).decode()


# Hand-written in the style of the templates these model families ship.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

LLAMA31_TOOLS = """{{- bos_token }}
{%- if not date_string is defined %}
    {%- set date_string = strftime_now("%d %b %Y") %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Today Date: " + date_string + "\\n" }}
{%- if tools is not none %}
    {{- "Respond with a JSON function call as {\\"name\\": name, \\"parameters\\": dict}.\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {%- if message.role == "assistant" and message.tool_calls is defined %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
        {{- '{"name": "' + tool_call.name + '", "parameters": ' + tool_call.arguments | tojson + '}' }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" + message.content + "<|eot_id|>" }}
    {%- else %}
        {{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' }}
        {{- message.content | trim + '<|eot_id|>' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

MISTRAL = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

QWEN_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nReturn calls within <tool_call></tool_call> XML tags.<|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first)
           or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city — °C",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def test_smollm2_template_from_its_gguf(smollm2_gguf: Path) -> None:
    template = smollm2_template(smollm2_gguf)
    messages = [{"role": "user", "content": "hi"}]
    assert render_chat_template(template, messages) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "why is the sky blue?"},
    ]
    assert render_chat_template(template, messages, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nwhy is the sky blue?<|im_end|>\n"
    )


def test_llama3_template() -> None:
    messages = [{"role": "system", "content": " Be kind. "}, {"role": "user", "content": "Hi"}]
    assert render_chat_template(LLAMA3, messages, bos_token="<|begin_of_text|>") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe kind.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_llama31_template_with_tools_and_dates() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18°C"},
    ]
    rendered = render_chat_template(
        LLAMA31_TOOLS,
        messages,
        tools=[WEATHER_TOOL],
        bos_token="<|begin_of_text|>",
        extra={"date_string": "26 Jul 2024"},
    )
    assert rendered.startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul 2024\n"
    )
    assert '    "type": "function",\n' in rendered  # tojson(indent=4)
    assert "Weather for a city — °C" in rendered  # no \u escapes
    assert '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>' in rendered
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n18°C<|eot_id|>" in rendered
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    # Without date_string the template asks strftime_now for today.
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}" in render_chat_template(LLAMA31_TOOLS, messages[:1])
    assert "Respond with a JSON" not in render_chat_template(LLAMA31_TOOLS, messages[:1], tools=[])


def test_mistral_template_and_its_raise_exception() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ]
    assert render_chat_template(MISTRAL, messages, bos_token="<s>", eos_token="</s>") == (
        "<s>[INST] Hi [/INST]Hello</s>[INST] Bye [/INST]"
    )
    with pytest.raises(ChatTemplateError, match="Conversation roles must alternate"):
        render_chat_template(MISTRAL, [{"role": "assistant", "content": "x"}])


def test_qwen_style_template_with_tools() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "18°C"},
        {"role": "tool", "content": "sunny"},
    ]
    rendered = render_chat_template(QWEN_TOOLS, messages, tools=[WEATHER_TOOL])
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.\n\n# Tools\n\n<tools>\n"
        '{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city — °C", '
        '"parameters": {"type": "object", "properties": {"city": {"type": "string"}}, '
        '"required": ["city"]}}}\n'
        "</tools>\n\nReturn calls within <tool_call></tool_call> XML tags.<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n18°C\n</tool_response>\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    without_tools = render_chat_template(
        QWEN_TOOLS, [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert (
        without_tools
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.parametrize(
    ("template", "variables", "expected"),
    [
        ("{{ x|tojson }}", {"x": {"é": [1, "<&>"]}}, '{"é": [1, "<&>"]}'),
        ("{{ x|tojson(ensure_ascii=True) }}", {"x": "é"}, '"\\u00e9"'),
        ("{{ x|tojson(separators=(',', ':')) }}", {"x": {"a": [1, 2]}}, '{"a":[1,2]}'),
        ("{{ x|tojson(sort_keys=true) }}", {"x": {"b": 1, "a": 2}}, '{"a": 2, "b": 1}'),
        ("{{ x|tojson(indent=2) }}", {"x": {"a": 1}}, '{\n  "a": 1\n}'),
        (
            "{% for i in range(5) %}{% if i == 1 %}{% continue %}{% endif %}"
            "{% if i == 3 %}{% break %}{% endif %}{{ i }}{% endfor %}",
            {},
            "02",
        ),
        ("{% generation %}{{ 'kept' }}{% endgeneration %}", {}, "kept"),
        ("  {% if true %}\nyes\n  {% endif %}\n", {}, "yes\n"),  # trim_blocks + lstrip_blocks
        (
            "{% set ns = namespace(n=0) %}{% for i in [1, 2, 3] %}{% set ns.n = ns.n + i %}{% endfor %}"
            "{{ ns.n }}",
            {},
            "6",
        ),
        ("{{ (x[::-1]|first).role }}", {"x": [{"role": "a"}, {"role": "b"}]}, "b"),
        ("{% for k, v in x.items() %}{{ k }}={{ v }};{% endfor %}", {"x": {"a": 1, "b": 2}}, "a=1;b=2;"),
        ("{{ x.split('</think>')[-1].lstrip('\\n') }}", {"x": "<think>a</think>\nanswer"}, "answer"),
        ("{{ missing }}|{{ missing is defined }}", {}, "|False"),
        ("{{ x.get('a', 'none') }}", {"x": {}}, "none"),
        (
            "{{ '%s-%d'|format('a', 3) }} {{ '{}!'.format('hi') }} {{ 'x' * 3 }} {{ 2 ** 10 }}",
            {},
            "a-3 hi! xxx 1024",
        ),
        ("{{ 'ab'.center(6, '*') }}|{{ 'a\nb'|indent(2, first=true) }}", {}, "**ab**|  a\n  b"),
        ("{{ tools is none }} {{ add_generation_prompt }} [{{ bos_token }}]", {}, "True True []"),
    ],
)
def test_hugging_face_environment(template: str, variables: dict[str, Any], expected: str) -> None:
    assert render_chat_template(template, [], extra=variables) == expected


def test_named_arguments_win_over_extra() -> None:
    template = "{{ messages|length }} {{ add_generation_prompt }} {{ enable_thinking }}"
    extra = {"messages": [1, 2, 3], "add_generation_prompt": "no", "enable_thinking": False}
    assert render_chat_template(template, [], add_generation_prompt=True, extra=extra) == "0 True False"


HOSTILE = {
    "syntax error": ("{% if %}", "syntax error on line 1"),
    "unclosed block": ("{% for m in messages %}", "syntax error"),
    "undefined attribute of undefined": ("{{ foo.bar }}", "'foo' is undefined"),
    "raise_exception": ("{{ raise_exception('bad roles') }}", "bad roles"),
    "type error": ("{{ messages + 1 }}", "TypeError"),
    "division by zero": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "class mro": ("{{ ''.__class__.__mro__ }}", "unsafe"),
    "class alone": ("{{ ''.__class__ }}", "unsafe"),
    "attr filter": ("{{ ''|attr('__class__') }}", "unsafe"),
    "globals via cycler": ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    "globals via raise_exception": ("{{ raise_exception.__globals__ }}", "unsafe"),
    "subscript dunder": ("{{ ''['__class__'] }}", "unsafe"),
    "format dunder": ("{{ '{0.__class__}'.format('') }}", "unsafe"),
    "list mutation": ("{% set x = [1] %}{{ x.append(2) }}", "unsafe"),
    "dict mutation": ("{% set x = {} %}{{ x.update({'a': 1}) }}", "unsafe"),
    "include": ("{% include 'x.j2' %}", "no loader"),
    "lipsum removed": ("{{ lipsum(100000) }}", "'lipsum' is undefined"),
    "reserved name": ("{{ __appliance_loop__ }}", "reserved"),
    "nested loops": (
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "too much work",
    ),
    "exponential macro": (
        "{% macro f() %}{{ f() }}{{ f() }}{% endmacro %}{{ f() }}",
        "recursed|too much work",
    ),
    "doubling concat": (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "too large|grew past",
    ),
    "doubling plus": (
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "too large|grew past",
    ),
    "repetition": ("{{ 'a' * 100000000 }}", "too large"),
    "list repetition": ("{{ [1] * 100000000 }}", "too large"),
    "huge power": ("{{ 2 ** 10000000 }}", "too large"),
    "printf width": ("{{ '%0999999999d' % 1 }}", "too large"),
    "printf star": ("{{ '%*d' % (999999999, 1) }}", "too large"),
    "format filter width": ("{{ '%*d'|format(999999999, 1) }}", "too large"),
    "format width": ("{{ '{:>999999999}'.format(1) }}", "too large"),
    "center": ("{{ 'x'.center(1000000000) }}", "too large"),
    "center filter": ("{{ 'x'|center(1000000000) }}", "too large"),
    "replace": ("{{ ('a' * 4000000).replace('a', 'bb') }}", "too large"),
    "replace filter": ("{{ ('a' * 4000000)|replace('a', 'bbbb') }}", "too large"),
    "indent": ("{{ ('a\n' * 1000000)|indent(100, first=true) }}", "too large"),
    "batch fill": ("{{ range(3)|batch(100000000, 'x')|list }}", "too large"),
    "tojson indent": ("{{ messages|tojson(indent=100000) }}", "too large"),
    "set block bomb": (
        "{% set x %}{% for i in range(100000) %}{{ 'y' * 4000000 }}{% endfor %}{% endset %}",
        "writes more than",
    ),
    "rendered too long": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "renders more than"),
}


@pytest.mark.parametrize(("template", "message"), HOSTILE.values(), ids=HOSTILE.keys())
def test_failures_are_chat_template_errors(template: str, message: str) -> None:
    with pytest.raises(ChatTemplateError, match=message) as info:
        render_chat_template(template, [{"role": "user", "content": "x"}])
    assert isinstance(info.value, BadRequest)
    assert info.value.status == 400
    assert str(info.value).startswith("chat template")


def test_long_message_content_hits_the_rendered_limit() -> None:
    with pytest.raises(ChatTemplateError, match="renders more than"):
        render_chat_template(
            "{{ messages[0].content }}", [{"role": "user", "content": "x" * (MAX_RENDERED_CHARS + 1)}]
        )


def test_template_length_is_capped() -> None:
    with pytest.raises(ChatTemplateError, match="longer than"):
        validate_chat_template("x" * (MAX_TEMPLATE_CHARS + 1))


def test_validate_chat_template() -> None:
    validate_chat_template(QWEN_TOOLS)
    with pytest.raises(ChatTemplateError, match="syntax error"):
        validate_chat_template("{% endfor %}")


def test_budget_is_per_render() -> None:
    template = "{% for i in range(100000) %}{% endfor %}" * 4  # 400k steps: under the limit once
    for _ in range(2):
        assert render_chat_template(template, []) == ""
