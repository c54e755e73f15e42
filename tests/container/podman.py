"""Podman as the container image tests drive it: root, runc, cgroupfs, no registry.

No registry is reachable from the test machines, so the base image is the debootstrap root that the
installer tests already cache (tests/installer/debian_root.py), imported with ``podman import``.
Both images are kept between runs under names that carry their inputs' hash: the base under the
root tar's name, the app image under a hash of the binary, container/, the build script and the
base, so a run with unchanged inputs builds nothing.  Older app images are removed when a new
one is built.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.installer.debian_root import base_tar, cache_dir

REPO = Path(__file__).resolve().parents[2]
CONTAINERFILE = REPO / "container" / "Containerfile"
HEALTHCHECK = REPO / "container" / "healthcheck.sh"
BUILD_SCRIPT = REPO / "scripts" / "build-image.sh"
TEST_IMAGE = "localhost/ollama-appliance-test"
BASE_IMAGE = "localhost/ollama-appliance-test-base"

#: What these machines need (DESIGN: podman as root with runc and cgroupfs, no default ulimits).
CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""


class Podman:
    """``podman`` with this suite's containers.conf; every call's output is kept for the failure."""

    def __init__(self, conf: Path) -> None:
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    @classmethod
    def create(cls, folder: Path) -> Podman:
        """Fails (never skips) where podman or runc is missing: scripts/test-deps.sh installs both."""
        missing = [tool for tool in ("podman", "runc") if shutil.which(tool) is None
                   and not Path(f"/usr/sbin/{tool}").exists()]
        assert not missing, f"{' and '.join(missing)} missing: scripts/test-deps.sh ensure_test_tools installs them"
        assert os.geteuid() == 0, "the container tests run podman as root"
        conf = folder / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        return cls(conf)

    def run(self, *args: str, check: bool = True, timeout: float = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(["podman", *args], env={**self.env, **(env or {})}, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def exists(self, image: str) -> bool:
        return self.run("image", "exists", image, check=False).returncode == 0

    def image_config(self, image: str) -> dict[str, Any]:
        """The image's docker-style config (User, Env, ExposedPorts, Healthcheck, ...)."""
        inspected = json.loads(self.run("image", "inspect", image).stdout)[0]
        return {**inspected["Config"], "Healthcheck": inspected.get("Healthcheck")}

    def health(self, container: str) -> str:
        return self.run("inspect", "--format", "{{.State.Health.Status}}", container).stdout.strip()

    def logs(self, container: str) -> str:
        done = self.run("logs", container, check=False)
        return done.stdout + done.stderr

    def base_image(self) -> str:
        """The cached debootstrap root as an image (imported once per root tar)."""
        tar = base_tar()
        name = f"{BASE_IMAGE}:{tar.stem.rsplit('-', 1)[-1]}"
        with _lock("podman-base"):
            if not self.exists(name):
                self.run("import", str(tar), name, timeout=600)
        return name

    def app_image(self, binary: Path, base: str) -> str:
        """The image of container/Containerfile around ``binary``, built by scripts/build-image.sh."""
        base_id = self.run("image", "inspect", "--format", "{{.Id}}", base).stdout.strip()
        digest = hashlib.sha256(base_id.encode())
        for path in (binary, CONTAINERFILE, HEALTHCHECK, BUILD_SCRIPT):
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        tag = digest.hexdigest()[:16]
        name = f"{TEST_IMAGE}:{tag}"
        with _lock("podman-image"):
            if not self.exists(name):
                env = {"IMAGE": TEST_IMAGE, "TAGS": tag, "BASE": base, "BINARY": str(binary),
                       "CONTAINER_TOOL": "podman"}
                built = subprocess.run(["sh", str(BUILD_SCRIPT), "--no-build", "cpu"], env={**self.env, **env},
                                       capture_output=True, text=True, timeout=1200)
                assert built.returncode == 0, f"build-image.sh failed:\n{built.stdout}\n{built.stderr}"
                assert built.stdout.strip() == name, built.stdout
                self._remove_older(name)
        return name

    def _remove_older(self, keep: str) -> None:
        listed = self.run("images", "--format", "{{.Repository}}:{{.Tag}}", TEST_IMAGE).stdout.split()
        for old in set(listed) - {keep}:
            self.run("rmi", old, check=False)  # in use by a container of another run: kept

    @contextlib.contextmanager
    def container(self, name: str) -> Iterator[str]:
        """Removes the container ``name`` afterwards, whatever happened to it."""
        try:
            yield name
        finally:
            self.run("rm", "--force", "--time", "5", name, check=False, timeout=120)


@contextlib.contextmanager
def _lock(name: str) -> Iterator[None]:
    """Another pytest process may be importing or building the same image right now."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
