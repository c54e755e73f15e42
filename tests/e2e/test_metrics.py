"""``GET /metrics`` on a real server, read with prometheus-client's own parser after real traffic.

A chat, an embed, a failed chat and a request no route serves move exactly the counters they should;
a runner killed with SIGKILL counts as a crash and its replacement as a start; a pull from a real
registry (Debian's docker-registry) counts every byte of the model's blobs.
"""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server
from tests.fixtures.faults import children, cmdline
from tests.fixtures.registries import DockerRegistry

MODEL = "smollm2:135m"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: Server) -> Samples:
    reply = httpx.get(f"{server.url}/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain"), reply.text
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def runner_pids(server: Server) -> list[int]:
    assert server.proc is not None
    return [pid for pid in children(server.proc.pid) if " runner" in cmdline(pid)]


def test_counters_move_with_real_traffic(make_server, smollm2_gguf):
    server = make_server(OLLAMA_KEEP_ALIVE="10m")
    server.import_smollm2(smollm2_gguf)
    before = scrape(server)
    assert value(before, "ollama_models_loaded") == 0 and value(before, "ollama_queue_depth") == 0

    with server.http() as http:
        chat = http.post("/api/chat", json={"model": MODEL, "stream": False, "options": {"num_predict": 5},
                                            "messages": [{"role": "user", "content": "Name a colour."}]})
        assert chat.status_code == 200, chat.text
        embed = http.post("/api/embed", json={"model": MODEL, "input": ["one", "two"]})
        assert embed.status_code == 200, embed.text
        missing = http.post("/api/chat", json={"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})
        assert missing.status_code == 404
        assert http.get("/no/such/route/12345").status_code == 404
    after = scrape(server)

    requests = "ollama_http_requests_total"
    assert moved(before, after, requests, method="POST", route="/api/chat", status="200") == 1
    assert moved(before, after, requests, method="POST", route="/api/embed", status="200") == 1
    assert moved(before, after, requests, method="POST", route="/api/chat", status="404") == 1
    assert moved(before, after, requests, method="GET", route="unmatched", status="404") == 1
    assert not any(name == requests and ("route", "/no/such/route/12345") in labels for name, labels in after)
    # The scrape before was counted once the scrape itself ended.
    assert moved(before, after, requests, method="GET", route="/metrics", status="200") == 1
    latency = "ollama_http_request_duration_seconds"
    assert moved(before, after, f"{latency}_count", method="POST", route="/api/chat") == 2
    assert moved(before, after, f"{latency}_sum", method="POST", route="/api/chat") > 0
    assert value(after, f"{latency}_bucket", method="POST", route="/api/chat", le="+Inf") == 2

    answer = chat.json()
    assert moved(before, after, "ollama_prompt_tokens_total", model=MODEL) == answer["prompt_eval_count"] > 0
    assert moved(before, after, "ollama_generated_tokens_total", model=MODEL) == answer["eval_count"] == 5
    assert moved(before, after, "ollama_time_to_first_token_seconds_count", model=MODEL) == 1
    assert moved(before, after, "ollama_generation_tokens_per_second_count", model=MODEL) == 1
    assert value(after, "ollama_generation_tokens_per_second_sum", model=MODEL) > 0

    assert value(after, "ollama_models_loaded") == 1 and value(after, "ollama_queue_depth") == 0
    assert value(after, "ollama_model_memory_bytes", model=MODEL) > smollm2_gguf.stat().st_size
    assert value(after, "ollama_runner_starts_total", model=MODEL) == 1  # the chat's runner served the embed
    assert value(after, "ollama_runner_crashes_total", model=MODEL) == 0

    # A runner killed from outside is a crash; the next request starts another.
    [runner] = runner_pids(server)
    os.kill(runner, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while value(scrape(server), "ollama_runner_crashes_total", model=MODEL) == 0:
        assert time.monotonic() < deadline, "the crash was never counted"
        time.sleep(0.1)
    crashed = scrape(server)
    assert value(crashed, "ollama_models_loaded") == 0
    with server.http() as http:
        again = http.post("/api/generate", json={"model": MODEL, "prompt": "Hi", "stream": False,
                                                 "options": {"num_predict": 2}})
        assert again.status_code == 200, again.text
    final = scrape(server)
    assert value(final, "ollama_runner_crashes_total", model=MODEL) == 1
    assert value(final, "ollama_runner_starts_total", model=MODEL) == 2
    assert value(final, "ollama_models_loaded") == 1
    assert moved(crashed, final, "ollama_generated_tokens_total", model=MODEL) == 2


@pytest.mark.skipif(not DockerRegistry.available(), reason="docker-registry is not installed (scripts/test-deps.sh)")
def test_a_pull_counts_every_byte_it_downloads(make_server, smollm2_gguf, tmp_path_factory):
    registry = DockerRegistry(tmp_path_factory.mktemp("registry")).start()
    try:
        origin = make_server()
        name = f"localhost:{registry.port}/library/smollm2:135m"
        origin.import_smollm2(smollm2_gguf, name=name)
        origin.cli("push", "--insecure", name)
        target = make_server()
        before = scrape(target)
        target.cli("pull", "--insecure", name)
        after = scrape(target)
    finally:
        registry.stop()
    stored = sum(blob.stat().st_size for blob in (target.models / "blobs").iterdir())
    assert stored > smollm2_gguf.stat().st_size
    assert moved(before, after, "ollama_pull_bytes_total") == stored
    assert moved(before, after, "ollama_http_requests_total", method="POST", route="/api/pull", status="200") == 1
    assert value(scrape(origin), "ollama_pull_bytes_total") == 0  # a push downloads nothing
