"""Pull and push between real server processes through Debian's docker-registry on loopback.

One origin server imports the bundled SmolLM2 and pushes it; fresh servers pull it back (byte for
byte), survive a SIGKILL halfway through a throttled download and resume, and refuse a hostile
registry's tricks without writing anything but partial state inside OLLAMA_MODELS.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server
from tests.fixtures.faults import file_sha256
from tests.fixtures.registries import (
    MEDIA_MODEL,
    DockerRegistry,
    FakeRegistry,
    ThrottlingProxy,
    manifest_bytes,
)

pytestmark = pytest.mark.skipif(not DockerRegistry.available(),
                                reason="docker-registry is not installed (scripts/test-deps.sh)")

MODEL_PATH = ("library", "smollm2", "135m")


def transfer_cli(server: Server, verb: str, name: str) -> subprocess.CompletedProcess[str]:
    """``ollama pull|push --insecure NAME``; through appliance.cli.transfer until the command is wired."""
    from appliance.cli import HANDLERS

    if verb in HANDLERS:
        return server.cli(verb, "--insecure", name)
    code = f"import sys; from appliance.cli.transfer import run_{verb}; sys.exit(run_{verb}(sys.argv[1], True))"
    proc = subprocess.run([sys.executable, "-c", code, name], env=server.env, capture_output=True, text=True,
                          timeout=300, cwd=server.home)
    assert proc.returncode == 0, f"{verb} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def manifest_file(server: Server, host: str, path: tuple[str, str, str] = MODEL_PATH) -> Path:
    return server.models / "manifests" / host / Path(*path)


def blob_digests(manifest: bytes) -> list[str]:
    obj = json.loads(manifest)
    return [obj["config"]["digest"], *(layer["digest"] for layer in obj["layers"])]


@pytest.fixture(scope="module")
def docker_registry(tmp_path_factory):
    registry = DockerRegistry(tmp_path_factory.mktemp("registry")).start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, docker_registry, smollm2_gguf):
    """A server that imported SmolLM2 as localhost:<port>/library/smollm2:135m and pushed it."""
    server = Server(tmp_path_factory.mktemp("origin")).start()
    name = f"localhost:{docker_registry.port}/library/smollm2:135m"
    server.import_smollm2(smollm2_gguf, name=name)
    push = transfer_cli(server, "push", name)
    yield server, name, push
    server.stop()


def test_push_then_pull_into_an_empty_store_round_trips_byte_for_byte(origin, make_server, docker_registry):
    source, name, push = origin
    assert "retrieving manifest" in push.stderr and "pushing manifest" in push.stderr
    assert "success" in push.stderr and f"You can find your model at:\n\n\t{name}" in push.stdout
    target = make_server()
    pull = transfer_cli(target, "pull", name)
    lines = pull.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    assert lines[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    host = f"localhost:{docker_registry.port}"
    manifest = manifest_file(source, host).read_bytes()
    assert manifest_file(target, host).read_bytes() == manifest
    for digest in blob_digests(manifest):
        assert any(line.startswith(f"pulling {digest[7:19]}: 100%") for line in lines)
        blob = "sha256-" + digest[7:]
        assert file_sha256(target.models / "blobs" / blob) == file_sha256(source.models / "blobs" / blob) == digest
    assert sorted(p.name for p in (target.models / "blobs").iterdir()) == sorted(
        "sha256-" + d[7:] for d in set(blob_digests(manifest)))
    with target.http() as http:
        answer = http.post("/api/generate", json={"model": name, "prompt": "What is 2+2?", "stream": False,
                                                  "options": {"num_predict": 8, "temperature": 0}}).json()
        assert answer["done"] and answer["response"].strip()
        listed = {m["name"]: m["digest"] for m in http.get("/api/tags").json()["models"]}
    assert listed[name] == hashlib.sha256(manifest).hexdigest()


def _pull_in_background(server: Server, name: str) -> threading.Thread:
    def run() -> None:
        with contextlib.suppress(httpx.HTTPError):
            with httpx.stream("POST", f"{server.url}/api/pull", json={"model": name, "insecure": True},
                              timeout=60) as response:
                for _ in response.iter_lines():
                    pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_pull_resumes_after_restart(origin, make_server, docker_registry):
    source, _, _ = origin
    proxy = ThrottlingProxy(docker_registry.port, rate=8_000_000)
    try:
        name = f"localhost:{proxy.port}/library/smollm2:135m"
        manifest = manifest_file(source, f"localhost:{docker_registry.port}").read_bytes()
        weights = json.loads(manifest)["layers"][0]
        size, digest = weights["size"], weights["digest"]
        state = None
        server = make_server()
        thread = _pull_in_background(server, name)
        state_file = server.models / "blobs" / f"sha256-{digest[7:]}-partial-0"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file.read_text())
                if state["Completed"] >= 20_000_000:
                    break
            time.sleep(0.1)
        assert state and state["Completed"] >= 20_000_000, state
        server.proc.kill()  # SIGKILL: no chance to save anything more
        server.proc.wait()
        thread.join(10)
        saved = json.loads(state_file.read_text())["Completed"]
        assert 20_000_000 <= saved < size
        assert not manifest_file(server, f"localhost:{proxy.port}").exists()

        server.start()  # same OLLAMA_MODELS: the start-up prune must leave the fresh partial alone
        assert state_file.exists()
        proxy.rate = None
        proxy.reset()
        with server.http() as http:
            reply = http.post("/api/pull", json={"model": name, "insecure": True, "stream": False})
        assert reply.status_code == 200 and reply.json() == {"status": "success"}, reply.text
        still_needed = size - saved
        assert still_needed <= proxy.to_client < still_needed + (1 << 20), (proxy.to_client, still_needed)
        assert file_sha256(server.models / "blobs" / f"sha256-{digest[7:]}") == digest
        assert manifest_file(server, f"localhost:{proxy.port}").read_bytes() == manifest
        assert not [p for p in (server.models / "blobs").iterdir() if "partial" in p.name]

        proxy.reset()  # an up-to-date model costs one manifest request
        with server.http() as http:
            assert http.post("/api/pull", json={"model": name, "insecure": True, "stream": False}).json() == \
                {"status": "success"}
        assert proxy.to_client < 16 << 10
    finally:
        proxy.close()


def test_push_to_a_new_repository_mounts_the_blobs(origin, docker_registry):
    source, name, _ = origin
    proxy = ThrottlingProxy(docker_registry.port)
    try:
        known = f"localhost:{proxy.port}/library/smollm2:135m"
        copy = f"localhost:{proxy.port}/mirror/smollm2:copy"
        source.cli("cp", name, known)
        source.cli("cp", name, copy)
        proxy.reset()
        transfer_cli(source, "push", copy)
        assert proxy.to_registry < 1 << 20  # 98 MB of weights were mounted, not uploaded
        with httpx.Client() as http:
            pushed = http.get(f"{docker_registry.url}/v2/mirror/smollm2/manifests/copy",
                              headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
        assert pushed.content == manifest_file(source, f"localhost:{proxy.port}", ("mirror", "smollm2",
                                                                                    "copy")).read_bytes()
    finally:
        proxy.close()


def _stream(server: Server, body: dict) -> tuple[int, list[dict]]:
    with httpx.stream("POST", f"{server.url}/api/pull", json=body, timeout=60) as response:
        return response.status_code, [json.loads(line) for line in response.iter_lines() if line.strip()]


def test_hostile_registry_through_the_server(make_server):
    server = make_server()
    reg = FakeRegistry()
    try:
        config = reg.add_blob("evil/m", b"{}")
        traversal = "sha256:../../../../../escaped"
        reg.manifests[("evil/m", "traversal")] = manifest_bytes((config, 2), [(MEDIA_MODEL, traversal, 5)])
        weights = reg.add_blob("evil/m", b"weights")
        reg.manifests[("evil/m", "metadata")] = manifest_bytes((config, 2), [(MEDIA_MODEL, weights, 7)])

        def hook(handler, method, path):
            if path.endswith(weights):
                handler.send(307, headers={"Location": "http://169.254.169.254/latest/meta-data/iam"})
                return True
            return False

        reg.hook = hook
        status, lines = _stream(server, {"model": f"{reg.host}/evil/m:traversal", "insecure": True})
        assert status == 200 and lines[0] == {"status": "pulling manifest"}
        assert "invalid digest" in lines[-1]["error"]
        status, lines = _stream(server, {"model": f"{reg.host}/evil/m:metadata", "insecure": True})
        assert "refusing link-local, metadata or unroutable address 169.254.169.254" in lines[-1]["error"]
        with server.http() as http:
            reply = http.post("/api/pull", json={"model": f"{reg.host}/evil/m:metadata", "insecure": True,
                                                 "stream": False})
            assert reply.status_code == 502 and "169.254.169.254" in reply.json()["error"]
            reply = http.post("/api/pull", json={"model": f"http://{reg.host}/evil/m:traversal"})
            assert (reply.status_code, reply.json()) == (400, {"error": "insecure protocol http"})
            reply = http.post("/api/push", json={"model": f"{reg.host}/evil/nothing:here", "insecure": True})
            assert reply.status_code == 404
            reply = http.post("/api/pull", json={"model": "bad name!!"})
            assert reply.status_code == 400
            assert http.post("/api/pull", json={}).json() == {"error": "model is required"}
        assert not (server.home / "escaped").exists() and not (server.models / "escaped").exists()
        assert not [p for p in (server.models / "manifests").rglob("*") if p.is_file()]
        blobs = {p.name for p in (server.models / "blobs").iterdir()}
        assert "sha256-" + weights[7:] not in blobs
    finally:
        reg.stop()
