"""The scheduler: which models are loaded, who may use them, and when they go away.

Routes ask :meth:`Scheduler.use` for a runner and get one with a free slot, or wait in a bounded
queue (503 beyond OLLAMA_MAX_QUEUE).  Models load on demand, are shared by every request for
the same weights and load options, stay for keep_alive after their last request, and are evicted
least-recently-used when OLLAMA_MAX_LOADED_MODELS or memory would be exceeded.  All runner tasks
live in the scheduler's own nursery.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import trio

from appliance import envconfig
from appliance.engine import gpu, rpc
from appliance.engine.process import LoadOptions, RunnerProcess
from appliance.engine.speculative import MAX_DRAFT_TOKENS
from appliance.errors import ApplianceError, InvalidGGUF, RunnerError, ServerBusy
from appliance.store.gguf import GGUFInfo, read_gguf
from appliance.store.gguf_compat import assess, translated_copy
from appliance.store.model import Model

log = logging.getLogger("appliance.scheduler")

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
#: The longest keep_alive that is not "forever": Go's time.Duration (int64 nanoseconds) ends here.
MAX_KEEP_ALIVE_S = (2**63 - 1) / 1e9
#: Parsed GGUF headers kept (each holds its vocabulary: ~5-30 MiB of strings); older ones are re-read.
GGUF_CACHE_ENTRIES = 4
#: Upstream's automatic num_ctx by the GPUs' total VRAM (less OLLAMA_GPU_OVERHEAD each): 256k from 47 GiB,
#: 32k from 23 GiB (a little under 48 and 24: cards report a little less), else 4k, as on a CPU alone.
CONTEXT_TIERS = ((47 << 30, 262144), (23 << 30, 32768), (0, 4096))


def automatic_context_length(gpus: Sequence[gpu.GpuInfo], gpu_overhead_bytes: int = 0) -> int:
    """The context length a model gets when neither the request, its Modelfile nor
    OLLAMA_CONTEXT_LENGTH sets one (the model's trained context caps it when it loads)."""
    vram = sum(max(0, g.total_bytes - gpu_overhead_bytes) for g in gpus)
    return next(ctx for floor, ctx in CONTEXT_TIERS if vram >= floor)


@dataclass(eq=False)
class Loaded:
    """A model held by a runner process."""

    model: Model
    options: LoadOptions
    runner: RunnerProcess
    estimated_bytes: int
    slots: trio.Semaphore
    keep_alive_s: float
    refs: int = 0
    expires_at: datetime | None = None
    expiry_token: int = 0
    expiry_scope: trio.CancelScope | None = None
    last_used: float = field(default_factory=time.monotonic)
    scope: trio.CancelScope | None = None
    gone: trio.Event = field(default_factory=trio.Event)
    n_layers: int = 0
    unloading: bool = False
    #: A waiting request needs this runner gone: it takes no new requests, and goes once idle.
    draining: bool = False

    @property
    def vram_bytes(self) -> int:
        """The estimated share in VRAM: offloaded layers over all layers (+1 for the output)."""
        if self.options.num_gpu <= 0 or self.options.rpc_servers:  # workers' memory is not our VRAM
            return 0
        layers = max(self.n_layers, self.options.num_gpu - 1) + 1
        return int(self.estimated_bytes * min(1.0, self.options.num_gpu / layers))

    @property
    def context_length(self) -> int:
        return self.options.num_ctx


@dataclass(frozen=True)
class LoadedStatistics:
    """One loaded runner, as /metrics reports it."""

    model: str
    estimated_bytes: int
    vram_bytes: int


@dataclass(frozen=True)
class SchedulerStatistics:
    """What the scheduler is doing: requests waiting for a slot, runners loaded, runners started and
    crashed (by model name, since the server started)."""

    waiting: int
    loaded: tuple[LoadedStatistics, ...]
    runner_starts: tuple[tuple[str, int], ...]
    runner_crashes: tuple[tuple[str, int], ...]


def memory_available() -> int:
    """MemAvailable from /proc/meminfo (bytes); a large number where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def estimate_bytes(info: GGUFInfo, file_size: int, options: LoadOptions) -> int:
    """Weights + KV cache (f16) + a compute-graph allowance: what loading will cost in RAM."""
    arch = info.architecture
    md = info.metadata
    n_layer = int(md.get(f"{arch}.block_count") or 0)
    n_embd = int(md.get(f"{arch}.embedding_length") or 0)
    n_head = int(md.get(f"{arch}.attention.head_count") or 1) or 1
    n_head_kv = md.get(f"{arch}.attention.head_count_kv") or n_head
    n_head_kv = int(max(n_head_kv) if isinstance(n_head_kv, list) else n_head_kv)
    head_k = int(md.get(f"{arch}.attention.key_length") or (n_embd // n_head))
    head_v = int(md.get(f"{arch}.attention.value_length") or (n_embd // n_head))
    kv_bytes = 1 if options.kv_cache_type == "q8_0" else 2
    n_ctx = options.num_ctx * options.num_parallel
    kv = n_layer * n_ctx * n_head_kv * (head_k + head_v) * kv_bytes
    vocab = len(md.get("tokenizer.ggml.tokens") or []) or 32000
    graph = min(options.num_batch, 512) * (vocab + 4 * n_embd) * 4 * 2 + (64 << 20)
    return file_size + kv + graph


class Scheduler:
    """Owns every runner; see the module docstring."""

    def __init__(self, cfg: envconfig.Config, system: gpu.SystemInfo | None = None) -> None:
        self.cfg = cfg
        self.system = system
        self.threads = (system.threads if system else 0) or _physical_cores()
        self.loaded: list[Loaded] = []
        self.waiting = 0
        self._nursery: trio.Nursery | None = None
        self._load_lock = trio.Lock()
        self._changed = trio.Event()  # set (and replaced) whenever a model is released or unloaded
        self._closing = trio.Event()
        self._stopped = trio.Event()
        self._gguf_cache: OrderedDict[str, GGUFInfo] = OrderedDict()
        self._loadable: dict[str, str] = {}  # blob path -> what llama.cpp loads (itself or a translation)
        self._translate_lock = trio.Lock()
        self.memory_available = memory_available  # replaceable, for tests of memory-driven eviction
        self._runner_starts: Counter[str] = Counter()
        self._runner_crashes: Counter[str] = Counter()

    # -- life cycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`aclose` (or cancelled); then stop every runner."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                log.info("default context length %d", self.default_context_length)
                await self._closing.wait()
                # Runners first, while their tasks still run: each is asked to exit and given
                # RUNNER_STOP_GRACE_S; only then is anything cancelled (which kills what is left).
                await self.stop_all()
                nursery.cancel_scope.cancel()
        finally:
            self._nursery = None
            self._stopped.set()
            with trio.CancelScope(shield=True):
                await self.stop_all()

    def close(self) -> None:
        """Start stopping: every runner is asked to exit, then the scheduler's tasks end."""
        self._closing.set()

    async def aclose(self) -> None:
        """Stop, and wait until every runner has exited."""
        self.close()
        if self._nursery is not None:
            await self._stopped.wait()

    async def stop_all(self) -> None:
        for loaded in list(self.loaded):
            await self._unload(loaded)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # -- options --------------------------------------------------------------------------------

    @property
    def default_context_length(self) -> int:
        """num_ctx unless the request or the model sets it: OLLAMA_CONTEXT_LENGTH, else by VRAM."""
        if self.cfg.context_length:
            return self.cfg.context_length
        gpus = self.system.gpus if self.system else ()
        return automatic_context_length(gpus, self.cfg.gpu_overhead_bytes)

    def load_options(self, model: Model, options: dict[str, Any], info: GGUFInfo) -> LoadOptions:
        """Runner options for a request: request options > model PARAMETERs > server defaults."""
        merged = {**model.parameters, **options}
        num_ctx = int(merged.get("num_ctx") or self.default_context_length)
        trained = info.context_length or num_ctx
        if num_ctx > trained:
            log.warning(
                "num_ctx %d exceeds the model's trained context %d; using %d", num_ctx, trained, trained
            )
            num_ctx = trained
        num_ctx = max(num_ctx, 16)
        # The load-time clamps (docs: README "Option bounds"): a batch never exceeds the context (as
        # llama.cpp itself clamps it), threads never exceed the CPUs, main_gpu names a real GPU.
        num_batch = int(merged.get("num_batch") or 0)
        num_batch = min(num_batch if num_batch > 0 else 512, num_ctx)
        num_thread = int(merged.get("num_thread") or 0)
        num_thread = min(num_thread, os.cpu_count() or 1) if num_thread > 0 else self.threads
        n_gpus = len(self.system.gpus) if self.system else 0
        main_gpu = int(merged.get("main_gpu") or 0)
        fa = self.cfg.flash_attention
        # As upstream: drafting needs a DRAFT layer, and draft_num_predict <= 0 turns it off, in which
        # case the draft is not even loaded (the same runner serves "no draft" either way).
        draft_n = max(0, min(int(merged.get("draft_num_predict", 4)), MAX_DRAFT_TOKENS, num_batch - 1))
        draft_path = str(model.draft_path) if model.draft_path and draft_n > 0 else ""
        return LoadOptions(
            model_path=str(model.model_path),
            num_ctx=num_ctx,
            num_parallel=max(1, self.cfg.num_parallel),
            num_batch=num_batch,
            num_thread=num_thread,
            num_gpu=self._num_gpu(info, model, int(merged.get("num_gpu", -1)), num_ctx),
            main_gpu=main_gpu if 0 <= main_gpu < n_gpus else 0,
            use_mmap=merged.get("use_mmap") is not False,
            flash_attention="auto" if fa is None else ("on" if fa else "off"),
            kv_cache_type=self.cfg.kv_cache_type or "",
            adapters=tuple(str(p) for p in model.adapter_paths),
            draft_path=draft_path,
            draft_num_predict=draft_n if draft_path else 0,
            # As upstream, one projector per model: the first projector layer.
            projector_path=str(model.projector_paths[0]) if model.projector_paths else "",
            rpc_servers=self.cfg.rpc_servers,
        )

    def _num_gpu(self, info: GGUFInfo, model: Model, requested: int, num_ctx: int) -> int:
        """Layers to offload: what the request asks for, else what fits in free VRAM (0 on CPU); with RPC
        workers, every layer (llama.cpp splits them over the devices by their free memory)."""
        if self.cfg.rpc_servers and requested < 0:
            return (info.block_count or 0) + 1
        gpus = self.system.gpus if self.system else ()
        if not gpus:
            return 0
        n_layers = info.block_count or 0
        full = estimate_bytes(info, 0, LoadOptions("", num_ctx, max(1, self.cfg.num_parallel), 512, 1, 0, 0,
                                                   True, "auto", self.cfg.kv_cache_type or ""))
        graph = (64 << 20) + 512 * 4 * 2 * (len(info.metadata.get("tokenizer.ggml.tokens") or []) or 32000)
        kv_per_layer = max(0, full - graph) // max(1, n_layers)
        size = os.path.getsize(model.model_path) if model.model_path else 0
        return gpu.layers_to_offload(model_bytes=size, n_layers=n_layers, kv_bytes_per_layer=kv_per_layer,
                                     graph_overhead_bytes=graph, gpus=gpus,
                                     gpu_overhead_bytes=self.cfg.gpu_overhead_bytes,
                                     requested=None if requested < 0 else requested)

    async def gguf(self, model: Model) -> GGUFInfo:
        if model.model_path is None:
            raise ApplianceError(f"model '{model.name.display}' has no weights")
        return await self._gguf_at(str(model.model_path))

    async def _gguf_at(self, key: str) -> GGUFInfo:
        info = self._gguf_cache.get(key)
        if info is None:
            info = await trio.to_thread.run_sync(read_gguf, key)
            self._gguf_cache[key] = info
            while len(self._gguf_cache) > GGUF_CACHE_ENTRIES:
                self._gguf_cache.popitem(last=False)
        self._gguf_cache.move_to_end(key)
        return info

    async def _loadable_path(self, path: str, info: GGUFInfo) -> str:
        """The blob itself, or the translated copy llama.cpp can load (see store/gguf_compat.py), checked
        before any runner is spawned; a layout llama.cpp cannot run raises UnsupportedModel (400)."""
        known = self._loadable.get(path)
        if known is not None and (known == path or os.path.exists(known)):
            return known
        verdict = assess(info)
        verdict.check()
        if verdict.action == "load":
            self._loadable[path] = path
            return path
        async with self._translate_lock:  # one copy at a time; a second request finds it written
            log.info("%s", verdict.message)
            copy = partial(translated_copy, Path(path), self.cfg.models_dir,
                           check_cancelled=trio.from_thread.check_cancelled)
            loadable = await trio.to_thread.run_sync(copy)
        self._loadable[path] = str(loadable)
        return str(loadable)

    # -- use ------------------------------------------------------------------------------------

    @asynccontextmanager
    async def use(
        self, model: Model, options: dict[str, Any], keep_alive_s: float | None
    ) -> AsyncIterator[Loaded]:
        """A loaded runner with a slot reserved for this request (queued, bounded)."""
        if self.waiting >= self.cfg.max_queue:
            raise ServerBusy(BUSY_MESSAGE)
        keep = self.cfg.keep_alive_s if keep_alive_s is None else keep_alive_s
        deadline = self._deadline(keep)  # before a slot is taken: nothing may fail between take and give
        self.waiting += 1
        try:
            loaded = await self._get(model, options)
            loaded.refs += 1
            try:
                await loaded.slots.acquire()
            except BaseException:
                loaded.refs -= 1
                raise
        finally:
            self.waiting -= 1
        try:
            loaded.keep_alive_s = keep
            loaded.expires_at = deadline
            yield loaded
        finally:
            loaded.slots.release()
            loaded.refs -= 1
            loaded.last_used = time.monotonic()
            # keep_alive_s is not reset here: the latest request to start (or an unload, which sets
            # 0 while requests run) decides, as in Ollama; resetting it let a stop go unheeded.
            if loaded.refs == 0:
                self._schedule_expiry(loaded)
            self._notify()

    async def load(self, model: Model, options: dict[str, Any], keep_alive_s: float | None) -> Loaded:
        """Load without generating (an empty /api/generate or /api/chat)."""
        async with self.use(model, options, keep_alive_s) as loaded:
            return loaded

    def _deadline(self, keep_alive_s: float) -> datetime:
        if not 0 <= keep_alive_s < MAX_KEEP_ALIVE_S:  # negative, inf, NaN, past Go's Duration: forever
            return FOREVER
        return datetime.now(UTC) + timedelta(seconds=keep_alive_s)

    def _schedule_expiry(self, loaded: Loaded) -> None:
        keep = loaded.keep_alive_s
        loaded.expiry_token += 1
        token = loaded.expiry_token
        loaded.expires_at = self._deadline(keep)
        # One timer per model: the one it replaces is cancelled, not left asleep for keep_alive (a busy
        # model would otherwise hold one sleeping task per request of the last keep_alive period).
        if loaded.expiry_scope is not None:
            loaded.expiry_scope.cancel()
            loaded.expiry_scope = None
        if not 0 <= keep < MAX_KEEP_ALIVE_S or self._nursery is None:
            return
        scope = loaded.expiry_scope = trio.CancelScope()

        async def expire() -> None:
            with scope:
                await trio.sleep(max(0.0, keep))
            if scope.cancelled_caught:
                return
            if loaded.refs == 0 and loaded.expiry_token == token and loaded in self.loaded:
                log.info("unloading %s: keep_alive expired", loaded.model.name.display)
                await self._unload(loaded)

        self._nursery.start_soon(expire)

    def _find(self, model: Model, options: LoadOptions) -> Loaded | None:
        for loaded in self.loaded:
            if (loaded.options == options and not loaded.draining and not loaded.runner.dead
                    and not loaded.gone.is_set()):
                return loaded
        return None

    async def _get(self, model: Model, options: dict[str, Any]) -> Loaded:
        info = await self.gguf(model)
        wanted = self.load_options(model, options, info)
        wanted = replace(wanted, model_path=await self._loadable_path(wanted.model_path, info))
        found = self._find(model, wanted)
        if found is not None:
            return found
        async with self._load_lock:
            found = self._find(model, wanted)
            if found is not None:
                return found
            # A runner this request waits to replace is drained: requests that arrive meanwhile queue
            # behind this one instead of being handed the old runner, which would then never go idle
            # (as Ollama's scheduler, which stops using a runner it is waiting to unload).
            drained: list[Loaded] = []
            try:
                # Same weights loaded with other options (num_ctx …): reload once it is idle.
                for other in [lo for lo in self.loaded if lo.options.model_path == wanted.model_path]:
                    other.draining = True
                    drained.append(other)
                    while other.refs > 0 and other in self.loaded:
                        await self._changed.wait()
                    await self._unload(other)
                file_size = os.path.getsize(wanted.model_path)
                need = estimate_bytes(info, file_size, wanted)
                if wanted.draft_path:  # its weights and a KV cache of the same shape of context
                    try:
                        draft_info = await self._gguf_at(wanted.draft_path)
                    except (OSError, InvalidGGUF) as exc:
                        raise RunnerError(f"unable to load draft model {wanted.draft_path}: {exc}") from exc
                    need += estimate_bytes(draft_info, os.path.getsize(wanted.draft_path), wanted)
                if wanted.projector_path:  # its weights; the encoder's work memory is small beside them
                    need += os.path.getsize(wanted.projector_path)
                if wanted.rpc_servers:  # the layers' weights go to the workers
                    need = rpc.local_bytes(need, file_size, info.block_count or 0)
                await self._make_room(need, drained)
            finally:
                for other in drained:  # left loaded only when this request gave up (cancelled, failed)
                    other.draining = False
            loaded = await self._start(model, wanted, need)
            loaded.n_layers = info.block_count or 0
            return loaded

    async def _make_room(self, need: int, drained: list[Loaded]) -> None:
        max_loaded = self.cfg.max_loaded_models or 3
        while True:
            too_many = len(self.loaded) >= max_loaded
            short = need > self.memory_available()
            if not too_many and not short:
                return
            idle = [lo for lo in self.loaded if lo.refs == 0]
            if idle:
                victim = min(idle, key=lambda lo: lo.last_used)
                log.info("evicting %s to make room", victim.model.name.display)
                await self._unload(victim)
                continue
            if not self.loaded:
                gib = 1 << 30
                raise ApplianceError(
                    f"model requires more system memory ({need / gib:.1f} GiB) than is "
                    f"available ({self.memory_available() / gib:.1f} GiB)"
                )
            if not any(lo.draining for lo in self.loaded):
                victim = min(self.loaded, key=lambda lo: lo.last_used)
                log.info("evicting %s once its %d requests end", victim.model.name.display, victim.refs)
                victim.draining = True
                drained.append(victim)
            await self._changed.wait()

    async def _start(self, model: Model, options: LoadOptions, need: int) -> Loaded:
        assert self._nursery is not None, "scheduler is not running"
        runner = RunnerProcess(options, verbose=bool(self.cfg.debug))
        loaded = Loaded(
            model=model,
            options=options,
            runner=runner,
            estimated_bytes=need,
            slots=trio.Semaphore(options.num_parallel),
            keep_alive_s=self.cfg.keep_alive_s,
        )
        log.info(
            "loading %s (ctx %d x %d, %d threads)",
            model.name.display,
            options.num_ctx,
            options.num_parallel,
            options.num_thread,
        )
        t0 = time.perf_counter()
        self._runner_starts[model.name.display] += 1
        try:
            with trio.fail_after(self.cfg.load_timeout_s):
                await self._nursery.start(self._serve, loaded)
        except trio.TooSlowError:
            raise RunnerError(
                f"timed out waiting for the model to load after {self.cfg.load_timeout_s:.0f}s"
            ) from None
        except BaseExceptionGroup as group:
            raise RunnerError(_first_message(group) or "runner failed to start") from group
        log.info("loaded %s in %.2fs", model.name.display, time.perf_counter() - t0)
        if options.rpc_servers:
            _log_placement(model.name.display, runner.info.get("rpc") or {})
        return loaded

    async def _serve(self, loaded: Loaded, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        started = crashed = False

        async def relay(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await loaded.runner.run(task_status=task_status)

        with trio.CancelScope() as scope:
            loaded.scope = scope
            try:
                async with trio.open_nursery() as nursery:
                    await nursery.start(relay)
                    self.loaded.append(loaded)
                    started = True
                    task_status.started()
            except BaseExceptionGroup as group:
                if not started:
                    crashed = bool(_first_message(group))  # died loading, not a cancelled load
                    raise
                if not loaded.unloading:
                    crashed = True
                    log.warning(
                        "runner for %s stopped: %s", loaded.model.name.display,
                        loaded.runner.failure_message(),
                    )
            finally:
                if loaded in self.loaded:
                    self.loaded.remove(loaded)
                loaded.gone.set()
                self._notify()
                if crashed:
                    self._runner_crashes[loaded.model.name.display] += 1
        if started and loaded.runner.dead and not scope.cancel_called and not loaded.unloading:
            log.warning(
                "runner for %s exited: %s", loaded.model.name.display, loaded.runner.failure_message()
            )
            if not crashed:
                self._runner_crashes[loaded.model.name.display] += 1

    async def _unload(self, loaded: Loaded) -> None:
        loaded.unloading = True
        if loaded in self.loaded:
            self.loaded.remove(loaded)
        with trio.CancelScope(shield=True):
            how = await loaded.runner.stop()
            if how:
                log.info("runner for %s (pid %s) %s", loaded.model.name.display, loaded.runner.pid, how)
            if loaded.scope is not None:
                loaded.scope.cancel()
            with trio.move_on_after(5):
                await loaded.gone.wait()
        self._notify()

    async def unload_model(self, model: Model) -> bool:
        """Unload every runner holding ``model`` once idle (keep_alive 0 / ``ollama stop``)."""
        found = False
        for loaded in [lo for lo in self.loaded if lo.model.digest == model.digest]:
            found = True
            loaded.keep_alive_s = 0
            if loaded.refs == 0:
                await self._unload(loaded)
        return found

    def running(self) -> list[Loaded]:
        return [lo for lo in self.loaded if not lo.runner.dead]

    def statistics(self) -> SchedulerStatistics:
        """A snapshot for /metrics."""
        loaded = tuple(LoadedStatistics(lo.model.name.display, lo.estimated_bytes, lo.vram_bytes)
                       for lo in self.running())
        return SchedulerStatistics(self.waiting, loaded, tuple(self._runner_starts.items()),
                                   tuple(self._runner_crashes.items()))


def _log_placement(name: str, placement: dict[str, Any]) -> None:
    """Where a model loaded over RPC workers went, and which workers were left out (and why)."""
    for gone in placement.get("left_out") or ():
        log.warning("RPC worker %s left out of %s: %s", gone.get("endpoint"), name, gone.get("reason"))
    parts = [f"{d.get('endpoint') or d.get('name')} {d.get('layers', 0)} layers "
             f"{d.get('model_bytes', 0) >> 20} MiB" for d in placement.get("devices") or ()]
    log.info("%s placed over RPC workers: %s", name, "; ".join(parts) or "none (local devices only)")


def _physical_cores() -> int:
    try:
        cores = set()
        phys = core = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("physical id"):
                    phys = line.split(":")[1].strip()
                elif line.startswith("core id"):
                    core = line.split(":")[1].strip()
                    cores.add((phys, core))
        if cores:
            return len(cores)
    except OSError:
        pass
    return os.cpu_count() or 1


def _first_message(group: BaseExceptionGroup) -> str:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            msg = _first_message(exc)
            if msg:
                return msg
        elif not isinstance(exc, trio.Cancelled):
            return str(exc)
    return ""
