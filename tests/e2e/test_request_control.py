"""Request ids, ``GET /api/requests`` and ``DELETE /api/requests/<id>`` on a real server.

With one slot (OLLAMA_NUM_PARALLEL=1) a counting generation runs and a second request queues behind
it; the list shows both, cancelling the queued one ends it with ``done_reason: "cancelled"`` without
it ever running, cancelling the running one stops its stream mid-way with the same final object, and
the freed slot serves the next request.  ``ollama ps -a`` shows the same list.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from tests.conftest import Server

MODEL = "smollm2:135m"
#: Counts for as long as it is allowed to: a generation that is still running when it is cancelled.
COUNTING = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
            "options": {"num_predict": 4000, "temperature": 0}}


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if result := condition():
                return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


class Call(threading.Thread):
    """A POST in a thread: its status, headers and NDJSON lines (one line for ``stream: false``)."""

    def __init__(self, url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.headers = url, body, headers or {}
        self.status: int | None = None
        self.response_headers: httpx.Headers | None = None
        self.lines: list[dict[str, Any]] = []
        self.start()

    def run(self) -> None:
        with httpx.stream("POST", self.url, json=self.body, headers=self.headers,
                          timeout=httpx.Timeout(120, connect=10)) as response:
            self.status, self.response_headers = response.status_code, response.headers
            for line in response.iter_lines():
                if line.strip():
                    self.lines.append(json.loads(line))

    def result(self, timeout_s: float = 120) -> Call:
        self.join(timeout_s)
        assert not self.is_alive(), f"{self.url} still answering after {timeout_s:g}s"
        return self


def listed(server: Server) -> dict[str, dict[str, Any]]:
    reply = httpx.get(f"{server.url}/api/requests", timeout=30)
    assert reply.status_code == 200, reply.text
    return {r["id"]: r for r in reply.json()["requests"]}


def test_queued_and_running_generations_are_listed_and_cancelled(make_server, smollm2_gguf):
    server = make_server(OLLAMA_NUM_PARALLEL="1", OLLAMA_KEEP_ALIVE="10m")
    server.import_smollm2(smollm2_gguf)
    running = Call(f"{server.url}/api/generate", COUNTING, {"X-Request-Id": "count-1"})
    wait_for(lambda: len(running.lines) >= 3, 180, "the first generation to stream tokens")
    queued = Call(f"{server.url}/api/chat", {"model": MODEL, "stream": False,
                                             "messages": [{"role": "user", "content": "Hello"}]},
                  {"X-Request-Id": "chat-2"})
    wait_for(lambda: "chat-2" in listed(server), 60, "the chat to be listed")

    now = listed(server)
    assert set(now) == {"count-1", "chat-2"}
    first, second = now["count-1"], now["chat-2"]
    assert (first["state"], first["route"], first["model"], first["client"]) == (
        "running", "/api/generate", MODEL, "127.0.0.1")
    assert first["tokens"] >= 2 and first["age_seconds"] > 0
    assert (second["state"], second["route"], second["tokens"]) == ("queued", "/api/chat", 0)
    assert [r["id"] for r in httpx.get(f"{server.url}/api/requests").json()["requests"]] == ["count-1", "chat-2"]

    table = server.cli("ps", "-a").stdout
    assert re.search(r"^count-1\s+smollm2:135m\s+/api/generate\s+running\s+\d+s\s+\d+\s+127\.0\.0\.1$", table, re.M), table
    assert re.search(r"^chat-2\s+smollm2:135m\s+/api/chat\s+queued\s+\d+s\s+0\s+127\.0\.0\.1$", table, re.M), table
    assert "REQUEST" not in server.cli("ps").stdout  # the plain view stays Ollama's

    # The queued chat leaves the queue: its (non-streamed) answer is the final object, never run.
    cancel = httpx.delete(f"{server.url}/api/requests/chat-2", timeout=30)
    assert cancel.status_code == 200 and cancel.json() == {"id": "chat-2", "status": "cancelled", "state": "queued"}
    queued.result(60)
    assert queued.status == 200 and queued.response_headers["X-Request-Id"] == "chat-2"
    [answer] = queued.lines
    assert answer["done"] is True and answer["done_reason"] == "cancelled", answer
    assert answer["message"] == {"role": "assistant", "content": ""} and answer["eval_count"] == 0
    assert set(listed(server)) == {"count-1"}
    assert running.is_alive(), "cancelling the queued request left the running one alone"

    # The running generation stops mid-stream, with a final object counting what it sent.
    before = len(running.lines)
    cancel = httpx.delete(f"{server.url}/api/requests/count-1", timeout=30)
    assert cancel.status_code == 200 and cancel.json()["state"] == "running"
    running.result(60)
    assert running.status == 200 and running.response_headers["X-Request-Id"] == "count-1"
    *tokens, last = running.lines
    assert len(running.lines) >= before
    assert last["done"] is True and last["done_reason"] == "cancelled", last
    assert not any(line.get("done") for line in tokens) and not any("error" in line for line in running.lines)
    assert last["eval_count"] == len([t for t in tokens if t["response"]]) < 4000
    assert listed(server) == {}

    # Gone: a second cancel, and an id that never was, are 404s in Ollama's shape.
    for request_id in ("count-1", "no-such-request"):
        reply = httpx.delete(f"{server.url}/api/requests/{request_id}", timeout=30)
        assert reply.status_code == 404 and reply.json() == {"error": f"request '{request_id}' not found"}

    # The slot is free again, and the runner still serves.
    reply = httpx.post(f"{server.url}/api/generate", timeout=120,
                       json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 3}})
    assert reply.status_code == 200 and reply.json()["done_reason"] == "length", reply.text


def test_every_response_carries_a_request_id(server):
    with server.http() as http:
        ids = {http.get("/api/version").headers["X-Request-Id"] for _ in range(5)}
        assert len(ids) == 5 and all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)
        assert http.get("/api/tags", headers={"X-Request-Id": "trace-abc.1:2"}).headers["X-Request-Id"] == "trace-abc.1:2"
        for insane in ("x" * 65, "two words", "-leading-dash", "semi;colon"):  # replaced, not echoed
            got = http.get("/api/tags", headers={"X-Request-Id": insane}).headers["X-Request-Id"]
            assert re.fullmatch(r"[0-9a-f]{12}", got), (insane, got)
        missing = http.get("/api/nothing-here")
        assert missing.status_code == 404 and re.fullmatch(r"[0-9a-f]{12}", missing.headers["X-Request-Id"])
        # A generation is listed under the id its response names, and only while it runs.
        reply = http.post("/api/generate", headers={"X-Request-Id": "one-shot"},
                          json={"model": MODEL, "prompt": "Hi", "stream": False, "options": {"num_predict": 2}})
        assert reply.status_code == 200 and reply.headers["X-Request-Id"] == "one-shot"
        assert "one-shot" not in listed(server)
    assert re.search(r"request one-shot: POST /api/generate 200 ", server.log()), "requests are logged with their id"
