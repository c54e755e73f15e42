"""Start-up time of the ``ollama`` command: the one-file binary against ``python -m appliance``.

    .venv/bin/python bench/bench_startup.py [--runs 21] [--binary dist/ollama] [--write]

Every CLI command is a process of its own, so its start-up is the latency a user feels; the target
for the one-file binary is a median of 0.3 s for ``ollama -v`` and ``ollama list``.  Measured, in
one run, against one server on a free port (with smollm2:135m imported so ``list`` prints a row):

* the one-file binary with its unpacked copy cached (every start but the first),
* the one-folder build it carries (dist/ollama-<flavor>.d/ollama: what the launcher execs),
* ``python -m appliance`` from the checkout's virtual environment,
* the binary's first start (unpacking into an empty cache) and its start without a writable cache
  (unpacked into a temporary folder every time, as a plain PyInstaller one-file build does).

Wall times are medians (and minima) of N runs.  CPU time (user + sys of the command, median) is
reported too: a shared, loaded machine stretches wall time but hardly CPU time, and the load
average is recorded next to the figures.  ``--write`` replaces the "## Start-up (frozen binary)"
section of bench/RESULTS.md, keeping the others.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
HEADING = "## Start-up (frozen binary)"
TARGET_S = 0.3


@dataclass(frozen=True)
class Timing:
    wall: list[float]
    cpu: list[float]

    def cell(self) -> str:
        return (f"{statistics.median(self.wall):.3f} s (min {min(self.wall):.3f}); "
                f"CPU {statistics.median(self.cpu):.3f} s")


def run_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of one run of ``argv``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr or done.stdout}")
    return elapsed, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def time_interleaved(jobs: dict[str, tuple[list[str], dict[str, str]]], runs: int,
                     warmup: int = 1) -> dict[str, Timing]:
    """Time every job ``runs`` times, one run of each per round, so that load changes hit all alike."""
    samples: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in jobs}
    for i in range(warmup + runs):
        for name, (argv, env) in jobs.items():
            wall, cpu = run_once(argv, env)
            if i >= warmup:
                samples[name][0].append(wall)
                samples[name][1].append(cpu)
    return {name: Timing(wall, cpu) for name, (wall, cpu) in samples.items()}


def time_command(argv: list[str], env: dict[str, str], runs: int,
                 prepare: Callable[[], None] | None = None) -> Timing:
    wall, cpu = [], []
    for _ in range(runs):
        if prepare is not None:
            prepare()
        w, c = run_once(argv, env)
        wall.append(w)
        cpu.append(c)
    return Timing(wall, cpu)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(home: Path) -> Iterator[dict[str, str]]:
    """A ``python -m appliance serve`` with smollm2:135m imported; yields the clients' environment."""
    from appliance.assets.default_model import bundled_gguf, modelfile

    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update({"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "OLLAMA_MODELS": str(home / "models"),
                "HOME": str(home)})
    log = open(home / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        url = f"http://{env['OLLAMA_HOST']}"
        for _ in range(300):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url, timeout=1).status_code == 200:
                    break
            if server.poll() is not None:
                raise RuntimeError((home / "server.log").read_text())
            time.sleep(0.1)
        gguf = bundled_gguf()
        if gguf is not None:
            (home / "Modelfile").write_text(modelfile(gguf))
            subprocess.run([sys.executable, "-m", "appliance", "create", "smollm2:135m", "-f",
                            str(home / "Modelfile")], env=env, check=True, capture_output=True, timeout=300)
        yield env
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def measure(binary: Path, runs: int) -> tuple[dict[str, dict[str, Timing]], dict[str, str]]:
    onedir = next(binary.parent.glob("ollama-*.d/ollama"), None)
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    facts: dict[str, str] = {"load_before": " ".join(f"{x:.1f}" for x in os.getloadavg())}
    table: dict[str, dict[str, Timing]] = {}
    try:
        (work / "home").mkdir()
        with running_server(work / "home") as env:
            cached = {**env, "XDG_CACHE_HOME": str(work / "cache")}
            variants: dict[str, tuple[list[str], dict[str, str]]] = {
                "one-file binary": ([str(binary)], cached)}
            if onedir is not None:
                variants["one-folder build"] = ([str(onedir)], env)
            variants["python -m appliance"] = ([sys.executable, "-m", "appliance"], env)
            jobs = {f"{label}\0{args}": ([*prefix, *args.split()], variant_env)
                    for label, (prefix, variant_env) in variants.items() for args in ("-v", "list")}
            for name, timing in time_interleaved(jobs, runs).items():
                label, args = name.split("\0")
                table.setdefault(label, {})[args] = timing
            fresh = work / "fresh"

            def empty_cache() -> None:
                shutil.rmtree(fresh, ignore_errors=True)

            first_runs = max(3, runs // 5)
            facts["first start"] = time_command([str(binary), "-v"], {**env, "XDG_CACHE_HOME": str(fresh)},
                                                first_runs, prepare=empty_cache).cell()
            facts["no writable cache"] = time_command(
                [str(binary), "-v"], {**env, "XDG_CACHE_HOME": "/proc/no-cache", "TMPDIR": str(work)},
                first_runs).cell()
            runtime = work / "cache" / "ollama-appliance" / "runtime"
            unpacked = next(p for p in runtime.iterdir() if p.is_dir())
            facts["unpacked size"] = f"{folder_size(unpacked) / 1e6:.0f} MB"
            facts["key"] = unpacked.name
    finally:
        shutil.rmtree(work, ignore_errors=True)
    facts["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    facts["binary size"] = f"{binary.stat().st_size / 1e6:.1f} MB"
    return table, facts


def report(table: dict[str, dict[str, Timing]], facts: dict[str, str], runs: int, command: str) -> str:
    labels = list(table)
    binary = table["one-file binary"]
    met = all(statistics.median(binary[a].wall) <= TARGET_S for a in ("-v", "list"))
    cpu_model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    lines = [
        HEADING,
        "",
        f"`{command}` on {time.strftime('%Y-%m-%d')}: {cpu_model}, {os.cpu_count()} cores, load average "
        f"{facts['load_before']} before and {facts['load_after']} after (1/5/15 min); {runs} rounds after "
        "one warm-up, each round running every command once (so load changes hit all alike); a server on "
        "a free port with smollm2:135m imported. Wall time median (min), and the median CPU time "
        "(user + sys) of the command.",
        "",
        "| command | " + " | ".join(labels) + " |",
        "|---" * (len(labels) + 1) + "|",
    ]
    for args in ("-v", "list"):
        cells = " | ".join(table[label][args].cell() for label in labels)
        lines.append(f"| `ollama {args}` | {cells} |")
    lines += [
        "",
        f"- first start of the binary (unpacking into an empty cache), `ollama -v`: {facts['first start']}",
        f"- binary without a writable cache (unpacked into a temporary folder at every start, like a plain "
        f"PyInstaller one-file build): {facts['no writable cache']}",
        f"- binary size {facts['binary size']} (`{facts['key']}`); unpacked {facts['unpacked size']}",
        f"- target: median <= {TARGET_S} s for `ollama -v` and `ollama list` from the one-file binary: "
        f"{'met' if met else 'NOT met'} in this run",
        "- where a client command's CPU goes (profiled): interpreter start ~0.07 s; httpx and the stdlib "
        "it pulls in (urllib.request, http.client, email) ~0.08 s; no SSL context or CA bundle for a "
        "server on a loopback http:// address (that used to cost ~0.05 s); interpreter teardown is skipped "
        "(appliance/boot.py). On a loaded machine wall time exceeds CPU time by the wait for a core.",
        "",
    ]
    return "\n".join(lines)


def write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    start = text.find(HEADING + "\n")
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + section
    else:
        end = text.find("\n## ", start + len(HEADING))
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    RESULTS.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=21)
    parser.add_argument("--binary", type=Path, default=ROOT / "dist" / "ollama")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.relative_to(ROOT)}")
    args = parser.parse_args()
    if not args.binary.is_file():
        sys.stderr.write(f"{args.binary} does not exist: sh scripts/build-binary.sh\n")
        return 1
    table, facts = measure(args.binary.resolve(), args.runs)
    command = "python bench/bench_startup.py " + " ".join(sys.argv[1:])
    section = report(table, facts, args.runs, command.strip())
    print(section)
    if args.write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
