"""Logprobs through a real server and SmolLM2: the native API (official ``ollama`` client and raw NDJSON),
the OpenAI API (``openai`` SDK), grammars and a DRAFT model (the ollama-python logprobs examples run in
test_ollama_python_examples.py).

What holds for every reply: one entry per generated token (``eval_count``), every logprob <= 0,
alternatives most likely first; at temperature 0 the sampled token is the first alternative; the
entries' bytes rebuild the text of the chunk that carries them; no ``logprobs`` key unless asked.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ollama
import openai
import pytest

from tests.conftest import Server

MODEL = "smollm2:135m"
DRAFTED = "smol-draft"
GREEDY = {"temperature": 0, "num_predict": 24}
PROMPT = "Why is the sky blue?"
CHAT = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def lp(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    """smollm2:135m and smol-draft: SmolLM2 as its own DRAFT."""
    server = Server(tmp_path_factory.mktemp("logprobs"), OLLAMA_DEBUG="1", OLLAMA_KEEP_ALIVE="10m").start()
    server.import_smollm2(smollm2_gguf)
    modelfile = server.home / "draft.Modelfile"
    modelfile.write_text(f"FROM {MODEL}\nDRAFT {smollm2_gguf}\n")
    server.cli("create", DRAFTED, "-f", str(modelfile))
    yield server
    server.stop()


def _post(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    with server.http() as http:
        r = http.post(path, json={"stream": False, **body})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _lines(server: Server, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with server.http() as http, http.stream("POST", path, json={**body, "stream": True}) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line]


def _text_of(entries: list[dict[str, Any]]) -> bytes:
    return b"".join(bytes(e.get("bytes") or []) for e in entries)


def _check_entries(entries: list[dict[str, Any]], top: int, greedy: bool = True) -> None:
    for entry in entries:
        assert entry["logprob"] <= 0 and bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
        if top == 0:
            assert "top_logprobs" not in entry
            continue
        alternatives = entry["top_logprobs"]
        assert len(alternatives) == top and len({a["token"] for a in alternatives}) >= 1
        values = [a["logprob"] for a in alternatives]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        if greedy:  # the sampled token is the most likely one, with the same number
            assert alternatives[0]["token"] == entry["token"] and alternatives[0]["logprob"] == entry["logprob"]
        else:
            assert entry["logprob"] <= values[0]


# -- native API ---------------------------------------------------------------------------------


def test_generate_entries_rebuild_the_reply(lp: Server) -> None:
    out = _post(lp, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": GREEDY,
                                       "logprobs": True, "top_logprobs": 5})
    entries = out["logprobs"]
    assert len(entries) == out["eval_count"] == GREEDY["num_predict"] and out["done_reason"] == "length"
    _check_entries(entries, 5)
    assert _text_of(entries) == out["response"].encode()
    total = math.fsum(e["logprob"] for e in entries)
    assert total < 0  # a sequence's log-likelihood, as clients compute it


def test_streamed_chat_chunks_carry_their_own_tokens(lp: Server) -> None:
    body = {"model": MODEL, "messages": CHAT, "options": GREEDY, "logprobs": True, "top_logprobs": 2}
    lines = _lines(lp, "/api/chat", body)
    *chunks, final = lines
    assert final["done"] and "logprobs" not in final
    for chunk in chunks:  # no stop sequence cuts this reply: each chunk's entries are exactly its text
        assert chunk["logprobs"] and _text_of(chunk["logprobs"]) == chunk["message"]["content"].encode()
    streamed = [e for chunk in chunks for e in chunk["logprobs"]]
    assert len(streamed) == final["eval_count"]
    _check_entries(streamed, 2)
    whole = _post(lp, "/api/chat", body)
    assert [e["token"] for e in whole["logprobs"]] == [e["token"] for e in streamed]
    assert whole["message"]["content"] == "".join(c["message"]["content"] for c in chunks)
    for a, b in zip(whole["logprobs"], streamed, strict=True):
        assert a["logprob"] == pytest.approx(b["logprob"], abs=1e-3)


def test_official_client(lp: Server) -> None:
    client = ollama.Client(host=lp.url)
    reply = client.generate(model=MODEL, prompt=PROMPT, options=GREEDY, logprobs=True, top_logprobs=3)
    assert reply.logprobs is not None and len(reply.logprobs) == reply.eval_count
    assert "".join(e.token for e in reply.logprobs) == reply.response  # ASCII reply: token texts are whole
    for entry in reply.logprobs:
        assert entry.top_logprobs is not None and entry.top_logprobs[0].token == entry.token
        assert [a.logprob for a in entry.top_logprobs] == sorted((a.logprob for a in entry.top_logprobs),
                                                                 reverse=True)
    stream = list(client.chat(model=MODEL, messages=CHAT, options=GREEDY, logprobs=True, stream=True))
    entries = [e for part in stream for e in part.logprobs or ()]
    assert len(entries) == stream[-1].eval_count and all(e.logprob <= 0 and not e.top_logprobs for e in entries)
    plain = client.chat(model=MODEL, messages=CHAT, options=GREEDY)
    assert plain.logprobs is None and plain.message.content == "".join(p.message.content for p in stream)


def test_no_logprobs_unless_asked(lp: Server) -> None:
    short = {"temperature": 0, "num_predict": 4}
    for body in ({}, {"logprobs": False}, {"top_logprobs": 3}, {"logprobs": None, "top_logprobs": None}):
        out = _post(lp, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": short, **body})
        assert "logprobs" not in out and out["eval_count"] > 0, body
        lines = _lines(lp, "/api/chat", {"model": MODEL, "messages": CHAT, "options": short, **body})
        assert not any("logprobs" in line for line in lines), body


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize(("body", "error"), [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs must be between 0 and 20"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs must be between 0 and 20"),
    ({"top_logprobs": 100}, "top_logprobs must be between 0 and 20"),  # checked even without logprobs
    ({"logprobs": True, "top_logprobs": "3"}, "top_logprobs must be an integer"),
    ({"logprobs": "yes"}, "logprobs must be a boolean"),
])
def test_bad_values_are_400(lp: Server, path: str, body: dict[str, Any], error: str) -> None:
    request = {"model": MODEL, "prompt": PROMPT} if path == "/api/generate" else {"model": MODEL, "messages": CHAT}
    with lp.http() as http:
        r = http.post(path, json={**request, **body})
    assert r.status_code == 400 and r.json() == {"error": error}


def test_official_client_sees_the_400(lp: Server) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        ollama.Client(host=lp.url).chat(model=MODEL, messages=CHAT, logprobs=True, top_logprobs=21)
    assert info.value.status_code == 400 and "between 0 and 20" in info.value.error


def test_stop_sequence_tokens_are_counted(lp: Server) -> None:
    free = _post(lp, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": GREEDY})["response"]
    words = free.split()
    stop = words[len(words) // 2]
    options = {**GREEDY, "stop": [stop]}
    for lines in (_lines(lp, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": options,
                                               "logprobs": True}),
                  [_post(lp, "/api/generate", {"model": MODEL, "prompt": PROMPT, "options": options,
                                               "logprobs": True})]):
        final = lines[-1]
        assert final["done_reason"] == "stop" and stop not in "".join(line["response"] for line in lines)
        entries = [e for line in lines for e in line.get("logprobs", [])]
        assert len(entries) == final["eval_count"]  # the stop sequence's own tokens included
        assert _text_of(entries).decode().startswith("".join(line["response"] for line in lines) + stop)


def test_characters_split_over_tokens(lp: Server) -> None:
    """Emoji are byte tokens in SmolLM2's vocabulary: a token's entry waits for the character it starts,
    and its ``token`` is U+FFFD while ``bytes`` holds the real bytes."""
    body = {"model": MODEL, "prompt": "🌍🌎🌏🌍🌎🌏🌍🌎", "raw": True, "logprobs": True,
            "options": {"temperature": 0, "num_predict": 12}}
    lines = _lines(lp, "/api/generate", body)
    for line in lines:
        assert _text_of(line.get("logprobs", [])) == line["response"].encode()
    entries = [e for line in lines for e in line.get("logprobs", [])]
    assert len(entries) == lines[-1]["eval_count"]
    split = [e for e in entries if e["token"] == "\ufffd"]
    assert split and all(len(e["bytes"]) < 4 for e in split)
    assert "\ufffd" not in "".join(line["response"] for line in lines)


def test_grammar_reports_the_model_distribution(lp: Server) -> None:
    out = _post(lp, "/api/generate", {"model": MODEL, "prompt": "Give a JSON object with a name.", "format": "json",
                                       "options": {"temperature": 0, "num_predict": 30}, "logprobs": True,
                                       "top_logprobs": 4})
    if out["done_reason"] == "stop":
        assert isinstance(json.loads(out["response"]), dict)
    assert len(out["logprobs"]) == out["eval_count"] and _text_of(out["logprobs"]) == out["response"].encode()
    _check_entries(out["logprobs"], 4, greedy=False)  # the grammar may pick a token the model ranks lower


def test_draft_model_gives_the_target_numbers(lp: Server) -> None:
    body = {"prompt": PROMPT, "options": {"temperature": 0, "num_predict": 12}, "logprobs": True, "top_logprobs": 3}
    plain = _post(lp, "/api/generate", {"model": MODEL, **body})
    drafted = _post(lp, "/api/generate", {"model": DRAFTED, **body})
    assert drafted["response"] == plain["response"] and len(drafted["logprobs"]) == drafted["eval_count"]
    _check_entries(drafted["logprobs"], 3)
    for a, b in zip(drafted["logprobs"], plain["logprobs"], strict=True):
        assert a["token"] == b["token"] and a["logprob"] == pytest.approx(b["logprob"], abs=0.02)
        assert [t["token"] for t in a["top_logprobs"]][:1] == [t["token"] for t in b["top_logprobs"]][:1]
    assert "smol-draft:latest: draft acceptance" in lp.log()  # the guesses were checked, not skipped


# -- OpenAI API ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(lp: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=lp.url + "/v1", api_key="ollama", max_retries=0, timeout=120)


def test_openai_chat_logprobs(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20, logprobs=True,
                                          top_logprobs=3)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    _check_entries([e.model_dump() for e in content], 3)
    assert b"".join(bytes(e.bytes) for e in content) == resp.choices[0].message.content.encode()
    chunks = list(client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=20,
                                                 logprobs=True, stream=True,
                                                 stream_options={"include_usage": True}))
    streamed = []
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].logprobs is not None:
            mine = chunk.choices[0].logprobs.content
            assert b"".join(bytes(e.bytes) for e in mine) == (chunk.choices[0].delta.content or "").encode()
            assert all(e.top_logprobs == [] for e in mine)
            streamed += mine
    assert [e.token for e in streamed] == [e.token for e in content]
    assert len(streamed) == chunks[-1].usage.completion_tokens
    plain = client.chat.completions.create(model=MODEL, messages=CHAT, temperature=0, max_tokens=5)
    assert plain.choices[0].logprobs is None


def test_openai_legacy_completion_logprobs(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    resp = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12, logprobs=3)
    choice = resp.choices[0]
    lps = choice.logprobs
    assert len(lps.tokens) == len(lps.token_logprobs) == len(lps.top_logprobs) == resp.usage.completion_tokens
    assert "".join(lps.tokens) == choice.text
    assert lps.text_offset == [len("".join(lps.tokens[:i])) for i in range(len(lps.tokens))]
    for token, value, top in zip(lps.tokens, lps.token_logprobs, lps.top_logprobs, strict=True):
        assert value <= 0 and len(top) <= 3 and max(top.values()) == value and top[token] == value
    streamed = list(client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12,
                                              logprobs=3, stream=True))
    parts = [c.choices[0].logprobs for c in streamed if c.choices[0].logprobs is not None]
    assert [t for p in parts for t in p.tokens] == lps.tokens
    assert [o for p in parts for o in p.text_offset] == lps.text_offset  # offsets run on across chunks
    assert client.completions.create(model=MODEL, prompt=prompt, max_tokens=3, logprobs=0).choices[0].logprobs is None


def test_openai_bad_values_are_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, logprobs=True, top_logprobs=21)
    assert info.value.param == "top_logprobs" and "between 0 and 20" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt="hi", logprobs=21)
    assert info.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=CHAT, logprobs="yes")  # type: ignore[arg-type]
    assert info.value.param == "logprobs"
