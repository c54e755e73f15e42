"""One model over several llama.cpp RPC workers (``ollama worker`` + OLLAMA_RPC_SERVERS), all real
processes on loopback: two workers on their own ports, a server spreading SmolLM2's layers over them.

Checked: the layers land on both workers (the runner's load log in the server log, /api/ps, ``ollama
ps``) and the greedy text is the local one; a worker killed mid-stream ends that request with an error
naming it, and the next request loads without it; an unreachable worker at load is logged and left
out; the worker command warns when bound beyond loopback and fails clearly on a taken port.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, free_port

GREEDY = {"temperature": 0, "seed": 42, "num_predict": 16}
PROMPT = "Why is the sky blue?"
MODEL = "smollm2:135m"


class Worker:
    """A real ``ollama worker`` on a loopback port (one CPU thread: two share this machine)."""

    def __init__(self, home: Path) -> None:
        self.port = free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.log_path = home / f"worker-{self.port}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "worker", "--port", str(self.port),
                                          "--threads", "1"], stdout=log, stderr=subprocess.STDOUT, cwd=home)
        deadline = time.monotonic() + 60
        while "listening on" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[], Worker]]:
    started: list[Worker] = []

    def start() -> Worker:
        started.append(Worker(tmp_path))
        return started[-1]

    yield start
    for worker in started:
        worker.kill()


def generate(server: Server, **extra: Any) -> dict[str, Any]:
    with server.http() as client:
        response = client.post("/api/generate", json={"model": MODEL, "prompt": PROMPT, "stream": False,
                                                      "options": GREEDY, **extra})
    assert response.status_code == 200, response.text
    return dict(response.json())


def running(server: Server) -> dict[str, Any]:
    with server.http(timeout=30) as client:
        models = client.get("/api/ps").json()["models"]
    assert [m["name"] for m in models] == [MODEL]
    return dict(models[0])


def rpc_server(make_server: Callable[..., Server], smollm2_gguf: Path, *endpoints: str) -> Server:
    server = make_server(OLLAMA_RPC_SERVERS=",".join(endpoints), OLLAMA_KEEP_ALIVE="10m")
    server.import_smollm2(smollm2_gguf, MODEL)
    return server


def test_layers_spread_over_two_workers_answer_the_local_text(
        server: Server, make_server: Callable[..., Server], smollm2_gguf: Path,
        workers: Callable[[], Worker]) -> None:
    local = generate(server)["response"]
    a, b = workers(), workers()
    srv = rpc_server(make_server, smollm2_gguf, a.endpoint, b.endpoint)

    assert generate(srv)["response"] == local

    placement = running(srv)["rpc"]
    assert placement["workers"] == sorted([a.endpoint, b.endpoint]) and placement["left_out"] == []
    by_endpoint = {d["endpoint"]: d for d in placement["devices"]}
    assert set(by_endpoint) == {a.endpoint, b.endpoint, ""}  # "" is this machine's CPU (the input layer)
    layers = {e: by_endpoint[e]["layers"] for e in (a.endpoint, b.endpoint)}
    assert all(n > 0 for n in layers.values()), layers
    assert sum(layers.values()) == 31  # SmolLM2-135M: 30 blocks + the output layer, all offloaded
    assert all(by_endpoint[e]["model_bytes"] > 10 << 20 for e in layers)
    assert f"{a.endpoint} {layers[a.endpoint]} layers" in srv.log()
    assert f"{b.endpoint} {layers[b.endpoint]} layers" in srv.log()
    assert "Accepted client connection" in a.log() and "Accepted client connection" in b.log()

    ps = srv.cli("ps").stdout
    assert "RPC 2 workers / CPU" in ps, ps
    assert running(srv)["size_vram"] == 0  # the workers' memory is not this machine's VRAM


def test_worker_killed_mid_stream_fails_that_request_and_the_next_loads_without_it(
        make_server: Callable[..., Server], smollm2_gguf: Path, workers: Callable[[], Worker]) -> None:
    a, b = workers(), workers()
    srv = rpc_server(make_server, smollm2_gguf, a.endpoint, b.endpoint)
    generate(srv)
    assert running(srv)["rpc"]["workers"] == sorted([a.endpoint, b.endpoint])

    lines: list[dict[str, Any]] = []
    with srv.http() as client, client.stream("POST", "/api/generate", json={
            "model": MODEL, "prompt": "1, 2, 3, 4, 5,", "raw": True,
            "options": {"temperature": 0, "num_predict": 2000}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            lines.append(json.loads(line))
            if len(lines) == 3:
                b.kill()
    assert all("error" not in line for line in lines[:3])
    last = lines[-1]
    assert "error" in last and not last.get("done"), last
    assert f"RPC worker {b.endpoint}" in last["error"] and "stopped answering" in last["error"], last
    assert sum(1 for line in lines if line.get("response")) < 2000

    after = generate(srv)
    assert after["done"] and after["eval_count"] > 0
    placement = running(srv)["rpc"]
    assert placement["workers"] == [a.endpoint]
    assert [gone["endpoint"] for gone in placement["left_out"]] == [b.endpoint]
    assert f"RPC worker {b.endpoint} left out of {MODEL}" in srv.log()
    assert "RPC 1 worker / CPU" in srv.cli("ps").stdout


def test_unreachable_worker_at_load_is_logged_and_left_out(
        make_server: Callable[..., Server], smollm2_gguf: Path, workers: Callable[[], Worker]) -> None:
    a = workers()
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    srv = rpc_server(make_server, smollm2_gguf, nobody, a.endpoint)

    assert generate(srv)["eval_count"] > 0
    placement = running(srv)["rpc"]
    assert placement["workers"] == [a.endpoint]
    assert placement["left_out"] == [{"endpoint": nobody, "reason": "Connection refused"}]
    assert f"RPC worker {nobody} left out of {MODEL}: Connection refused" in srv.log()
    assert sum(d["layers"] for d in placement["devices"] if d["endpoint"] == a.endpoint) == 31


def test_bad_worker_endpoints_in_the_environment_are_dropped_with_a_warning(
        make_server: Callable[..., Server]) -> None:
    srv = make_server(OLLAMA_RPC_SERVERS="nonsense,[::1]:50052,127.0.0.1:70000")
    log = srv.log()
    for bad in ("nonsense", "[::1]:50052", "127.0.0.1:70000"):
        assert f"OLLAMA_RPC_SERVERS: '{bad}' is not host:port; left out" in log


def test_worker_beyond_loopback_warns_and_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "appliance", "worker", "--host", "0.0.0.0",
                               "--port", str(port)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 1
    assert "NO authentication" in proc.stderr and "SSH or WireGuard tunnel" in proc.stderr
    assert f"Error: the RPC server on 0.0.0.0:{port} stopped (is the port already in use?)" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "appliance", "worker", "--port", "0"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert bad.returncode == 1 and "Error: port 0 is not between 1 and 65535" in bad.stderr
    unknown = subprocess.run([sys.executable, "-m", "appliance", "worker", "--port", str(free_port()),
                              "--device", "NOPE"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert unknown.returncode == 1
    assert "Error: unknown device 'NOPE'; this machine has: CPU: " in unknown.stderr
