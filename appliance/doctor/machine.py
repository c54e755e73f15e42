"""The machine ``ollama doctor`` examines, and the verdicts it gives.

Every input goes through :class:`Machine`: files are read below ``root`` (``/proc``, ``/sys``, ``/etc``,
the models folder), commands (``systemctl``, ``nvidia-smi``) are found on ``environ["PATH"]``, free
space comes from ``statvfs`` and the llama.cpp build from ``llama_info``. Tests describe a whole
machine with a temporary tree, PATH shims and a few callables; the real machine is the default.
"""

from __future__ import annotations

import enum
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from appliance import OLLAMA_COMPAT_VERSION, __version__
from appliance._build import FLAVOR

#: How long one command (systemctl, nvidia-smi) or one probe of the port may take.
COMMAND_TIMEOUT_S = 10
GIB = 1 << 30


class Status(enum.Enum):
    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    """One line of the report: what was checked, what was found, and how to fix it when not OK."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Account:
    """A line of /etc/passwd."""

    name: str
    uid: int
    gid: int
    home: str


def _statvfs_free(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _llama_info_in_child() -> str | None:
    """llama.cpp's system info from a child process, so a library built for another CPU (SIGILL)
    kills the child, not the doctor; None when the child fails (its error is in the text then)."""
    if getattr(sys, "frozen", False):
        return None  # a release binary: its CPU flags are the fixed portable set (see checks_platform)
    code = "from appliance._build import llama_system_info; print(llama_system_info())"
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"error: {exc}"
    if done.returncode != 0:
        return f"error: exit status {done.returncode}: {done.stderr.strip()[-300:]}"
    return done.stdout.strip()


def _llama_lib_dir() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    for folder in (spec.submodule_search_locations if spec is not None else None) or ():
        if (Path(folder) / "lib").is_dir():
            return Path(folder) / "lib"
    return None


@dataclass
class Machine:
    """Where every check reads its inputs; the defaults describe the machine this runs on."""

    root: Path = Path("/")
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    #: Bytes free for an unprivileged writer at a path (a folder that exists).
    free_bytes: Callable[[str], int] = _statvfs_free
    #: The llama.cpp build inside this binary: cpu, cuda, rocm, or source (a checkout).
    flavor: str = FLAVOR
    #: llama.cpp's ``llama_print_system_info`` text (None: not known, e.g. a release binary).
    llama_info: Callable[[], str | None] = _llama_info_in_child
    #: The folder holding libggml-cpu*.so (None: not found).
    llama_lib_dir: Callable[[], Path | None] = _llama_lib_dir
    client_version: str = OLLAMA_COMPAT_VERSION
    appliance_version: str = __version__
    euid: int = field(default_factory=os.geteuid)
    _build_info: list[str | None] = field(default_factory=list, init=False, repr=False)

    def build_info(self) -> str | None:
        """``llama_info()``, asked once: in a checkout it starts a child process that loads llama.cpp."""
        if not self._build_info:
            self._build_info.append(self.llama_info())
        return self._build_info[0]

    def path(self, absolute: str | PurePosixPath) -> Path:
        """``absolute`` (a path on the examined machine) as a path on this one."""
        return self.root / str(absolute).lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text(errors="replace")
        except OSError:
            return None

    def which(self, command: str) -> str | None:
        return shutil.which(command, path=self.environ.get("PATH", os.defpath))

    def run(self, argv: list[str]) -> CommandResult | None:
        """Run a command found on the examined PATH; None when it is not there or cannot start."""
        found = self.which(argv[0]) if "/" not in argv[0] else str(self.path(argv[0]))
        if found is None or not os.access(found, os.X_OK):
            return None
        try:
            done = subprocess.run(
                [found, *argv[1:]],
                capture_output=True,
                text=True,
                check=False,
                timeout=COMMAND_TIMEOUT_S,
                env=dict(self.environ),
            )
        except subprocess.TimeoutExpired:
            return CommandResult(124, "", f"{argv[0]} did not answer within {COMMAND_TIMEOUT_S} s")
        except OSError as exc:
            return CommandResult(126, "", str(exc))
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def accounts(self) -> list[Account]:
        found = []
        for line in (self.read("/etc/passwd") or "").splitlines():
            parts = line.split(":")
            if len(parts) >= 6 and parts[2].isdigit() and parts[3].isdigit():
                found.append(Account(parts[0], int(parts[2]), int(parts[3]), parts[5]))
        return found

    def account(self, *, name: str | None = None, uid: int | None = None) -> Account | None:
        for acc in self.accounts():
            if acc.name == name or acc.uid == uid:
                return acc
        if self.root == Path("/"):  # users from NSS (LDAP, systemd-homed) are not in /etc/passwd
            import pwd

            try:
                entry = pwd.getpwnam(name) if name is not None else pwd.getpwuid(uid or 0)
            except (KeyError, OverflowError):
                return None
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)
        return None

    def group_ids(self, account: Account) -> set[int]:
        """The account's primary group and the groups that list it in /etc/group."""
        gids = {account.gid}
        for line in (self.read("/etc/group") or "").splitlines():
            parts = line.split(":")
            if len(parts) >= 4 and parts[2].isdigit() and account.name in parts[3].split(","):
                gids.add(int(parts[2]))
        return gids
