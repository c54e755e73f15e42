"""Pull throughput: this server's ``/api/pull`` vs ``curl`` fetching the same blobs, side by side.

A loopback ``docker-registry`` (Debian's package, started here with a temporary storage folder)
holds a model made of the bundled SmolLM2 GGUF plus a random blob of ``--extra-mb`` MB.  Each round
runs, one after the other, never at the same time:

* curl: one ``curl`` process fetching the manifest and every blob to files (plain, no fsync), and the
  same followed by an fsync of each file (our pull fsyncs before renaming a blob into place);
* ours: ``POST /api/pull`` on a real ``ollama serve`` into an empty models folder (manifest, ranged
  parallel parts, streaming sha256, fsync, rename, manifest write).

The headline is the median of our throughput over curl's (target >= 0.8).  Curl neither hashes nor
syncs, so the script also prints a ceiling: the best ratio any client could reach that does curl's
work plus one sha256 pass over every byte (which cannot be split across cores), given this machine's
measured sha256 speed, the CPU the registry and curl used, and the number of cores.  Results are
appended to bench/RESULTS.md under "## Pull throughput".

    python bench/bench_pull.py [--rounds 5] [--extra-mb 1024] [--streams 4]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appliance.assets.default_model import bundled_gguf  # noqa: E402
from appliance.store import registry  # noqa: E402
from appliance.store.distribution import TransferSettings  # noqa: E402
from appliance.store.local import Store  # noqa: E402
from appliance.store.manifests import MEDIA_CONFIG, MEDIA_MODEL, Layer, Manifest  # noqa: E402
from appliance.store.names import parse_name  # noqa: E402
from tests.fixtures.registries import DockerRegistry, free_port  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
SECTION = "## Pull throughput"


def publish(work: Path, reg: DockerRegistry, extra_mb: int) -> tuple[str, list[tuple[str, int]], bytes]:
    """Push the benchmark model; its name, (digest, size) of every blob, and the manifest bytes."""
    store = Store(work / "source")
    store.ensure_dirs()
    layers = []
    gguf = bundled_gguf()
    if gguf is not None:
        digest, size, _ = store.blobs.put_file(gguf)
        layers.append(Layer(MEDIA_MODEL, digest, size))
    if extra_mb:
        with store.blobs.open_writer() as writer:
            for _ in range(extra_mb):
                writer.write(os.urandom(1 << 20))
            digest, _ = writer.commit()
        layers.append(Layer(MEDIA_MODEL, digest, extra_mb << 20))
    config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
    config_digest, _ = store.blobs.put_bytes(config)
    name = parse_name(f"127.0.0.1:{reg.port}/bench/pull:latest")
    store.write_manifest(name, Manifest(Layer(MEDIA_CONFIG, config_digest, len(config)), tuple(layers)))
    trio.run(lambda: registry.push(store, name, True, lambda _: None, settings=TransferSettings()))
    manifest = store.manifests.find_path(name).read_bytes()  # type: ignore[union-attr]
    config_layer = Layer(MEDIA_CONFIG, config_digest, len(config))
    blobs = [(layer.digest, layer.size) for layer in (*layers, config_layer)]
    shutil.rmtree(work / "source")
    return str(name), blobs, manifest


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


Run = tuple[float, float]  # seconds, CPU seconds


def curl_round(reg: DockerRegistry, blobs: list[tuple[str, int]], out: Path, fsync: bool,
               registry_cpu: list[float] | None = None) -> Run:
    """Seconds and CPU seconds for one curl fetch of the manifest and every blob."""
    out.mkdir(parents=True, exist_ok=True)
    args = ["curl", "-sSf", "-H", "Accept: application/vnd.docker.distribution.manifest.v2+json",
            "-o", str(out / "manifest"), f"{reg.url}/v2/bench/pull/manifests/latest"]
    for digest, _ in blobs:
        args += ["-o", str(out / digest.replace(":", "-")), f"{reg.url}/v2/bench/pull/blobs/{digest}"]
    assert reg.proc is not None
    started, cpu, served = time.perf_counter(), children_cpu(), process_cpu(reg.proc.pid)
    subprocess.run(args, check=True)
    cpu = children_cpu() - cpu
    if registry_cpu is not None:
        registry_cpu.append(process_cpu(reg.proc.pid) - served)
    if fsync:
        for path in out.iterdir():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
    elapsed = time.perf_counter() - started
    shutil.rmtree(out)
    return elapsed, cpu


class Server:
    def __init__(self, home: Path, streams: int) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
        env.update(OLLAMA_HOST=f"127.0.0.1:{self.port}", OLLAMA_MODELS=str(home / "models"), HOME=str(home),
                   OLLAMA_MAX_TRANSFER_STREAMS=str(streams))
        home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve"], env=env,
                                     stdout=open(home / "server.log", "ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError("server did not start")

    def pull_round(self, name: str) -> Run:
        """Seconds and server CPU seconds for one pull into an empty models folder."""
        shutil.rmtree(self.home / "models" / "blobs", ignore_errors=True)
        shutil.rmtree(self.home / "models" / "manifests", ignore_errors=True)
        started, cpu = time.perf_counter(), process_cpu(self.proc.pid)
        reply = httpx.post(f"{self.url}/api/pull", json={"model": name, "insecure": True, "stream": False},
                           timeout=600)
        elapsed = time.perf_counter() - started
        if reply.status_code != 200:
            raise RuntimeError(reply.text)
        return elapsed, process_cpu(self.proc.pid) - cpu

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def sha256_rate() -> float:
    """Bytes per second one core hashes (hashlib, 8 MiB updates, the best of three)."""
    data = os.urandom(8 << 20)
    best = 0.0
    for _ in range(3):
        h, started = hashlib.sha256(), time.perf_counter()
        for _ in range(32):
            h.update(data)
        best = max(best, 32 * len(data) / (time.perf_counter() - started))
    return best


def ceiling(total: int, curl: list[Run], registry_cpu: list[float], hash_rate: float) -> float:
    """The best ours/curl ratio for a client doing curl's work plus a sha256 on this machine.

    Its time is at least the hash's (one core, sequential) and at least all the CPU work -- the
    registry's, curl's own receive-and-write, the hash -- spread perfectly over every core."""
    curl_s = statistics.median(t for t, _ in curl)
    work = statistics.median(registry_cpu) + statistics.median(c for _, c in curl) + total / hash_rate
    return curl_s / max(total / hash_rate, work / (os.cpu_count() or 1))


def report(args: argparse.Namespace, count: int, total: int, runs: dict[str, list[Run]],
           registry_cpu: list[float], hash_rate: float) -> str:
    """The Markdown entry: throughput and CPU per GB for each contender, and the headline ratio."""
    mbps = {k: [total / t / 1e6 for t, _ in v] for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) / (total / 1e9) for k, v in runs.items()}
    ours, curl, synced = mbps["ollama-appliance /api/pull"], mbps["curl"], mbps["curl + fsync"]
    ratio = statistics.median(o / c for o, c in zip(ours, curl, strict=True))
    ratio_synced = statistics.median(o / c for o, c in zip(ours, synced, strict=True))
    lines = [
        f"### {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        "",
        f"`python bench/bench_pull.py --rounds {args.rounds} --extra-mb {args.extra_mb} "
        f"--streams {args.streams}` ({count} blobs, {total / 1e6:.0f} MB; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f} at the end; {platform.python_implementation()} "
        f"{platform.python_version()}; loopback docker-registry)",
        "",
        "| | median MB/s | runs (MB/s) | CPU s per GB |",
        "|---|---|---|---|",
        *(f"| {k} | {statistics.median(v):.0f} | {', '.join(f'{x:.0f}' for x in v)} | {cpu[k]:.2f} |"
          for k, v in mbps.items()),
        "",
        f"Ratio (median of per-round ours/curl): **{ratio:.2f}** (vs curl + fsync: {ratio_synced:.2f}); "
        "target >= 0.8.",
        "",
        f"Ceiling for any client that also hashes (sha256 {hash_rate / 1e6:.0f} MB/s on one core here, "
        "registry "
        f"{statistics.median(registry_cpu) / (total / 1e9):.2f} CPU s per GB while serving curl, "
        f"{os.cpu_count()} cores): **{ceiling(total, runs['curl'], registry_cpu, hash_rate):.2f}**.",
        "",
    ]
    return "\n".join(lines)


def append_results(text: str) -> None:
    existing = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    if SECTION not in existing:
        existing = existing.rstrip("\n") + f"\n\n{SECTION}\n"
        RESULTS.write_text(existing + "\n" + text)
        return
    head, _, rest = existing.partition(SECTION)
    next_section = rest.find("\n## ")
    body, tail = (rest, "") if next_section < 0 else (rest[:next_section], rest[next_section:])
    RESULTS.write_text(head + SECTION + body.rstrip("\n") + "\n\n" + text + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--extra-mb", type=int, default=1024, help="size of the random blob added to SmolLM2")
    parser.add_argument("--streams", type=int, default=4, help="OLLAMA_MAX_TRANSFER_STREAMS for our server")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()
    if not DockerRegistry.available() or shutil.which("curl") is None:
        sys.exit("needs docker-registry and curl: sh scripts/test-deps.sh")
    with tempfile.TemporaryDirectory(prefix="bench-pull-") as tmp:
        work = Path(tmp)
        reg = DockerRegistry(work / "registry").start()
        server = None
        try:
            name, blobs, _ = publish(work, reg, args.extra_mb)
            total = sum(size for _, size in blobs)
            server = Server(work / "server", args.streams)
            curl_round(reg, blobs, work / "curl", False)  # warm the registry's page cache
            server.pull_round(name)
            registry_cpu: list[float] = []
            plain: list[Run] = []
            synced: list[Run] = []
            ours: list[Run] = []
            for _ in range(args.rounds):
                plain.append(curl_round(reg, blobs, work / "curl", False, registry_cpu))
                synced.append(curl_round(reg, blobs, work / "curl", True))
                ours.append(server.pull_round(name))
        finally:
            if server is not None:
                server.stop()
            reg.stop()
    text = report(args, len(blobs), total, {"curl": plain, "curl + fsync": synced,
                                             "ollama-appliance /api/pull": ours}, registry_cpu, sha256_rate())
    print(text)
    if not args.no_record:
        append_results(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
