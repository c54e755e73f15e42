"""wsl/ollama-wsl.sh in a Debian root that looks like WSL2 without systemd."""

from __future__ import annotations

import os
import time

import pytest

from tests.installer.debian_root import REPO, Machine, make_release

pytestmark = pytest.mark.chroot

HELPER = "/usr/local/bin/ollama-wsl"
WSL2_KERNEL = "5.15.167.4-microsoft-standard-WSL2"

#: A server stand-in: says who it runs as and with which settings, then stays up.
FAKE_SERVER = b"""#!/bin/sh
case "$1" in
    serve)
        echo "serving as $(id -un) OLLAMA_HOST=$OLLAMA_HOST OLLAMA_MODELS=$OLLAMA_MODELS HOME=$HOME"
        exec sleep 300
        ;;
    *) echo "ollama-appliance version is 0.1.0 (fake)" ;;
esac
"""


@pytest.fixture
def wsl(machine: Machine) -> Machine:
    machine.kernel(release=WSL2_KERNEL)
    machine.systemd("offline")
    machine.write(HELPER, (REPO / "wsl" / "ollama-wsl.sh").read_text(), 0o755)
    return machine


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for_text(box: Machine, path: str, text: str) -> str:
    deadline = time.monotonic() + 10
    while True:
        content = box.path(path).read_text() if box.path(path).exists() else ""
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.1)


def test_start_stop_status_as_the_service_would(wsl: Machine) -> None:
    make_release(wsl.path("/srv/server"), binary=FAKE_SERVER)
    run = wsl.install("--from", "/srv/server", "--host", "127.0.0.1:11500", "--models", "/data/models")
    assert "ollama-wsl.sh start" in run.stderr
    wsl.fake_tool("curl", "exit 0\n")  # the API answers

    run = wsl.chroot(HELPER, "start")
    assert "ollama is running; the API is at http://127.0.0.1:11500" in run.stderr
    log = wait_for_text(wsl, "/var/log/ollama/serve.log", "serving as")
    assert "serving as ollama OLLAMA_HOST=127.0.0.1:11500 OLLAMA_MODELS=/data/models HOME=/usr/share/ollama" in log
    pid = int(wsl.path("/run/ollama/serve.pid").read_text())
    assert alive(pid)

    assert "already running" in wsl.chroot(HELPER, "start").stderr
    assert "ollama is running" in wsl.chroot(HELPER, "status").stderr

    wsl.chroot(HELPER, "stop")
    assert not wsl.path("/run/ollama/serve.pid").exists()
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid)
    status = wsl.chroot(HELPER, "status", check=False)
    assert status.returncode == 3 and "not running" in status.stderr


def test_start_as_a_user_without_the_service(wsl: Machine) -> None:
    wsl.add_user("alice")
    wsl.write("/opt/ollama", FAKE_SERVER.decode(), 0o755)
    # The API answers the second probe: start waits for it.
    wsl.fake_tool("curl", "[ -f /tmp/probed ] && exit 0\ntouch /tmp/probed\nexit 7\n")
    run = wsl.chroot("runuser", "-u", "alice", "--", "env", "HOME=/home/alice", "OLLAMA_BIN=/opt/ollama",
                     "OLLAMA_HOST=0.0.0.0:8080", "PATH=/opt/fake/bin:/usr/bin:/bin", HELPER, "start")
    assert "ollama is running; the API is at http://127.0.0.1:8080" in run.stderr
    log = wait_for_text(wsl, "/home/alice/.ollama/logs/serve.log", "serving as")
    assert "serving as alice OLLAMA_HOST=0.0.0.0:8080" in log
    assert wsl.owner("/home/alice/.ollama/serve.pid") == "alice"


def test_gpu_check_without_passthrough(wsl: Machine) -> None:
    run = wsl.chroot(HELPER, "gpu", check=False)
    assert run.returncode == 1
    assert "no /dev/dxg" in run.stderr
    assert "install the NVIDIA driver for Windows" in run.stderr
    assert "ollama will run on the CPU" in run.stderr


def test_gpu_check_with_passthrough(wsl: Machine) -> None:
    wsl.write("/dev/dxg", "")
    wsl.write("/usr/lib/wsl/lib/libcuda.so.1", "")
    wsl.nvidia_smi(at="/usr/lib/wsl/lib")
    run = wsl.chroot(HELPER, "gpu")
    assert "NVIDIA GPU: " in run.stderr and "RTX 4090" in run.stderr
    assert "GPU passthrough works" in run.stderr
    assert "WARNING" not in run.stderr


def test_gpu_check_refuses_wsl1(wsl: Machine) -> None:
    wsl.kernel(release="4.4.0-19041-Microsoft")
    run = wsl.chroot(HELPER, "gpu", check=False)
    assert run.returncode == 1 and "this is WSL1" in run.stderr
