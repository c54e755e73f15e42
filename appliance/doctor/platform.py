"""Checks of the platform: OS and kernel, WSL1 or WSL2, CPU features against the build, GPUs and drivers."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.doctor.machine import Check, Machine, Status
from appliance.engine import gpu

INSTALL_URL = "https://github.com/ollama-appliance/ollama-appliance/releases/latest/download/install.sh"

#: What every shipped x86-64 llama.cpp build needs: scripts/llama-wheel.sh builds with GGML_NATIVE=OFF
#: and one CPU backend for x86-64-v3 (its CPU_ARGS turn these on and AVX512/AMX off).
PORTABLE_X86_FEATURES = ("avx", "avx2", "fma", "f16c", "bmi2")

#: ggml's CPU backend variants (GGML_CPU_ALL_VARIANTS builds libggml-cpu-<variant>.so and loads the
#: best one the CPU runs), with the flags each needs, from the least to the most demanding.
_SSE42 = ("sse3", "ssse3", "sse4_1", "sse4_2")
_HASWELL = (*_SSE42, "avx", "avx2", "fma", "f16c", "bmi2")
_AVX512 = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
_ICELAKE = (*_HASWELL, *_AVX512, "avx512vbmi", "avx512_vnni")
CPU_VARIANTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x64", ()),
    ("sse42", _SSE42),
    ("sandybridge", (*_SSE42, "avx")),
    ("haswell", _HASWELL),
    ("alderlake", (*_HASWELL, "avx_vnni")),
    ("skylakex", (*_HASWELL, *_AVX512)),
    ("icelake", _ICELAKE),
    ("sapphirerapids", (*_ICELAKE, "avx512_bf16", "amx_tile", "amx_int8")),
)

#: llama_print_system_info's names for CPU features, as /proc/cpuinfo spells them.
_INFO_FLAG_NAMES = {
    "sse3": "sse3",
    "ssse3": "ssse3",
    "avx": "avx",
    "avx2": "avx2",
    "f16c": "f16c",
    "fma": "fma",
    "bmi2": "bmi2",
    "avx_vnni": "avx_vnni",
    "avx512": "avx512f",
    "avx512_vbmi": "avx512vbmi",
    "avx512_vnni": "avx512_vnni",
    "avx512_bf16": "avx512_bf16",
    "amx_int8": "amx_int8",
}


def check_os(machine: Machine) -> Check:
    """The distribution and the kernel release."""
    import distro

    dist = distro.LinuxDistribution(include_lsb=False, include_uname=False, root_dir=str(machine.root))
    name = dist.name(pretty=True) or "unknown Linux distribution (no /etc/os-release)"
    kernel = kernel_release(machine)
    detail = f"{name}, kernel {kernel or 'unknown'}"
    match = re.match(r"(\d+)\.(\d+)", kernel)
    if match and (int(match[1]), int(match[2])) < (4, 4):
        return Check(
            "os",
            Status.WARN,
            detail + " (older than any kernel the GPU drivers support)",
            "upgrade the distribution or its kernel",
        )
    return Check("os", Status.OK, detail)


def kernel_release(machine: Machine) -> str:
    release = (machine.read("/proc/sys/kernel/osrelease") or "").strip()
    if not release:
        fields = (machine.read("/proc/version") or "").split()
        release = fields[2] if len(fields) > 2 else ""
    return release


def wsl_version(machine: Machine) -> int | None:
    """1 or 2 under WSL, None elsewhere (as install.sh and wsl/ollama-wsl.sh tell them apart)."""
    version_text = machine.read("/proc/version") or ""
    release = kernel_release(machine)
    interop = any(
        machine.path(f"/proc/sys/fs/binfmt_misc/{n}").exists() for n in ("WSLInterop", "WSLInterop-late")
    )
    if not (interop or machine.environ.get("WSL_DISTRO_NAME") or "microsoft" in version_text.lower()):
        return None
    # WSL1 has no Linux kernel: it reports a fixed 4.4.0-<build>-Microsoft; WSL2 kernels are
    # "<version>-microsoft-standard-WSL2" (or a custom kernel, never 4.4.0-*-Microsoft).
    if re.fullmatch(r"4\.4\.0-\d+-Microsoft", release) or (
        "Microsoft" in release and "wsl2" not in release.lower() and "standard" not in release
    ):
        return 1
    return 2


def check_wsl(machine: Machine) -> Check | None:
    """FAIL under WSL1; None outside WSL."""
    version = wsl_version(machine)
    if version is None:
        return None
    distro_name = machine.environ.get("WSL_DISTRO_NAME") or "<distro>"
    if version == 1:
        return Check(
            "wsl",
            Status.FAIL,
            f"WSL1 (kernel {kernel_release(machine)}): no GPU access, and the server cannot run well",
            f"in Windows PowerShell: wsl --set-version {distro_name} 2   ('wsl -l -v' lists the "
            "distributions)",
        )
    return Check("wsl", Status.OK, f"WSL2 (distribution {distro_name})")


# --- CPU --------------------------------------------------------------------------------------------


def cpu_flags(machine: Machine) -> tuple[str, set[str], str]:
    """(model name, flags, architecture) of the first processor in /proc/cpuinfo."""
    text = machine.read("/proc/cpuinfo") or ""
    first = re.split(r"\n\s*\n", text.strip())[0] if text.strip() else ""
    fields: dict[str, str] = {}
    for line in first.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    if "pni" in flags:
        flags.add("sse3")  # the kernel's name for it
    arch = "arm64" if "Features" in fields or "CPU implementer" in fields else "x86_64"
    model = fields.get("model name") or fields.get("Hardware") or fields.get("Processor") or "unknown CPU"
    return model, flags, arch


def build_cpu_features(info: str) -> tuple[str, ...]:
    """The CPU features a llama.cpp build was compiled for, from its system info ("AVX2 = 1 | ...")."""
    cpu_part = info.split("CPU :", 1)[1] if "CPU :" in info else ""
    cpu_part = re.split(r"\|\s*[A-Z][A-Za-z]* :", cpu_part)[0]  # stop at the next backend
    found = []
    for name, value in re.findall(r"([A-Z0-9_]+) = (\d+)", cpu_part):
        flag = _INFO_FLAG_NAMES.get(name.lower())
        if flag and value == "1":
            found.append(flag)
    return tuple(found)


def check_cpu(machine: Machine) -> Check:
    """The CPU against what the llama.cpp build in use needs."""
    model, flags, arch = cpu_flags(machine)
    headline = " ".join(
        f.upper() for f in ("avx", "avx2", "fma", "f16c", "avx512f", "amx_tile", "asimd", "sve") if f in flags
    )
    prefix = f"{model} ({headline or 'no SIMD flags listed'})"
    if arch != "x86_64":
        return Check("cpu", Status.OK, f"{prefix}: arm64 build")
    lib = machine.llama_lib_dir()
    variants = sorted(
        p.name[len("libggml-cpu-") :].split(".so")[0]
        for p in (lib.glob("libggml-cpu-*.so") if lib is not None else ())
    )
    if variants:
        usable = [name for name, needs in CPU_VARIANTS if name in variants and set(needs) <= flags]
        if not usable:
            return Check(
                "cpu",
                Status.FAIL,
                f"{prefix}: none of the build's CPU variants ({', '.join(variants)}) runs on this CPU",
                "install the portable build: " + _reinstall(machine),
            )
        return Check("cpu", Status.OK, f"{prefix}: the build picks its '{usable[-1]}' CPU variant")
    missing = [f for f in PORTABLE_X86_FEATURES if f not in flags]
    if missing:
        return Check(
            "cpu",
            Status.FAIL,
            f"{prefix}: lacks {', '.join(m.upper() for m in missing)}, which this build needs "
            "(x86-64-v3: AVX2, FMA, F16C, BMI2); llama.cpp would stop with 'illegal instruction'",
            "run it on a CPU with AVX2 (Intel Haswell / AMD Zen or newer); in a VM, pass the host "
            "CPU through (e.g. QEMU/libvirt 'host-passthrough')",
        )
    # Only now is it safe to ask the library itself (in a child): a native build may need more.
    info = machine.build_info()
    if info is None:
        return Check(
            "cpu",
            Status.OK,
            f"{prefix}: has what the portable build needs "
            f"({', '.join(f.upper() for f in PORTABLE_X86_FEATURES)})",
        )
    if info.startswith("error:") or "CPU :" not in info:
        return Check(
            "cpu",
            Status.FAIL,
            f"{prefix}: the llama.cpp library does not load ({info[:200]})",
            "reinstall the build: " + _reinstall(machine),
        )
    built = build_cpu_features(info)
    lacking = [f for f in built if f not in flags]
    if lacking:
        return Check(
            "cpu",
            Status.FAIL,
            f"{prefix}: the llama.cpp library was built for {', '.join(f.upper() for f in lacking)}, "
            "which this CPU lacks (a native build from another machine)",
            "install the portable build: " + _reinstall(machine),
        )
    return Check(
        "cpu",
        Status.OK,
        f"{prefix}: has every feature the build uses ({', '.join(f.upper() for f in built) or 'none'})",
    )


def _reinstall(machine: Machine, flavor: str | None = None) -> str:
    flavor = flavor or machine.flavor
    if machine.flavor == "source":
        return f"sh scripts/llama-wheel.sh {flavor if flavor != 'source' else 'cpu'} and ./dev setup"
    suffix = f" -s -- --flavor {flavor}" if flavor in ("cpu", "cuda", "rocm") else ""
    return f"curl -fsSL {INSTALL_URL} | sh{suffix}"


# --- GPUs -------------------------------------------------------------------------------------------


def build_flavor(machine: Machine) -> str:
    """cpu, cuda or rocm: the binary's flavor, or for a checkout what its llama.cpp library holds."""
    if machine.flavor != "source":
        return machine.flavor
    info = machine.build_info() or ""
    if "CUDA" in info:
        return "cuda"
    if "ROCm" in info or "HIP" in info:
        return "rocm"
    return "cpu"


def _pci_display(machine: Machine, vendor: str) -> bool:
    """A display-class PCI device of ``vendor`` ("0x10de") in sysfs."""
    for device in machine.path("/sys/bus/pci/devices").glob("*"):
        try:
            if (device / "vendor").read_text().strip() == vendor and (
                device / "class"
            ).read_text().strip().startswith("0x03"):
                return True
        except OSError:
            continue
    return False


def check_nvidia(machine: Machine) -> Check | None:
    """nvidia-smi works, and the build can use what it lists. None: no NVIDIA GPU and no driver."""
    flavor = build_flavor(machine)
    argv = list(gpu.NVIDIA_SMI)
    result = machine.run(argv)
    if result is None and machine.path("/usr/lib/wsl/lib/nvidia-smi").exists():
        result = machine.run(
            ["/usr/lib/wsl/lib/nvidia-smi", *argv[1:]]
        )  # WSL2 passthrough; sudo drops it from PATH
    severity = Status.FAIL if flavor == "cuda" else Status.WARN
    if result is None:
        if _pci_display(machine, "0x10de"):
            return Check(
                "nvidia",
                severity,
                "an NVIDIA GPU is on the PCI bus, but nvidia-smi is not installed: no NVIDIA driver",
                "install the NVIDIA driver (e.g. 'sudo apt install nvidia-driver' "
                "or 'sudo ubuntu-drivers install'), reboot, then run the installer again",
            )
        if flavor == "cuda":
            return Check(
                "nvidia",
                Status.FAIL,
                "this is the cuda build, but there is no nvidia-smi (no driver)",
                "install the NVIDIA driver, or the cpu build: " + _reinstall(machine, "cpu"),
            )
        return None
    if result.returncode != 0:
        said = (result.stdout + result.stderr).strip().splitlines()
        reason = said[0].rstrip(".") if said else f"exit status {result.returncode}"
        fix = (
            "reboot (a driver update needs it: 'Driver/library version mismatch'), or reinstall the NVIDIA "
            "driver for this kernel (e.g. 'sudo apt install --reinstall nvidia-driver' plus the kernel's "
            "headers for DKMS)"
        )
        if wsl_version(machine) == 2:
            fix = (
                "update the NVIDIA driver on Windows (WSL2 uses it) and run 'wsl --shutdown'; install no "
                "NVIDIA driver inside Linux"
            )
        return Check("nvidia", severity, f"nvidia-smi fails: {reason[:200]}; the GPU is not usable", fix)
    gpus = [g for _, g in gpu._parse_nvidia_smi(result.stdout)]
    if not gpus:
        return None
    names = "; ".join(f"{g.name} (compute {g.compute}, driver {g.driver_version})" for g in gpus)
    if flavor == "cpu":
        return Check(
            "nvidia",
            Status.WARN,
            f"{names}, but this is the cpu build: the GPU is not used",
            "install the cuda build: " + _reinstall(machine, "cuda"),
        )
    if flavor != "cuda":
        return Check(
            "nvidia",
            Status.WARN,
            f"{names}, but this is the {flavor} build",
            "install the cuda build: " + _reinstall(machine, "cuda"),
        )
    old = [g.name for g in gpus if _compute(g.compute) < (7, 5)]
    if old:
        return Check(
            "nvidia",
            Status.WARN,
            f"{names}: the cuda build has kernels for compute 7.5 and newer; "
            f"{', '.join(old)} will not be used",
            "use the cpu build, or build for it: "
            "CUDA_ARCHITECTURES=<its compute, e.g. 61> sh scripts/llama-wheel.sh cuda",
        )
    return Check("nvidia", Status.OK, names)


def _compute(text: str) -> tuple[int, int]:
    major, _, minor = text.partition(".")
    return (int(major), int(minor or 0)) if major.isdigit() and (minor or "0").isdigit() else (99, 0)


@dataclass(frozen=True)
class AmdGpu:
    index: int  # among the KFD GPU nodes: the <n> of HSA_OVERRIDE_GFX_VERSION_<n>
    gfx: str


def amd_gpus(machine: Machine) -> list[AmdGpu]:
    """AMD GPUs in the KFD topology, in node order (CPU nodes and other vendors skipped)."""
    nodes_dir = machine.path("/sys/class/kfd/kfd/topology/nodes")
    try:
        nodes = sorted((p for p in nodes_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        return []
    found: list[AmdGpu] = []
    for node in nodes:
        props = {}
        for line in _lines(node / "properties"):
            fields = line.split()
            if len(fields) == 2 and fields[1].isdigit():
                props[fields[0]] = int(fields[1])
        gfx = gpu.gfx_from_kfd_version(props.get("gfx_target_version", 0))
        if props.get("simd_count", 0) and props.get("vendor_id") == 4098 and gfx is not None:
            found.append(AmdGpu(len(found), gfx))
    return found


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


def check_amd(machine: Machine, service_env: Mapping[str, str], set_env_hint: str) -> list[Check]:
    """Each AMD GPU's gfx target: supported by ROCm, or run through HSA_OVERRIDE_GFX_VERSION.

    ``service_env`` is the environment the server runs with; ``set_env_hint`` says how to add a variable
    to it (the systemd override, or the shell that starts ``ollama serve``).
    """
    flavor = build_flavor(machine)
    checks = []
    for card in amd_gpus(machine):
        name = f"amd gpu {card.index}"
        variable = next(
            (
                v
                for v in (f"HSA_OVERRIDE_GFX_VERSION_{card.index}", "HSA_OVERRIDE_GFX_VERSION")
                if service_env.get(v, "").strip()
            ),
            None,
        )
        severity = Status.FAIL if flavor == "rocm" else Status.WARN
        if variable is not None:
            value = service_env[variable].strip().strip("\"'")
            runs_as = gpu.gfx_from_override(value)
            if runs_as in gpu.ROCM_SUPPORTED_GFX:
                checks.append(Check(name, Status.OK, f"{card.gfx}, run as {runs_as} ({variable}={value})"))
                continue
            wanted = gpu.rocm_gfx_override(card.gfx)
            checks.append(
                Check(
                    name,
                    severity,
                    f"{card.gfx}, but {variable}={value} names "
                    f"{runs_as or 'no valid target'}, which ROCm has no kernels for",
                    set_env_hint.format(line=f"HSA_OVERRIDE_GFX_VERSION={wanted}")
                    if wanted
                    else f"remove {variable}",
                )
            )
            continue
        if card.gfx in gpu.ROCM_SUPPORTED_GFX:
            check = Check(name, Status.OK, f"{card.gfx} (supported by ROCm)")
        elif (wanted := gpu.rocm_gfx_override(card.gfx)) is not None:
            check = Check(
                name,
                severity,
                f"{card.gfx} is not supported by ROCm as it is, and "
                "HSA_OVERRIDE_GFX_VERSION is not set: the GPU is not used",
                set_env_hint.format(line=f"HSA_OVERRIDE_GFX_VERSION={wanted}"),
            )
        else:
            check = Check(
                name,
                Status.WARN,
                f"{card.gfx} is not supported by ROCm and no override is known: the GPU is not used",
                "none: inference runs on the CPU",
            )
        if check.status is Status.OK and flavor != "rocm":
            check = Check(
                name,
                Status.WARN,
                f"{card.gfx}, but this is the {flavor} build: the GPU is not used",
                "install the rocm build: " + _reinstall(machine, "rocm"),
            )
        checks.append(check)
    return checks
