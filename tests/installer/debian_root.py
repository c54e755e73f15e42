"""A throw-away Debian bookworm root in which the real installer runs, as root, under chroot.

The base system is built once with ``debootstrap --variant=minbase`` from the mirror this machine's
apt uses and cached outside the repository as a tar file. A test session unpacks it once; each test
gets a fresh root on top of it, an overlayfs mount (copy-on-write, so nothing a test does reaches the
base or another test), or a ``cp -a`` copy where overlayfs is not available.

Hardware is described only by what a chroot naturally lets us replace: fake tools early on PATH
(``uname``, ``systemctl``, ``nvidia-smi``, ``lspci``, ``lshw``, ``curl``) and plain files written into
the root's own ``/sys``, ``/proc`` and ``/etc``. Nothing is mounted on the root's /sys or /proc while
the installer runs, so it reads the fakes through its ordinary absolute paths: install.sh has no root
prefix and no test hook.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALLER = REPO / "installer" / "install.sh"
UNINSTALLER = REPO / "installer" / "uninstall.sh"

SUITE = "bookworm"
#: curl for the real download path (minbase has neither curl nor wget); sudo for installs run by a
#: normal user, as ``curl ... | sh`` usually is.
INCLUDE = ("curl", "sudo")
FAKE_BIN = "/opt/fake/bin"
STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Left out of the cached root: not needed by the installer, and they make every copy slower.
_PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/locale", "usr/share/info", "var/cache/apt",
          "var/lib/apt/lists")


class CannotChroot(Exception):
    """This machine cannot run the chroot tests at all (not Linux, not root, chroot forbidden)."""


class BaseBuildError(Exception):
    """debootstrap could not build the base root (missing tool, mirror unreachable, ...)."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ollama-appliance"


def check_can_chroot() -> None:
    if os.uname().sysname != "Linux":
        raise CannotChroot("the installer tests need Linux")
    if os.geteuid() != 0:
        raise CannotChroot("the installer tests run install.sh as root inside a chroot: run them as root")
    try:
        subprocess.run(["chroot", "/", "true"], check=True, capture_output=True, timeout=30)
    except FileNotFoundError as exc:
        raise CannotChroot("no chroot command on this machine") from exc
    except subprocess.CalledProcessError as exc:
        raise CannotChroot(f"chroot is not permitted here: {exc.stderr.decode(errors='replace').strip()}") from exc


def apt_mirror() -> str:
    """The Debian mirror this machine's apt uses for bookworm (OLLAMA_APPLIANCE_DEBIAN_MIRROR wins)."""
    if mirror := os.environ.get("OLLAMA_APPLIANCE_DEBIAN_MIRROR"):
        return mirror
    sources = Path("/etc/apt/sources.list.d")
    files = [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list")), *sorted(sources.glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(_deb822_fields(stanza))
                if "deb" in fields.get("Types", "").split() and SUITE in fields.get("Suites", "").split():
                    if fields.get("Enabled", "yes").lower() != "no" and (uris := fields.get("URIs", "").split()):
                        return uris[0]
        else:
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                    return words[1]
    return "http://deb.debian.org/debian"


def _deb822_fields(stanza: str) -> Iterator[tuple[str, str]]:
    for line in stanza.splitlines():
        if line and not line.startswith(("#", " ", "\t")) and ":" in line:
            key, value = line.split(":", 1)
            yield key.strip(), value.strip()


def unpack_base(tar: Path, into: Path) -> Path:
    """The base root unpacked once per session: the read-only lower layer of every machine."""
    into.mkdir(parents=True)
    subprocess.run(["tar", "-C", str(into), "--numeric-owner", "-xpf", str(tar)], check=True)
    return into


def base_tar() -> Path:
    """The cached base root as a tar file, built by debootstrap on first use (about 1-3 minutes)."""
    key = hashlib.sha256(repr((SUITE, "minbase", INCLUDE, _PRUNE)).encode()).hexdigest()[:10]
    target = cache_dir() / f"debootstrap-{SUITE}-minbase-{key}.tar"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".debootstrap.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest process may be building the same root
        if not target.is_file():
            _build_base(target)
    return target


def _build_base(target: Path) -> None:
    if shutil.which("debootstrap") is None:
        raise BaseBuildError("debootstrap is not installed (scripts/test-deps.sh ensure_test_tools installs it)")
    mirror = apt_mirror()
    build = target.with_name(target.name + f".build-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    argv = ["debootstrap", "--variant=minbase", f"--include={','.join(INCLUDE)}", SUITE, str(build), mirror]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-25:])
            raise BaseBuildError(f"{' '.join(argv)} failed ({done.returncode}):\n{tail}")
        unmount_below(build)
        for rel in _PRUNE:
            for child in (build / rel).glob("*"):
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        partial = target.with_name(target.name + ".partial")
        subprocess.run(["tar", "-C", str(build), "--numeric-owner", "-cf", str(partial), "."], check=True)
        partial.rename(target)
    finally:
        unmount_below(build)
        if not mounts_below(build):
            shutil.rmtree(build, ignore_errors=True)


# --- mounts and processes, cleaned up whatever happens ---------------------------------------------


def mounts_below(path: Path) -> list[str]:
    prefix = str(path.resolve())
    found = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return found


def stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM ``proc``'s process group (started with ``start_new_session``), SIGKILL it after ``timeout``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def unmount_below(path: Path) -> None:
    for point in sorted(mounts_below(path), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


def kill_processes_in(root: Path) -> None:
    """SIGKILL every process whose root directory is ``root`` (a server left running by a test)."""
    resolved = str(root.resolve())
    for _ in range(50):
        victims = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{entry}/root") == resolved:
                    victims.append(int(entry))
        if not victims:
            return
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


# --- one machine -----------------------------------------------------------------------------------


@dataclass
class Run:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\n(exit {self.returncode})\n{self.output}"


class Machine:
    """A fresh Debian root: fake hardware in, the installer run, the results read back."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = root
        self.env: dict[str, str] = {}

    @classmethod
    def create(cls, base: Path, scratch: Path) -> Machine:
        """A fresh root in ``scratch``: an overlay on the unpacked ``base`` (instant, copy-on-write), or
        a full copy where overlayfs is not available. ``destroy`` undoes either."""
        root, upper, work = scratch / "root", scratch / "upper", scratch / "work"
        for folder in (root, upper, work):
            folder.mkdir(parents=True)
        machine = cls(root)
        machine.scratch = scratch
        try:
            options = f"lowerdir={base},upperdir={upper},workdir={work}"
            mounted = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(root)],
                                     capture_output=True)
            if mounted.returncode != 0:
                subprocess.run(["cp", "-a", f"{base}/.", str(root)], check=True)
            machine.prepare()
        except BaseException:
            machine.destroy()
            raise
        return machine

    @classmethod
    def unpack(cls, tar: Path, root: Path) -> Machine:
        """A fresh root unpacked from the base tar into ``root`` (a full copy: slower than ``create``)."""
        root.mkdir(parents=True)
        machine = cls(root)
        try:
            subprocess.run(["tar", "-C", str(root), "--numeric-owner", "-xpf", str(tar)], check=True)
            machine.prepare()
        except BaseException:
            machine.destroy()
            raise
        return machine

    def prepare(self) -> None:
        self.path(FAKE_BIN).mkdir(parents=True)
        self.systemd("running")
        # The chroot shares the host's hostname, which sudo wants to resolve.
        hosts = self.path("/etc/hosts")
        known = hosts.read_text() if hosts.exists() else "127.0.0.1\tlocalhost\n"
        hosts.write_text(known + f"127.0.1.1\t{os.uname().nodename}\n")

    def destroy(self) -> None:
        kill_processes_in(self.root)
        unmount_below(self.root)
        if left := mounts_below(self.root):
            raise RuntimeError(f"still mounted, not deleting {self.root}: {left}")
        shutil.rmtree(self.scratch, ignore_errors=True)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def write(self, inside: str, text: str, mode: int = 0o644) -> Path:
        path = self.path(inside)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(mode)
        return path

    def fake_tool(self, name: str, script: str) -> None:
        self.write(f"{FAKE_BIN}/{name}", "#!/bin/sh\n" + script, 0o755)

    # --- hardware and system, as the installer will see them -----------------------------------

    def kernel(self, release: str | None = None, machine: str | None = None) -> None:
        """``uname -r`` / ``uname -m`` answers (None: the real kernel's)."""
        cases = ""
        if release is not None:
            cases += f"    -r) echo '{release}' ;;\n"
        if machine is not None:
            cases += f"    -m) echo '{machine}' ;;\n"
        self.fake_tool("uname", f'case "$*" in\n{cases}    *) exec /usr/bin/uname "$@" ;;\nesac\n')

    def systemd(self, state: str) -> None:
        """A ``systemctl`` that logs its calls and answers ``is-system-running`` with ``state``."""
        log = self.path("/var/log/fake-systemctl.log")
        log.touch()
        log.chmod(0o666)  # normal users call systemctl too
        self.fake_tool("systemctl", f"""echo "$*" >> /var/log/fake-systemctl.log
if [ "$1" = is-system-running ]; then
    echo '{state}'
    [ '{state}' = running ]
    exit
fi
exit 0
""")

    def no_systemctl(self) -> None:
        self.path(f"{FAKE_BIN}/systemctl").unlink()
        for real in ("usr/bin/systemctl", "bin/systemctl"):
            assert not (self.root / real).exists(), "the base root must not ship systemctl"

    def nvidia_smi(self, *, working: bool = True, at: str = FAKE_BIN) -> None:
        if working:
            body = """if [ "$1" = -L ]; then echo 'GPU 0: NVIDIA GeForce RTX 4090 (UUID: GPU-0f1e2d3c-0000-1111-2222-333344445555)'; exit 0; fi
case "$*" in
    *--query-gpu*) echo '0, GPU-0f1e2d3c-0000-1111-2222-333344445555, NVIDIA GeForce RTX 4090, 24564, 23000, 550.54.14, 8.9' ;;
    *) echo '| NVIDIA-SMI 550.54.14    Driver Version: 550.54.14    CUDA Version: 12.4 |' ;;
esac
"""
        else:
            body = ("echo \"NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\"\n"
                    "exit 9\n")
        self.write(f"{at}/nvidia-smi", "#!/bin/sh\n" + body, 0o755)

    def nvidia_modprobe(self) -> None:
        self.write("/usr/bin/nvidia-modprobe", "#!/bin/sh\nexit 0\n", 0o755)

    def lspci(self, *devices: tuple[str, str, str, str]) -> None:
        """PCI devices as (slot, class, "vendor:device", description), e.g. ("01:00.0", "0300", ...)."""
        table = "\n".join(f"{slot} {cls} {ids} {desc}" for slot, cls, ids, desc in devices)
        self.fake_tool("lspci", f"""numeric=false
vendor=
while [ $# -gt 0 ]; do
    case "$1" in
        -n) numeric=true ;;
        -d) vendor=${{2%%:*}}; shift ;;
    esac
    shift
done
while read -r slot class ids desc; do
    [ -n "$slot" ] || continue
    [ -z "$vendor" ] || [ "${{ids%%:*}}" = "$vendor" ] || continue
    if [ "$numeric" = true ]; then echo "$slot $class: $ids"; else echo "$slot $desc"; fi
done <<'EOF'
{table}
EOF
""")

    def lshw(self, *displays: tuple[str, str]) -> None:
        """Display adapters as (vendor text, vendor id), as ``lshw -c display -numeric`` prints them."""
        blocks = "".join(
            f"  *-display\n       description: VGA compatible controller\n       vendor: {name} [{vid}]\n"
            for name, vid in displays
        )
        self.fake_tool("lshw", f"cat <<'EOF'\n{blocks}EOF\n")

    def amd_kfd(self, *gfx_target_versions: int) -> None:
        """KFD topology: a CPU node 0, then one GPU node per target (110003 = gfx1103)."""
        nodes = "/sys/class/kfd/kfd/topology/nodes"
        self.write(f"{nodes}/0/properties", "cpu_cores_count 16\nsimd_count 0\nvendor_id 0\ngfx_target_version 0\n")
        for n, version in enumerate(gfx_target_versions, start=1):
            self.write(
                f"{nodes}/{n}/properties",
                f"cpu_cores_count 0\nsimd_count 24\nvendor_id 4098\ndevice_id 5567\n"
                f"gfx_target_version {version}\ndrm_render_minor {127 + n}\n",
            )

    def add_group(self, name: str) -> None:
        self.chroot("groupadd", "-f", name)

    def add_user(self, name: str, home_mode: int = 0o755) -> None:
        self.chroot("useradd", "-m", "-s", "/bin/bash", name)
        self.path(f"/home/{name}").chmod(home_mode)

    # --- running things inside ----------------------------------------------------------------

    def chroot(self, *argv: str, env: dict[str, str] | None = None, input: bytes | None = None,
               check: bool = True, timeout: float = 120) -> Run:
        environ = {"PATH": f"{FAKE_BIN}:{STANDARD_PATH}", "HOME": "/root", "LANG": "C", **(env or {})}
        command = ["chroot", str(self.root), "/usr/bin/env", "-i",
                   *(f"{k}={v}" for k, v in environ.items()), *argv]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise AssertionError(f"timed out after {timeout}s: {argv}\n{out.decode()}{err.decode()}") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        run = Run(list(argv), proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and run.returncode != 0:
            raise AssertionError(f"failed inside the chroot:\n{run}")
        return run

    def install(self, *args: str, check: bool = True, **env: str) -> Run:
        """The real install.sh, piped to ``sh -s`` exactly as ``curl ... | sh`` does."""
        return self.chroot("/bin/sh", "-s", "--", *args, env={**self.env, **env},
                           input=INSTALLER.read_bytes(), check=check)

    def uninstall(self, *args: str, check: bool = True, **env: str) -> Run:
        return self.chroot("/bin/sh", "-s", "--", *args, env={**self.env, **env},
                           input=UNINSTALLER.read_bytes(), check=check)

    # --- reading the result back ------------------------------------------------------------------

    def passwd(self, name: str) -> list[str] | None:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == name:
                return fields
        return None

    def group_members(self, group: str) -> list[str]:
        for line in self.path("/etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return [m for m in fields[3].split(",") if m]
        raise AssertionError(f"no group {group}")

    def owner(self, inside: str) -> str | None:
        """The name the root's own /etc/passwd gives the owner of a file."""
        uid = self.path(inside).stat().st_uid
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if int(fields[2]) == uid:
                return fields[0]
        return None

    def gid(self, group: str) -> int | None:
        for line in self.path("/etc/group").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == group:
                return int(fields[2])
        return None

    def systemctl_calls(self) -> list[str]:
        log = self.path("/var/log/fake-systemctl.log")
        return log.read_text().splitlines() if log.exists() else []

    def override_env(self) -> dict[str, str]:
        """The Environment= assignments of override.conf, in order (simple KEY=VALUE forms only)."""
        env: dict[str, str] = {}
        path = self.path("/etc/systemd/system/ollama.service.d/override.conf")
        for line in path.read_text().splitlines() if path.exists() else []:
            if line.startswith("Environment="):
                for word in re.findall(r'"([^"]*)"|(\S+)', line[len("Environment="):]):
                    key, _, value = (word[0] or word[1]).partition("=")
                    env[key] = value
        return env

    def installed_version(self, binary: str = "/usr/local/bin/ollama") -> str:
        return self.chroot(binary, "-v").stdout.strip()


# --- fake releases -------------------------------------------------------------------------------


def fake_binary(version: str, flavor: str, arch: str) -> bytes:
    return f'#!/bin/sh\necho "ollama-appliance version is {version} ({flavor} build, {arch})"\n'.encode()


def tgz(files: dict[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def make_release(folder: Path, version: str = "0.1.0", *, arches: tuple[str, ...] = ("amd64", "arm64"),
                 flavors: tuple[str, ...] = ("cpu", "cuda", "rocm"), binary: bytes | None = None) -> Path:
    """A release folder as the project publishes it: one tgz per arch and flavor, plus sha256sum.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = []
    for arch in arches:
        for flavor in flavors:
            name = f"ollama-linux-{arch}{'' if flavor == 'cpu' else '-' + flavor}.tgz"
            data = tgz({"bin/ollama": (binary or fake_binary(version, flavor, arch), 0o755)})
            (folder / name).write_bytes(data)
            sums.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    (folder / "sha256sum.txt").write_text("".join(sums))
    return folder
