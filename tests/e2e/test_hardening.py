"""Regression tests for the failures a hostile review reproduced (issue 11), against a real server
with the real bundled model.  Each test names the item it covers; each failed before its fix.

The checks are behaviour and memory bounds, never speed: every call has a timeout only so that a
regression (a wedged model) fails instead of hanging the suite.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server

MODEL = "smollm2:135m"
QUICK = {"num_predict": 4, "temperature": 0}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("hardening"), OLLAMA_NUM_PARALLEL="2",
                    OLLAMA_KEEP_ALIVE="10m").start()
    try:
        server.import_smollm2(smollm2_gguf)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(srv: Server) -> Iterator[httpx.Client]:
    with srv.http(timeout=120) as client:
        yield client


def generate(http: httpx.Client, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "prompt": "Say hi", "stream": False, "options": QUICK, **extra}
    return http.post("/api/generate", json=body)


def assert_error(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for word in words:
        assert word in body["error"], body
    return str(body["error"])


def runner_pids(srv: Server) -> list[int]:
    assert srv.proc is not None
    pids: list[int] = []
    for task in Path(f"/proc/{srv.proc.pid}/task").iterdir():
        text = (task / "children").read_text().split()
        pids += [int(p) for p in text]
    return pids


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def assert_model_still_serves(http: httpx.Client) -> None:
    ok = generate(http)
    assert ok.status_code == 200, ok.text
    assert ok.json()["done"] is True


# -- 1. keep_alive that overflows a date -------------------------------------------------------------


@pytest.mark.parametrize("keep_alive", [1e12, 10**30, "2562047h"])
def test_huge_keep_alive_means_forever_and_never_wedges_the_model(http: httpx.Client, keep_alive: Any) -> None:
    r = generate(http, keep_alive=keep_alive)
    assert r.status_code == 200, r.text
    models = http.get("/api/ps").json()["models"]
    assert models and int(models[0]["expires_at"][:4]) >= 2300
    assert_model_still_serves(http)  # before the fix every later request hung here
    # and it can still be unloaded (ollama stop = keep_alive 0)
    assert generate(http, prompt="", keep_alive=0).json()["done_reason"] == "unload"
    assert http.get("/api/ps").json()["models"] == []


def test_nan_keep_alive_is_a_bad_request(http: httpx.Client) -> None:
    body = b'{"model": "smollm2:135m", "prompt": "hi", "stream": false, "keep_alive": NaN}'
    r = http.post("/api/generate", content=body, headers={"Content-Type": "application/json"})
    assert_error(r, 400, "NaN")
    assert_model_still_serves(http)


# -- 2. context token ids that abort llama.cpp --------------------------------------------------------


@pytest.mark.parametrize("context", [[999999999], [-5], [1, 2, 2**40], [1] * 100_000])
def test_bad_context_tokens_fail_the_request_only(srv: Server, http: httpx.Client, context: list[int]) -> None:
    assert_model_still_serves(http)
    before = runner_pids(srv)
    # a stream on the same runner must survive the bad request next to it
    result: dict[str, Any] = {}

    def stream() -> None:
        with srv.http(timeout=120) as other:
            lines = []
            with other.stream("POST", "/api/generate", json={
                    "model": MODEL, "prompt": "Count to twenty", "options": {"num_predict": 24}}) as r:
                lines = [json.loads(line) for line in r.iter_lines() if line]
            result["lines"] = lines

    thread = threading.Thread(target=stream)
    thread.start()
    r = generate(http, context=context)
    thread.join(120)
    assert_error(r, 400, "token")
    assert result["lines"][-1]["done"] is True and "error" not in result["lines"][-1]
    assert runner_pids(srv) == before  # the same runner: nothing aborted
    assert_model_still_serves(http)


# -- 3, 4. num_batch and repeat_last_n -------------------------------------------------------------


@pytest.mark.parametrize("option, value", [("num_batch", 4294967297), ("repeat_last_n", 2**31),
                                           ("num_ctx", -(2**40)), ("top_k", 2**33)])
def test_integer_options_beyond_the_engine_are_a_400_naming_them(http: httpx.Client, option: str,
                                                                 value: int) -> None:
    r = generate(http, options={**QUICK, option: value})
    assert_error(r, 400, option)


def test_large_num_batch_and_repeat_last_n_are_clamped_not_allocated(srv: Server, http: httpx.Client) -> None:
    assert_model_still_serves(http)
    runner = max(runner_pids(srv))
    before = rss_bytes(runner)
    r = generate(http, options={**QUICK, "repeat_last_n": 50_000_000, "repeat_penalty": 1.1})
    assert r.status_code == 200, r.text
    assert rss_bytes(runner) - before < 64 << 20  # was +190 MiB: the penalty window is clamped to num_ctx
    # num_batch 1e7 is clamped to num_ctx: the same load options as num_batch 4096 (the context)
    r = generate(http, options={**QUICK, "num_batch": 10_000_000})
    assert r.status_code == 200, r.text
    pids = runner_pids(srv)
    r = generate(http, options={**QUICK, "num_batch": 4096})
    assert r.status_code == 200 and runner_pids(srv) == pids  # no reload: same effective options


# -- 5. huge templates --------------------------------------------------------------------------------


def test_huge_request_template_is_refused(http: httpx.Client) -> None:
    template = "{{ .Prompt }}" + "x" * (1536 << 10)
    assert_error(generate(http, template=template), 400, "template")
    assert http.get("/api/version", timeout=10).status_code == 200


def test_huge_modelfile_template_is_refused_and_nothing_is_stored(srv: Server, http: httpx.Client) -> None:
    r = http.post("/api/create", json={"model": "huge-template", "from": MODEL, "stream": False,
                                       "template": "{{ .Prompt }}" + "{{ if true }}x{{ end }}" * 80000})
    assert_error(r, 400, "template")
    assert http.post("/api/show", json={"model": "huge-template"}).status_code == 404


# -- 6. JSON bombs ----------------------------------------------------------------------------------


def test_a_json_bomb_is_refused_without_growing_the_server(srv: Server, http: httpx.Client) -> None:
    assert srv.proc is not None
    before = rss_bytes(srv.proc.pid)
    bomb = b'{"model": "x", "junk": [' + b",".join([b"{}"] * 20_000_000) + b"]}"
    r = http.post("/api/show", content=bomb, headers={"Content-Type": "application/json"}, timeout=300)
    assert_error(r, 400, "JSON values")
    assert rss_bytes(srv.proc.pid) - before < 200 << 20  # was +1.5 GiB, never given back
    assert http.get("/api/version").status_code == 200


def test_a_large_legitimate_body_is_decoded(http: httpx.Client) -> None:
    prompt = "Say hi. " + "a " * (3 << 20)  # 6 MiB: decoded by the child decoder
    r = http.post("/api/show", json={"model": MODEL, "junk": prompt})
    assert r.status_code == 200, r.text
    r = http.post("/api/embed", json={"model": MODEL, "input": "hello", "junk": prompt})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 576


# -- 7. out-of-range parameters at create, and in a params layer from elsewhere ------------------------


def test_create_refuses_out_of_range_parameters(http: httpx.Client) -> None:
    for params in ({"num_batch": 4294967297}, {"repeat_last_n": 2147483648}, {"stop": ["x"] * 1000}):
        r = http.post("/api/create", json={"model": "bad-params", "from": MODEL, "parameters": params,
                                           "stream": False})
        assert_error(r, 400, next(iter(params)))
    assert http.post("/api/show", json={"model": "bad-params"}).status_code == 404


def test_a_stored_params_layer_with_bad_values_is_sanitized_at_load(srv: Server, http: httpx.Client) -> None:
    """A model pulled from a registry (or written by another tool) can carry any params layer: the bad
    entries are ignored with a warning, the good ones kept, and the model loads and answers."""
    manifest_path = srv.models / "manifests/registry.ollama.ai/library/smollm2/135m"
    manifest = json.loads(manifest_path.read_text())
    params = json.dumps({"num_batch": 4294967297, "repeat_last_n": 2147483647, "num_thread": -(2**40),
                         "temperature": 0, "stop": ["<|im_end|>"]}).encode()
    digest = "sha256:" + hashlib.sha256(params).hexdigest()
    (srv.models / "blobs" / digest.replace(":", "-")).write_bytes(params)
    layers = [layer for layer in manifest["layers"] if not layer["mediaType"].endswith(".params")]
    layers.append({"mediaType": "application/vnd.ollama.image.params", "digest": digest, "size": len(params)})
    target = srv.models / "manifests/registry.ollama.ai/library/pulled/latest"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({**manifest, "layers": layers}))
    r = http.post("/api/generate", json={"model": "pulled", "prompt": "Say hi", "stream": False,
                                         "options": {"num_predict": 4, "repeat_penalty": 1.2}})
    assert r.status_code == 200, r.text
    assert "ignoring stored parameter" in srv.log() and "num_batch" in srv.log()
    assert http.request("DELETE", "/api/delete", json={"model": "pulled"}).status_code == 200


# -- 8. malformed tools and tool calls --------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {"tools": [{"function": "x"}]},
    {"tools": ["x"]},
    {"tools": [{"type": "function", "function": {"name": 5}}]},
    {"messages": [{"role": "assistant", "content": "", "tool_calls": ["x"]}, {"role": "user", "content": "hi"}]},
    {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "x"}}]},
                  {"role": "user", "content": "hi"}]},
])
def test_malformed_tools_are_a_400(http: httpx.Client, body: dict[str, Any]) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False, "options": QUICK}
    assert_error(http.post("/api/chat", json={**chat, **body}), 400)


# -- 10. structured-output schemas that would expand without bound ------------------------------------


@pytest.mark.parametrize("fmt, word", [
    ({"type": "array", "items": {"type": "integer"}, "minItems": 5000000}, "minItems"),
    ({"type": "string", "maxLength": 10**9}, "maxLength"),
    ({"$ref": "https://example.invalid/schema.json"}, "$ref"),
])
def test_unbounded_schemas_are_refused(http: httpx.Client, fmt: dict[str, Any], word: str) -> None:
    assert_error(generate(http, format=fmt), 400, word)
    assert_model_still_serves(http)


def test_a_bounded_schema_still_constrains_output(http: httpx.Client) -> None:
    fmt = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    r = http.post("/api/generate", json={"model": MODEL, "prompt": "Give a number as JSON", "stream": False,
                                         "format": fmt, "options": {"num_predict": 40, "temperature": 0}})
    assert r.status_code == 200, r.text
    assert isinstance(json.loads(r.json()["response"])["n"], int)


# -- 12. a clean SIGTERM stops runners gracefully --------------------------------------------------


def test_sigterm_stops_runners_gracefully(make_server: Any, smollm2_gguf: Path) -> None:
    server = make_server()
    server.import_smollm2(smollm2_gguf)
    with server.http(timeout=120) as client:
        assert client.post("/api/generate", json={"model": MODEL, "prompt": ""}).status_code == 200
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    log = server.log()
    assert "exited cleanly" in log, log[-2000:]
    assert "SIGKILL" not in log and "was killed" not in log
