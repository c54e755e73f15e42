"""What this machine can compute with: CPU, memory, NVIDIA and AMD GPUs, and how many layers fit.

Discovery is read-only and blocking (it may run ``nvidia-smi``); async callers wrap it in
``trio.to_thread.run_sync``. Every file is read below ``root`` and every command goes through ``run``,
so tests describe a whole machine with a temporary tree and recorded command output.

Sources, as Ollama reads them on Linux:

* CPU: ``/proc/cpuinfo`` (model, flags, cores) and ``/proc/meminfo`` (MemTotal, MemAvailable), capped
  by a cgroup v2 memory limit when one is set.
* NVIDIA: ``nvidia-smi`` (see ``NVIDIA_SMI``); memory columns are MiB. Any failure (missing binary,
  driver/library mismatch, non-zero exit) means no NVIDIA GPU.
* AMD: the KFD topology, ``/sys/class/kfd/kfd/topology/nodes/<n>/properties``. CPU nodes have
  ``simd_count 0``; ``gfx_target_version`` 110003 means gfx1103. VRAM comes from the DRM device of
  the node's render minor (``mem_info_vram_total`` / ``mem_info_vram_used``), else from the node's
  ``mem_banks``.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20

#: The one command NVIDIA discovery runs; one CSV line per GPU, memory in MiB.
NVIDIA_SMI = [
    "nvidia-smi",
    "--query-gpu=index,uuid,name,memory.total,memory.free,driver_version,compute_cap",
    "--format=csv,noheader,nounits",
]
COMMAND_TIMEOUT_S = 5

#: VRAM each GPU keeps for the backend's own buffers (CUDA/ROCm context, cuBLAS workspace); Ollama's
#: "minimum memory" for both libraries.
GPU_RESERVE_BYTES = 457 * MIB

_AMD_VENDOR_ID = 4098  # 0x1002

#: gfx targets Ollama's Linux ROCm build ships kernels for (its CMakePresets AMDGPU_TARGETS, as listed
#: in docs/gpu.mdx).
ROCM_SUPPORTED_GFX = frozenset(
    {
        "gfx908",
        "gfx90a",
        "gfx942",
        "gfx950",
        "gfx1030",
        "gfx1100",
        "gfx1101",
        "gfx1102",
        "gfx1150",
        "gfx1151",
        "gfx1200",
        "gfx1201",
    }
)

#: Unsupported targets that run with the kernels of a same-ISA sibling. Source: Ollama's docs/gpu.mdx
#: ("Overrides on Linux": gfx1034 runs as 10.3.0) and the settings its users report working: the
#: other RDNA2 parts as gfx1030, the Radeon 760M/780M iGPU (gfx1103) as gfx1100, and the Vega APUs
#: (gfx90c) as gfx900, which needs a ROCm build that still carries gfx900 kernels.
_GFX_OVERRIDES = {
    "gfx1031": "10.3.0",
    "gfx1032": "10.3.0",
    "gfx1033": "10.3.0",
    "gfx1034": "10.3.0",
    "gfx1035": "10.3.0",
    "gfx1036": "10.3.0",
    "gfx1103": "11.0.0",
    "gfx90c": "9.0.0",
}

#: CPU flags that matter to ggml's kernels, in the order they are reported (x86, then Arm).
_CPU_FEATURES = (
    "sse3",
    "ssse3",
    "sse4_1",
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512cd",
    "avx512dq",
    "avx512bw",
    "avx512vl",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "asimddp",
    "asimdhp",
    "i8mm",
    "sve",
    "sve2",
)
_CPU_HEADLINE = (
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx_vnni",
    "avx512f",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "asimddp",
    "sve",
)


@dataclass(frozen=True)
class GpuInfo:
    library: str  # "cuda" | "rocm"
    id: str  # NVIDIA UUID; AMD "GPU-<unique id>", else its index among the KFD GPU nodes
    name: str
    total_bytes: int
    free_bytes: int
    driver_version: str
    compute: str  # "8.6" (CUDA compute capability) or "gfx1100" (effective ROCm target)
    integrated: bool


@dataclass(frozen=True)
class SystemInfo:
    cpu_model: str
    cpu_features: tuple[str, ...]
    threads: int  # performance cores: Ollama's default num_thread
    total_memory_bytes: int
    free_memory_bytes: int
    gpus: tuple[GpuInfo, ...]


def _run_command(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def discover(
    *,
    root: str = "/",
    run: Callable[[list[str]], str | None] = _run_command,
    environ: Mapping[str, str] = os.environ,
) -> SystemInfo:
    """Describe the CPU, memory and the GPUs visible under the CUDA/ROCm selection variables."""
    base = Path(root)
    model, features, threads = _parse_cpuinfo(_read(base / "proc/cpuinfo") or "")
    total, free = _memory(base)
    gpus = _nvidia_gpus(run, environ) + _amd_gpus(base, environ)
    return SystemInfo(model, features, threads or os.cpu_count() or 1, total, free, tuple(gpus))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.strip(), 0) if text is not None else None
    except ValueError:
        return None


# --- CPU and memory -------------------------------------------------------------------------------


def _parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...], int]:
    """Model name, ggml-relevant flags, and performance-core count from /proc/cpuinfo."""
    blocks = [dict(_cpuinfo_fields(block)) for block in re.split(r"\n\s*\n", text) if block.strip()]
    blocks = [b for b in blocks if "processor" in b]
    if not blocks:
        return "unknown", (), 0
    first = blocks[0]
    model = first.get("model name") or first.get("Hardware") or first.get("Processor") or "unknown"
    flags = set((first.get("flags") or first.get("Features") or "").split())
    if "pni" in flags:  # the kernel's name for SSE3
        flags.add("sse3")
    features = tuple(f for f in _CPU_FEATURES if f in flags)

    threads_per_core: dict[tuple[str, str], int] = {}
    for b in blocks:
        key = (b.get("physical id", ""), b.get("core id") or "cpu" + b["processor"])
        threads_per_core[key] = threads_per_core.get(key, 0) + 1
    # As Ollama: with hyper-threading on, a core with a single thread is an efficiency core, and
    # llama.cpp runs best on the performance cores only.
    single = sum(1 for n in threads_per_core.values() if n == 1)
    efficiency = single if single != len(threads_per_core) else 0
    return model, features, len(threads_per_core) - efficiency


def _cpuinfo_fields(block: str) -> Iterator[tuple[str, str]]:
    for line in block.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            yield key.strip(), value.strip()


def _memory(base: Path) -> tuple[int, int]:
    kib: dict[str, int] = {}
    for line in (_read(base / "proc/meminfo") or "").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            kib[key] = int(fields[0]) * 1024
    total = kib.get("MemTotal", 0)
    free = kib.get("MemAvailable") or sum(kib.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    # A cgroup v2 limit (container, systemd MemoryMax=) is the memory that really exists for us.
    group = _own_cgroup(base)
    limit = _read_int(group / "memory.max")  # "max" (no limit) does not parse
    if limit is not None and limit > 0:
        used = _read_int(group / "memory.current") or 0
        total = min(total, limit) if total else limit
        free = min(free, max(limit - used, 0)) if free else max(limit - used, 0)
    return total, free


def _own_cgroup(base: Path) -> Path:
    top = base / "sys/fs/cgroup"
    for line in (_read(base / "proc/self/cgroup") or "").splitlines():
        if line.startswith("0::/") and (top / line[4:].strip() / "memory.max").is_file():
            return top / line[4:].strip()
    return top


# --- NVIDIA ---------------------------------------------------------------------------------------


def _nvidia_gpus(run: Callable[[list[str]], str | None], environ: Mapping[str, str]) -> list[GpuInfo]:
    output = run(list(NVIDIA_SMI))
    gpus = _parse_nvidia_smi(output) if output else []
    return _cuda_visible(gpus, environ.get("CUDA_VISIBLE_DEVICES"))


def _parse_nvidia_smi(output: str) -> list[tuple[int, GpuInfo]]:
    """(index, GPU) pairs from ``NVIDIA_SMI`` output; lines that are not GPU records are skipped."""
    gpus = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 7 or not fields[0].isdigit():
            continue
        index, uuid, name, total_mib, free_mib, driver, compute = fields
        total, free = _mib(total_mib), _mib(free_mib)
        # Unified-memory parts (Jetson, GB10) report no dedicated framebuffer: "[N/A]".
        integrated = total is None
        gpus.append(
            (
                int(index),
                GpuInfo(
                    "cuda",
                    uuid or index,
                    name,
                    (total or 0) * MIB,
                    (free or 0) * MIB,
                    driver,
                    compute,
                    integrated,
                ),
            )
        )
    return gpus


def _mib(field: str) -> int | None:
    try:
        return int(float(field))
    except ValueError:
        return None


def _cuda_visible(gpus: list[tuple[int, GpuInfo]], selection: str | None) -> list[GpuInfo]:
    """Apply CUDA_VISIBLE_DEVICES as the CUDA runtime does.

    Entries are indices or (prefixes of) UUIDs; the list ends at the first entry that names no GPU, so
    "-1" and the empty string hide every GPU. Order follows the list.
    """
    if selection is None:
        return [gpu for _, gpu in gpus]
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in selection.split(",")):
        if entry.isdigit():
            match = [gpu for index, gpu in gpus if index == int(entry)]
        elif entry.startswith(("GPU-", "MIG-")):
            match = [gpu for _, gpu in gpus if gpu.id.startswith(entry)]
        else:
            match = []
        if len(match) != 1:
            break
        if match[0] not in chosen:
            chosen.append(match[0])
    return chosen


# --- AMD ------------------------------------------------------------------------------------------


def _amd_gpus(base: Path, environ: Mapping[str, str]) -> list[GpuInfo]:
    nodes_dir = base / "sys/class/kfd/kfd/topology/nodes"
    try:
        nodes = sorted((p for p in nodes_dir.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    except OSError:
        return []
    driver = (_read(base / "sys/module/amdgpu/version") or "").strip()
    found: list[GpuInfo] = []
    for node in nodes:
        props = _kfd_properties(node / "properties")
        gfx = gfx_from_kfd_version(props.get("gfx_target_version", 0))
        if props.get("simd_count", 0) == 0 or props.get("vendor_id") != _AMD_VENDOR_ID or gfx is None:
            continue  # a CPU node, another vendor, or a GPU masked by the driver
        index = len(found)
        found.append(_amd_gpu(base, node, props, index, driver, _effective_gfx(gfx, index, environ)))
    return _rocm_visible(found, environ)


def _kfd_properties(path: Path) -> dict[str, int]:
    props = {}
    for line in (_read(path) or "").splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit():
            props[fields[0]] = int(fields[1])
    return props


def gfx_from_kfd_version(version: int) -> str | None:
    """KFD ``gfx_target_version`` (major*10000 + minor*100 + stepping) as an LLVM target name."""
    major, minor, stepping = version // 10000, version // 100 % 100, version % 100
    if major == 0 or minor > 0xF or stepping > 0xF:
        return None
    return f"gfx{major}{minor:x}{stepping:x}"


def gfx_from_override(value: str) -> str | None:
    """HSA_OVERRIDE_GFX_VERSION ("11.0.0", "9.0.12") as a gfx target, or None when malformed."""
    parts = value.strip().split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        return None
    major, minor, stepping = (int(p) for p in parts)
    return gfx_from_kfd_version(major * 10000 + minor * 100 + stepping)


def rocm_gfx_override(gfx: str) -> str | None:
    """The HSA_OVERRIDE_GFX_VERSION that lets an unsupported ``gfx`` target run, if one is known.

    Supported targets and targets with no known stand-in return None.
    """
    return None if gfx in ROCM_SUPPORTED_GFX else _GFX_OVERRIDES.get(gfx)


def _effective_gfx(gfx: str, index: int, environ: Mapping[str, str]) -> str:
    """The target ROCm will run GPU ``index`` as: HSA_OVERRIDE_GFX_VERSION[_<index>] or its own."""
    override = environ.get(f"HSA_OVERRIDE_GFX_VERSION_{index}") or environ.get("HSA_OVERRIDE_GFX_VERSION")
    effective = gfx_from_override(override) if override else None
    if effective is None and gfx not in ROCM_SUPPORTED_GFX:
        hint = rocm_gfx_override(gfx)
        log.info(
            "AMD GPU %d is %s, which ROCm does not support%s",
            index,
            gfx,
            f"; try HSA_OVERRIDE_GFX_VERSION={hint}" if hint else "",
        )
    return effective or gfx


def _amd_gpu(base: Path, node: Path, props: dict[str, int], index: int, driver: str, gfx: str) -> GpuInfo:
    device = _drm_device(base, props)
    total, used = None, 0
    if device is not None:
        total = _read_int(device / "mem_info_vram_total")
        used = _read_int(device / "mem_info_vram_used") or 0
    if total is None:
        banks = [_kfd_properties(p) for p in sorted(node.glob("mem_banks/*/properties"))]
        total = sum(b.get("size_in_bytes", 0) for b in banks)

    vendor_id, device_id = props.get("vendor_id", 0), props.get("device_id", 0)
    name = (_read(device / "product_name") or "").strip() if device is not None else ""
    unique_id = props.get("unique_id", 0)
    return GpuInfo(
        library="rocm",
        id=f"GPU-{unique_id:016x}" if unique_id else str(index),
        name=name or f"AMD Radeon GPU {vendor_id:04x}:{device_id:04x}",
        total_bytes=total,
        free_bytes=max(total - used, 0),
        driver_version=driver,
        compute=gfx,
        integrated=_is_integrated(device, total),
    )


def _drm_device(base: Path, props: dict[str, int]) -> Path | None:
    """The DRM sysfs device of a KFD node: by render minor, else the card with the same PCI ids."""
    minor = props.get("drm_render_minor", 0)
    by_minor = base / f"sys/class/drm/renderD{minor}/device"
    if minor and by_minor.is_dir():
        return by_minor
    for card in sorted((base / "sys/class/drm").glob("card*/device")):
        if (_read_int(card / "vendor"), _read_int(card / "device")) == (
            props.get("vendor_id"),
            props.get("device_id"),
        ):
            return card
    return None


def _is_integrated(device: Path | None, vram_total: int) -> bool:
    """An APU: small carved-out VRAM next to a large shared (GTT) aperture, as Ollama decides.

    Discrete boards name their VRAM vendor or carry board info; an iGPU does neither.
    """
    if device is not None and any((device / f).exists() for f in ("mem_info_vram_vendor", "board_info")):
        return False
    gtt = (_read_int(device / "mem_info_gtt_total") if device is not None else None) or 0
    return 0 < vram_total < GIB or (0 < vram_total <= 4 * GIB and gtt >= 8 * GIB and gtt >= 4 * vram_total)


def _rocm_visible(gpus: list[GpuInfo], environ: Mapping[str, str]) -> list[GpuInfo]:
    """Apply ROCR_VISIBLE_DEVICES, then HIP_VISIBLE_DEVICES, then GPU_DEVICE_ORDINAL.

    Each layer indexes the devices the previous one left, as the ROCm runtime stacks them; only
    ROCR_VISIBLE_DEVICES also accepts UUIDs. Unlike CUDA, an empty value means "not set", and
    an entry that names no device (e.g. "-1") is skipped rather than ending the list.
    """
    for variable, by_uuid in (
        ("ROCR_VISIBLE_DEVICES", True),
        ("HIP_VISIBLE_DEVICES", False),
        ("GPU_DEVICE_ORDINAL", False),
    ):
        selection = (environ.get(variable) or "").strip()
        if not selection:
            continue
        chosen: list[GpuInfo] = []
        for entry in (e.strip() for e in selection.split(",")):
            gpu: GpuInfo | None
            if entry.isdigit() and int(entry) < len(gpus):
                gpu = gpus[int(entry)]
            elif by_uuid and entry.startswith("GPU-"):
                gpu = next((g for g in gpus if g.id == entry), None)
            else:
                gpu = None
            if gpu is not None and gpu not in chosen:
                chosen.append(gpu)
        gpus = chosen
    return gpus


# --- Offload estimate and log line ----------------------------------------------------------------


def layers_to_offload(
    *,
    model_bytes: int,
    n_layers: int,
    kv_bytes_per_layer: int,
    graph_overhead_bytes: int,
    gpus: Sequence[GpuInfo],
    gpu_overhead_bytes: int = 0,
    requested: int | None = None,
) -> int:
    """The num_gpu to pass to llama.cpp: how many layers go to the GPUs (n_layers + 1 = all).

    An explicit ``requested`` >= 0 is honoured, clamped to [0, n_layers + 1]; None or a negative value
    asks for an estimate. The weights are split evenly over the n_layers repeating layers plus one
    output layer; a repeating layer also holds its KV cache. Each GPU, the freest first, gives up
    ``GPU_RESERVE_BYTES``, ``gpu_overhead_bytes`` (OLLAMA_GPU_OVERHEAD) and the compute graph, and
    takes as many whole layers as fit in the rest; the output layer goes last, where room is left.
    Without a GPU the answer is 0.
    """
    if not gpus or n_layers <= 0:
        return 0
    if requested is not None and requested >= 0:
        return min(requested, n_layers + 1)
    weights_per_layer = max(model_bytes, 0) // (n_layers + 1)
    layer_bytes = weights_per_layer + max(kv_bytes_per_layer, 0)
    placed = 0
    for gpu in sorted(gpus, key=lambda g: g.free_bytes, reverse=True):
        room = gpu.free_bytes - GPU_RESERVE_BYTES - gpu_overhead_bytes - graph_overhead_bytes
        if room <= 0:
            continue
        fits = n_layers - placed if layer_bytes == 0 else min(room // layer_bytes, n_layers - placed)
        placed += fits
        room -= fits * layer_bytes
        if placed == n_layers and room >= weights_per_layer:
            return n_layers + 1
    return placed


def describe(info: SystemInfo) -> str:
    """One start-up log line naming the compute the server will use."""
    features = " ".join(f.upper() for f in _CPU_HEADLINE if f in info.cpu_features)
    cpu = (
        f"cpu ({info.threads} threads{', ' + features if features else ''}), "
        f"{_gib(info.free_memory_bytes)} available"
    )
    parts = [
        f'{g.library} {g.id} "{g.name}" ({g.compute}'
        f"{', driver ' + g.driver_version if g.driver_version else ''}"
        f"{', integrated' if g.integrated else ''}), {_gib(g.free_bytes)} of {_gib(g.total_bytes)} free"
        for g in info.gpus
    ]
    return "inference compute: " + "; ".join([*parts, cpu])


def _gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"
