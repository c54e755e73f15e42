"""Checks shared by the installer tests: what install.sh should have left in a Debian root."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

from tests.installer.debian_root import FAKE_BIN, REPO, STANDARD_PATH, Machine, Run

UNIT = "/etc/systemd/system/ollama.service"
OVERRIDE = "/etc/systemd/system/ollama.service.d/override.conf"
BEGIN = "# --- BEGIN ollama-appliance installer"
END = "# --- END ollama-appliance installer ---"
CHROOT_PATH = f"{FAKE_BIN}:{STANDARD_PATH}"
#: systemctl calls of an install on a machine where systemd runs.
STARTED = ["is-system-running", "daemon-reload", "enable ollama", "restart ollama"]


def expected_unit(bindir: str = "/usr/local/bin", path: str = CHROOT_PATH) -> str:
    """systemd/ollama.service with the two lines the installer fills in."""
    lines = []
    for line in (REPO / "systemd" / "ollama.service").read_text().splitlines():
        if line.startswith("ExecStart="):
            line = f"ExecStart={bindir}/ollama serve"
        elif line.startswith('Environment="PATH='):
            line = f'Environment="PATH={path}"'
        lines.append(line)
    return "\n".join(lines) + "\n"


def verify_unit(box: Machine) -> None:
    """``systemd-analyze verify`` (the host's, against the root) accepts the unit and its override."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: scripts/test-deps.sh ensure_test_tools installs it"
    # The minimal root has no systemd; verify needs the standard targets the unit hangs off.
    units = box.path("/usr/lib/systemd/system")
    if not (units / "multi-user.target").exists():
        shutil.copytree("/lib/systemd/system", units, symlinks=True, dirs_exist_ok=True)
    done = subprocess.run([analyze, "verify", f"--root={box.root}", UNIT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def assert_mode(path: Path, mode: int, uid: int = 0, gid: int = 0) -> None:
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (mode, uid, gid), path


def assert_binary(box: Machine, flavor: str, *, version: str = "0.1.0", arch: str = "amd64",
                  bindir: str = "/usr/local/bin") -> None:
    assert_mode(box.path(f"{bindir}/ollama"), 0o755)
    assert box.installed_version(f"{bindir}/ollama") == (
        f"ollama-appliance version is {version} ({flavor} build, {arch})"
    )


def assert_service_user(box: Machine) -> tuple[int, int]:
    user = box.passwd("ollama")
    assert user is not None, "no ollama user"
    uid, gid, home, shell = int(user[2]), int(user[3]), user[5], user[6]
    assert (home, shell) == ("/usr/share/ollama", "/bin/false")
    assert uid < 1000, "the ollama user must be a system user"
    assert gid == box.gid("ollama")
    st = box.path("/usr/share/ollama").stat()
    assert (st.st_uid, st.st_gid) == (uid, gid)
    return uid, gid


def assert_nothing_installed(box: Machine) -> None:
    for binary in ("/usr/local/bin/ollama", "/usr/bin/ollama"):
        assert not box.path(binary).exists(), binary
    assert box.passwd("ollama") is None
    assert not box.path(UNIT).exists()
    assert not box.path(OVERRIDE).exists()
    assert box.systemctl_calls() == []


def override_block(box: Machine) -> list[str]:
    lines = box.path(OVERRIDE).read_text().splitlines()
    begins = [i for i, line in enumerate(lines) if line.startswith(BEGIN)]
    assert len(begins) == 1, lines
    start = begins[0]
    end = lines.index(END, start)
    assert lines[start + 1] == "[Service]"
    return lines[start + 2 : end]


def last_line(run: Run) -> str:
    return run.stderr.strip().splitlines()[-1]
