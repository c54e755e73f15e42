"""Checks of how the server runs: the systemd unit and its environment, the models folder, the port.

The server's environment is the unit's when systemd manages it (``systemctl show ollama``), the unit
files' when WSL runs it without systemd (wsl/ollama-wsl.sh gives it exactly those), else the caller's
own environment (``ollama serve`` from a shell).
"""

from __future__ import annotations

import difflib
import os
import shlex
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import httpx

from appliance import envconfig
from appliance.doctor.machine import COMMAND_TIMEOUT_S, GIB, Account, Check, Machine, Status

UNIT = "ollama"
UNIT_FILES = ("/etc/systemd/system/ollama.service", "/etc/systemd/system/ollama.service.d/override.conf")
SHOW_PROPERTIES = (
    "Environment",
    "FragmentPath",
    "DropInPaths",
    "ActiveState",
    "SubState",
    "LoadState",
    "User",
    "ProtectHome",
    "ReadWritePaths",
)
WARN_FREE_BYTES = 10 * GIB
FAIL_FREE_BYTES = 1 * GIB
#: Variables that are not in envconfig but that the server or its libraries read.
_OTHER_KNOWN = {"OLLAMA_API_KEYS", "OLLAMA_API_KEY", "OLLAMA_NEW_ENGINE", "OLLAMA_RUNNERS_DIR"}


@dataclass
class Runtime:
    """How the server runs here: under systemd, from the unit files without systemd, or by hand."""

    kind: str  # "systemd" | "wsl-no-systemd" | "manual"
    environ: dict[str, str]
    account: Account
    properties: dict[str, str] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)

    def set_env_hint(self) -> str:
        """How to add ``{line}`` (a VAR=value) to the server's environment here."""
        if self.kind == "systemd":
            return (
                'sudo systemctl edit ollama, add under [Service]: Environment="{line}", then '
                "sudo systemctl restart ollama"
            )
        if self.kind == "wsl-no-systemd":
            return (
                'add Environment="{line}" under [Service] in /etc/systemd/system/ollama.service.d/'
                "override.conf, then sudo ollama-wsl restart"
            )
        return "export {line} in the shell that starts 'ollama serve', then restart it"

    @property
    def user(self) -> str:
        return self.account.name


def parse_environment(value: str) -> dict[str, str]:
    """systemd's Environment= text (space separated, quoted where needed) as a mapping."""
    env: dict[str, str] = {}
    try:
        words = shlex.split(value)
    except ValueError:
        words = value.split()
    for word in words:
        key, sep, val = word.partition("=")
        if sep and key:
            env[key] = val
    return env


def _unit_files_environment(machine: Machine) -> tuple[dict[str, str], str]:
    """Environment= and User= of the unit files, as systemd would merge them (later lines win)."""
    env: dict[str, str] = {}
    user = ""
    for unit_file in UNIT_FILES:
        for line in (machine.read(unit_file) or "").splitlines():
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            if key == "Environment":
                env.update(parse_environment(value))
            elif key == "User":
                user = value.strip()
    return env, user


def _caller(machine: Machine) -> Account:
    found = machine.account(uid=machine.euid)
    return found or Account(
        f"uid {machine.euid}", machine.euid, machine.euid, machine.environ.get("HOME", "/")
    )


def discover_runtime(machine: Machine, wsl: int | None) -> Runtime:
    """Find how the server runs, with a check line saying so."""
    systemd = machine.path("/run/systemd/system").is_dir() and machine.which("systemctl") is not None
    if not systemd:
        if wsl is not None and machine.path(UNIT_FILES[0]).exists():
            env, user = _unit_files_environment(machine)
            account = machine.account(name=user or "root") or _caller(machine)
            return Runtime(
                "wsl-no-systemd",
                _with_home(env, account),
                account,
                checks=[
                    Check(
                        "service",
                        Status.OK,
                        f"WSL without systemd: 'sudo ollama-wsl start' (wsl/ollama-wsl.sh) runs "
                        f"the server as {account.name} with the unit's environment; or enable systemd: put "
                        "'[boot]' and 'systemd=true' in /etc/wsl.conf, then 'wsl --shutdown' in PowerShell",
                    )
                ],
            )
        how = "WSL without systemd" if wsl is not None else "no systemd"
        caller = _caller(machine)
        return Runtime(
            "manual",
            dict(machine.environ),
            caller,
            checks=[
                Check(
                    "service",
                    Status.OK,
                    f"{how}: the server runs as whoever starts 'ollama serve' (checked for "
                    f"{caller.name}, with this shell's environment)",
                )
            ],
        )
    argv = ["systemctl", "show", UNIT, *(f"-p{p}" for p in SHOW_PROPERTIES)]
    result = machine.run(argv)
    props: dict[str, str] = {}
    for line in (result.stdout if result is not None else "").splitlines():
        key, _, value = line.partition("=")
        props[key] = value
    caller = _caller(machine)
    if result is None or result.returncode != 0 or props.get("LoadState") in (None, "not-found", ""):
        return Runtime(
            "manual",
            dict(machine.environ),
            caller,
            props,
            [
                Check(
                    "service",
                    Status.WARN,
                    f"systemd has no {UNIT}.service: nothing starts the server at boot "
                    f"(checked for {caller.name}, with this shell's environment)",
                    "install it with the release's install.sh (installer/install.sh here), or run "
                    "'ollama serve'"
                    " yourself",
                )
            ],
        )
    user = props.get("User") or "root"
    account = machine.account(name=user) or Account(user, -1, -1, "/")
    env = _with_home(parse_environment(props.get("Environment", "")), account)
    files = " + ".join(filter(None, [props.get("FragmentPath", ""), *props.get("DropInPaths", "").split()]))
    state = props.get("ActiveState", "unknown")
    sub = props.get("SubState", "")
    detail = f"{UNIT}.service {state}{f' ({sub})' if sub and sub != state else ''}, runs as {user}: {files}"
    if state == "active":
        check = Check("service", Status.OK, detail)
    elif state == "failed" or sub == "auto-restart":
        check = Check(
            "service",
            Status.FAIL,
            detail + ": the server keeps failing",
            "read why: journalctl -u ollama -e; then sudo systemctl restart ollama",
        )
    else:
        check = Check("service", Status.WARN, detail, "start it: sudo systemctl enable --now ollama")
    if account.uid < 0:
        check = Check(
            "service",
            Status.FAIL,
            detail + f": the user {user} does not exist",
            "re-run the installer, or: sudo useradd -r -s /bin/false -U -m -d /usr/share/ollama ollama",
        )
    return Runtime("systemd", env, account, props, [check])


def _with_home(env: Mapping[str, str], account: Account) -> dict[str, str]:
    # systemd (and ollama-wsl) give the service the HOME of its User=; the default models folder hangs on it.
    return {"HOME": account.home, **env}


def check_environment(runtime: Runtime) -> list[Check]:
    """The variables the server will run with, misspelt OLLAMA_* names, and an open API without keys."""
    env = runtime.environ
    shown = [
        f"{k}={v}"
        for k, v in sorted(env.items())
        if k.startswith(("OLLAMA_", "HSA_", "CUDA_", "ROCR_", "HIP_", "GPU_DEVICE"))
    ]
    source = {"systemd": "the unit", "wsl-no-systemd": "the unit files", "manual": "this shell"}[runtime.kind]
    checks = [
        Check(
            "environment",
            Status.OK,
            f"from {source}: {' '.join(shown) or 'no OLLAMA_* variables (defaults)'}",
        )
    ]
    known = {name for name, _ in envconfig.describe()} | _OTHER_KNOWN
    for name in sorted(k for k in env if k.startswith("OLLAMA_") and k not in known):
        guess = difflib.get_close_matches(name, sorted(known), n=1)
        checks.append(
            Check(
                "environment",
                Status.WARN,
                f"{name} is not a variable ollama reads",
                f"did you mean {guess[0]}?" if guess else "remove it (ollama serve --help lists them)",
            )
        )
    host = envconfig.Config.from_env(env).host
    if envconfig.is_loopback_literal(host.host) is False and not env.get("OLLAMA_API_KEYS", "").strip():
        checks.append(
            Check(
                "exposure",
                Status.WARN,
                f"OLLAMA_HOST={env.get('OLLAMA_HOST', '')} listens beyond "
                "this machine and no OLLAMA_API_KEYS are set: anyone who reaches the port can use "
                "the API",
                runtime.set_env_hint().format(line="OLLAMA_API_KEYS=<a file of keys>")
                + " (or bind OLLAMA_HOST=127.0.0.1)",
            )
        )
    return checks


# --- The models folder ------------------------------------------------------------------------------


def _can(account: Account, gids: set[int], st: os.stat_result, bits: int) -> bool:
    """Whether ``account`` has all of ``bits`` (an ``rwx`` triple, e.g. 0o3) on a file, by its mode."""
    if account.uid == 0:
        return True
    if st.st_uid == account.uid:
        mode = st.st_mode >> 6
    elif st.st_gid in gids:
        mode = st.st_mode >> 3
    else:
        mode = st.st_mode
    return mode & bits == bits


def check_models(machine: Machine, runtime: Runtime) -> list[Check]:
    """The models folder: where it is, who can write it, and how much room it has."""
    models = envconfig.Config.from_env(runtime.environ).models_dir
    where = PurePosixPath(str(models))
    if not where.is_absolute():
        return [
            Check(
                "models",
                Status.FAIL,
                f"OLLAMA_MODELS={models} is not an absolute path",
                runtime.set_env_hint().format(line="OLLAMA_MODELS=/an/absolute/path"),
            )
        ]
    account = runtime.account
    gids = machine.group_ids(account)
    owner_fix = f"sudo chown -R {account.name}:{account.name} {where}"
    existing = where
    while not machine.path(existing).exists() and existing != existing.parent:
        existing = existing.parent
    for ancestor in reversed(existing.parents):
        st = machine.path(ancestor).stat()
        if not _can(account, gids, st, 0o1):
            return [
                Check(
                    "models",
                    Status.FAIL,
                    f"{where}: {account.name} cannot enter {ancestor} ({stat.filemode(st.st_mode)})",
                    f"sudo chmod o+x {ancestor}, or move the models elsewhere (OLLAMA_MODELS)",
                )
            ]
    checks = []
    protect = runtime.properties.get("ProtectHome", "no")
    writable_paths = [p.lstrip("-") for p in runtime.properties.get("ReadWritePaths", "").split()]
    protected = any(
        where == PurePosixPath(top) or PurePosixPath(top) in where.parents
        for top in ("/home", "/root", "/run/user")
    )
    if (
        runtime.kind == "systemd"
        and protect not in ("no", "")
        and protected
        and not any(where == PurePosixPath(p) or PurePosixPath(p) in where.parents for p in writable_paths)
    ):
        checks.append(
            Check(
                "models",
                Status.FAIL,
                f"{where} is under a home folder, which the unit makes "
                f"read-only for the service (ProtectHome={protect})",
                "move the models to /usr/share/ollama/.ollama/models or /srv, or run 'sudo "
                f"systemctl edit ollama' and add under [Service]: ReadWritePaths={where}",
            )
        )
    if existing != where:
        st = machine.path(existing).stat()
        if _can(account, gids, st, 0o3):
            checks.append(Check("models", Status.OK, f"{where} does not exist yet; the server creates it"))
        else:
            checks.append(
                Check(
                    "models",
                    Status.FAIL,
                    f"{where} does not exist and {account.name} cannot create it in {existing}",
                    f"sudo install -d -o {account.name} -g {account.name} {where}",
                )
            )
    elif not machine.path(where).is_dir():
        return [
            *checks,
            Check(
                "models",
                Status.FAIL,
                f"{where} is not a folder",
                "point OLLAMA_MODELS at a folder: "
                + runtime.set_env_hint().format(line="OLLAMA_MODELS=/path/to/models"),
            ),
        ]
    else:
        checks.append(_folder_owner_check(machine, runtime, where, gids, owner_fix))
    checks.append(check_disk(machine, where, existing))
    return checks


def _folder_owner_check(
    machine: Machine, runtime: Runtime, where: PurePosixPath, gids: set[int], owner_fix: str
) -> Check:
    account = runtime.account
    folders = [where, *(where / sub for sub in ("blobs", "manifests") if machine.path(where / sub).is_dir())]
    for folder in folders:
        st = machine.path(folder).stat()
        owner = machine.account(uid=st.st_uid)
        owner_name = owner.name if owner is not None else str(st.st_uid)
        if not _can(account, gids, st, 0o3):
            return Check(
                "models",
                Status.FAIL,
                f"{folder} is owned by {owner_name} "
                f"({stat.filemode(st.st_mode)}) and {account.name}, who runs the server, cannot "
                "write it: pulls and creates fail",
                owner_fix,
            )
    st = machine.path(where).stat()
    owner = machine.account(uid=st.st_uid)
    return Check(
        "models",
        Status.OK,
        f"{where}: owner {owner.name if owner else st.st_uid}, "
        f"{stat.filemode(st.st_mode)}, writable by {account.name}",
    )


def check_disk(machine: Machine, where: PurePosixPath, existing: PurePosixPath) -> Check:
    try:
        free = machine.free_bytes(str(machine.path(existing)))
    except OSError as exc:
        return Check(
            "disk", Status.WARN, f"cannot tell the free space at {existing}: {exc}", "check it: df -h"
        )
    detail = f"{free / GIB:.1f} GiB free for {where}"
    if free < FAIL_FREE_BYTES:
        return Check(
            "disk",
            Status.FAIL,
            detail + ": not enough for any model",
            "free space on that disk, or move the models to a bigger one (OLLAMA_MODELS)",
        )
    if free < WARN_FREE_BYTES:
        return Check(
            "disk",
            Status.WARN,
            detail + ": enough for small models only (a 7B model needs 4-5 GiB)",
            "free space on that disk, or move the models to a bigger one (OLLAMA_MODELS)",
        )
    return Check("disk", Status.OK, detail)


# --- The port and the server's version --------------------------------------------------------------


def check_server(machine: Machine, runtime: Runtime) -> list[Check]:
    """Who answers where the server should listen, and whether its version matches this client's."""
    host = envconfig.Config.from_env(runtime.environ).host
    url = host.url
    start = (
        "sudo systemctl start ollama"
        if runtime.kind == "systemd"
        else "sudo ollama-wsl start"
        if runtime.kind == "wsl-no-systemd"
        else "ollama serve"
    )
    taken_fix = (
        f"find it: sudo ss -ltnp 'sport = :{host.port}'; stop it, or give ollama another port: "
        + runtime.set_env_hint().format(line="OLLAMA_HOST=127.0.0.1:<port>")
    )
    try:
        with httpx.Client(timeout=COMMAND_TIMEOUT_S, trust_env=False, verify=False) as client:
            response = client.get(f"{url}/api/version")
    except httpx.ConnectError:
        return [Check("port", Status.WARN, f"nothing listens at {url}: the server is not running", start)]
    except httpx.HTTPError as exc:
        return [
            Check(
                "port",
                Status.FAIL,
                f"something that is not ollama holds {url}: it does not speak HTTP ({type(exc).__name__})",
                taken_fix,
            )
        ]
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("version"), str):
        return [
            Check(
                "port",
                Status.FAIL,
                f"another program answers at {url} (HTTP {response.status_code} for "
                "/api/version, not ollama's answer)",
                taken_fix,
            )
        ]
    server_version, appliance = body["version"], body.get("appliance")
    if not isinstance(appliance, str):
        return [
            Check(
                "port",
                Status.WARN,
                f"Ollama {server_version} answers at {url}, not ollama-appliance: "
                "another Ollama install holds the port",
                taken_fix,
            )
        ]
    checks = [Check("port", Status.OK, f"ollama-appliance {appliance} answers at {url}")]
    if (server_version, appliance) != (machine.client_version, machine.appliance_version):
        checks.append(
            Check(
                "version",
                Status.WARN,
                f"the server is ollama-appliance {appliance} (API "
                f"{server_version}), this client {machine.appliance_version} (API "
                f"{machine.client_version})",
                "restart the server after an upgrade ("
                f"{start.replace('start', 'restart')}), or install the same version on both sides",
            )
        )
    else:
        checks.append(
            Check("version", Status.OK, f"client and server are both {appliance} (API {server_version})")
        )
    return checks
