"""The one-file ``ollama`` binary: its launcher on this machine, then the real thing in a bare Debian.

The binary is built once per run (tests/fixtures/onefile.py), or reused when dist/ollama is newer than
everything that goes into it.  (This folder is not called ``build``: pytest never looks into folders of
that name, so these tests silently did not run.)

The chroot test is the proof that the file needs nothing installed: a ``debootstrap --variant=minbase``
root has no Python, no compiler and no pip.  It is skipped, loudly, only where this machine can never
run it (not Linux, not root, chroot or mounts forbidden), and that skip fails under CI=true
(tests/conftest.py); a root that cannot be built fails everywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from appliance import __version__
from appliance.assets.default_model import modelfile
from tests.conftest import free_port
from tests.fixtures.onefile import ensure_binary
from tests.fixtures.tiny_gguf import write_tiny_llama
from tests.installer.debian_root import (
    BaseBuildError,
    CannotChroot,
    Machine,
    base_tar,
    check_can_chroot,
    mounts_below,
    stop_process_group,
    unmount_below,
)

pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="session")
def binary() -> Path:
    """dist/ollama, built now unless it is newer than all its inputs (one build per CI run)."""
    return ensure_binary()


def run(binary: Path, *args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    return subprocess.run([str(binary), *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=timeout)


def runtime_dirs(cache: Path) -> list[Path]:
    folder = cache / "ollama-appliance" / "runtime"
    return sorted(folder.iterdir()) if folder.is_dir() else []


# --- the launcher, on this machine -----------------------------------------------------------------


def test_version_names_the_flavor_and_unpacks_once(binary: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {"XDG_CACHE_HOME": str(cache), "TMPDIR": str(tmp_path)}
    first = run(binary, "-v", env=env)
    assert first.returncode == 0, first.stderr
    assert f"ollama-appliance version is {__version__} (cpu build)" in first.stdout
    assert "could not connect to a running Ollama instance" in first.stdout
    entries = [p.name for p in runtime_dirs(cache)]
    key = next(name for name in entries if not name.endswith(".lock"))
    assert key.startswith(f"{__version__}-cpu-") and entries == sorted([key, f"{key}.lock"])
    folder = cache / "ollama-appliance" / "runtime" / key
    stamp = folder.stat().st_mtime_ns
    second = run(binary, "-v", env=env)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert folder.stat().st_mtime_ns == stamp and [p.name for p in runtime_dirs(cache)] == entries
    assert not [p for p in tmp_path.iterdir() if p.name != "cache"], "nothing unpacked into TMPDIR"


def test_concurrent_first_starts_share_one_unpacked_copy(binary: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "OLLAMA_HOST": f"127.0.0.1:{free_port()}"}
    procs = [subprocess.Popen([str(binary), "-v"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert all("(cpu build)" in out for out, _ in outputs)
    names = [p.name for p in runtime_dirs(tmp_path)]
    assert len(names) == 2, names  # one folder and its lock: no second copy, no leftover temp folder


def test_unwritable_cache_falls_back_to_a_temporary_folder(binary: Path, tmp_path: Path) -> None:
    # /proc refuses new folders even to root: the per-user cache cannot be created.
    env = {"XDG_CACHE_HOME": "/proc/ollama-appliance-test", "TMPDIR": str(tmp_path)}
    done = run(binary, "-v", env=env)
    assert done.returncode == 0, done.stderr
    assert "(cpu build)" in done.stdout
    assert "using a temporary folder" not in done.stderr  # no cache at all is not worth a warning
    assert list(tmp_path.iterdir()) == [], "the temporary folder is removed when the app exits"


def test_a_full_cache_filesystem_falls_back_and_leaves_nothing_behind(binary: Path, tmp_path: Path) -> None:
    small, scratch = tmp_path / "small", tmp_path / "scratch"
    small.mkdir()
    scratch.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(small)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        done = run(binary, "-v", env={"XDG_CACHE_HOME": str(small), "TMPDIR": str(scratch)})
        assert done.returncode == 0, done.stderr
        assert "(cpu build)" in done.stdout
        assert "No space left on device" in done.stderr and "using a temporary folder" in done.stderr
        runtime = small / "ollama-appliance" / "runtime"
        assert sorted(p.name for p in runtime.iterdir()) == [p.name for p in runtime.glob("*.lock")]
        assert list(scratch.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_exit_status_and_signals_pass_through_the_temporary_mode(binary: Path, tmp_path: Path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": "/proc/ollama-appliance-test", "TMPDIR": str(tmp_path)}
    bad = subprocess.run([str(binary), "no-such-command"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "unknown command" in bad.stderr
    env["OLLAMA_HOST"] = f"127.0.0.1:{free_port()}"
    env["OLLAMA_MODELS"] = str(tmp_path / "models")
    server = subprocess.Popen([str(binary), "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _wait_http(f"http://{env['OLLAMA_HOST']}", server)
        server.send_signal(signal.SIGTERM)  # to the launcher, which forwards it
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ollama-")]


def test_an_upgrade_removes_old_versions_nobody_uses(binary: Path, tmp_path: Path) -> None:
    runtime = tmp_path / "ollama-appliance" / "runtime"
    old_free, old_busy = runtime / "0.0.1-cpu-0000000000000000", runtime / "0.0.2-cpu-0000000000000000"
    for folder in (old_free, old_busy):
        (folder / "_internal").mkdir(parents=True)
        (folder / "ollama").write_text("old")
        Path(f"{folder}.lock").touch()
        os.utime(folder, (time.time() - 3600, time.time() - 3600))
    with open(f"{old_busy}.lock") as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # a server of the old version still running
        done = run(binary, "-v", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    assert not old_free.exists() and not Path(f"{old_free}.lock").exists()
    assert old_busy.is_dir()


def test_a_damaged_file_says_so(binary: Path, tmp_path: Path) -> None:
    data = bytearray(binary.read_bytes())
    truncated = tmp_path / "truncated"
    truncated.write_bytes(data[: len(data) // 2])
    truncated.chmod(0o755)
    done = run(truncated, "-v", env={"XDG_CACHE_HOME": str(tmp_path / "c1")})
    assert done.returncode == 127 and "truncated download" in done.stderr
    corrupt = tmp_path / "corrupt"
    data[len(data) // 2] ^= 0xFF  # inside the compressed payload
    corrupt.write_bytes(bytes(data))
    corrupt.chmod(0o755)
    done = run(corrupt, "-v", env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    assert done.returncode == 127 and "damaged" in done.stderr
    assert not [p for p in runtime_dirs(tmp_path / "c2") if p.is_dir()], "nothing half-unpacked is left"


def test_quantize_worker_exits_without_interpreter_teardown_noise(binary: Path, tmp_path: Path) -> None:
    source, out = write_tiny_llama(tmp_path / "tiny-f16.gguf"), tmp_path / "tiny-q8_0.gguf"
    done = run(binary, "quantize-worker", str(source), str(out), "7",  # LLAMA_FTYPE_MOSTLY_Q8_0
               env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 0 < out.stat().st_size < source.stat().st_size
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert "TypeError" not in done.stderr


# --- the real thing in a minimal Debian root -------------------------------------------------------


@pytest.fixture(scope="module")
def debian_base() -> Path:
    try:
        check_can_chroot()
    except CannotChroot as exc:
        pytest.skip(f"BINARY NOT TESTED IN A BARE DEBIAN ROOT: {exc}")
    try:
        return base_tar()
    except BaseBuildError as exc:
        pytest.fail(f"cannot build the Debian test root: {exc}", pytrace=False)


@pytest.fixture
def bare_root(debian_base: Path, tmp_path: Path) -> Iterator[Machine]:
    """A fresh minbase root with /proc and /dev mounted; everything is unmounted and removed after."""
    box = Machine.unpack(debian_base, tmp_path / "root")
    try:
        for what, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            done = subprocess.run(["mount", *args, str(box.path(what))], capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"BINARY NOT TESTED IN A BARE DEBIAN ROOT: cannot mount /{what}: {done.stderr}")
        yield box
    finally:
        box.destroy()
        assert not mounts_below(tmp_path / "root")


def test_the_binary_serves_and_answers_in_a_bare_debian_root(binary: Path, bare_root: Machine,
                                                             smollm2_gguf: Path) -> None:
    box = bare_root
    for absent in ("/usr/bin/python3", "/usr/bin/pip3", "/usr/bin/gcc", "/usr/bin/cc"):
        assert not box.path(absent).exists(), f"the bare root must not have {absent}"
    shutil.copy2(binary, box.path("/usr/local/bin/ollama"))
    shutil.copy2(smollm2_gguf, box.path("/srv/smollm2.gguf"))
    # greedy: the bundled defaults sample (temperature 0.2), and a sampled answer may drift into French
    box.write("/srv/Modelfile", modelfile(Path("/srv/smollm2.gguf")) + "PARAMETER temperature 0\n")
    write_tiny_llama(box.path("/srv/tiny-f16.gguf"))
    box.write("/srv/Tiny.Modelfile", "FROM /srv/tiny-f16.gguf\n")
    port = free_port()
    env = {"OLLAMA_HOST": f"127.0.0.1:{port}", "HOME": "/root", "PATH": "/usr/local/bin:/usr/bin:/bin",
           "LANG": "C", "OLLAMA_DEBUG": "1"}  # debug: the runners' stderr goes into the server log
    log = open(box.path("/var/log/ollama.log"), "wb")
    server = subprocess.Popen(["chroot", str(box.root), "/usr/bin/env", "-i",
                               *(f"{k}={v}" for k, v in env.items()), "ollama", "serve"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}", server, lambda: box.path("/var/log/ollama.log").read_text())
        version = box.chroot("ollama", "-v", env=env)
        assert "ollama version is" in version.stdout and f"{__version__} (cpu build)" in version.stdout
        box.chroot("ollama", "create", "smollm2:135m", "-f", "/srv/Modelfile", env=env, timeout=300)
        assert "smollm2:135m" in box.chroot("ollama", "list", env=env).stdout
        answer = box.chroot("ollama", "run", "smollm2:135m", "What is the capital of France?", env=env,
                            timeout=300)
        assert "Paris" in answer.stdout, answer
        assert "smollm2:135m" in box.chroot("ollama", "ps", env=env).stdout
        runners = _runner_executables(box.root)
        runtime = box.path("/root/.cache/ollama-appliance/runtime")
        keys = [p.name for p in runtime.iterdir() if p.is_dir()]
        assert len(keys) == 1, keys
        assert runners == [f"/root/.cache/ollama-appliance/runtime/{keys[0]}/ollama"], runners
        assert not list(box.path("/tmp").glob("_MEI*")) and not list(box.path("/tmp").glob("ollama-*"))
        box.chroot("ollama", "stop", "smollm2:135m", env=env)
        # The quantizer is the other child the server re-executes itself as.
        quantized = box.chroot("ollama", "create", "tiny:q8", "-q", "q8_0", "-f", "/srv/Tiny.Modelfile",
                               env=env, timeout=300)
        assert "quantizing" in quantized.output and "success" in quantized.output, quantized
        assert "Q8_0" in box.chroot("ollama", "show", "tiny:q8", env=env).stdout
    finally:
        stop_process_group(server, 30)
        log.close()
    text = box.path("/var/log/ollama.log").read_text(errors="replace")
    assert "llama.cpp backend (cpu build): CPU : " in text and "AVX2 = 1" in text, text[-3000:]
    assert "(cpu build, Ollama API" in text
    assert "starting runner: /root/.cache/ollama-appliance/runtime/" in text, text[-3000:]
    for noise in ("Traceback", "Exception ignored", "TypeError"):
        assert noise not in text, text[-3000:]
    unmount_below(box.root)


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: object = None) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {log() if callable(log) else ''}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError(f"server did not answer at {url}: {log() if callable(log) else ''}")


def _runner_executables(root: Path) -> list[str]:
    """What the runner processes inside ``root`` execute, as paths inside the root."""
    found = []
    resolved = str(root.resolve())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{entry}/root") != resolved:
                continue
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if len(argv) > 1 and argv[1] == b"runner":
                found.append(os.readlink(f"/proc/{entry}/exe").removeprefix(resolved))
    return sorted(found)
