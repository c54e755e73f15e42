"""``ollama doctor`` on fake machines (a temporary root, PATH shims, injected free space) and on this one.

The port and version checks talk to real sockets: a real server process, or a real socket bound by
another program.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from appliance import OLLAMA_COMPAT_VERSION, __version__
from appliance.cli.doctor import run_doctor
from appliance.doctor import Check, Machine, Status, run_checks
from appliance.doctor.platform import PORTABLE_X86_FEATURES
from tests.conftest import ROOT, Server, free_port
from tests.fixtures.fake_machine import AVX_ONLY_FLAGS, GIB, MODELS, FakeMachine

LINE = re.compile(r"^(OK|WARN|FAIL) +[a-z0-9 ]+? +\S.*$")
FIX = re.compile(r"^ +fix: \S.*$")
SUMMARY = re.compile(r"^\d+ ok, \d+ warnings, \d+ failures$")


@pytest.fixture
def fake(tmp_path: Path) -> FakeMachine:
    return FakeMachine(tmp_path / "machine")


def report(machine: Machine) -> tuple[int, str]:
    out = io.StringIO()
    status = run_doctor(machine=machine, out=out)
    return status, out.getvalue()


def only(checks: list[Check], name: str) -> Check:
    found = [c for c in checks if c.name == name]
    assert len(found) == 1, f"expected one {name!r} line, got {found}"
    return found[0]


def assert_report_format(text: str) -> list[str]:
    """Every line is a check, a fix under a non-OK check, or the closing count; returns the statuses."""
    lines = text.rstrip("\n").split("\n")
    statuses = []
    for before, line in zip(["OK", *lines], lines[:-1], strict=False):
        if FIX.match(line):
            assert before.startswith(("WARN", "FAIL")), f"a fix under an OK line: {before!r}"
        else:
            assert LINE.match(line), f"not a check line: {line!r}"
            statuses.append(line.split()[0])
    assert SUMMARY.match(lines[-1]), lines[-1]
    counts = lines[-1].replace(",", "").split()
    assert [int(counts[0]), int(counts[2]), int(counts[4])] == [statuses.count(s) for s in ("OK", "WARN", "FAIL")]
    return statuses


def healthy_systemd(fake: FakeMachine, port: int, **extra_env: str) -> None:
    fake.models_folder(owned_by_ollama=True)
    fake.systemd(environment={"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": MODELS, **extra_env})


# --- a healthy machine, and the server's port and version --------------------------------------------


def test_healthy_cpu_machine_is_all_ok(fake: FakeMachine, make_server: Callable[..., Server]) -> None:
    server = make_server()
    healthy_systemd(fake, server.port)
    status, text = report(fake.machine())
    assert status == 0, text
    assert set(assert_report_format(text)) == {"OK"}, text
    assert "Debian GNU/Linux 12 (bookworm), kernel 6.1.0-18-amd64" in text
    assert "no NVIDIA or AMD GPU found" in text
    assert "ollama.service active" in text and "runs as ollama" in text
    assert "writable by ollama" in text
    assert f"ollama-appliance {__version__} answers at http://127.0.0.1:{server.port}" in text
    assert f"client and server are both {__version__} (API {OLLAMA_COMPAT_VERSION})" in text


def test_version_skew_against_a_real_server(fake: FakeMachine, make_server: Callable[..., Server]) -> None:
    server = make_server()
    healthy_systemd(fake, server.port)
    checks = run_checks(fake.machine(client_version="0.99.0", appliance_version="9.9.9"))
    version = only(checks, "version")
    assert version.status is Status.WARN
    assert f"the server is ollama-appliance {__version__} (API {OLLAMA_COMPAT_VERSION})" in version.detail
    assert "this client 9.9.9 (API 0.99.0)" in version.detail
    assert "sudo systemctl restart ollama" in version.fix


@pytest.fixture
def not_ollama() -> Iterator[Callable[[str], int]]:
    """Another program on a free loopback port: an SSH-like banner, or a plain web server."""
    closers: list[Callable[[], None]] = []

    def start(kind: str) -> int:
        if kind == "http":
            class Hello(BaseHTTPRequestHandler):
                def do_GET(self) -> None:
                    body = b"<html>my web app</html>"
                    self.send_response(404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

                def log_message(self, *_: object) -> None:
                    pass

            httpd = ThreadingHTTPServer(("127.0.0.1", 0), Hello)
            threading.Thread(target=httpd.serve_forever, daemon=True).start()  # shutdown() waits for it
            closers.extend([httpd.shutdown, httpd.server_close])
            return int(httpd.server_address[1])
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.2)  # the thread looks at `stop` between connections, and ends before close
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except TimeoutError:
                    continue
                with conn:
                    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
                    conn.settimeout(5)
                    conn.recv(1024)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        closers.extend([stop.set, thread.join, listener.close])
        return int(listener.getsockname()[1])

    yield start
    for close in closers:
        close()


@pytest.mark.parametrize("kind", ["banner", "http"])
def test_port_taken_by_another_program_fails(fake: FakeMachine, not_ollama: Callable[[str], int],
                                             kind: str) -> None:
    port = not_ollama(kind)
    healthy_systemd(fake, port)
    status, text = report(fake.machine())
    check = only(run_checks(fake.machine()), "port")
    assert status == 1, text
    assert check.status is Status.FAIL
    assert f"127.0.0.1:{port}" in check.detail
    assert ("does not speak HTTP" if kind == "banner" else "HTTP 404 for /api/version") in check.detail
    assert f"sudo ss -ltnp 'sport = :{port}'" in check.fix
    assert "version" not in [c.name for c in run_checks(fake.machine())]


def test_nothing_listening_is_a_warning_with_the_start_command(fake: FakeMachine) -> None:
    healthy_systemd(fake, free_port())
    status, text = report(fake.machine())
    port = only(run_checks(fake.machine()), "port")
    assert status == 0, text
    assert port.status is Status.WARN and port.fix == "sudo systemctl start ollama"


# --- platform: WSL, CPU, GPUs ------------------------------------------------------------------------


def test_wsl1_fails_with_the_conversion_command(fake: FakeMachine) -> None:
    fake.kernel("4.4.0-19041-Microsoft", "Linux version 4.4.0-19041-Microsoft (Microsoft@Microsoft.com) "
                "(gcc version 5.4.0 (GCC) ) #1237-Microsoft Sat Sep 11 14:32:00 PST 2021")
    fake.environ.update(WSL_DISTRO_NAME="Ubuntu-22.04", OLLAMA_HOST=f"127.0.0.1:{free_port()}")
    status, text = report(fake.machine())
    wsl = only(run_checks(fake.machine()), "wsl")
    assert status == 1, text
    assert wsl.status is Status.FAIL and "WSL1" in wsl.detail
    assert "wsl --set-version Ubuntu-22.04 2" in wsl.fix
    assert_report_format(text)


def test_wsl2_without_systemd_says_how_the_server_runs(fake: FakeMachine) -> None:
    fake.kernel("5.15.153.1-microsoft-standard-WSL2",
                "Linux version 5.15.153.1-microsoft-standard-WSL2 (root@941d701f84f1) #1 SMP")
    fake.write("/proc/sys/fs/binfmt_misc/WSLInterop", "enabled\ninterpreter /init\n")
    fake.environ["WSL_DISTRO_NAME"] = "Debian"
    fake.models_folder(owned_by_ollama=True)
    port = free_port()
    fake.unit_files({"OLLAMA_HOST": f"127.0.0.1:{port}", "OLLAMA_MODELS": MODELS})
    checks = run_checks(fake.machine())
    assert only(checks, "wsl") == Check("wsl", Status.OK, "WSL2 (distribution Debian)")
    service = only(checks, "service")
    assert service.status is Status.OK
    assert "WSL without systemd" in service.detail and "sudo ollama-wsl start" in service.detail
    assert "systemd=true" in service.detail and "/etc/wsl.conf" in service.detail
    environment = only(checks, "environment")
    assert f"OLLAMA_HOST=127.0.0.1:{port}" in environment.detail and "from the unit files" in environment.detail
    assert only(checks, "port").fix == "sudo ollama-wsl start"
    assert only(checks, "models").status is Status.OK


def test_cpu_without_avx2_fails_for_the_portable_build(fake: FakeMachine) -> None:
    fake.cpu(AVX_ONLY_FLAGS, model="Intel(R) Core(TM) i7-2600 CPU @ 3.40GHz")
    fake.environ["OLLAMA_HOST"] = f"127.0.0.1:{free_port()}"
    fake.llama_info = None  # never asked: loading the library could die with SIGILL on this CPU
    cpu = only(run_checks(fake.machine(llama_info=lambda: pytest.fail("library loaded"))), "cpu")
    assert cpu.status is Status.FAIL
    assert "lacks AVX2, FMA, F16C, BMI2" in cpu.detail


def test_cpu_against_a_native_build_for_another_cpu(fake: FakeMachine) -> None:
    fake.llama_info = "CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | FMA = 1 | AVX512 = 1 | AVX512_VNNI = 1 |"
    cpu = only(run_checks(fake.machine()), "cpu")
    assert cpu.status is Status.FAIL and "built for AVX512F, AVX512_VNNI" in cpu.detail


def test_cpu_variant_dispatch_names_the_variant(fake: FakeMachine, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    for variant in ("x64", "sse42", "sandybridge", "haswell", "skylakex", "icelake"):
        (lib / f"libggml-cpu-{variant}.so").write_bytes(b"")
    fake.llama_lib = lib
    assert "picks its 'haswell' CPU variant" in only(run_checks(fake.machine()), "cpu").detail
    fake.cpu(AVX_ONLY_FLAGS)
    assert "picks its 'sandybridge' CPU variant" in only(run_checks(fake.machine()), "cpu").detail


def test_portable_features_are_the_ones_the_wheel_script_turns_on() -> None:
    script = (ROOT / "scripts/llama-wheel.sh").read_text()
    cpu_args = re.search(r'^CPU_ARGS="([^"]*)"', script, re.M)
    assert cpu_args is not None
    turned_on = {m.lower() for m in re.findall(r"-DGGML_([A-Z0-9_]+)=ON", cpu_args[1])}
    assert turned_on - {"rpc"} == set(PORTABLE_X86_FEATURES)  # RPC is a backend, not a CPU feature
    assert "-DGGML_NATIVE=OFF" in cpu_args[1] and "-DGGML_CPU_ALL_VARIANTS=OFF" in cpu_args[1]


def test_nvidia_gpu_with_the_cpu_build_warns_to_install_cuda(fake: FakeMachine) -> None:
    healthy_systemd(fake, free_port())
    fake.nvidia_smi(working=True)
    nvidia = only(run_checks(fake.machine()), "nvidia")
    assert nvidia.status is Status.WARN
    assert "NVIDIA GeForce RTX 3060 (compute 8.6, driver 550.54.14)" in nvidia.detail
    assert "cpu build" in nvidia.detail
    assert nvidia.fix.startswith("install the cuda build: curl -fsSL ") and "--flavor cuda" in nvidia.fix
    fake.flavor = "cuda"
    assert only(run_checks(fake.machine()), "nvidia").status is Status.OK


@pytest.mark.parametrize(("flavor", "severity", "exit_status"), [("cuda", Status.FAIL, 1), ("cpu", Status.WARN, 0)])
def test_broken_nvidia_driver(fake: FakeMachine, flavor: str, severity: Status, exit_status: int) -> None:
    healthy_systemd(fake, free_port())
    fake.nvidia_smi(working=False)
    fake.flavor = flavor
    nvidia = only(run_checks(fake.machine()), "nvidia")
    assert nvidia.status is severity
    assert "nvidia-smi fails: NVIDIA-SMI has failed because it couldn't communicate" in nvidia.detail
    assert "Driver/library version mismatch" in nvidia.fix and "reinstall the NVIDIA driver" in nvidia.fix
    assert report(fake.machine())[0] == exit_status


def test_amd_gfx1031_needs_the_override(fake: FakeMachine) -> None:
    fake.amd_kfd(100301)  # gfx1031, an RX 6700 XT: runs as gfx1030
    fake.flavor = "rocm"
    healthy_systemd(fake, free_port())
    status, text = report(fake.machine())
    amd = only(run_checks(fake.machine()), "amd gpu 0")
    assert status == 1, text
    assert amd.status is Status.FAIL
    assert "gfx1031 is not supported by ROCm as it is, and HSA_OVERRIDE_GFX_VERSION is not set" in amd.detail
    assert amd.fix == ('sudo systemctl edit ollama, add under [Service]: '
                       'Environment="HSA_OVERRIDE_GFX_VERSION=10.3.0", then sudo systemctl restart ollama')
    assert_report_format(text)


def test_amd_gfx1031_with_the_override_set_is_ok(fake: FakeMachine) -> None:
    fake.amd_kfd(100301)
    fake.flavor = "rocm"
    healthy_systemd(fake, free_port(), HSA_OVERRIDE_GFX_VERSION="10.3.0")
    checks = run_checks(fake.machine())
    assert only(checks, "amd gpu 0") == Check("amd gpu 0", Status.OK,
                                              "gfx1031, run as gfx1030 (HSA_OVERRIDE_GFX_VERSION=10.3.0)")
    assert "HSA_OVERRIDE_GFX_VERSION=10.3.0" in only(checks, "environment").detail
    assert report(fake.machine())[0] == 0


def test_amd_override_to_a_target_rocm_lacks_fails(fake: FakeMachine) -> None:
    fake.amd_kfd(100301)
    fake.flavor = "rocm"
    healthy_systemd(fake, free_port(), HSA_OVERRIDE_GFX_VERSION="10.3.1")
    amd = only(run_checks(fake.machine()), "amd gpu 0")
    assert amd.status is Status.FAIL and "names gfx1031, which ROCm has no kernels for" in amd.detail
    assert 'Environment="HSA_OVERRIDE_GFX_VERSION=10.3.0"' in amd.fix


def test_amd_without_the_override_in_a_shell_says_export(fake: FakeMachine) -> None:
    fake.amd_kfd(100301)
    fake.environ["OLLAMA_HOST"] = f"127.0.0.1:{free_port()}"
    amd = only(run_checks(fake.machine()), "amd gpu 0")
    assert amd.status is Status.WARN  # the cpu build: the server works, without the GPU
    assert amd.fix.startswith("export HSA_OVERRIDE_GFX_VERSION=10.3.0 ")


# --- the service, its environment and the models folder ---------------------------------------------


def test_models_folder_owned_by_root_while_the_unit_runs_as_ollama(fake: FakeMachine) -> None:
    fake.models_folder(owned_by_ollama=False)
    fake.systemd(environment={"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "OLLAMA_MODELS": MODELS})
    status, text = report(fake.machine())
    models = only(run_checks(fake.machine()), "models")
    assert status == 1, text
    assert models.status is Status.FAIL
    assert f"{MODELS} is owned by " in models.detail and "ollama, who runs the server, cannot write it" in models.detail
    assert models.fix == f"sudo chown -R ollama:ollama {MODELS}"


def test_models_under_home_with_protecthome_fails(fake: FakeMachine) -> None:
    fake.write("/home/alice/models/blobs/.keep", "")
    fake.systemd(environment={"OLLAMA_HOST": f"127.0.0.1:{free_port()}", "OLLAMA_MODELS": "/home/alice/models"})
    models = [c for c in run_checks(fake.machine()) if c.name == "models"]
    assert any(c.status is Status.FAIL and "ProtectHome=read-only" in c.detail for c in models), models


@pytest.mark.parametrize(("free_gib", "severity"), [(200, Status.OK), (5, Status.WARN), (0.5, Status.FAIL)])
def test_free_space(fake: FakeMachine, free_gib: float, severity: Status) -> None:
    healthy_systemd(fake, free_port())
    seen: list[str] = []

    def free(path: str) -> int:
        seen.append(path)
        return int(free_gib * GIB)

    disk = only(run_checks(fake.machine(free_bytes=free)), "disk")
    assert disk.status is severity
    assert f"{free_gib:.1f} GiB free for {MODELS}" in disk.detail
    assert seen == [str(fake.root / MODELS.lstrip("/"))]


def test_open_host_without_api_keys_and_a_misspelt_variable(fake: FakeMachine) -> None:
    healthy_systemd(fake, free_port())
    fake.systemd(environment={"OLLAMA_HOST": f"0.0.0.0:{free_port()}", "OLLAMA_MODELS": MODELS,
                              "OLLAMA_KEEPALIVE": "1h"})
    checks = run_checks(fake.machine())
    exposure = only(checks, "exposure")
    assert exposure.status is Status.WARN and "no OLLAMA_API_KEYS" in exposure.detail
    typo = [c for c in checks if c.name == "environment" and c.status is Status.WARN]
    assert [c.fix for c in typo] == ["did you mean OLLAMA_KEEP_ALIVE?"]
    fake.systemd(environment={"OLLAMA_HOST": f"0.0.0.0:{free_port()}", "OLLAMA_MODELS": MODELS,
                              "OLLAMA_API_KEYS": "/etc/ollama/keys"})
    assert "exposure" not in [c.name for c in run_checks(fake.machine())]


def test_failed_unit_fails_with_the_journal_command(fake: FakeMachine) -> None:
    fake.models_folder(owned_by_ollama=True)
    fake.systemd(environment={"OLLAMA_HOST": f"127.0.0.1:{free_port()}"}, state="failed")
    service = only(run_checks(fake.machine()), "service")
    assert service.status is Status.FAIL and "journalctl -u ollama" in service.fix


# --- this machine, through the real command ------------------------------------------------------------


def test_this_machine_report_format_and_exit_status(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    env.update(OLLAMA_HOST=f"127.0.0.1:{free_port()}", HOME=str(tmp_path))
    text = subprocess.run([sys.executable, "-m", "appliance", "doctor"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    statuses = assert_report_format(text.stdout)
    assert text.returncode == (1 if "FAIL" in statuses else 0), text.stdout + text.stderr
    assert {"os", "cpu", "service", "environment", "models", "disk", "port"} <= {
        line.split()[1] for line in text.stdout.splitlines() if LINE.match(line)}

    as_json = subprocess.run([sys.executable, "-m", "appliance", "doctor", "--json"], env=env,
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
    document = json.loads(as_json.stdout)
    assert as_json.returncode == (0 if document["ok"] else 1)
    assert [c["status"] for c in document["checks"]] == statuses
    assert all(c["fix"] for c in document["checks"] if c["status"] != "OK")
    assert "doctor" in subprocess.run([sys.executable, "-m", "appliance", "--help"], env=env,
                                      capture_output=True, text=True, timeout=60).stdout
