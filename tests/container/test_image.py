"""The container image (container/Containerfile) built from the one-file binary and run with podman.

The image is built by scripts/build-image.sh from the binary the binary tests build, on the Debian
root the installer tests cache (tests/container/podman.py keeps both between runs).  The container
runs as in production, read-only root file system included, with a host folder as its models volume
and its port published on loopback; the host's own ``ollama`` command creates the bundled model
through that port, and the model answers, is owned by the container's user, and survives a restart
and a new container.  The Kubernetes example (docs/kubernetes/) is checked against the same
Containerfile, and its probe paths against a real server.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml

from appliance.assets.default_model import modelfile
from tests.conftest import Server, free_port
from tests.container.podman import BUILD_SCRIPT, CONTAINERFILE, Podman
from tests.fixtures.onefile import ensure_binary

pytestmark = pytest.mark.timeout(3600)  # a first run builds the binary (minutes on 2 cores)

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "docs" / "kubernetes"
GREEDY = {"temperature": 0, "seed": 11, "num_predict": 24}


# --- what the Containerfile promises, read from its text -------------------------------------------


def containerfile() -> dict[str, Any]:
    """ARG defaults, ENV, EXPOSE, USER, ENTRYPOINT, CMD and HEALTHCHECK of container/Containerfile."""
    text = re.sub(r"\\\n\s*", " ", CONTAINERFILE.read_text())
    facts: dict[str, Any] = {"args": {}, "env": {}}
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            facts["args"][key] = value
        elif word == "ENV":
            facts["env"].update(dict(pair.split("=", 1) for pair in rest.split()))
        elif word in ("EXPOSE", "USER"):
            facts[word.lower()] = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            facts[word.lower()] = json.loads(rest)
        elif word == "HEALTHCHECK":
            facts["healthcheck"] = json.loads(rest.split(" CMD ", 1)[1])
    return facts


def default_image_repository() -> str:
    found = re.search(r'^IMAGE="\$\{IMAGE:-([^}]+)\}"$', BUILD_SCRIPT.read_text(), re.M)
    assert found, "scripts/build-image.sh names no default IMAGE"
    return found.group(1)


# --- the image and a running container --------------------------------------------------------------


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    return Podman.create(tmp_path_factory.mktemp("podman"))


@pytest.fixture(scope="module")
def image(podman: Podman) -> str:
    return podman.app_image(ensure_binary(), podman.base_image())


def wait_healthy(podman: Podman, name: str, timeout: float = 180) -> None:
    """Runs the image's own HEALTHCHECK until it passes (no systemd here to run it on a timer)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = podman.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            raise AssertionError(f"container {state}:\n{podman.logs(name)}")
        if podman.run("healthcheck", "run", name, check=False, timeout=60).returncode == 0:
            assert podman.health(name) == "healthy"
            return
        time.sleep(1)
    raise AssertionError(f"never healthy in {timeout}s:\n{podman.logs(name)}")


@pytest.fixture
def start_container(podman: Podman, image: str) -> Iterator[Callable[[Path, int], str]]:
    names: list[str] = []

    def start(volume: Path, port: int) -> str:
        name = f"ollama-appliance-test-{uuid.uuid4().hex[:10]}"
        names.append(name)
        podman.run("run", "--detach", "--name", name, "--read-only", "--ulimit", "host",
                   "--volume", f"{volume}:/root/.ollama", "--publish", f"127.0.0.1:{port}:11434", image)
        wait_healthy(podman, name)
        return name

    yield start
    for name in names:
        podman.run("rm", "--force", "--time", "5", name, check=False, timeout=120)


def host_cli(port: int, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The host's ``ollama`` command, talking to the container through the published port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env["OLLAMA_HOST"] = f"127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "appliance", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"ollama {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def greedy_chat(port: int, model: str) -> dict[str, Any]:
    body = {"model": model, "stream": False, "options": GREEDY,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    reply = httpx.post(f"http://127.0.0.1:{port}/api/chat", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    answer: dict[str, Any] = reply.json()
    assert answer["done"] is True and answer["eval_count"] > 0, answer
    assert answer["message"]["role"] == "assistant" and answer["message"]["content"].strip(), answer
    return answer


def model_names(port: int) -> list[str]:
    tags = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=60)
    assert tags.status_code == 200, tags.text
    return [m["name"] for m in tags.json()["models"]]


# --- tests ----------------------------------------------------------------------------------------


def test_image_runs_the_server_as_the_containerfile_says(podman: Podman, image: str) -> None:
    facts = containerfile()
    config = podman.image_config(image)
    env = dict(item.split("=", 1) for item in config["Env"])
    assert facts["env"].items() <= env.items()
    assert env["OLLAMA_HOST"] == f"0.0.0.0:{facts['expose']}"
    assert list(config["ExposedPorts"]) == [f"{facts['expose']}/tcp"]
    assert config["Entrypoint"] == facts["entrypoint"] == ["/usr/bin/ollama"]
    assert config["Cmd"] == facts["cmd"] == ["serve"]
    assert config["User"] == facts["user"] == "ollama:ollama"
    assert config["Healthcheck"]["Test"] == ["CMD", *facts["healthcheck"]]
    assert config["Labels"]["io.github.ollama-appliance.flavor"] == "cpu"
    who = podman.run("run", "--rm", "--ulimit", "host", "--entrypoint", "id", image).stdout.split()
    uid, gid = facts["args"]["UID"], facts["args"]["GID"]
    assert who[:2] == [f"uid={uid}(ollama)", f"gid={gid}(ollama)"], who
    # A new named volume takes the image's ownership of /root/.ollama, so the server can write it.
    volume = f"ollama-appliance-test-{uuid.uuid4().hex[:10]}"
    try:
        owners = podman.run("run", "--rm", "--ulimit", "host", "--volume", f"{volume}:/root/.ollama",
                            "--entrypoint", "/bin/sh", image, "-c",
                            "touch /root/.ollama/models/probe && stat -c %u:%g /root/.ollama /root/.ollama/models/probe")
        assert owners.stdout.split() == [f"{uid}:{gid}"] * 2, owners
    finally:
        podman.run("volume", "rm", "--force", volume, check=False)
    # The health check asks a server; with none running it fails and says why.
    alone = podman.run("run", "--rm", "--ulimit", "host", "--entrypoint", facts["healthcheck"][0], image,
                       check=False)
    assert alone.returncode == 1 and "unhealthy: nothing listens on port 11434" in alone.stderr, alone
    # The runtime was unpacked at build time: a read-only container starts without unpacking.
    version = podman.run("run", "--rm", "--read-only", "--ulimit", "host", image, "-v")
    assert "ollama-appliance version is" in version.stdout and "(cpu build)" in version.stdout, version


def test_models_volume_serves_and_survives_restarts(podman: Podman, image: str, smollm2_gguf: Path,
                                                    start_container: Callable[[Path, int], str],
                                                    tmp_path: Path) -> None:
    facts = containerfile()
    uid, gid = int(facts["args"]["UID"]), int(facts["args"]["GID"])
    volume = tmp_path / "ollama"
    volume.mkdir()
    os.chown(volume, uid, gid)  # a host folder must belong to the image's user (Containerfile header)
    port = free_port()
    name = start_container(volume, port)

    (tmp_path / "Modelfile").write_text(modelfile(smollm2_gguf))
    host_cli(port, "create", "smollm2:135m", "-f", "Modelfile", cwd=tmp_path)
    assert "smollm2:135m" in model_names(port)
    first = greedy_chat(port, "smollm2:135m")
    assert "smollm2:135m" in host_cli(port, "ps", cwd=tmp_path).stdout

    models = volume / PurePosixPath(facts["env"]["OLLAMA_MODELS"]).relative_to("/root/.ollama")
    manifest = models / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    layers = json.loads(manifest.read_text())["layers"]
    for layer in layers:
        assert (models / "blobs" / layer["digest"].replace(":", "-")).stat().st_size == layer["size"]
    written = [volume, *volume.rglob("*")]
    assert len(written) > len(layers) + 5
    wrong = [(str(p), p.stat().st_uid, p.stat().st_gid) for p in written
             if (p.stat().st_uid, p.stat().st_gid) != (uid, gid)]
    assert not wrong, f"not owned by the container's ollama user {uid}:{gid}: {wrong}"

    podman.run("stop", "--time", "30", name, timeout=120)
    assert podman.run("inspect", "--format", "{{.State.Status}}", name).stdout.strip() == "exited"
    podman.run("start", name)
    wait_healthy(podman, name)
    assert "smollm2:135m" in model_names(port)
    assert greedy_chat(port, "smollm2:135m")["message"] == first["message"]

    # The volume alone carries the store: a new container over it has the model too.
    podman.run("rm", "--force", "--time", "30", name, timeout=120)
    again = free_port()
    start_container(volume, again)
    assert "smollm2:135m" in model_names(again)
    assert greedy_chat(again, "smollm2:135m")["message"] == first["message"]


# --- the Kubernetes example -----------------------------------------------------------------------


def kube(path: str) -> dict[str, Any]:
    documents = [d for d in yaml.safe_load_all((KUBE / path).read_text()) if d is not None]
    assert len(documents) == 1, path
    document: dict[str, Any] = documents[0]
    return document


def test_kubernetes_example_agrees_with_the_image(make_server: Callable[..., Server]) -> None:
    facts = containerfile()
    port = int(facts["expose"])
    repository = default_image_repository()
    pvc, service = kube("pvc.yaml"), kube("service.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and service["kind"] == "Service"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]

    cpu, cuda = kube("deployment.yaml"), kube("gpu/deployment-cuda.yaml")
    probe_paths = set()
    for deployment, tag in ((cpu, "cpu"), (cuda, "cuda")):
        assert deployment["kind"] == "Deployment" and deployment["apiVersion"] == "apps/v1"
        spec = deployment["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        assert service["spec"]["selector"].items() <= labels.items()
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (
            int(facts["args"]["UID"]), int(facts["args"]["GID"]), int(facts["args"]["GID"]))
        (container,) = pod["containers"]
        assert container["image"] == f"{repository}:{tag}"
        assert container["args"] == facts["cmd"]
        (http,) = container["ports"]
        assert http["containerPort"] == port and http["name"] == "http"
        assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
        assert [p["port"] for p in service["spec"]["ports"]] == [port]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        claim = volumes[mounts["/root/.ollama"]]["persistentVolumeClaim"]["claimName"]
        assert claim == pvc["metadata"]["name"]
        assert PurePosixPath(facts["env"]["OLLAMA_MODELS"]).is_relative_to("/root/.ollama")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True and "emptyDir" in volumes[mounts["/tmp"]]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[kind]["httpGet"]["port"] == "http"
            probe_paths.add(container[kind]["httpGet"]["path"])
    assert cuda["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(cpu)

    server = make_server()
    with server.http() as client:
        for path in sorted(probe_paths):
            assert client.get(path).status_code == 200, path
