"""``ollama doctor``: what stands between this machine and a working local LLM server.

Each check gives one line, OK, WARN or FAIL, and the fix for each line that is not OK:

* ``platform``: the OS and kernel, WSL1 or WSL2, the CPU against the llama.cpp build, the GPUs and drivers;
* ``service``: the systemd unit (or how the server runs without one) and its environment, the models
  folder (owner, permissions, free space), who holds the port, client/server version skew.

Everything is read through a :class:`~appliance.doctor.machine.Machine`, so tests fake any machine.
"""

from __future__ import annotations

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
    checks = [check_os(machine)]
    wsl = check_wsl(machine)
    if wsl is not None:
        checks.append(wsl)
    checks.append(check_cpu(machine))
    runtime = discover_runtime(machine, wsl_version(machine))
    nvidia = check_nvidia(machine)
    if nvidia is not None:
        checks.append(nvidia)
    checks += check_amd(machine, runtime.environ, runtime.set_env_hint())
    if nvidia is None and not any(c.name.startswith("amd") for c in checks):
        checks.append(Check("gpu", Status.OK, "no NVIDIA or AMD GPU found: inference runs on the CPU"))
    checks += runtime.checks
    checks += check_environment(runtime)
    checks += check_models(machine, runtime)
    checks += check_server(machine, runtime)
    return checks
