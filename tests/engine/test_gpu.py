"""GPU and CPU discovery against recorded command output and fake /proc and /sys trees."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from appliance.engine import gpu
from appliance.engine.gpu import GIB, MIB, GpuInfo, SystemInfo, describe, discover, layers_to_offload

# --- recorded nvidia-smi output (gpu.NVIDIA_SMI) -----------------------------------------------------

RTX3090_UUID = "GPU-6c8a6e0e-3b1d-2f4a-9f7e-0c1d2e3f4a5b"
RTX4060_UUID = "GPU-d2b7f1a4-81c5-4e0b-a3f6-5e9c07b1d228"
SMI_ONE = f"0, {RTX3090_UUID}, NVIDIA GeForce RTX 3090, 24576, 23833, 550.54.14, 8.6\n"
SMI_TWO = SMI_ONE + f"1, {RTX4060_UUID}, NVIDIA GeForce RTX 4060 Ti, 16380, 15952, 550.54.14, 8.9\n"
SMI_UNIFIED = "0, GPU-0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0, NVIDIA GB10, [N/A], [N/A], 580.95.05, 12.1\n"
SMI_MISMATCH = "Failed to initialize NVML: Driver/library version mismatch\nNVML library version: 550.120\n"

# --- recorded KFD topology ------------------------------------------------------------------------

CPU_NODE = """cpu_cores_count 16
simd_count 0
mem_banks_count 1
caches_count 0
io_links_count 2
cpu_core_id_base 0
simd_id_base 0
max_waves_per_simd 0
gfx_target_version 0
vendor_id 0
device_id 0
location_id 0
domain 0
drm_render_minor 0
hive_id 0
num_sdma_engines 0
local_mem_size 0
fw_version 0
capability 0
unique_id 0
"""

RX7900XTX_UNIQUE_ID = 2871362836617424542
RX7900XTX_NODE = f"""cpu_cores_count 0
simd_count 192
mem_banks_count 1
caches_count 206
io_links_count 1
p2p_links_count 0
cpu_core_id_base 0
simd_id_base 2147487744
max_waves_per_simd 16
lds_size_in_kb 64
wave_front_size 32
array_count 12
simd_arrays_per_engine 2
cu_per_simd_array 8
simd_per_cu 2
gfx_target_version 110000
vendor_id 4098
device_id 29772
location_id 768
domain 0
drm_render_minor 128
hive_id 0
num_sdma_engines 2
num_cp_queues 8
max_engine_clk_fcompute 2482
local_mem_size 0
fw_version 2190
capability 671588992
debug_prop 1495
sdma_fw_version 20
unique_id {RX7900XTX_UNIQUE_ID}
num_xcc 1
max_engine_clk_ccompute 3800
"""

RADEON780M_NODE = """cpu_cores_count 0
simd_count 24
mem_banks_count 1
caches_count 32
io_links_count 1
p2p_links_count 0
cpu_core_id_base 0
simd_id_base 2147487744
max_waves_per_simd 16
lds_size_in_kb 64
wave_front_size 32
array_count 2
simd_arrays_per_engine 2
cu_per_simd_array 6
simd_per_cu 2
gfx_target_version 110003
vendor_id 4098
device_id 5567
location_id 49408
domain 0
drm_render_minor {minor}
hive_id 0
num_sdma_engines 1
num_cp_queues 8
max_engine_clk_fcompute 2700
local_mem_size 0
fw_version 2160
capability 671588992
unique_id 0
num_xcc 1
"""


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def kfd_node(root: Path, number: int, properties: str, bank_bytes: int | None = None) -> None:
    node = root / f"sys/class/kfd/kfd/topology/nodes/{number}"
    write(node / "properties", properties)
    if bank_bytes is not None:
        write(node / "mem_banks/0/properties",
              f"heap_type 1\nsize_in_bytes {bank_bytes}\nflags 0\nwidth 384\nmem_clk_max 1249\n")


def drm_device(root: Path, name: str, *, vram: int, used: int, gtt: int, device: str,
               vram_vendor: str | None = None) -> Path:
    path = root / f"sys/class/drm/{name}/device"
    write(path / "vendor", "0x1002\n")
    write(path / "device", f"{device}\n")
    write(path / "mem_info_vram_total", f"{vram}\n")
    write(path / "mem_info_vram_used", f"{used}\n")
    write(path / "mem_info_gtt_total", f"{gtt}\n")
    if vram_vendor:
        write(path / "mem_info_vram_vendor", f"{vram_vendor}\n")
    return path


def add_7900xtx(root: Path, node: int = 1) -> None:
    kfd_node(root, node, RX7900XTX_NODE, bank_bytes=25753026560)
    drm_device(root, "renderD128", vram=25753026560, used=1220608000, gtt=16776159232,
               device="0x744c", vram_vendor="samsung")


def add_780m(root: Path, node: int = 1, minor: int = 128, vram: int = 512 * MIB) -> None:
    kfd_node(root, node, RADEON780M_NODE.format(minor=minor), bank_bytes=vram)
    drm_device(root, f"renderD{minor}", vram=vram, used=95 * MIB, gtt=15 * GIB + 400 * MIB, device="0x15bf")


def no_command(argv: list[str]) -> None:
    return None


def discover_amd(root: Path, **env: str) -> tuple[GpuInfo, ...]:
    kfd_node(root, 0, CPU_NODE)
    return discover(root=str(root), run=no_command, environ=env).gpus


# --- NVIDIA ---------------------------------------------------------------------------------------


def test_nvidia_one_gpu_runs_the_documented_command(tmp_path):
    calls = []

    def run(argv):
        calls.append(argv)
        return SMI_ONE

    info = discover(root=str(tmp_path), run=run, environ={})
    assert calls == [gpu.NVIDIA_SMI]
    assert calls[0] == ["nvidia-smi",
                        "--query-gpu=index,uuid,name,memory.total,memory.free,driver_version,compute_cap",
                        "--format=csv,noheader,nounits"]
    assert info.gpus == (GpuInfo("cuda", RTX3090_UUID, "NVIDIA GeForce RTX 3090", 24576 * MIB, 23833 * MIB,
                                 "550.54.14", "8.6", False),)


def test_nvidia_two_gpus():
    gpus = discover(root="/nonexistent", run=lambda argv: SMI_TWO, environ={}).gpus
    assert [(g.id, g.name, g.compute, g.total_bytes) for g in gpus] == [
        (RTX3090_UUID, "NVIDIA GeForce RTX 3090", "8.6", 24 * GIB),
        (RTX4060_UUID, "NVIDIA GeForce RTX 4060 Ti", "8.9", 16380 * MIB),
    ]


def test_nvidia_unified_memory_part_is_integrated():
    (only,) = discover(root="/nonexistent", run=lambda argv: SMI_UNIFIED, environ={}).gpus
    assert only.integrated and only.total_bytes == 0 and only.compute == "12.1"


def test_nvidia_smi_failure_means_no_gpu(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '%s' '{SMI_MISMATCH}'\nexit 18\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert gpu._run_command([str(fake), *gpu.NVIDIA_SMI[1:]]) is None
    assert gpu._run_command([str(tmp_path / "missing-nvidia-smi")]) is None
    # Even if a wrapper handed the message through, it names no GPU.
    assert discover(root=str(tmp_path), run=lambda argv: SMI_MISMATCH, environ={}).gpus == ()
    assert discover(root=str(tmp_path), run=no_command, environ={}).gpus == ()


def test_run_command_returns_stdout_on_success(tmp_path):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f"#!/bin/sh\nprintf '%s' '{SMI_ONE}'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    assert gpu._run_command([str(fake)]) == SMI_ONE


@pytest.mark.parametrize(("selection", "expected"), [
    (None, [RTX3090_UUID, RTX4060_UUID]),
    ("1", [RTX4060_UUID]),
    ("1,0", [RTX4060_UUID, RTX3090_UUID]),
    (RTX4060_UUID, [RTX4060_UUID]),
    ("GPU-6c8a", [RTX3090_UUID]),
    ("-1", []),
    ("", []),
    ("0,-1,1", [RTX3090_UUID]),
    ("7", []),
    ("GPU-", []),
])
def test_cuda_visible_devices(selection, expected):
    env = {} if selection is None else {"CUDA_VISIBLE_DEVICES": selection}
    gpus = discover(root="/nonexistent", run=lambda argv: SMI_TWO, environ=env).gpus
    assert [g.id for g in gpus] == expected


# --- AMD ------------------------------------------------------------------------------------------


def test_rocm_discrete_7900xtx(tmp_path):
    add_7900xtx(tmp_path)
    write(tmp_path / "sys/module/amdgpu/version", "6.8.5\n")
    (card,) = discover_amd(tmp_path)
    assert card == GpuInfo(
        library="rocm", id=f"GPU-{RX7900XTX_UNIQUE_ID:016x}", name="AMD Radeon GPU 1002:744c",
        total_bytes=25753026560, free_bytes=25753026560 - 1220608000, driver_version="6.8.5",
        compute="gfx1100", integrated=False,
    )
    assert gpu.rocm_gfx_override(card.compute) is None


def test_rocm_780m_igpu_needs_override(tmp_path):
    add_780m(tmp_path)
    (igpu,) = discover_amd(tmp_path)
    assert (igpu.id, igpu.compute, igpu.integrated) == ("0", "gfx1103", True)
    assert (igpu.total_bytes, igpu.free_bytes) == (512 * MIB, 417 * MIB)
    assert igpu.driver_version == ""
    assert gpu.rocm_gfx_override("gfx1103") == "11.0.0"


def test_rocm_780m_with_larger_carve_out_is_still_integrated(tmp_path):
    add_780m(tmp_path, vram=2 * GIB)  # BIOS UMA size raised; GTT (shared RAM) still dwarfs it
    (igpu,) = discover_amd(tmp_path)
    assert igpu.integrated and igpu.total_bytes == 2 * GIB


def test_small_discrete_card_without_vram_vendor_is_not_integrated(tmp_path):
    # RX 6500 XT on an older kernel that has no mem_info_vram_vendor: 4 GiB VRAM, 8 GiB GTT.
    kfd_node(tmp_path, 1, RX7900XTX_NODE.replace("110000", "100304").replace("29772", "29695"))
    drm_device(tmp_path, "renderD128", vram=4 * GIB, used=0, gtt=8 * GIB, device="0x73ff")
    (card,) = discover_amd(tmp_path)
    assert (card.compute, card.integrated) == ("gfx1034", False)
    assert gpu.rocm_gfx_override(card.compute) == "10.3.0"


def test_hsa_override_reports_the_overridden_target(tmp_path):
    add_780m(tmp_path)
    (igpu,) = discover_amd(tmp_path, HSA_OVERRIDE_GFX_VERSION="11.0.0")
    assert igpu.compute == "gfx1100"
    (igpu,) = discover_amd(tmp_path, HSA_OVERRIDE_GFX_VERSION="bogus")
    assert igpu.compute == "gfx1103"


def test_per_device_hsa_override(tmp_path):
    add_7900xtx(tmp_path, node=1)
    add_780m(tmp_path, node=2, minor=129)
    gpus = discover_amd(tmp_path, HSA_OVERRIDE_GFX_VERSION_1="11.0.0")
    assert [g.compute for g in gpus] == ["gfx1100", "gfx1100"]
    gpus = discover_amd(tmp_path, HSA_OVERRIDE_GFX_VERSION="10.3.0", HSA_OVERRIDE_GFX_VERSION_0="11.0.0")
    assert [g.compute for g in gpus] == ["gfx1100", "gfx1030"]


def test_cpu_nodes_masked_gpus_and_other_vendors_are_skipped(tmp_path):
    kfd_node(tmp_path, 1, CPU_NODE)  # a second socket
    kfd_node(tmp_path, 2, RX7900XTX_NODE.replace("gfx_target_version 110000", "gfx_target_version 0"))
    kfd_node(tmp_path, 3, RX7900XTX_NODE.replace("vendor_id 4098", "vendor_id 4318"))
    write(tmp_path / "sys/class/kfd/kfd/topology/nodes/README", "not a node\n")
    assert discover_amd(tmp_path) == ()


def test_rocm_memory_from_mem_banks_and_card_fallback(tmp_path):
    # No renderD link: the card is found by PCI ids; without it, the KFD memory bank is used.
    kfd_node(tmp_path, 1, RX7900XTX_NODE, bank_bytes=25753026560)
    (card,) = discover_amd(tmp_path)
    assert (card.total_bytes, card.free_bytes, card.integrated) == (25753026560, 25753026560, False)
    drm_device(tmp_path, "card1", vram=25753026560, used=2 * GIB, gtt=16 * GIB, device="0x744c",
               vram_vendor="hynix")
    (card,) = discover_amd(tmp_path)
    assert card.free_bytes == 25753026560 - 2 * GIB


def test_gfx_names():
    assert gpu.gfx_from_kfd_version(90012) == "gfx90c"
    assert gpu.gfx_from_kfd_version(100302) == "gfx1032"
    assert gpu.gfx_from_kfd_version(0) is None
    assert gpu.gfx_from_override("9.0.12") == "gfx90c"
    assert gpu.gfx_from_override("11.0") is None
    for target, override in [("gfx1035", "10.3.0"), ("gfx1036", "10.3.0"), ("gfx1031", "10.3.0"),
                             ("gfx1032", "10.3.0"), ("gfx90c", "9.0.0"), ("gfx1103", "11.0.0")]:
        assert gpu.rocm_gfx_override(target) == override
        assert gpu.gfx_from_override(override) in gpu.ROCM_SUPPORTED_GFX | {"gfx900"}
    for supported in ("gfx1030", "gfx1100", "gfx1151", "gfx1201", "gfx90a", "gfx942"):
        assert gpu.rocm_gfx_override(supported) is None
    assert gpu.rocm_gfx_override("gfx803") is None


@pytest.mark.parametrize(("env", "expected"), [
    ({}, ["dgpu", "igpu"]),
    ({"ROCR_VISIBLE_DEVICES": "1"}, ["igpu"]),
    ({"ROCR_VISIBLE_DEVICES": f"GPU-{RX7900XTX_UNIQUE_ID:016x}"}, ["dgpu"]),
    ({"ROCR_VISIBLE_DEVICES": "-1"}, []),
    ({"ROCR_VISIBLE_DEVICES": ""}, ["dgpu", "igpu"]),
    ({"HIP_VISIBLE_DEVICES": "0"}, ["dgpu"]),
    ({"GPU_DEVICE_ORDINAL": "1"}, ["igpu"]),
    ({"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "0"}, ["igpu"]),
    ({"ROCR_VISIBLE_DEVICES": "1", "HIP_VISIBLE_DEVICES": "1"}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, ["dgpu", "igpu"]),
])
def test_rocm_visibility(tmp_path, env, expected):
    add_7900xtx(tmp_path, node=1)
    add_780m(tmp_path, node=2, minor=129)
    gpus = discover_amd(tmp_path, **env)
    assert ["igpu" if g.integrated else "dgpu" for g in gpus] == expected


# --- CPU and memory -------------------------------------------------------------------------------


def cpuinfo(cores: list[tuple[int, int]], model: str, flags: str) -> str:
    """/proc/cpuinfo for logical CPUs given as (physical id, core id)."""
    return "\n".join(
        f"processor\t: {n}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\nphysical id\t: {socket}\n"
        f"siblings\t: {len(cores)}\ncore id\t\t: {core}\ncpu cores\t: {len({c for _, c in cores})}\n"
        f"flags\t\t: {flags}\nbogomips\t: 4000.00\n"
        for n, (socket, core) in enumerate(cores)
    )


MEMINFO = """MemTotal:       32768000 kB
MemFree:         1024000 kB
MemAvailable:   24000000 kB
Buffers:          512000 kB
Cached:          8192000 kB
SwapCached:            0 kB
SwapTotal:       2097148 kB
SwapFree:        2097148 kB
"""

X86_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
             "sse sse2 ht syscall nx lm pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe popcnt aes "
             "xsave avx f16c rdrand hypervisor bmi1 avx2 bmi2 avx512f avx512dq avx512cd avx512bw "
             "avx512vl avx512_vnni amx_tile amx_int8")


def test_cpu_and_memory_from_proc(tmp_path):
    smt = [(0, core) for core in range(4)] * 2  # 4 cores, 2 threads each
    write(tmp_path / "proc/cpuinfo", cpuinfo(smt, "AMD Ryzen 7 5700U with Radeon Graphics", X86_FLAGS))
    write(tmp_path / "proc/meminfo", MEMINFO)
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert info.cpu_model == "AMD Ryzen 7 5700U with Radeon Graphics"
    assert info.cpu_features == ("sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f",
                                 "avx512cd", "avx512dq", "avx512bw", "avx512vl", "avx512_vnni",
                                 "amx_tile", "amx_int8")
    assert info.threads == 4
    assert (info.total_memory_bytes, info.free_memory_bytes) == (32768000 * 1024, 24000000 * 1024)
    assert info.gpus == ()


def test_hybrid_cpu_counts_performance_cores(tmp_path):
    # i5-12600K: 6 P-cores with hyper-threading, 4 E-cores without.
    layout = [(0, c) for c in range(0, 24, 4)] * 2 + [(0, c) for c in range(24, 28)]
    write(tmp_path / "proc/cpuinfo", cpuinfo(layout, "12th Gen Intel(R) Core(TM) i5-12600K", "avx2"))
    assert discover(root=str(tmp_path), run=no_command, environ={}).threads == 6


def test_two_sockets_without_smt(tmp_path):
    layout = [(0, 0), (0, 1), (1, 0), (1, 1)]
    write(tmp_path / "proc/cpuinfo", cpuinfo(layout, "Intel(R) Xeon(R) Gold 6130", "avx2"))
    assert discover(root=str(tmp_path), run=no_command, environ={}).threads == 4


def test_arm_cpuinfo_without_core_ids(tmp_path):
    features = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc asimddp"
    text = "\n".join(
        f"processor\t: {n}\nBogoMIPS\t: 48.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
        for n in range(4)
    )
    write(tmp_path / "proc/cpuinfo", text)
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert (info.cpu_model, info.threads) == ("unknown", 4)
    assert info.cpu_features == ("asimd", "asimddp", "asimdhp")


def test_meminfo_without_memavailable(tmp_path):
    write(tmp_path / "proc/meminfo", "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n")
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert (info.total_memory_bytes, info.free_memory_bytes) == (1000 * 1024, 420 * 1024)


def test_cgroup_memory_limit_caps_memory(tmp_path):
    write(tmp_path / "proc/meminfo", MEMINFO)
    write(tmp_path / "proc/self/cgroup", "0::/system.slice/ollama.service\n")
    group = tmp_path / "sys/fs/cgroup/system.slice/ollama.service"
    write(group / "memory.max", f"{8 * GIB}\n")
    write(group / "memory.current", f"{2 * GIB}\n")
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert (info.total_memory_bytes, info.free_memory_bytes) == (8 * GIB, 6 * GIB)
    write(group / "memory.max", "max\n")
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert info.total_memory_bytes == 32768000 * 1024


def test_missing_proc_falls_back_to_os_cpu_count(tmp_path):
    info = discover(root=str(tmp_path), run=no_command, environ={})
    assert info == SystemInfo("unknown", (), os.cpu_count() or 1, 0, 0, ())


def test_this_machine_is_discovered():
    # No skip on a machine with a GPU driver (a skip fails under CI=true): the CPU part is checked
    # everywhere, "no GPU" only where there is no driver.
    info = discover()
    assert "avx2" in info.cpu_features
    assert info.threads >= 1 and info.total_memory_bytes >= info.free_memory_bytes > 0
    assert f"cpu ({info.threads} threads, " in describe(info)
    if shutil.which("nvidia-smi") is None and not Path("/sys/class/kfd").exists():
        assert info.gpus == ()
        assert describe(info).startswith(f"inference compute: cpu ({info.threads} threads, ")


# --- layers_to_offload ----------------------------------------------------------------------------


def card(free: int) -> GpuInfo:
    return GpuInfo("cuda", "GPU-x", "test", free, free, "550", "8.6", False)


# 40 repeating layers + output, 200 MiB of weights each; 50 MiB of KV per repeating layer.
MODEL = {"model_bytes": 41 * 200 * MIB, "n_layers": 40, "kv_bytes_per_layer": 50 * MIB,
         "graph_overhead_bytes": 300 * MIB}


def room_for(layers: int, extra: int = 0) -> int:
    """Free VRAM that leaves exactly ``layers`` repeating layers (+ extra) after reserve and graph."""
    return gpu.GPU_RESERVE_BYTES + 300 * MIB + layers * 250 * MIB + extra


def test_no_gpu_means_no_layers():
    assert layers_to_offload(**MODEL, gpus=[]) == 0
    assert layers_to_offload(**MODEL, gpus=[], requested=10) == 0


def test_requested_layers_are_clamped():
    big = [card(80 * GIB)]
    assert layers_to_offload(**MODEL, gpus=big, requested=0) == 0
    assert layers_to_offload(**MODEL, gpus=big, requested=12) == 12
    assert layers_to_offload(**MODEL, gpus=big, requested=999) == 41
    assert layers_to_offload(**MODEL, gpus=[card(GIB)], requested=30) == 30  # honoured, not estimated


def test_everything_fits():
    assert layers_to_offload(**MODEL, gpus=[card(24 * GIB)]) == 41
    assert layers_to_offload(**MODEL, gpus=[card(24 * GIB)], requested=-1) == 41


def test_partial_offload():
    assert layers_to_offload(**MODEL, gpus=[card(room_for(10, 249 * MIB))]) == 10
    assert layers_to_offload(**MODEL, gpus=[card(room_for(10))], gpu_overhead_bytes=1) == 9
    assert layers_to_offload(**MODEL, gpus=[card(room_for(0, 249 * MIB))]) == 0
    assert layers_to_offload(**MODEL, gpus=[card(400 * MIB)]) == 0


def test_output_layer_needs_its_own_room():
    assert layers_to_offload(**MODEL, gpus=[card(room_for(40, 199 * MIB))]) == 40
    assert layers_to_offload(**MODEL, gpus=[card(room_for(40, 200 * MIB))]) == 41


def test_layers_spread_over_two_gpus():
    assert layers_to_offload(**MODEL, gpus=[card(room_for(10)), card(room_for(25))]) == 35
    assert layers_to_offload(**MODEL, gpus=[card(room_for(10, 150 * MIB)), card(room_for(30))]) == 40
    assert layers_to_offload(**MODEL, gpus=[card(room_for(10, 200 * MIB)), card(room_for(30))]) == 41


# --- describe -------------------------------------------------------------------------------------


def test_describe_cpu_only():
    info = SystemInfo("Intel(R) Xeon(R) Processor", ("sse3", "avx", "avx2", "fma", "f16c"), 2,
                      32 * GIB, int(23.4 * GIB), ())
    assert describe(info) == "inference compute: cpu (2 threads, AVX AVX2 FMA F16C), 23.4 GiB available"


def test_describe_lists_gpus():
    igpu = GpuInfo("rocm", "0", "AMD Radeon GPU 1002:15bf", 512 * MIB, 417 * MIB, "", "gfx1103", True)
    nvidia = GpuInfo("cuda", RTX3090_UUID, "NVIDIA GeForce RTX 3090", 24 * GIB, 23 * GIB, "550.54.14", "8.6",
                     False)
    line = describe(SystemInfo("x", (), 8, 64 * GIB, 60 * GIB, (nvidia, igpu)))
    assert line == (
        f'inference compute: cuda {RTX3090_UUID} "NVIDIA GeForce RTX 3090" (8.6, driver 550.54.14), '
        '23.0 GiB of 24.0 GiB free; rocm 0 "AMD Radeon GPU 1002:15bf" (gfx1103, integrated), '
        "0.4 GiB of 0.5 GiB free; cpu (8 threads), 60.0 GiB available"
    )
