"""Faults against real server processes: a full disk, kill -9 of the server, kill -9 of a runner,
and a large upload's memory.

Every store fault ends with the same checks: the client got a clear error in Ollama's shape, the
store is consistent (no blob whose bytes do not match its name, no manifest naming a missing blob),
nothing is left in ``blobs/`` but resumable ``-partial`` files, the server still answers, and the
interrupted operation succeeds once the fault is gone.  Small disks are tmpfs mounts (the suite runs
as root); the registry is Debian's docker-registry on loopback, behind a throttling proxy so that a
test can act in the middle of a download.  Every client call has a timeout.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import trio

from tests.conftest import Server
from tests.fixtures.faults import (
    children,
    cmdline,
    file_sha256,
    fill_disk,
    leftovers,
    manifests,
    memory_kib,
    reset_peak_memory,
    resize,
    small_disk,
    store_problems,
)
from tests.fixtures.registries import DockerRegistry, ThrottlingProxy
from tests.fixtures.tiny_gguf import write_tiny_llama

pytestmark = pytest.mark.skipif(os.geteuid() != 0 and os.environ.get("CI") != "true",
                                reason="needs root for tmpfs mounts and /proc/<pid>/clear_refs")

REPO = "faults/smollm2"
DISK_FULL = "no space left on device"


# --- fixtures ----------------------------------------------------------------------------------------


class Rig:
    """Servers and small disks for one test, torn down in reverse order (servers before their disks)."""

    def __init__(self, root: Path, stack: contextlib.ExitStack) -> None:
        self.root = root
        self.stack = stack
        self.count = 0

    def server(self, disk: str | None = None, **env: str) -> Server:
        self.count += 1
        home = self.root / f"server{self.count}"
        if disk is not None:
            self.stack.enter_context(small_disk(home / "models", disk))
        server = Server(home, **env)
        self.stack.callback(server.stop)
        return server.start()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with contextlib.ExitStack() as stack:
        yield Rig(tmp_path, stack)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[tuple[DockerRegistry, int]]:
    """docker-registry holding SmolLM2 as ``<host>/faults/smollm2:135m``; (registry, weights size)."""
    if not DockerRegistry.available():
        pytest.fail("docker-registry is not installed (scripts/test-deps.sh installs it)")
    from appliance.store import registry as reg_module
    from appliance.store.local import Store
    from appliance.store.manifests import MEDIA_CONFIG, MEDIA_MODEL, Layer, Manifest
    from appliance.store.names import parse_name

    work = tmp_path_factory.mktemp("publish")
    reg = DockerRegistry(work / "registry").start()
    try:
        store = Store(work / "source")
        store.ensure_dirs()
        digest, size, _ = store.blobs.put_file(smollm2_gguf)
        config = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "Q4_1"}).encode()
        config_digest, _ = store.blobs.put_bytes(config)
        name = parse_name(f"127.0.0.1:{reg.port}/{REPO}:135m")
        store.write_manifest(name, Manifest(Layer(MEDIA_CONFIG, config_digest, len(config)),
                                            (Layer(MEDIA_MODEL, digest, size),)))
        trio.run(lambda: reg_module.push(store, name, True, lambda _: None,
                                         settings=reg_module.TransferSettings()))
        yield reg, size
    finally:
        reg.stop()


# --- helpers -----------------------------------------------------------------------------------------


def file_chunks(path: Path, chunk: int = 1 << 20, delay_s: float = 0.0) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while data := f.read(chunk):
            yield data
            if delay_s:
                time.sleep(delay_s)


def error_of(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    return str(body["error"])


def assert_disk_full(message: str, server: Server) -> None:
    """The cause, named; and no path of the server's (its models folder is no client's business)."""
    assert message.startswith(f"{DISK_FULL}: "), message
    assert str(server.home) not in message, message


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if result := condition():
                return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


class Stream(threading.Thread):
    """A streaming POST in a thread: its status and NDJSON lines, or the transport error that ended it."""

    def __init__(self, url: str, body: dict[str, Any], read_timeout_s: float = 60) -> None:
        super().__init__(daemon=True)
        self.url, self.body, self.read_timeout_s = url, body, read_timeout_s
        self.status: int | None = None
        self.lines: list[dict[str, Any]] = []
        self.failure: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url, json=self.body,
                              timeout=httpx.Timeout(self.read_timeout_s, connect=10)) as response:
                self.status = response.status_code
                for line in response.iter_lines():
                    if line.strip():
                        self.lines.append(json.loads(line))
        except (httpx.HTTPError, ValueError) as exc:
            self.failure = exc

    def result(self, timeout_s: float) -> Stream:
        self.join(timeout_s)
        assert not self.is_alive(), f"stream to {self.url} still open after {timeout_s:g}s"
        return self


def partial_completed(models: Path, digest: str) -> int:
    state = json.loads((models / "blobs" / f"sha256-{digest[7:]}-partial-0").read_text())
    return int(state["Completed"])


def kill9(server: Server) -> None:
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)


def weights_digest(reg: DockerRegistry, size: int) -> str:
    """The digest of the published model's weights (from the registry's manifest)."""
    manifest = httpx.get(f"{reg.url}/v2/{REPO}/manifests/135m", timeout=10,
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"}).json()
    [weights] = [layer for layer in manifest["layers"] if layer["size"] == size]
    return str(weights["digest"])


def assert_consistent(server: Server, *, partial_ok: bool = False) -> None:
    assert store_problems(server.models) == []
    left = leftovers(server.models)
    if partial_ok:
        left = [name for name in left if "-partial" not in name]
    assert left == [], left


# --- a full disk -------------------------------------------------------------------------------------


def test_disk_full_during_a_blob_upload(rig: Rig, smollm2_gguf: Path) -> None:
    server = rig.server(disk="150m")
    filler = fill_disk(server.models, leave=50 << 20)  # the 98 MB model does not fit
    digest, size = file_sha256(smollm2_gguf), smollm2_gguf.stat().st_size
    blob = server.models / "blobs" / f"sha256-{digest[7:]}"
    with server.http(timeout=60) as http:
        declared = http.post(f"/api/blobs/{digest}", content=file_chunks(smollm2_gguf),
                             headers={"Content-Length": str(size)})
        assert declared.status_code == 507
        assert_disk_full(error_of(declared), server)
        chunked = http.post(f"/api/blobs/{digest}", content=file_chunks(smollm2_gguf))  # no length: fills up
        assert chunked.status_code == 507, chunked.text
        assert_disk_full(error_of(chunked), server)
        assert not blob.exists()
        assert_consistent(server)
        assert http.get("/api/tags").status_code == 200
        filler.unlink()
        assert http.post(f"/api/blobs/{digest}", content=file_chunks(smollm2_gguf)).status_code == 201
    assert file_sha256(blob) == digest
    assert_consistent(server)


def test_disk_full_during_a_create(rig: Rig, tmp_path: Path) -> None:
    f32 = write_tiny_llama(tmp_path / "tiny-f32.gguf", n_embd=512, n_ff=2048, n_vocab=4096, dtype=np.float32)
    server = rig.server(disk="64m")  # the 32 MiB F32 model fits; its 8.5 MiB Q8_0 will not, below
    digest = file_sha256(f32)
    quantize = {"model": "tiny:q8", "files": {f32.name: digest}, "quantize": "q8_0", "stream": False}
    with server.http(timeout=120) as http:
        assert http.post(f"/api/blobs/{digest}", content=file_chunks(f32)).status_code == 201
        filler = fill_disk(server.models, leave=2 << 20)
        reply = http.post("/api/create", json=quantize)  # the quantizer's output fills the disk
        assert reply.status_code == 507
        assert_disk_full(error_of(reply), server)
        assert manifests(server.models) == []
        assert_consistent(server)

        # A create that writes nothing but small layers, on a disk without a byte free, via the CLI.
        more = fill_disk(server.models, leave=0, name="filler2")
        modelfile = tmp_path / "Modelfile"
        modelfile.write_text(f"FROM {f32}\nSYSTEM You are tiny.\n")
        cli = server.cli("create", "tiny:system", "-f", str(modelfile), check=False, timeout=120)
        assert cli.returncode != 0 and DISK_FULL in cli.stderr, cli.stderr
        assert manifests(server.models) == []
        assert_consistent(server)
        assert http.get("/api/tags").json() == {"models": []}

        more.unlink()
        filler.unlink()
        assert http.post("/api/create", json=quantize).json() == {"status": "success"}
    server.cli("create", "tiny:system", "-f", str(modelfile), timeout=120)
    assert manifests(server.models) == ["registry.ollama.ai/library/tiny/q8",
                                        "registry.ollama.ai/library/tiny/system"]
    assert_consistent(server)


def test_disk_full_during_a_pull_then_resume(rig: Rig, published: tuple[DockerRegistry, int]) -> None:
    reg, size = published
    proxy = ThrottlingProxy(reg.port, rate=15e6)
    try:
        server = rig.server(disk="150m")
        weights = weights_digest(reg, size)
        body = {"model": f"localhost:{proxy.port}/{REPO}:135m", "insecure": True}
        pull = Stream(f"{server.url}/api/pull", body)
        wait_for(lambda: partial_completed(server.models, weights) >= 20_000_000, 60, "20 MB pulled")
        filler = fill_disk(server.models, leave=256 << 10)
        pull.result(60)
        assert pull.status == 200 and pull.failure is None
        assert_disk_full(pull.lines[-1]["error"], server)
        assert manifests(server.models) == []
        assert_consistent(server, partial_ok=True)
        saved = partial_completed(server.models, weights)
        assert 20_000_000 <= saved < size

        with server.http(timeout=120) as http:
            assert http.get("/api/tags").status_code == 200
            refused = http.post("/api/pull", json={**body, "stream": False})  # still full: refused up front
            assert refused.status_code == 507 and "not enough disk space" in error_of(refused)
            resize(server.models, "300m")  # room again, the filler still there
            proxy.rate = None
            proxy.reset()
            assert http.post("/api/pull", json={**body, "stream": False}).json() == {"status": "success"}
        assert proxy.to_client < size - saved + (8 << 20), (proxy.to_client, size - saved)  # resumed
        assert filler.exists()
        assert len(manifests(server.models)) == 1
        assert_consistent(server)
    finally:
        proxy.close()


# --- kill -9 of the server ---------------------------------------------------------------------------


def test_kill9_in_the_middle_of_a_create(rig: Rig, tmp_path: Path) -> None:
    f32 = write_tiny_llama(tmp_path / "big-f32.gguf", n_embd=1024, n_ff=4096, n_vocab=4096, dtype=np.float32)
    digest = file_sha256(f32)
    server = rig.server()
    blobs = server.models / "blobs"

    # 1. While the GGUF streams in (the first half of `ollama create`).
    def upload() -> None:
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(f"{server.url}/api/blobs/{digest}", content=file_chunks(f32, delay_s=0.02), timeout=60)

    uploader = threading.Thread(target=upload, daemon=True)
    uploader.start()
    wait_for(lambda: any(p.stat().st_size >= 16 << 20 for p in blobs.glob(".tmp-*")), 60, "16 MiB uploaded")
    kill9(server)
    uploader.join(30)
    assert [p.name for p in blobs.glob(".tmp-*")]  # what the dead upload left …
    server.start()
    assert_consistent(server)  # … went at start-up

    # 2. While quantizing (the create job itself).
    request = {"model": "big:q8", "files": {f32.name: digest}, "quantize": "q8_0"}
    with server.http(timeout=120) as http:
        assert http.post(f"/api/blobs/{digest}", content=file_chunks(f32)).status_code == 201
    create = Stream(f"{server.url}/api/create", request)
    assert server.proc is not None
    server_pid = server.proc.pid
    [quantizer] = wait_for(lambda: [c for c in children(server_pid) if "quantize-worker" in cmdline(c)], 60,
                           "the quantizer to start")
    kill9(server)
    create.result(30)
    server.start()
    assert manifests(server.models) == []
    assert store_problems(server.models) == []
    with server.http(timeout=300) as http:
        reply = http.post("/api/create", json={**request, "stream": False})
        assert reply.json() == {"status": "success"}, reply.text
    assert manifests(server.models) == ["registry.ollama.ai/library/big/q8"]
    assert store_problems(server.models) == []

    # The orphaned quantizer kept its temp file locked while it ran; the next start removes it.
    wait_for(lambda: not os.path.exists(f"/proc/{quantizer}") or _state(quantizer) == "Z", 120,
             "the orphaned quantizer to finish")
    server.stop()
    server.start()
    assert_consistent(server)


def _state(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("State:"):
            return line.split()[1]
    return ""


def test_kill9_in_the_middle_of_a_pull(rig: Rig, published: tuple[DockerRegistry, int]) -> None:
    reg, size = published
    proxy = ThrottlingProxy(reg.port, rate=15e6)
    try:
        server = rig.server()
        weights = weights_digest(reg, size)
        body = {"model": f"localhost:{proxy.port}/{REPO}:135m", "insecure": True}
        pull = Stream(f"{server.url}/api/pull", body)
        wait_for(lambda: partial_completed(server.models, weights) >= 20_000_000, 60, "20 MB pulled")
        kill9(server)
        pull.result(30)
        saved = partial_completed(server.models, weights)
        server.start()
        assert manifests(server.models) == []
        assert_consistent(server, partial_ok=True)
        assert partial_completed(server.models, weights) == saved  # kept to resume
        proxy.rate = None
        proxy.reset()
        with server.http(timeout=120) as http:
            assert http.post("/api/pull", json={**body, "stream": False}).json() == {"status": "success"}
        assert proxy.to_client < size - saved + (8 << 20)
        assert len(manifests(server.models)) == 1
        assert_consistent(server)
    finally:
        proxy.close()


# --- kill -9 of a runner -----------------------------------------------------------------------------


def test_kill9_of_a_runner_ends_all_four_streams(rig: Rig, smollm2_gguf: Path) -> None:
    server = rig.server(OLLAMA_NUM_PARALLEL="4", OLLAMA_KEEP_ALIVE="10m")
    server.import_smollm2(smollm2_gguf)
    assert server.proc is not None
    server_pid = server.proc.pid

    def runners() -> list[int]:
        return [c for c in children(server_pid) if " runner" in cmdline(c)]

    counting = {"model": "smollm2:135m", "prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,", "raw": True,
                "options": {"num_predict": 4000, "temperature": 0}}
    streams = [Stream(f"{server.url}/api/generate", counting, read_timeout_s=60) for _ in range(4)]
    wait_for(lambda: all(len(s.lines) >= 2 for s in streams), 180, "four streams decoding")
    [runner] = runners()
    os.kill(runner, signal.SIGKILL)
    for stream in streams:
        stream.result(60)  # none hangs
        assert stream.failure is None, stream.failure  # an answer, not a dropped connection
        error = stream.lines[-1].get("error") if stream.status == 200 else stream.status
        assert error, (stream.status, stream.lines[-2:])
        assert not any(line.get("done") for line in stream.lines), stream.lines[-2:]
    with server.http(timeout=180) as http:
        reply = http.post("/api/generate", json={"model": "smollm2:135m", "prompt": "Hi", "stream": False,
                                                 "options": {"num_predict": 4}})
        assert reply.status_code == 200 and reply.json()["done"], reply.text
    assert runners() and runners() != [runner]


# --- a large upload's memory -------------------------------------------------------------------------


def test_a_large_upload_streams_to_disk_in_bounded_memory(rig: Rig) -> None:
    server = rig.server(disk="1100m")  # a tmpfs: the disk's speed is not what this measures
    assert server.proc is not None
    pid = server.proc.pid
    block = random.Random(7).randbytes(1 << 20)
    blocks = 1024  # 1 GiB, made on the fly

    def body() -> Iterator[bytes]:
        for i in range(blocks):
            yield i.to_bytes(8, "little") + block[8:]

    h = hashlib.sha256()
    for data in body():
        h.update(data)
    digest = "sha256:" + h.hexdigest()
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a neighbour taking a core
    try:
        before = memory_kib(pid)
        reset_peak_memory(pid)
        with server.http(timeout=300) as http:
            reply = http.post(f"/api/blobs/{digest}", content=body())
        peak = memory_kib(pid, "VmHWM")
    finally:
        busy.kill()
        busy.wait()
    assert reply.status_code == 201, reply.text
    assert (server.models / "blobs" / f"sha256-{digest[7:]}").stat().st_size == blocks << 20
    growth_mib = (peak - before) / 1024
    assert growth_mib < 48, f"server RSS grew by {growth_mib:.0f} MiB during a 1 GiB upload"
