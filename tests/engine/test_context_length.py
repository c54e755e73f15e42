"""The default context length: OLLAMA_CONTEXT_LENGTH, else upstream's tiers by total VRAM (fed fake GPU
figures here: this machine has none), always capped by the model's trained context."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import pytest

from appliance import envconfig
from appliance.engine import gpu
from appliance.engine.scheduler import Scheduler, automatic_context_length
from appliance.store.gguf import GGUFInfo, read_gguf
from appliance.store.model import Model
from appliance.store.names import parse_name
from tests.fixtures.tiny_gguf import write_tiny_llama

GIB = 1 << 30


def _gpu(total_gib: float, free_gib: float | None = None, n: int = 0) -> gpu.GpuInfo:
    free = total_gib if free_gib is None else free_gib
    return gpu.GpuInfo("cuda", f"GPU-{n}", "NVIDIA Test", int(total_gib * GIB), int(free * GIB), "550.0", "8.6",
                       False)


def _system(*gpus: gpu.GpuInfo) -> gpu.SystemInfo:
    return gpu.SystemInfo("test cpu", ("avx2",), 8, 64 * GIB, 32 * GIB, gpus)


@pytest.mark.parametrize(("totals_gib", "expected"), [
    ((), 4096),  # CPU only
    ((8,), 4096),
    ((22.9,), 4096),
    ((23,), 32768),  # a 24 GiB card reports a little less
    ((24,), 32768),
    ((46.9,), 32768),
    ((47,), 262144),
    ((80,), 262144),
    ((12, 12), 32768),  # VRAM of every GPU counts together
    ((24, 24), 262144),
])
def test_the_tier_follows_the_total_vram(totals_gib: tuple[float, ...], expected: int) -> None:
    assert automatic_context_length([_gpu(t, n=i) for i, t in enumerate(totals_gib)]) == expected


def test_the_total_not_the_free_vram_decides() -> None:
    assert automatic_context_length([_gpu(24, free_gib=0.5)]) == 32768


def test_gpu_overhead_is_taken_from_each_gpu() -> None:
    assert automatic_context_length([_gpu(24)], gpu_overhead_bytes=2 * GIB) == 4096
    assert automatic_context_length([_gpu(24), _gpu(24, n=1)], gpu_overhead_bytes=GIB) == 32768
    # An overhead larger than a card leaves it nothing (no wrap-around to a huge total).
    assert automatic_context_length([_gpu(4)], gpu_overhead_bytes=8 * GIB) == 4096


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[Model, GGUFInfo]:
    path = write_tiny_llama(tmp_path / "tiny.gguf")
    model = Model(name=parse_name("tiny"), stored=cast(Any, None), config={}, model_path=path)
    return model, read_gguf(path)


def _trained(info: GGUFInfo, n_ctx_train: int) -> GGUFInfo:
    return dataclasses.replace(info, metadata={**info.metadata, "llama.context_length": n_ctx_train})


def _num_ctx(model: Model, info: GGUFInfo, system: gpu.SystemInfo | None = None,
             options: dict[str, Any] | None = None, **env: str) -> int:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp", **env}), system=system)
    return sched.load_options(model, options or {}, info).num_ctx


def test_load_options_take_the_tier_capped_by_the_trained_context(tiny: tuple[Model, GGUFInfo]) -> None:
    model, info = tiny
    big = _trained(info, 1 << 20)
    assert _num_ctx(model, big) == 4096  # no GPU information yet: as CPU only
    assert _num_ctx(model, big, _system()) == 4096
    assert _num_ctx(model, big, _system(_gpu(24))) == 32768
    assert _num_ctx(model, big, _system(_gpu(48))) == 262144
    assert _num_ctx(model, _trained(info, 8192), _system(_gpu(48))) == 8192
    assert _num_ctx(model, _trained(info, 2048)) == 2048


def test_the_variable_the_model_and_the_request_override_the_tier(tiny: tuple[Model, GGUFInfo]) -> None:
    model, info = tiny
    big = _trained(info, 1 << 20)
    assert _num_ctx(model, big, _system(_gpu(48)), OLLAMA_CONTEXT_LENGTH="8192") == 8192
    assert _num_ctx(model, big, _system(), OLLAMA_CONTEXT_LENGTH="65536") == 65536
    assert _num_ctx(model, _trained(info, 8192), _system(), OLLAMA_CONTEXT_LENGTH="65536") == 8192
    with_param = dataclasses.replace(model, parameters={"num_ctx": 1024})
    assert _num_ctx(with_param, big, _system(_gpu(48))) == 1024
    assert _num_ctx(with_param, big, _system(_gpu(48)), {"num_ctx": 512}) == 512


def test_the_scheduler_reports_its_default() -> None:
    cfg = envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_GPU_OVERHEAD": str(GIB)})
    assert Scheduler(cfg, system=_system(_gpu(24))).default_context_length == 32768
    assert Scheduler(cfg, system=_system(_gpu(23.5))).default_context_length == 4096
    cfg = envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_CONTEXT_LENGTH": "2048"})
    assert Scheduler(cfg, system=_system(_gpu(80))).default_context_length == 2048
