"""installer/install.sh, run unchanged as root in a throw-away Debian root.

Each test describes a machine with fakes (see debian_root.py), pipes the real script to ``sh -s`` as
``curl | sh`` does, and checks what landed on disk: binary, user, groups, unit, override, models folder,
and the calls made to (a fake) systemctl. ``systemd-analyze verify`` checks the units written.
Where the release comes from is tested in test_release.py, removal in test_uninstall.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.onefile import ensure_binary
from tests.installer.checks import (
    BEGIN,
    CHROOT_PATH,
    END,
    OVERRIDE,
    STARTED,
    UNIT,
    assert_binary,
    assert_mode,
    assert_nothing_installed,
    assert_service_user,
    expected_unit,
    last_line,
    override_block,
    verify_unit,
)
from tests.installer.debian_root import (
    FAKE_BIN,
    INSTALLER,
    Machine,
    make_release,
    stop_process_group,
    unmount_below,
)

pytestmark = [pytest.mark.chroot, pytest.mark.timeout(300)]


def test_cpu_only_machine(machine: Machine) -> None:
    machine.add_user("alice")
    machine.add_group("render")
    run = machine.install("--from", "/srv/release", SUDO_USER="alice")

    assert ">>> Installing ollama to /usr/local/bin" in run.stderr
    assert "No NVIDIA/AMD GPU detected" in run.stderr
    assert "WARNING" not in run.output
    assert last_line(run) == ">>> The Ollama API is now available at 127.0.0.1:11434."
    assert_binary(machine, "cpu")
    assert_service_user(machine)
    assert "ollama" in machine.group_members("render")
    assert "ollama" in machine.group_members("video")
    assert machine.group_members("ollama") == ["alice"]
    assert_mode(machine.path(UNIT), 0o644)
    assert machine.path(UNIT).read_text() == expected_unit()
    assert not machine.path(OVERRIDE).exists(), "nothing to override on a plain CPU machine"
    assert machine.systemctl_calls() == STARTED
    verify_unit(machine)


def test_run_by_a_normal_user_with_sudo(machine: Machine) -> None:
    """``curl ... | sh`` as a normal user: every change goes through sudo; the user joins the group."""
    machine.add_user("alice")
    # sudo runs commands with its secure_path: the fake tools must be on it too.
    machine.write("/etc/sudoers.d/alice", f'Defaults secure_path="{CHROOT_PATH}"\nalice ALL=(ALL) NOPASSWD: ALL\n', 0o440)
    machine.fake_tool("runuser-as-alice", 'exec runuser -u alice -- env HOME=/home/alice "$@"\n')
    run = machine.chroot("runuser-as-alice", "/bin/sh", "-s", "--", "--from", "/srv/release", "--models",
                         "/srv/models", input=INSTALLER.read_bytes())
    assert_binary(machine, "cpu")
    assert_service_user(machine)
    assert machine.group_members("ollama") == ["alice"]
    assert machine.owner("/srv/models") == "ollama"
    assert_mode(machine.path(UNIT), 0o644)
    assert_mode(machine.path(OVERRIDE), 0o644)
    assert machine.systemctl_calls() == STARTED
    assert last_line(run) == ">>> The Ollama API is now available at 127.0.0.1:11434."
    verify_unit(machine)


def test_nvidia_gpu_with_remote_access(machine: Machine) -> None:
    machine.lspci(("01:00.0", "0300", "10de:2684", "VGA compatible controller: NVIDIA Corporation AD102"),
                  ("01:00.1", "0403", "10de:22ba", "Audio device: NVIDIA Corporation AD102 HDMI"))
    machine.nvidia_smi()
    machine.nvidia_modprobe()
    run = machine.install("--from", "/srv/release", "--host", "0.0.0.0", "--origins", "http://nas:3000")

    assert_binary(machine, "cuda")
    assert "NVIDIA GPU ready." in run.stderr
    assert "listens on every network interface" in run.stderr
    assert last_line(run) == ">>> The Ollama API is now available at 0.0.0.0:11434."
    assert override_block(machine) == [
        'Environment="OLLAMA_HOST=0.0.0.0"',
        'Environment="OLLAMA_ORIGINS=http://nas:3000"',
        "ExecStartPre=+-/usr/bin/nvidia-modprobe -u -c=0",
    ]
    assert_mode(machine.path(OVERRIDE), 0o644)
    assert machine.systemctl_calls() == STARTED
    verify_unit(machine)


def test_nvidia_gpu_without_a_driver_gets_the_cpu_build(machine: Machine) -> None:
    machine.lspci(("01:00.0", "0300", "10de:2684", "VGA compatible controller: NVIDIA Corporation AD102"))
    machine.nvidia_smi(working=False)
    run = machine.install("--from", "/srv/release")

    assert_binary(machine, "cpu")
    assert "NVIDIA GPU found, but no working NVIDIA driver" in run.stderr
    assert "WARNING" in run.stderr


def test_nvidia_seen_only_by_lshw(machine: Machine) -> None:
    machine.lshw(("NVIDIA Corporation", "10DE"))
    run = machine.install("--from", "/srv/release")
    assert_binary(machine, "cpu")
    assert "no working NVIDIA driver" in run.stderr


def test_amd_discrete_gpu(machine: Machine) -> None:
    machine.add_group("render")
    machine.lspci(("03:00.0", "0300", "1002:744c", "VGA compatible controller: AMD Navi 31 [Radeon RX 7900 XTX]"))
    machine.amd_kfd(110000)  # gfx1100: supported as it is
    run = machine.install("--from", "/srv/release")

    assert_binary(machine, "rocm")
    assert "AMD GPU 0 is gfx1100" in run.stderr
    assert "AMD GPU ready." in run.stderr
    assert not machine.path(OVERRIDE).exists(), "a supported GPU needs no HSA_OVERRIDE_GFX_VERSION"
    assert "ollama" in machine.group_members("render")
    verify_unit(machine)


def test_amd_780m_igpu_gets_the_gfx_override(machine: Machine) -> None:
    machine.lspci(("c4:00.0", "0300", "1002:15bf", "VGA compatible controller: AMD Phoenix1 [Radeon 780M]"))
    machine.amd_kfd(110003)  # gfx1103
    run = machine.install("--from", "/srv/release")

    assert_binary(machine, "rocm")
    assert "AMD GPU 0 is gfx1103, which ROCm does not support out of the box: running it as 11.0.0" in run.stderr
    assert override_block(machine) == ['Environment="HSA_OVERRIDE_GFX_VERSION=11.0.0"']
    assert machine.override_env() == {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}
    verify_unit(machine)


@pytest.mark.parametrize(
    ("targets", "expected", "message"),
    [
        # Both end up as 10.3.0: one variable for all.
        ((100300, 100305), ['Environment="HSA_OVERRIDE_GFX_VERSION=10.3.0"'], "AMD GPU 1 is gfx1035"),
        # gfx1030 must stay itself while the 780M runs as gfx1100: only GPU 1 is overridden.
        ((100300, 110003), ['Environment="HSA_OVERRIDE_GFX_VERSION_1=11.0.0"'], "AMD GPU 0 is gfx1030"),
        # Polaris: no kernels, no known stand-in.
        ((80003,), [], "WARNING: AMD GPU 0 is gfx803, which ROCm does not support and no override is known"),
    ],
    ids=["same-target", "per-gpu", "unsupported"],
)
def test_amd_gpu_overrides(machine: Machine, targets: tuple[int, ...], expected: list[str], message: str) -> None:
    machine.amd_kfd(*targets)
    run = machine.install("--from", "/srv/release")
    assert_binary(machine, "rocm")
    assert message in run.stderr
    if expected:
        assert override_block(machine) == expected
    else:
        assert not machine.path(OVERRIDE).exists()


def test_hsa_override_from_the_environment_wins(machine: Machine) -> None:
    machine.amd_kfd(110003)
    machine.install("--from", "/srv/release", HSA_OVERRIDE_GFX_VERSION="11.0.2")
    assert override_block(machine) == ['Environment="HSA_OVERRIDE_GFX_VERSION=11.0.2"']


def test_amd_without_a_rocm_build_falls_back_to_cpu(machine: Machine) -> None:
    release = make_release(machine.path("/srv/cpu-and-cuda"), flavors=("cpu", "cuda"))
    machine.amd_kfd(110003)
    run = machine.install("--from", "/srv/cpu-and-cuda")

    assert_binary(machine, "cpu")
    assert "has no rocm build (ollama-linux-amd64-rocm.tgz); installing the CPU build" in run.stderr
    assert "WARNING" in run.stderr
    assert "Ollama will run in CPU-only mode" in run.stderr
    assert (release / "ollama-linux-amd64.tgz").exists()


def test_jetson(machine: Machine) -> None:
    machine.kernel(machine="aarch64")
    machine.write("/etc/nv_tegra_release", "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic\n")
    run = machine.install("--from", "/srv/release")
    assert_mode(machine.path("/usr/local/bin/ollama"), 0o755)
    assert machine.installed_version() == "ollama-appliance version is 0.1.0 (cuda build, arm64)"
    assert "NVIDIA Jetson (L4T R36) ready" in run.stderr


def test_wsl2_with_nvidia_passthrough_and_no_systemd(machine: Machine) -> None:
    machine.kernel(release="5.15.167.4-microsoft-standard-WSL2")
    machine.nvidia_smi(at="/usr/lib/wsl/lib")  # not on PATH: sudo drops it
    machine.systemd("offline")
    run = machine.install("--from", "/srv/release")

    assert_binary(machine, "cuda")
    assert "NVIDIA GPU ready (WSL2 passthrough)." in run.stderr
    assert "systemd is not running (offline)" in run.stderr
    assert "/etc/wsl.conf" in run.stderr and "systemd=true" in run.stderr
    assert machine.systemctl_calls() == ["is-system-running", "enable ollama"]
    assert machine.path(UNIT).exists()
    assert_service_user(machine)
    assert last_line(run) == ">>> Once started, the Ollama API will be available at 127.0.0.1:11434."


def test_wsl2_without_nvidia_smi_ignores_pci_devices(machine: Machine) -> None:
    machine.kernel(release="5.15.167.4-microsoft-standard-WSL2")
    machine.lspci(("01:00.0", "0300", "10de:2684", "VGA compatible controller: NVIDIA Corporation AD102"))
    machine.amd_kfd(110003)
    run = machine.install("--from", "/srv/release")

    assert_binary(machine, "cpu")
    assert "No NVIDIA GPU passthrough found" in run.stderr
    assert "WARNING" not in run.stderr
    assert not machine.path(OVERRIDE).exists()
    assert machine.systemctl_calls() == STARTED


def test_flavor_choice_wins_over_detection(machine: Machine) -> None:
    machine.kernel(release="5.15.167.4-microsoft-standard-WSL2")
    machine.nvidia_smi()
    run = machine.install("--from", "/srv/release", "--flavor", "cpu")
    assert "Installing the cpu build as asked (detected: cuda)" in run.stderr
    assert_binary(machine, "cpu")


def test_wsl1_is_refused(machine: Machine) -> None:
    machine.kernel(release="4.4.0-19041-Microsoft")
    run = machine.install("--from", "/srv/release", check=False)
    assert run.returncode == 1
    assert "WSL1 is not supported" in run.stderr
    assert "wsl --set-version <distro> 2" in run.stderr
    assert_nothing_installed(machine)


def test_unsupported_architecture_is_refused(machine: Machine) -> None:
    machine.kernel(machine="riscv64")
    run = machine.install("--from", "/srv/release", check=False)
    assert run.returncode == 1
    assert "unsupported architecture: riscv64" in run.stderr
    assert_nothing_installed(machine)


def test_systemd_not_running(machine: Machine) -> None:
    machine.systemd("offline")
    run = machine.install("--from", "/srv/release")
    assert_binary(machine, "cpu")
    assert_service_user(machine)
    assert "WARNING: systemd is not running (offline)" in run.stderr
    assert "ollama serve" in run.stderr
    assert "wsl.conf" not in run.stderr
    assert machine.systemctl_calls() == ["is-system-running", "enable ollama"]
    verify_unit(machine)


def test_no_systemctl_at_all(machine: Machine) -> None:
    machine.no_systemctl()
    run = machine.install("--from", "/srv/release", OLLAMA_HOST="127.0.0.1:8080")
    assert_binary(machine, "cpu")
    assert machine.passwd("ollama") is None
    assert not machine.path(UNIT).exists()
    assert "start the server by hand with 'ollama serve'" in run.stderr
    assert last_line(run) == ">>> Once started, the Ollama API will be available at 127.0.0.1:8080."


def test_no_start(machine: Machine) -> None:
    machine.install("--from", "/srv/release", "--no-start")
    assert machine.systemctl_calls() == ["is-system-running", "daemon-reload", "enable ollama"]


def test_bindir_follows_path(machine: Machine) -> None:
    path = f"{FAKE_BIN}:/usr/sbin:/usr/bin:/sbin:/bin"
    run = machine.install("--from", "/srv/release", PATH=path)
    assert ">>> Installing ollama to /usr/bin" in run.stderr
    assert_binary(machine, "cpu", bindir="/usr/bin")
    assert not machine.path("/usr/local/bin/ollama").exists()
    assert machine.path(UNIT).read_text() == expected_unit("/usr/bin", path)
    verify_unit(machine)


def test_reinstall_upgrades_and_keeps_settings_user_lines_and_models(machine: Machine) -> None:
    machine.amd_kfd(110003)
    machine.install("--from", "/srv/release", "--host", "0.0.0.0:11434", "--models", "/data/models",
                    "--num-parallel", "2")
    ids = assert_service_user(machine)
    first_block = override_block(machine)
    assert first_block == [
        'Environment="OLLAMA_HOST=0.0.0.0:11434"',
        'Environment="OLLAMA_MODELS=/data/models"',
        'Environment="OLLAMA_NUM_PARALLEL=2"',
        "ReadWritePaths=-/data/models",
        'Environment="HSA_OVERRIDE_GFX_VERSION=11.0.0"',
    ]
    models = machine.path("/data/models")
    assert (models.stat().st_uid, models.stat().st_gid) == ids

    # The user adds their own lines (above the block, as `systemctl edit` would keep them) and a model
    # copied in as root.
    override = machine.path(OVERRIDE)
    user_lines = '[Service]\n# my own settings\nEnvironment="OLLAMA_DEBUG=1"\nCPUQuota=300%\n\n'
    override.write_text(user_lines + override.read_text())
    blob = machine.write("/data/models/blobs/sha256-" + "ab" * 32, "weights")
    machine.write("/data/models/manifests/registry.ollama.ai/library/m/latest", "{}")

    make_release(machine.path("/srv/release-0.2.0"), "0.2.0")
    machine.install("--from", "/srv/release-0.2.0", "--keep-alive", "1h")
    assert_binary(machine, "rocm", version="0.2.0")
    assert assert_service_user(machine) == ids
    text = override.read_text()
    assert text.startswith(user_lines), text
    assert override_block(machine) == [
        'Environment="OLLAMA_HOST=0.0.0.0:11434"',
        'Environment="OLLAMA_MODELS=/data/models"',
        'Environment="OLLAMA_NUM_PARALLEL=2"',
        'Environment="OLLAMA_KEEP_ALIVE=1h"',
        "ReadWritePaths=-/data/models",
        'Environment="HSA_OVERRIDE_GFX_VERSION=11.0.0"',
    ]
    assert machine.override_env()["OLLAMA_DEBUG"] == "1"
    assert blob.read_text() == "weights"
    assert (blob.stat().st_uid, blob.stat().st_gid) == ids, "Ollama's layout in the models folder is ollama's"

    # The same run again changes nothing.
    unit = machine.path(UNIT).read_text()
    run = machine.install("--from", "/srv/release-0.2.0", "--keep-alive", "1h")
    assert override.read_text() == text
    assert machine.path(UNIT).read_text() == unit
    assert last_line(run) == ">>> The Ollama API is now available at 0.0.0.0:11434."

    # An empty value removes a setting.
    machine.install("--from", "/srv/release-0.2.0", "--num-parallel=")
    assert 'Environment="OLLAMA_NUM_PARALLEL=2"' not in override_block(machine)
    verify_unit(machine)


def test_user_settings_win_over_remembered_ones(machine: Machine) -> None:
    machine.amd_kfd(110003)
    machine.install("--from", "/srv/release", "--host", "0.0.0.0")
    override = machine.path(OVERRIDE)
    mine = '[Service]\nEnvironment="OLLAMA_HOST=127.0.0.1:8080" "HSA_OVERRIDE_GFX_VERSION=11.0.2"\n'
    override.write_text(mine + "\n" + override.read_text())

    run = machine.install("--from", "/srv/release")
    assert override.read_text() == mine, "the user's lines now say it all; the block is dropped"
    assert "Keeping your own HSA_OVERRIDE_GFX_VERSION" in run.stderr
    assert last_line(run) == ">>> The Ollama API is now available at 127.0.0.1:8080."

    # Given again explicitly, the installer's value wins (its block comes last).
    run = machine.install("--from", "/srv/release", "--host", "0.0.0.0:9000")
    assert override_block(machine) == ['Environment="OLLAMA_HOST=0.0.0.0:9000"']
    assert "also set outside the installer block" in run.stderr
    assert machine.override_env()["OLLAMA_HOST"] == "0.0.0.0:9000"
    verify_unit(machine)


def test_block_without_its_end_marker(machine: Machine) -> None:
    machine.install("--from", "/srv/release", "--host", "0.0.0.0")
    override = machine.path(OVERRIDE)
    broken = override.read_text().replace(END + "\n", "") + 'Environment="OLLAMA_DEBUG=1"\n'
    override.write_text(broken)
    run = machine.install("--from", "/srv/release")
    assert "has an installer block without its end marker" in run.stderr
    assert machine.path(OVERRIDE + ".bak").read_text() == broken
    assert override.read_text().count(BEGIN) == 1
    assert override_block(machine) == ['Environment="OLLAMA_HOST=0.0.0.0"']
    verify_unit(machine)


def test_settings_from_the_environment(machine: Machine) -> None:
    machine.install("--from", "/srv/release", "--keep-alive", "30m", OLLAMA_KEEP_ALIVE="5m",
                    OLLAMA_MAX_LOADED_MODELS="2", OLLAMA_MODELS="/srv/ollama/models")
    assert override_block(machine) == [
        'Environment="OLLAMA_MODELS=/srv/ollama/models"',
        'Environment="OLLAMA_MAX_LOADED_MODELS=2"',
        'Environment="OLLAMA_KEEP_ALIVE=30m"',  # the option wins over the environment
        "ReadWritePaths=-/srv/ollama/models",
    ]
    assert machine.owner("/srv/ollama/models") == "ollama"
    verify_unit(machine)


def test_models_folder_the_service_cannot_reach(machine: Machine) -> None:
    machine.add_user("alice", home_mode=0o700)
    run = machine.install("--from", "/srv/release", "--models", "/home/alice/models")
    assert machine.path("/home/alice/models").is_dir()
    assert machine.owner("/home/alice/models") == "ollama"
    assert "the ollama user cannot reach /home/alice/models" in run.stderr
    assert "ReadWritePaths=-/home/alice/models" in override_block(machine)


def test_shared_models_folder_keeps_its_owner(machine: Machine) -> None:
    machine.add_user("alice")
    machine.write("/srv/shared/notes.txt", "mine")
    machine.chroot("chown", "-R", "alice:alice", "/srv/shared")
    run = machine.install("--from", "/srv/release", "--models", "/srv/shared")
    assert "/srv/shared holds other files: it keeps its owner" in run.stderr
    assert machine.owner("/srv/shared") == "alice"
    assert machine.owner("/srv/shared/notes.txt") == "alice"
    assert machine.owner("/srv/shared/blobs") == machine.owner("/srv/shared/manifests") == "ollama"
    assert "WARNING" not in run.stderr


def test_hand_set_models_folder_is_prepared_but_never_a_system_one(machine: Machine) -> None:
    machine.install("--from", "/srv/release")
    machine.write(OVERRIDE, '[Service]\nEnvironment="OLLAMA_MODELS=/var/lib/ollama-models"\n')
    machine.install("--from", "/srv/release")
    assert machine.owner("/var/lib/ollama-models") == "ollama"
    assert override_block(machine) == ["ReadWritePaths=-/var/lib/ollama-models"]

    machine.write(OVERRIDE, '[Service]\nEnvironment="OLLAMA_MODELS=/home"\n')
    run = machine.install("--from", "/srv/release")
    assert "OLLAMA_MODELS=/home is a system folder: leaving its owner alone" in run.stderr
    assert machine.owner("/home") == "root"
    assert not machine.path(OVERRIDE).read_text().count(BEGIN), "no ReadWritePaths= for /home"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--host", 'x" ExecStartPre=/bin/evil'], "invalid OLLAMA_HOST"),
        (["--models", "/etc"], "refusing /etc as the models folder"),
        (["--models", "relative/models"], "invalid OLLAMA_MODELS"),
        (["--num-parallel", "two"], "invalid OLLAMA_NUM_PARALLEL"),
        (["--flavor", "vulkan"], "--flavor must be cpu, cuda or rocm"),
        (["--bogus"], "unknown option: --bogus"),
    ],
    ids=["quote-in-host", "system-folder", "relative-models", "not-a-number", "flavor", "unknown"],
)
def test_bad_settings_are_refused_before_anything_changes(machine: Machine, args: list[str], message: str) -> None:
    run = machine.install("--from", "/srv/release", *args, check=False)
    assert run.returncode == 1
    assert message in run.stderr
    assert_nothing_installed(machine)


# --- the real binary -------------------------------------------------------------------------------


def real_binary() -> Path:
    """OLLAMA_APPLIANCE_BINARY if set, else dist/ollama (built now if missing or stale)."""
    if chosen := os.environ.get("OLLAMA_APPLIANCE_BINARY"):
        path = Path(chosen)
        assert path.is_file(), f"OLLAMA_APPLIANCE_BINARY={chosen} does not exist"
        return path
    return ensure_binary()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_installed_binary_serves(machine: Machine) -> None:
    """The one-file binary from the PyInstaller build, installed and run as the service runs it."""
    binary = real_binary()
    make_release(machine.path("/srv/real"), "real", arches=("amd64",), flavors=("cpu",),
                 binary=binary.read_bytes())
    port = free_port()
    machine.install("--from", "/srv/real", "--host", f"127.0.0.1:{port}", "--models", "/srv/ollama-models")
    env = [f"{k}={v}" for k, v in machine.override_env().items()]
    assert f"OLLAMA_HOST=127.0.0.1:{port}" in env

    # The server needs /proc (and the runner re-executes itself through it); mounted only now, after
    # the installer ran against the fake one, and unmounted by the fixture whatever happens.
    subprocess.run(["mount", "-t", "proc", "proc", str(machine.path("/proc"))], check=True)
    log = machine.path("/var/log/ollama-serve.log").open("wb")
    server = subprocess.Popen(
        ["chroot", str(machine.root), "runuser", "-u", "ollama", "--", "env", *env, "HOME=/usr/share/ollama",
         "/usr/local/bin/ollama", "serve"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, "ollama serve exited:\n" + machine.path("/var/log/ollama-serve.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                reply = httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=2)
                if reply.status_code == 200:
                    break
            assert time.monotonic() < deadline, "no answer:\n" + machine.path("/var/log/ollama-serve.log").read_text()
            time.sleep(0.5)
        assert reply.json()["version"]
        # The service user can write to the models folder the installer prepared.
        data = b"not really a model"
        digest = hashlib.sha256(data).hexdigest()
        stored = httpx.post(f"http://127.0.0.1:{port}/api/blobs/sha256:{digest}", content=data, timeout=30)
        assert stored.status_code == 201, stored.text
        assert machine.owner(f"/srv/ollama-models/blobs/sha256-{digest}") == "ollama"
    finally:
        stop_process_group(server, 15)
        log.close()
        unmount_below(machine.path("/proc"))
