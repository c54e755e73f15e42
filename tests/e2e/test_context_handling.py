"""Context handling on a real server and real llama.cpp (the bundled SmolLM2-135M): ``truncate`` and
``shift`` on /api/generate and /api/chat, and the context length /api/ps and ``ollama ps`` report.

A context of 256 tokens keeps every overflow cheap.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

MODEL = "smollm2:135m"
NUM_CTX = 256
SMALL = {"num_ctx": NUM_CTX, "temperature": 0}
#: 400 distinct words: at least 400 tokens (every word is one or more), far beyond NUM_CTX.
LONG_PROMPT = " ".join(f"word{i}" for i in range(400))
INPUT_TOO_LONG = "the input length exceeds the context length"
PROMPT_TOO_LONG = ("the prompt is longer than the context length currently available to the model; "
                   "shorten the prompt, adjust the context length in settings, or use a model with a "
                   "longer context length")
#: Greedy SmolLM2 keeps counting long past NUM_CTX tokens without an end of turn (raw: no template).
COUNTING = {"prompt": "Count from 1 to 500: 1, 2, 3,", "raw": True}


@pytest.fixture(scope="module")
def http(server: Any) -> httpx.Client:
    return server.http()


def _long_chat() -> list[dict[str, str]]:
    """Eight old turns of about 60 words each (well over NUM_CTX in all), then a short question."""
    messages = []
    for turn in range(8):
        words = " ".join(f"topic{turn}x{i}" for i in range(60))
        messages += [{"role": "user", "content": f"Remember these: {words}"},
                     {"role": "assistant", "content": "Noted."}]
    return [{"role": "system", "content": "You are brief."}, *messages,
            {"role": "user", "content": "Say hello."}]


def _post(http: httpx.Client, route: str, body: dict[str, Any]) -> httpx.Response:
    return http.post(route, json={"model": MODEL, "stream": False, **body})


def _streamed(http: httpx.Client, route: str, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    with http.stream("POST", route, json={"model": MODEL, **body}) as resp:
        lines = [json.loads(line) for line in resp.iter_lines() if line.strip()]
        return resp.status_code, lines


# -- truncate -------------------------------------------------------------------------------------

def test_truncate_false_refuses_a_prompt_longer_than_the_context(http: httpx.Client) -> None:
    body = {"prompt": LONG_PROMPT, "truncate": False, "options": {**SMALL, "num_predict": 4}}
    resp = _post(http, "/api/generate", body)
    assert resp.status_code == 400 and resp.json() == {"error": INPUT_TOO_LONG}
    # Streamed, the refusal still comes before any chunk, with its real status.
    status, lines = _streamed(http, "/api/generate", body)
    assert status == 400 and lines == [{"error": INPUT_TOO_LONG}]


def test_truncate_default_cuts_the_prompt_to_the_context(http: httpx.Client) -> None:
    for flag in ({}, {"truncate": True}, {"truncate": None}):
        resp = _post(http, "/api/generate", {"prompt": LONG_PROMPT, **flag, "options": {**SMALL, "num_predict": 2}})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        # The whole prompt is at least 400 tokens; what was evaluated fits in the context.
        assert 0 < out["prompt_eval_count"] < NUM_CTX < 400
        assert out["done"] is True and out["eval_count"] == 2


def test_truncate_false_keeps_every_chat_message_or_refuses(http: httpx.Client) -> None:
    resp = _post(http, "/api/chat", {"messages": _long_chat(), "truncate": False,
                                     "options": {**SMALL, "num_predict": 4}})
    assert resp.status_code == 400 and resp.json() == {"error": INPUT_TOO_LONG}
    # The default drops the oldest turns until the conversation fits.
    resp = _post(http, "/api/chat", {"messages": _long_chat(), "options": {**SMALL, "num_predict": 4}})
    assert resp.status_code == 200, resp.text
    assert 0 < resp.json()["prompt_eval_count"] <= NUM_CTX
    # A conversation that fits is answered with truncate false too.
    short = [{"role": "user", "content": "Say hello."}]
    resp = _post(http, "/api/chat", {"messages": short, "truncate": False, "options": {**SMALL, "num_predict": 4}})
    assert resp.status_code == 200 and resp.json()["done"] is True


# -- shift ----------------------------------------------------------------------------------------

def test_shift_false_stops_at_a_full_context(http: httpx.Client) -> None:
    resp = _post(http, "/api/generate", {**COUNTING, "shift": False, "options": {**SMALL, "num_predict": 400}})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["done_reason"] == "length"
    assert out["prompt_eval_count"] + out["eval_count"] <= NUM_CTX
    assert 0 < out["eval_count"] < 400
    assert out["response"].strip()


def test_shift_default_generates_past_the_context(http: httpx.Client) -> None:
    resp = _post(http, "/api/generate", {**COUNTING, "options": {**SMALL, "num_predict": 400}})
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["done_reason"] == "length" and out["eval_count"] == 400
    assert out["prompt_eval_count"] + out["eval_count"] > NUM_CTX


def test_shift_false_streams_the_length_stop(http: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me a very long story about a dragon."}],
            "shift": False, "options": {**SMALL, "num_predict": 400}}
    status, lines = _streamed(http, "/api/chat", body)
    assert status == 200 and lines[-1]["done"] is True
    if lines[-1]["done_reason"] == "length":  # the context filled before the model ended its turn
        assert lines[-1]["prompt_eval_count"] + lines[-1]["eval_count"] <= NUM_CTX
    else:
        assert lines[-1]["done_reason"] == "stop" and lines[-1]["eval_count"] < NUM_CTX


def test_shift_false_refuses_a_prompt_it_would_have_to_cut(http: httpx.Client) -> None:
    # As upstream: cutting an over-long prompt is a context shift, so shift false refuses it too.
    resp = _post(http, "/api/generate", {"prompt": LONG_PROMPT, "shift": False, "options": SMALL})
    assert resp.status_code == 400 and resp.json() == {"error": PROMPT_TOO_LONG}


# -- validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize("route", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize(("key", "value"), [("truncate", "no"), ("truncate", 0), ("shift", 1),
                                            ("shift", "false"), ("shift", [])])
def test_non_boolean_flags_are_refused(http: httpx.Client, route: str, key: str, value: Any) -> None:
    body: dict[str, Any] = {key: value, "options": SMALL}
    body.update({"prompt": "hi"} if route == "/api/generate" else {"messages": [{"role": "user", "content": "hi"}]})
    resp = _post(http, route, body)
    assert resp.status_code == 400 and resp.json() == {"error": f"{key} must be a boolean"}


# -- the context length in ps ---------------------------------------------------------------------

def _ps_context(http: httpx.Client) -> int:
    models = [m for m in http.get("/api/ps").json()["models"] if m["name"] == MODEL]
    assert len(models) == 1
    return int(models[0]["context_length"])


def test_ps_shows_the_context_length(server: Any, http: httpx.Client) -> None:
    resp = _post(http, "/api/generate", {"prompt": "hi", "options": {**SMALL, "num_predict": 1}})
    assert resp.status_code == 200
    assert _ps_context(http) == NUM_CTX
    lines = server.cli("ps").stdout.splitlines()
    assert lines[0].split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(line for line in lines[1:] if line.startswith(MODEL))
    column = lines[0].index("CONTEXT")  # columns are aligned under their headers
    assert row[column:].split()[0] == str(NUM_CTX)


def test_the_default_context_without_a_gpu_is_4096(http: httpx.Client) -> None:
    # No num_ctx in the request or the model, no OLLAMA_CONTEXT_LENGTH, no GPU here: upstream's 4k tier.
    resp = _post(http, "/api/generate", {"prompt": "hi", "options": {"num_predict": 1}})
    assert resp.status_code == 200
    assert _ps_context(http) == 4096


def test_a_context_beyond_the_trained_one_is_capped(http: httpx.Client) -> None:
    resp = _post(http, "/api/generate", {"prompt": "hi", "options": {"num_ctx": 100_000, "num_predict": 1}})
    assert resp.status_code == 200
    trained = _post(http, "/api/show", {"model": MODEL}).json()["model_info"]["llama.context_length"]
    assert trained == 8192 and _ps_context(http) == trained
