"""Scheduling across models: eviction, reload on new load options, keep_alive, two architectures."""

from __future__ import annotations

import time

from tests.conftest import import_gemma3

SMOL, GEMMA = "smollm2:135m", "gemma3:270m"


def _chat(http, model: str, text: str = "What is the capital of France?", **extra) -> dict:
    body = {"model": model, "stream": False, "messages": [{"role": "user", "content": text}],
            "options": {"temperature": 0, "num_predict": 16, **extra.pop("options", {})}, **extra}
    r = http.post("/api/chat", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _loaded(http) -> list[tuple[str, int]]:
    return sorted((m["model"], m["context_length"]) for m in http.get("/api/ps").json()["models"])


def test_two_architectures_and_lru_eviction(make_server, smollm2_gguf, gemma3_gguf):
    srv = make_server(OLLAMA_MAX_LOADED_MODELS="1")
    srv.import_smollm2(smollm2_gguf)
    import_gemma3(srv, gemma3_gguf)
    with srv.http() as http:
        assert "Paris" in _chat(http, SMOL)["message"]["content"]
        assert _loaded(http) == [(SMOL, 4096)]
        gemma = http.post("/api/generate", json={"model": GEMMA, "prompt": "Q: What is the capital of France?\nA:",
                                                 "stream": False, "options": {"temperature": 0, "num_predict": 12}})
        assert "Paris" in gemma.json()["response"]
        assert _loaded(http) == [(GEMMA, 4096)]  # smollm2 was evicted to respect the limit
        _chat(http, SMOL)
        assert _loaded(http) == [(SMOL, 4096)]


def test_both_stay_loaded_when_allowed(make_server, smollm2_gguf, gemma3_gguf):
    srv = make_server(OLLAMA_MAX_LOADED_MODELS="2")
    srv.import_smollm2(smollm2_gguf)
    import_gemma3(srv, gemma3_gguf)
    with srv.http() as http:
        _chat(http, SMOL)
        _chat(http, GEMMA)
        assert _loaded(http) == [(GEMMA, 4096), (SMOL, 4096)]


def test_new_num_ctx_reloads_the_model(make_server, smollm2_gguf):
    srv = make_server()
    srv.import_smollm2(smollm2_gguf)
    with srv.http() as http:
        _chat(http, SMOL)
        assert _loaded(http) == [(SMOL, 4096)]
        _chat(http, SMOL, options={"num_ctx": 2048})
        assert _loaded(http) == [(SMOL, 2048)]


def test_keep_alive_forms(make_server, smollm2_gguf):
    srv = make_server(OLLAMA_KEEP_ALIVE="10m")
    srv.import_smollm2(smollm2_gguf)
    with srv.http() as http:
        _chat(http, SMOL, keep_alive=-1)
        [entry] = http.get("/api/ps").json()["models"]
        assert entry["expires_at"].startswith("2318")  # forever
        _chat(http, SMOL, keep_alive=1)  # seconds as a number
        time.sleep(2.5)
        assert _loaded(http) == []
        _chat(http, SMOL, keep_alive="1h")
        [entry] = http.get("/api/ps").json()["models"]
        assert entry["expires_at"][:4] == time.strftime("%Y")
