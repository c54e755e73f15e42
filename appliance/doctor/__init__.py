"""``ollama doctor``: what stands between this machine and a working local LLM server.

Each check gives one line, OK, WARN or FAIL, and the fix for each line that is not OK:

* ``platform``: the OS and kernel, WSL1 or WSL2, the CPU against the llama.cpp build, the GPUs and drivers;
* ``service``: the systemd unit (or how the server runs without one) and its environment, the models
  folder (owner, permissions, free space), who holds the port, client/server version skew.

Everything is read through a :class:`~appliance.doctor.machine.Machine`, so tests fake any machine.
"""

from __future__ import annotations

from collections.abc import Callable

from appliance.doctor.machine import Check, Machine, Status
from appliance.doctor.platform import check_amd, check_cpu, check_nvidia, check_os, check_wsl, wsl_version
from appliance.doctor.service import (
    check_environment,
    check_models,
    check_server,
    discover_runtime,
)

__all__ = ["Check", "Machine", "Status", "run_checks"]


def run_checks(machine: Machine | None = None) -> list[Check]:
    """Every check, in report order: the platform first, then the server's setup."""
    machine = machine or Machine()
    checks = [_guarded("os", lambda: [check_os(machine)])[0]]
    checks += _guarded("wsl", lambda: [c for c in [check_wsl(machine)] if c is not None])
    checks += _guarded("cpu", lambda: [check_cpu(machine)])
    runtime = discover_runtime(machine, wsl_version(machine))
    gpus = _guarded("nvidia", lambda: [c for c in [check_nvidia(machine)] if c is not None])
    gpus += _guarded("amd", lambda: check_amd(machine, runtime.environ, runtime.set_env_hint()))
    checks += gpus or [Check("gpu", Status.OK, "no NVIDIA or AMD GPU found: inference runs on the CPU")]
    checks += runtime.checks
    checks += _guarded("environment", lambda: check_environment(runtime))
    checks += _guarded("models", lambda: check_models(machine, runtime))
    checks += _guarded("port", lambda: check_server(machine, runtime))
    return checks


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """A check that cannot read what it needs (a permission, a strange file) reports that, and the
    other checks still run."""
    try:
        return run()
    except (OSError, ValueError, UnicodeError) as exc:
        return [
            Check(name, Status.WARN, f"could not check: {exc}", "run 'ollama doctor' as root to see more")
        ]
