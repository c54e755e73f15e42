"""The scheduler in-process with real runners: memory-driven eviction and clear failures."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from appliance import envconfig
from appliance.engine import gpu
from appliance.engine.scheduler import Scheduler, estimate_bytes
from appliance.errors import ApplianceError, ServerBusy
from appliance.store import create as creating
from appliance.store.local import Store
from appliance.store.names import parse_name


def _import(store: Store, gguf: Path, name: str) -> None:
    digest, _size, _ = store.blobs.put_file(gguf)
    plan = creating.plan_create(store, {"model": name, "files": {gguf.name: digest}})
    creating.run_create(store, plan, lambda _status: None)


@pytest.fixture
def store(tmp_path: Path, smollm2_gguf: Path, gemma3_gguf: Path) -> Store:
    st = Store(tmp_path)
    _import(st, smollm2_gguf, "smol")
    _import(st, gemma3_gguf, "gemma")
    return st


async def test_memory_pressure_evicts_the_idle_model(store: Store) -> None:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_MAX_LOADED_MODELS": "5"}))
    smol, gemma = store.get(parse_name("smol")), store.get(parse_name("gemma"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        needs = []
        for model in (smol, gemma):
            info = await sched.gguf(model)
            opts = sched.load_options(model, {}, info)
            needs.append(estimate_bytes(info, Path(opts.model_path).stat().st_size, opts))
        # Pretend the machine has room for the larger model but not for both.
        total = max(needs) + min(needs) // 2
        await sched.load(smol, {}, None)
        sched.memory_available = lambda: total - sum(lo.estimated_bytes for lo in sched.loaded)
        await sched.load(gemma, {}, None)
        assert [lo.model.name.model for lo in sched.loaded] == ["gemma"]
        nursery.cancel_scope.cancel()
    assert sched.loaded == []  # runners are stopped with the scheduler


async def test_a_model_that_cannot_fit_fails_clearly(store: Store) -> None:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp"}))
    sched.memory_available = lambda: 1 << 20
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with pytest.raises(ApplianceError, match=r"model requires more system memory \(.* GiB\) than is available"):
            await sched.load(store.get(parse_name("smol")), {}, None)
        nursery.cancel_scope.cancel()


async def test_queue_limit_is_immediate(store: Store) -> None:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_MAX_QUEUE": "1"}))
    smol = store.get(parse_name("smol"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        async with sched.use(smol, {}, None):
            sched.waiting = 1  # one request already waiting for the slot
            with trio.fail_after(1), pytest.raises(ServerBusy):
                async with sched.use(smol, {}, None):
                    pass
            sched.waiting = 0
        nursery.cancel_scope.cancel()


def _system(*free_gib: float) -> gpu.SystemInfo:
    gpus = tuple(gpu.GpuInfo("cuda", f"GPU-{i}", "NVIDIA Test", 24 * 2**30, int(f * 2**30), "550.0", "8.6",
                             False) for i, f in enumerate(free_gib))
    return gpu.SystemInfo("test cpu", ("avx2",), 8, 64 << 30, 32 << 30, gpus)


async def test_offload_follows_free_vram_and_requests(store: Store) -> None:
    smol = store.get(parse_name("smol"))
    cfg = envconfig.Config.from_env({"HOME": "/tmp"})
    info = await Scheduler(cfg).gguf(smol)
    layers = info.block_count
    assert Scheduler(cfg, system=_system()).load_options(smol, {}, info).num_gpu == 0  # CPU only
    assert Scheduler(cfg, system=_system(20)).load_options(smol, {}, info).num_gpu == layers + 1
    partial = Scheduler(cfg, system=_system(0.79)).load_options(smol, {}, info).num_gpu
    assert 0 < partial <= layers
    assert Scheduler(cfg, system=_system(20)).load_options(smol, {"num_gpu": 5}, info).num_gpu == 5
    assert Scheduler(cfg, system=_system(20)).load_options(smol, {"num_gpu": 0}, info).num_gpu == 0


async def test_an_unload_during_a_request_takes_effect_when_it_ends(store: Store) -> None:
    # ollama stop (keep_alive 0) while a generation runs: Ollama unloads once the request is done.
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp"}))
    smol = store.get(parse_name("smol"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        async with sched.use(smol, {}, None):
            assert await sched.unload_model(smol)
            assert len(sched.loaded) == 1  # not while the request holds its slot
        with trio.fail_after(10):
            while sched.loaded:
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


async def test_a_stopped_runner_leaves_no_descriptor_open(store: Store) -> None:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp"}))
    smol = store.get(parse_name("smol"))

    async def load_and_unload() -> None:
        await sched.load(smol, {}, None)
        assert await sched.unload_model(smol)
        assert sched.loaded == []

    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        await load_and_unload()  # first use: whatever is opened once
        before = len(os.listdir("/proc/self/fd"))
        for _ in range(3):
            await load_and_unload()
        assert len(os.listdir("/proc/self/fd")) == before  # each runner's three pipes are closed
        nursery.cancel_scope.cancel()


async def test_one_keep_alive_timer_per_model_however_many_requests(store: Store) -> None:
    # Each finished request restarts the model's keep_alive; the timer it replaces must go, not sleep on
    # for keep_alive (a busy server held one sleeping task per request: the soak's slow RSS growth).
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_KEEP_ALIVE": "1h"}))
    smol = store.get(parse_name("smol"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        async with sched.use(smol, {}, None):
            pass
        await trio.sleep(0.1)
        assert sched._nursery is not None
        baseline = len(sched._nursery.child_tasks)
        for _ in range(50):
            async with sched.use(smol, {}, None):
                pass
        await trio.sleep(0.1)  # the replaced timers see their cancellation and end
        assert len(sched._nursery.child_tasks) == baseline
        assert len(sched.loaded) == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("case", ["other model over the limit", "same model, other num_ctx"])
async def test_a_request_waiting_to_replace_a_runner_is_not_starved(store: Store, case: str) -> None:
    # A request that needs a busy runner gone must not wait behind requests that arrive after it: the
    # old runner takes no new work while it waits, so it goes idle (the soak found it never did).
    sched = Scheduler(envconfig.Config.from_env(
        {"HOME": "/tmp", "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_NUM_PARALLEL": "2"}))
    smol, gemma = store.get(parse_name("smol")), store.get(parse_name("gemma"))
    if case == "other model over the limit":
        waiter_model, waiter_options = gemma, {}
    else:
        waiter_model, waiter_options = smol, {"num_ctx": 1024}
    order: list[str] = []
    release_first = trio.Event()

    async def request(name: str, model: Any, options: dict[str, Any], hold: trio.Event | None = None,
                      *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with sched.use(model, options, None):
            order.append(name)
            task_status.started()
            if hold is not None:
                await hold.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        with trio.fail_after(120):
            async with trio.open_nursery() as clients:
                await clients.start(request, "first", smol, {}, release_first)
                clients.start_soon(request, "waiter", waiter_model, waiter_options)
                while not sched._load_lock.locked():  # the waiter holds the load lock while it waits
                    await trio.sleep(0.01)
                await trio.testing.wait_all_tasks_blocked()
                clients.start_soon(request, "late", smol, {})  # a free slot on the old runner
                await trio.testing.wait_all_tasks_blocked()
                await trio.sleep(0.2)
                assert order == ["first"]  # the late request was not handed the runner being replaced
                release_first.set()
        assert order == ["first", "waiter", "late"]
        nursery.cancel_scope.cancel()


async def test_a_replacement_given_up_leaves_the_old_runner_in_service(store: Store) -> None:
    sched = Scheduler(envconfig.Config.from_env({"HOME": "/tmp", "OLLAMA_MAX_LOADED_MODELS": "1",
                                                 "OLLAMA_NUM_PARALLEL": "2"}))
    smol, gemma = store.get(parse_name("smol")), store.get(parse_name("gemma"))
    async with trio.open_nursery() as nursery:
        await nursery.start(sched.run)
        async with sched.use(smol, {}, None):
            with trio.move_on_after(0.5):  # the client gives up waiting for the other model
                async with sched.use(gemma, {}, None):
                    pytest.fail("gemma cannot load while smol is busy and only one model may be loaded")
            assert not any(lo.draining for lo in sched.loaded)
            with trio.fail_after(5):
                async with sched.use(smol, {}, None) as again:  # the old runner serves again at once
                    assert again.model.name.model == "smol"
        nursery.cancel_scope.cancel()
