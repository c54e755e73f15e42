"""Turning a chat (or a generate request) into the prompt text a model expects.

Three ways, in Ollama's order of preference: the model's TEMPLATE layer (Go text/template, with
``.Messages`` or the legacy ``.System/.Prompt/.Response`` form), else the GGUF's own Jinja
``tokenizer.chat_template``, else the bare message contents.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from appliance.errors import BadRequest
from appliance.prompt.builtin.base import think_level, think_on
from appliance.prompt.gotemplate import Template
from appliance.prompt.gotemplate_funcs import GoStruct, JSONList, JSONMap

_RESPONSE_MARK = "\x00\x01RESPONSE\x01\x00"


#: The largest TEMPLATE accepted (Ollama's library templates are a few KiB; the largest ~20 KiB).
#: Parsing is pure Python and scales with the text, so callers run it in a worker thread.
MAX_TEMPLATE_CHARS = 128 << 10


def parse_template(text: str) -> Template:
    """The parsed Go template (cached); TemplateError (400) for a bad one, BadRequest for a huge one."""
    if len(text) > MAX_TEMPLATE_CHARS:
        raise BadRequest(f"template is larger than {MAX_TEMPLATE_CHARS} characters")
    return _parsed(text)


@functools.lru_cache(maxsize=64)
def _parsed(text: str) -> Template:
    return Template.parse(text)


def uses_messages(template: str) -> bool:
    return ".Messages" in template


def _jsonish(value: Any) -> Any:
    """Dicts/lists that print as JSON, like the Go maps with String() methods Ollama passes.

    Go maps marshal with sorted keys, so these do too.
    """
    if isinstance(value, dict):
        return JSONMap({k: _jsonish(value[k]) for k in sorted(value)})
    if isinstance(value, list):
        return JSONList([_jsonish(v) for v in value])
    return value


def _template_message(msg: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Role": msg.get("role", ""),
        "Content": msg.get("content") or "",
        "Thinking": msg.get("thinking") or "",
        "Images": msg.get("images") or [],
        "ToolName": msg.get("tool_name") or msg.get("name") or "",
        "ToolCallID": msg.get("tool_call_id") or "",
    }
    calls = []
    for i, call in enumerate(msg.get("tool_calls") or []):
        fn = call.get("function") or {}
        calls.append(
            {
                "ID": call.get("id", ""),
                "Function": {
                    "Index": fn.get("index", i),
                    "Name": fn.get("name", ""),
                    "Arguments": _jsonish(fn.get("arguments") or {}),
                },
            }
        )
    out["ToolCalls"] = calls
    return out


def _tool_value(tool: dict[str, Any]) -> Any:
    fn = tool.get("function") or {}
    params = _jsonish(fn.get("parameters") or {})
    fn_json = {"name": fn.get("name", ""), "description": fn.get("description", ""), "parameters": params}
    function = GoStruct(
        {"Name": fn.get("name", ""), "Description": fn.get("description", ""), "Parameters": params}, fn_json
    )
    return GoStruct(
        {"Type": tool.get("type", "function"), "Function": function},
        {"type": tool.get("type", "function"), "function": fn_json},
    )


def collate(messages: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """All system texts joined, and consecutive same-role messages merged (tool messages excepted)."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for msg in messages:
        role = msg.get("role")
        if role == "system":
            system.append(msg.get("content") or "")
        if out and out[-1].get("role") == role and role != "tool":
            out[-1] = {
                **out[-1],
                "content": (out[-1].get("content") or "") + "\n\n" + (msg.get("content") or ""),
            }
        else:
            out.append(dict(msg))
    return "\n\n".join(system), out


def render_go(
    template: str,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    think: bool | str | None,
) -> str:
    tmpl = parse_template(template)
    system, collated = collate(messages)
    think_flags = {
        "Think": think_on(think),
        "ThinkLevel": think_level(think),  # as upstream: true is "medium"
        "IsThinkSet": think is not None,
    }
    if uses_messages(template):
        return tmpl.render(
            {
                "System": system,
                "Messages": [_template_message(m) for m in collated],
                "Tools": JSONList([_tool_value(t) for t in tools or []]),
                "Response": "",
                **think_flags,
            }
        )
    # Legacy template: render each finished turn whole, the last one up to its .Response.
    out: list[str] = []
    sys_text = prompt = response = ""

    def execute(final: bool) -> None:
        nonlocal sys_text, prompt, response
        text = tmpl.render(
            {
                "System": sys_text,
                "Prompt": prompt,
                "Response": _RESPONSE_MARK if final else response,
                **think_flags,
            }
        )
        out.append(text.split(_RESPONSE_MARK, 1)[0] if final else text)
        sys_text = prompt = response = ""

    for msg in collated:
        role, content = msg.get("role"), msg.get("content") or ""
        if role == "system":
            if prompt or response:
                execute(False)
            sys_text = content
        elif role == "user":
            if response:
                execute(False)
            prompt = content
        elif role == "assistant":
            response = content
    execute(True)
    return "".join(out)


def render_generate_go(template: str, prompt: str, suffix: str, system: str, think: bool | str | None) -> str:
    """/api/generate with a template: ``.System``/``.Prompt``/``.Suffix`` (fill-in-the-middle)."""
    tmpl = parse_template(template)
    think_flags = {
        "Think": think_on(think),
        "ThinkLevel": think_level(think),  # as upstream: true is "medium"
        "IsThinkSet": think is not None,
    }
    if suffix:
        return tmpl.render({"Prompt": prompt, "Suffix": suffix, "Response": "", **think_flags})
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": prompt}
    ]
    return render_go(template, messages, None, think)


def render_jinja(
    chat_template: str,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]] | None,
    bos: str,
    eos: str,
    think: bool | str | None,
) -> str:
    from appliance.prompt.jinja import render_chat_template

    extra: dict[str, Any] = {}
    if think is not None:
        extra["enable_thinking"] = think_on(think)
    return render_chat_template(
        chat_template,
        list(messages),
        tools=list(tools) if tools else None,
        add_generation_prompt=True,
        bos_token=bos,
        eos_token=eos,
        extra=extra,
    )


def render_plain(messages: Sequence[dict[str, Any]]) -> str:
    return "\n\n".join(m.get("content") or "" for m in messages)
