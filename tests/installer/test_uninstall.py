"""installer/uninstall.sh after a real install, in a throw-away Debian root."""

from __future__ import annotations

import pytest

from tests.installer.checks import UNIT, assert_binary, assert_service_user
from tests.installer.debian_root import Machine

pytestmark = [pytest.mark.chroot, pytest.mark.timeout(300)]


def test_uninstall_keeps_models_and_user(machine: Machine) -> None:
    machine.install("--from", "/srv/release", "--models", "/data/models")
    machine.write("/data/models/blobs/sha256-" + "cd" * 32, "weights")
    machine.path("/var/log/fake-systemctl.log").write_text("")

    run = machine.uninstall()
    assert machine.systemctl_calls()[:2] == ["stop ollama", "disable ollama"]
    assert "daemon-reload" in machine.systemctl_calls()
    for gone in ("/usr/local/bin/ollama", UNIT, "/etc/systemd/system/ollama.service.d"):
        assert not machine.path(gone).exists(), gone
    assert machine.passwd("ollama") is not None
    assert machine.path("/data/models/blobs/sha256-" + "cd" * 32).exists()
    assert machine.path("/usr/share/ollama").is_dir()
    assert "Kept the models (/data/models) and the ollama user; --purge removes them too." in run.stderr


def test_uninstall_purge(machine: Machine) -> None:
    machine.add_user("alice")
    machine.install("--from", "/srv/release", "--models", "/data/models", SUDO_USER="alice")
    machine.write("/data/models/blobs/sha256-" + "cd" * 32, "weights")
    machine.write("/data/models/manifests/registry.ollama.ai/library/m/latest", "{}")
    machine.write("/data/models/README.txt", "not a model")

    machine.uninstall("--purge")
    assert machine.passwd("ollama") is None
    assert machine.gid("ollama") is None
    assert not machine.path("/usr/share/ollama").exists()
    assert not machine.path("/data/models/blobs").exists()
    assert not machine.path("/data/models/manifests").exists()
    assert machine.path("/data/models/README.txt").exists(), "only Ollama's own layout is removed"
    assert not machine.path("/usr/local/bin/ollama").exists()
    assert machine.passwd("alice") is not None


def test_uninstall_then_reinstall(machine: Machine) -> None:
    machine.install("--from", "/srv/release")
    machine.uninstall("--purge")
    machine.install("--from", "/srv/release")
    assert_binary(machine, "cpu")
    assert_service_user(machine)
