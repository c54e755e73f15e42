"""The installer scripts against their other sources of truth: gpu.py's gfx table, systemd/, shellcheck."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from appliance.engine import gpu
from tests.installer.debian_root import INSTALLER, REPO

SCRIPT = INSTALLER.read_text()


def shell_function(name: str) -> str:
    match = re.search(rf"^{name}\(\) {{\n.*?^}}\n", SCRIPT, re.M | re.S)
    assert match, f"no {name}() in install.sh"
    return match.group(0)


def test_gfx_override_table_agrees_with_gpu_py() -> None:
    """install.sh writes the HSA_OVERRIDE_GFX_VERSION that the server's own discovery suggests."""
    targets = sorted(set(gpu._GFX_OVERRIDES) | gpu.ROCM_SUPPORTED_GFX
                     | {"gfx803", "gfx900", "gfx906", "gfx1010", "gfx1012", "gfx1037", "gfx1152", "gfx1104"})
    program = shell_function("rocm_gfx_override") + 'for gfx; do printf "%s=%s\\n" "$gfx" "$(rocm_gfx_override "$gfx")"; done\n'
    done = subprocess.run(["sh", "-c", program, "sh", *targets], capture_output=True, text=True, check=True)
    from_shell = dict(line.split("=", 1) for line in done.stdout.splitlines())
    from_python = {gfx: gpu.rocm_gfx_override(gfx) or "" for gfx in targets}
    assert from_shell == from_python
    assert from_shell["gfx1103"] == "11.0.0" and from_shell["gfx1035"] == "10.3.0"


def test_supported_targets_agree_with_gpu_py() -> None:
    program = shell_function("rocm_supported") + 'for gfx; do rocm_supported "$gfx" && echo "$gfx"; done; true\n'
    candidates = sorted(gpu.ROCM_SUPPORTED_GFX | set(gpu._GFX_OVERRIDES) | {"gfx803", "gfx900", "gfx1152"})
    done = subprocess.run(["sh", "-c", program, "sh", *candidates], capture_output=True, text=True, check=True)
    assert set(done.stdout.split()) == gpu.ROCM_SUPPORTED_GFX


@pytest.mark.parametrize("version", [90000, 90010, 90012, 100300, 100305, 110003, 110501, 120001, 0, 91600])
def test_kfd_version_to_gfx_agrees_with_gpu_py(tmp_path: Path, version: int) -> None:
    """The awk in install.sh's kfd_gpus() names a KFD gfx_target_version as gpu.py does."""
    match = re.search(r"awk '(.*?)' \"\$nodes/\$node/properties\"", shell_function("kfd_gpus"), re.S)
    assert match, "kfd_gpus() no longer has its awk program"
    props = tmp_path / "properties"
    props.write_text(f"simd_count 24\nvendor_id 4098\ngfx_target_version {version}\n")
    done = subprocess.run(["awk", match.group(1), str(props)], capture_output=True, text=True, check=True)
    expected = gpu.gfx_from_kfd_version(version)
    if expected is None:
        assert done.stdout == ""
    else:
        major, minor, step = version // 10000, version // 100 % 100, version % 100
        assert done.stdout == f"{expected} {major}.{minor}.{step}\n"


def test_unit_in_install_sh_is_systemd_ollama_service() -> None:
    """The unit has one source: install.sh embeds systemd/ollama.service byte for byte."""
    match = re.search(r"<<'OLLAMA_SERVICE_UNIT'\n(.*?\n)OLLAMA_SERVICE_UNIT\n", SCRIPT, re.S)
    assert match, "install.sh no longer embeds the unit in an OLLAMA_SERVICE_UNIT heredoc"
    assert match.group(1) == (REPO / "systemd" / "ollama.service").read_text(), (
        "systemd/ollama.service and the heredoc in install.sh differ: copy the file into the heredoc"
    )


def test_unit_keeps_the_gpus_reachable() -> None:
    unit = (REPO / "systemd" / "ollama.service").read_text()
    settings = [line.split("=", 1)[0] for line in unit.splitlines() if "=" in line and not line.startswith("#")]
    for forbidden in ("PrivateDevices", "DevicePolicy", "DeviceAllow", "MemoryDenyWriteExecute", "PrivateUsers"):
        assert forbidden not in settings, f"{forbidden}= would cut the service off from its GPU"
    assert "ReadWritePaths=-/usr/share/ollama" in unit.splitlines()


def test_override_example_uses_the_installer_markers() -> None:
    example = (REPO / "systemd" / "override.conf.example").read_text().splitlines()
    markers = re.findall(r"^OVERRIDE_(?:BEGIN|END)='(.*)'$", SCRIPT, re.M)
    assert len(markers) == 2
    assert all(marker in example for marker in markers)


def test_shellcheck_is_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: scripts/test-deps.sh ensure_test_tools installs it"
    scripts = sorted(str(p) for folder in ("installer", "wsl") for p in (REPO / folder).glob("*.sh"))
    done = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
