"""Inference against a real server and real llama.cpp on the bundled SmolLM2-135M model."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import httpx
import jsonschema
import ollama
import pytest

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0, "num_predict": 40}
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


def test_official_client_chat_answers_sensibly(client):
    resp = client.chat(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                       options=GREEDY)
    assert "Paris" in resp.message.content
    assert resp.done and resp.done_reason == "stop"
    assert resp.eval_count > 0 and resp.prompt_eval_count > 0 and resp.total_duration >= resp.eval_duration


def test_official_client_chat_streaming(client):
    parts = list(client.chat(model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
                             options=GREEDY, stream=True))
    assert len(parts) > 3 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "Paris" in "".join(p.message.content for p in parts)


def test_official_client_generate_and_context(client):
    resp = client.generate(model=MODEL, prompt="What is the capital of France?", options=GREEDY)
    assert "Paris" in resp.response
    assert resp.context and all(isinstance(t, int) for t in resp.context)
    follow = client.generate(model=MODEL, prompt="And of Germany?", context=resp.context, options=GREEDY)
    assert follow.response.strip()


def test_fixed_seed_reproduces_output(client):
    opts = {"temperature": 0.9, "seed": 42, "num_predict": 24}
    runs = {client.generate(model=MODEL, prompt="Tell me a story about a cat.", options=opts).response
            for _ in range(2)}
    assert len(runs) == 1


def test_embed_is_normalised(client):
    resp = client.embed(model=MODEL, input=["hello world", "goodbye"])
    assert len(resp.embeddings) == 2 and len(resp.embeddings[0]) == 576
    for vec in resp.embeddings:
        assert math.isclose(math.sqrt(sum(x * x for x in vec)), 1.0, rel_tol=1e-6)
    short = client.embed(model=MODEL, input="hello world", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in short.embeddings[0])), 1.0, rel_tol=1e-6)
    legacy = client.embeddings(model=MODEL, prompt="hello world")
    assert len(legacy.embedding) == 576


def test_ps_show_list_through_client(client):
    # ps names a shared runner after the model that loaded it: earlier tests load these weights
    # under other names (see tests/cli/derived.py's unload_all).
    for other in client.ps().models:
        try:
            client.generate(model=other.model, keep_alive=0)
        except ollama.ResponseError:  # deleted by its test while its runner lives on: not this runner
            pass
    client.generate(model=MODEL, prompt="Hi", options={"num_predict": 1})
    running = client.ps().models
    entry = next(m for m in running if m.model == MODEL)
    assert entry.size > 0 and entry.size_vram == 0 and entry.expires_at is not None
    assert entry.context_length == 4096
    assert client.show(MODEL).details.family == "llama"
    assert MODEL in [m.model for m in client.list().models]


def test_json_schema_format_validates(client):
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
              "required": ["name", "age"]}
    resp = client.chat(model=MODEL, messages=[{"role": "user", "content": "Describe a fictional person as JSON."}],
                       format=schema, options={"temperature": 0, "num_predict": 80})
    jsonschema.validate(json.loads(resp.message.content), schema)
    plain = client.generate(model=MODEL, prompt='Reply with the JSON object {"ok": true}.', format="json",
                            options={"temperature": 0, "num_predict": 300})
    json.loads(plain.response)


def test_tool_call_round_trip(client):
    # Small models rarely call tools unprompted; constraining the reply to the tool-call shape
    # (what OpenAI's tool_choice "required" does) makes the call deterministic.
    call_shape = {"type": "object", "properties": {
        "name": {"const": "get_weather"},
        "arguments": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        "required": ["name", "arguments"]}
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    resp = client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], format=call_shape,
                       options={"temperature": 0, "num_predict": 60})
    [call] = resp.message.tool_calls
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    messages += [resp.message, {"role": "tool", "content": '{"temperature": 21, "sky": "sunny"}',
                                "tool_name": "get_weather"}]
    final = client.chat(model=MODEL, messages=messages, tools=[WEATHER_TOOL], options=GREEDY)
    assert final.message.content and "21" in final.message.content + json.dumps(messages[-1])


def test_tool_calls_carry_ids(server):
    body = {"model": MODEL, "stream": False, "tools": [WEATHER_TOOL], "options": GREEDY,
            "messages": [{"role": "user", "content": "Weather in Rome?"}],
            "format": {"type": "object", "properties": {"name": {"const": "get_weather"}, "arguments": {
                "type": "object", "properties": {"city": {"const": "Rome"}}, "required": ["city"]}},
                "required": ["name", "arguments"]}}
    call = server.http().post("/api/chat", json=body).json()["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["function"] == {"index": 0, "name": "get_weather",
                                                                   "arguments": {"city": "Rome"}}


def test_thinking_is_refused_for_a_model_that_cannot(server):
    r = server.http().post("/api/chat", json={"model": MODEL, "think": True,
                                              "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and r.json() == {"error": '"smollm2:135m" does not support thinking'}


@pytest.mark.parametrize(("body", "status", "fragment"), [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model 'nope' not found"),
    ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid role"),
    ({"model": MODEL, "messages": "hi"}, 400, "messages must be a list"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi", "images": ["%%%"]}]}, 400, "image"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "format": 42}, 400, "invalid format"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "format": {"type": "nonsense"}}, 400,
     "schema"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "options": {"temperature": "hot"}}, 400,
     "temperature"),
    ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "keep_alive": "soon"}, 400, "keep_alive"),
    ({"messages": [{"role": "user", "content": "hi"}]}, 400, "model is required"),
])
def test_chat_bad_input(server, body, status, fragment):
    r = server.http().post("/api/chat", json=body)
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


def test_absurd_num_ctx_is_clamped_not_fatal(server):
    r = server.http().post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                  "options": {"num_ctx": 10**9, "num_predict": 2}})
    assert r.status_code == 200 and r.json()["done"]
    ps = server.http().get("/api/ps").json()["models"]
    assert max(m["context_length"] for m in ps) <= 8192


def test_num_predict_limits_and_negative_means_unbounded(server):
    r = server.http().post("/api/generate", json={"model": MODEL, "prompt": "Count to fifty:", "stream": False,
                                                  "options": {"num_predict": 3, "temperature": 0}}).json()
    assert r["eval_count"] == 3 and r["done_reason"] == "length"
    r = server.http().post("/api/generate", json={"model": MODEL, "prompt": "Say hi.", "stream": False,
                                                  "options": {"num_predict": -1, "temperature": 0}}).json()
    assert r["done_reason"] == "stop"


def test_empty_requests_load_and_unload(make_server, smollm2_gguf):
    srv = make_server()
    srv.import_smollm2(smollm2_gguf)
    with srv.http() as http:
        r = http.post("/api/generate", json={"model": MODEL}).json()
        assert r["done_reason"] == "load" and r["response"] == ""
        assert [m["model"] for m in http.get("/api/ps").json()["models"]] == [MODEL]
        r = http.post("/api/chat", json={"model": MODEL, "messages": [], "keep_alive": 0}).json()
        assert r["done_reason"] == "unload"
        assert http.get("/api/ps").json()["models"] == []
        http.post("/api/generate", json={"model": MODEL, "keep_alive": "1s"})
        time.sleep(2.5)
        assert http.get("/api/ps").json()["models"] == []


def _stream_times(url: str, prompt: str, n: int, out: list, barrier: threading.Barrier | None = None) -> None:
    body = {"model": MODEL, "prompt": prompt, "options": {"temperature": 0, "num_predict": n}}
    times = []
    if barrier:
        barrier.wait()
    with httpx.stream("POST", f"{url}/api/generate", json=body, timeout=120) as r:
        for line in r.iter_lines():
            if line.strip() and not json.loads(line).get("done"):
                times.append(time.monotonic())
    out.append(times)


def test_parallel_streams_interleave_and_all_finish(make_server, smollm2_gguf):
    """Four streams on one runner are decoded together: each gets tokens before any finishes, all
    finish, none is dropped.  Speed is bench/'s business: next to a busy neighbour llama.cpp slows down
    many times over, so a speed ratio here fails on a shared machine (issue 12)."""
    srv = make_server(OLLAMA_NUM_PARALLEL="4")
    srv.import_smollm2(smollm2_gguf)
    n = 48
    prompts = ["Write about the sea.", "Write about a forest.", "Write about a city.", "Write about space."]
    srv.http().post("/api/generate", json={"model": MODEL, "prompt": "hi", "options": {"num_predict": 1}})
    results: list = []
    barrier = threading.Barrier(4)
    threads = [threading.Thread(target=_stream_times, args=(srv.url, p, n, results, barrier)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(len(t) >= n * 0.5 for t in results)
    # Interleaved: every stream produced tokens before any of them finished.
    first_finish = min(t[-1] for t in results)
    assert all(t[0] < first_finish for t in results)


def test_bounded_queue_answers_503_and_drops_nothing(make_server, smollm2_gguf):
    srv = make_server(OLLAMA_MAX_QUEUE="2", OLLAMA_NUM_PARALLEL="1")
    srv.import_smollm2(smollm2_gguf)
    srv.http().post("/api/generate", json={"model": MODEL, "prompt": "hi", "options": {"num_predict": 1}})
    statuses: list = []

    def one() -> None:
        r = httpx.post(f"{srv.url}/api/generate", timeout=120, json={
            "model": MODEL, "prompt": "Tell me about dogs.", "stream": False, "options": {"num_predict": 16}})
        statuses.append((r.status_code, r.json()))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(statuses) == 8
    busy = [body for code, body in statuses if code == 503]
    ok = [body for code, body in statuses if code == 200]
    assert busy and ok and len(busy) + len(ok) == 8
    assert all(b == {"error": "server busy, please try again.  maximum pending requests exceeded"} for b in busy)
    assert all(b["done"] and b["eval_count"] > 0 for b in ok)


def _runner_pids(server_pid: int) -> list[int]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if b"runner" in cmd and ppid == server_pid:
            out.append(int(pid))
    return out


def test_killed_runner_fails_request_and_server_recovers(make_server, smollm2_gguf):
    srv = make_server()
    srv.import_smollm2(smollm2_gguf)
    body = {"model": MODEL, "prompt": "Write a long essay about rivers.", "options": {"num_predict": 400}}
    lines = []
    with httpx.stream("POST", f"{srv.url}/api/generate", json=body, timeout=120) as r:
        for line in r.iter_lines():
            lines.append(json.loads(line))
            if len(lines) == 5:
                [pid] = _runner_pids(srv.proc.pid)
                os.kill(pid, signal.SIGKILL)
    assert "error" in lines[-1] and "killed" in lines[-1]["error"], lines[-1]
    r = srv.http().post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 3}})
    assert r.status_code == 200 and r.json()["eval_count"] == 3


def test_client_disconnect_frees_the_slot(make_server, smollm2_gguf):
    srv = make_server(OLLAMA_NUM_PARALLEL="1")
    srv.import_smollm2(smollm2_gguf)
    body = {"model": MODEL, "prompt": "Write a very long essay about mountains.", "options": {"num_predict": 20000}}
    with httpx.stream("POST", f"{srv.url}/api/generate", json=body, timeout=120) as r:
        for i, _line in enumerate(r.iter_lines()):
            if i == 3:
                break
    t0 = time.monotonic()
    r = srv.http().post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                               "options": {"num_predict": 2}})
    # The abandoned generation would hold the only slot for minutes even on a quiet machine; the
    # bound is that, not a speed (a busy neighbour may slow these two tokens down many times over).
    assert r.status_code == 200 and r.json()["eval_count"] == 2 and time.monotonic() - t0 < 120


def test_embed_without_truncation_refuses_long_input(server):
    small = {"num_ctx": 256}
    r = server.http().post("/api/embed", json={"model": MODEL, "input": "word " * 400, "truncate": False,
                                               "options": small})
    assert r.status_code == 400 and "exceeds the context length" in r.json()["error"]
    r = server.http().post("/api/embed", json={"model": MODEL, "input": "word " * 400, "options": small})
    assert r.status_code == 200 and len(r.json()["embeddings"][0]) == 576


def test_long_history_is_truncated_from_the_oldest_messages(server):
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"Remember fact number {i}: the sky has {i} clouds today."},
                    {"role": "assistant", "content": f"Noted fact {i}."}]
    messages = [{"role": "system", "content": "You are terse."}, *history,
                {"role": "user", "content": "What is the capital of France?"}]
    r = server.http().post("/api/chat", json={"model": MODEL, "messages": messages, "stream": False,
                                              "options": {"num_ctx": 512, "temperature": 0, "num_predict": 12}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prompt_eval_count"] <= 512 and body["message"]["content"]
    assert "truncated" in server.log() and "oldest message(s)" in server.log()


def test_request_right_after_a_cancelled_stream_is_served(make_server, smollm2_gguf):
    """A cancel and the next completion arriving together must not strand the second one."""
    srv = make_server(OLLAMA_NUM_PARALLEL="1")
    srv.import_smollm2(smollm2_gguf)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
            "options": {"num_predict": 300}}
    for _ in range(3):
        with httpx.stream("POST", f"{srv.url}/api/chat", json=body, timeout=60) as r:
            for i, _line in enumerate(r.iter_lines()):
                if i == 5:
                    break
        r = httpx.post(f"{srv.url}/api/chat", timeout=60, json={
            "model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Hi"}],
            "options": {"num_predict": 3}})
        assert r.status_code == 200 and r.json()["done"]
