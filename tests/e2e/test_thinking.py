# ruff: noqa: RUF001  (DeepSeek's special tokens are written with fullwidth bars)
"""Thinking and built-in RENDERER/PARSER end to end: a real server, the bundled SmolLM2 wearing them.

SmolLM2 knows none of these formats, so the tests make its greedy output land where the format puts
it: a ``qwen3-vl-thinking`` prompt ends inside ``<think>``, so whatever the model writes is the trace.
"""

from __future__ import annotations

import httpx
import ollama
import pytest

from tests.conftest import import_gemma3

BASE = "smollm2:135m"
OPTS = {"temperature": 0, "seed": 1, "num_predict": 8}
DEEPSEEK_BOS = "<｜begin▁of▁sentence｜>"


def create(server, name: str, **fields: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return server.http().post("/api/create", json={"model": name, "from": BASE, "stream": False, **fields})


@pytest.fixture(scope="module")
def thinker(server) -> str:  # type: ignore[no-untyped-def]
    r = create(server, "smol-thinker", renderer="qwen3-vl-thinking", parser="qwen3-thinking",
               system="You are terse.")
    assert r.status_code == 200, r.text
    return "smol-thinker"


@pytest.fixture(scope="module")
def coder(server) -> str:  # type: ignore[no-untyped-def]
    r = create(server, "smol-coder", renderer="qwen3-coder", parser="qwen3-coder")
    assert r.status_code == 200, r.text
    return "smol-coder"


def test_unknown_renderer_or_parser_is_refused_at_create(server) -> None:  # type: ignore[no-untyped-def]
    r = create(server, "smol-bad", parser="no-such-parser")
    assert r.status_code == 400 and r.json()["error"].startswith("unknown parser 'no-such-parser'")
    r = create(server, "smol-bad", renderer="qwen3")  # upstream has a qwen3 parser, but no such renderer
    assert r.status_code == 400 and r.json()["error"].startswith("unknown renderer 'qwen3'")


def test_parser_brings_its_capabilities(server, thinker, coder) -> None:  # type: ignore[no-untyped-def]
    client = ollama.Client(host=server.url)
    shown = client.show(thinker)
    assert {"completion", "thinking", "tools"} <= set(shown.capabilities or [])
    assert (shown.modelinfo or {}) and "thinking" not in (client.show(coder).capabilities or [])


def test_renderer_builds_the_prompt(server, thinker, coder) -> None:  # type: ignore[no-untyped-def]
    http = server.http()
    chat = {"messages": [{"role": "user", "content": "hi"}], "_debug_render_only": True}
    r = http.post("/api/chat", json={"model": coder, **chat})
    assert r.status_code == 200, r.text
    assert r.json()["_debug_info"]["rendered_template"] == (  # the SYSTEM it inherits from the bundled model
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    r = http.post("/api/chat", json={"model": coder, "tools": tools, **chat})
    assert "<tools>\n<function>\n<name>get_weather</name>" in r.json()["_debug_info"]["rendered_template"]
    # The model's SYSTEM and think (on by default for a thinking model) reach the renderer; generate too.
    r = http.post("/api/generate", json={"model": thinker, "prompt": "hi", "_debug_render_only": True})
    assert r.json()["_debug_info"]["rendered_template"] == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n")
    r = http.post("/api/chat", json={"model": thinker, "think": False, **chat})
    assert r.json()["_debug_info"]["rendered_template"].endswith("<|im_start|>assistant\n")


def test_thinking_model_thinks_by_default_and_not_when_told(server, thinker) -> None:  # type: ignore[no-untyped-def]
    client = ollama.Client(host=server.url)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    default = client.chat(model=thinker, messages=messages, options=OPTS)
    assert default.message.thinking and not default.message.content  # the prompt ended inside <think>
    assert "<think>" not in default.message.thinking and default.eval_count == OPTS["num_predict"]
    streamed = list(client.chat(model=thinker, messages=messages, options=OPTS, stream=True))
    assert "".join(c.message.thinking or "" for c in streamed) == default.message.thinking
    assert "".join(c.message.content or "" for c in streamed) == ""
    off = client.chat(model=thinker, messages=messages, options=OPTS, think=False)
    assert off.message.content and not off.message.thinking
    level = client.chat(model=thinker, messages=messages, options=OPTS, think="max")
    assert level.message.thinking == default.message.thinking
    generated = client.generate(model=thinker, prompt="What is the capital of France?", options=OPTS)
    assert generated.thinking == default.message.thinking and not generated.response


def test_think_values(server, thinker) -> None:  # type: ignore[no-untyped-def]
    http = server.http()
    body = {"model": BASE, "prompt": "hi", "stream": False, "options": OPTS}
    r = http.post("/api/generate", json={**body, "think": "high"})
    assert r.status_code == 400 and r.json() == {"error": '"smollm2:135m" does not support thinking'}
    r = http.post("/api/generate", json={**body, "think": False})  # false is fine on any model
    assert r.status_code == 200 and r.json()["response"]
    r = http.post("/api/generate", json={**body, "model": thinker, "think": "extreme"})
    assert r.status_code == 400
    assert r.json()["error"] == ('invalid think value: "extreme" (must be "high", "medium", "low", "max", '
                                 "true, or false)")


def test_raw_prompt_ending_in_think_is_split_by_the_template_path(server, thinker) -> None:  # type: ignore[no-untyped-def]
    """raw skips the PARSER (as upstream); a thinking model's trace is still kept out of the response."""
    r = server.http().post("/api/generate", json={
        "model": thinker, "raw": True, "stream": False, "options": OPTS,
        "prompt": "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n<think>\n"})
    assert r.status_code == 200, r.text
    assert r.json()["thinking"] and not r.json()["response"]


def test_openai_reasoning_effort_maps_to_think(server, thinker) -> None:  # type: ignore[no-untyped-def]
    import openai

    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x")
    messages = [{"role": "user", "content": "What is the capital of France?"}]

    def ask(**extra: object) -> tuple[str | None, str | None]:
        reply = client.chat.completions.create(model=thinker, messages=messages, max_tokens=8, temperature=0,
                                               seed=1, **extra)  # type: ignore[call-overload]
        message = reply.choices[0].message
        return message.content, (message.model_extra or {}).get("reasoning")

    content, reasoning = ask()
    assert reasoning and not content  # thinks by default, as /api/chat does
    assert ask(reasoning_effort="xhigh") == (content, reasoning)  # clamped to "max"
    content, reasoning = ask(reasoning_effort="none")
    assert content and not reasoning
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        ask(reasoning_effort="extreme")


def test_rendered_bos_is_not_doubled_by_the_tokenizer(server, gemma3_gguf) -> None:  # type: ignore[no-untyped-def]
    """deepseek3.1 writes its BOS as text; Gemma's tokenizer adds its own BOS, which stands for it."""
    import_gemma3(server, gemma3_gguf)
    r = server.http().post("/api/create", json={"model": "gemma-deepseek", "from": "gemma3:270m",
                                                 "renderer": "deepseek3.1", "stream": False})
    assert r.status_code == 200, r.text
    http = server.http()
    chat = {"model": "gemma-deepseek", "messages": [{"role": "user", "content": "hi"}], "think": False}
    rendered = http.post("/api/chat", json={**chat, "_debug_render_only": True}).json()["_debug_info"][
        "rendered_template"]
    assert rendered == f"{DEEPSEEK_BOS}<｜User｜>hi<｜Assistant｜></think>"
    options = {"temperature": 0, "num_predict": 1}

    def prompt_tokens(prompt: str) -> int:
        r = http.post("/api/generate", json={"model": "gemma3:270m", "prompt": prompt, "raw": True,
                                             "stream": False, "options": options})
        assert r.status_code == 200, r.text
        return int(r.json()["prompt_eval_count"])

    r = http.post("/api/chat", json={**chat, "stream": False, "options": options})
    assert r.status_code == 200, r.text
    without_text_bos = prompt_tokens(rendered.removeprefix(DEEPSEEK_BOS))
    assert r.json()["prompt_eval_count"] == without_text_bos
    assert prompt_tokens(rendered) > without_text_bos  # the text BOS is several tokens to Gemma


def _upload(server, path) -> str:  # type: ignore[no-untyped-def]
    import hashlib

    data = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert server.http().post(f"/api/blobs/{digest}", content=data).status_code == 201
    return digest


@pytest.mark.parametrize(("architecture", "builtin"), [("gemma4", "gemma4"), ("nemotron_h", "nemotron-3-nano")])
def test_architecture_brings_its_renderer_and_parser(server, tmp_path, architecture: str,  # type: ignore[no-untyped-def]
                                                     builtin: str) -> None:
    """As upstream's create: a Gemma 4 or Nemotron-H GGUF gets its built-ins, unless the Modelfile names its own."""
    import gguf
    import numpy as np

    path = tmp_path / f"{architecture}.gguf"
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    files = {"model.gguf": _upload(server, path)}
    http = server.http()
    r = http.post("/api/create", json={"model": f"tiny-{architecture}", "files": files, "stream": False})
    assert r.status_code == 200, r.text
    shown = http.post("/api/show", json={"model": f"tiny-{architecture}"}).json()
    assert (shown.get("renderer"), shown.get("parser")) == (builtin, builtin)
    stop = 'stop                           "<turn|>"' in shown.get("parameters", "")
    assert stop == (architecture == "gemma4")  # Gemma 4's turns end with <turn|>
    r = http.post("/api/create", json={"model": f"tiny-{architecture}-own", "files": files, "stream": False,
                                       "parser": "passthrough"})
    assert r.status_code == 200, r.text
    shown = http.post("/api/show", json={"model": f"tiny-{architecture}-own"}).json()
    assert (shown.get("renderer"), shown.get("parser")) == (builtin, "passthrough")


def test_qwen35_renderer_and_parser_on_a_real_model(server) -> None:  # type: ignore[no-untyped-def]
    """qwen3.5 thinks by default (the output is the trace), and think=false prefills an empty trace."""
    r = create(server, "smol-qwen35", renderer="qwen3.5", parser="qwen3.5")
    assert r.status_code == 200, r.text
    client = ollama.Client(host=server.url)
    assert "thinking" in (client.show("smol-qwen35").capabilities or [])
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    default = client.chat(model="smol-qwen35", messages=messages, options=OPTS)
    assert default.message.thinking and not default.message.content
    streamed = list(client.chat(model="smol-qwen35", messages=messages, options=OPTS, stream=True))
    assert "".join(c.message.thinking or "" for c in streamed) == default.message.thinking
    off = client.chat(model="smol-qwen35", messages=messages, options=OPTS, think=False)
    assert off.message.content and not off.message.thinking
    rendered = server.http().post("/api/chat", json={"model": "smol-qwen35", "messages": messages, "think": False,
                                                      "_debug_render_only": True}).json()["_debug_info"]
    assert rendered["rendered_template"].endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
