"""A running runner process as seen from the server: start, talk, watch, stop.

One reader task per process dispatches the runner's output lines to per-request channels; one
task drains its stderr into the log (keeping the last lines for error messages).  If the process
dies, every open request gets an error event and the process is marked dead, so the scheduler
starts a fresh one for the next request.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import trio

from appliance.engine import protocol, rpc
from appliance.errors import BadRequest, RunnerError
from appliance.store.create import self_command

log = logging.getLogger("appliance.runner")

#: How long a runner asked to exit may take (finish its step, free the model) before it is killed.
RUNNER_STOP_GRACE_S = 5.0
#: Exit statuses of a runner that ended normally or by our hand (not a crash).
_STOPPED_BY_US = (0, None, -signal.SIGKILL, -signal.SIGTERM)
#: Put in a request's event channel to end its events early (see ``RunnerProcess.request``).
_INTERRUPT: dict[str, Any] = {"event": "interrupt"}


@dataclass(frozen=True)
class LoadOptions:
    """What a runner is started with; a request needing other values needs another runner."""

    model_path: str
    num_ctx: int
    num_parallel: int
    num_batch: int
    num_thread: int
    num_gpu: int
    main_gpu: int
    use_mmap: bool
    flash_attention: str
    kv_cache_type: str
    adapters: tuple[str, ...] = ()
    #: A draft model for speculative decoding, and how many tokens it guesses per step ("" / 0: none).
    draft_path: str = ""
    draft_num_predict: int = 0
    #: The model's vision projector (mmproj GGUF), loaded beside it ("": none).
    projector_path: str = ""
    #: llama.cpp RPC workers (host:port) to spread the layers over; the runner leaves out unreachable ones.
    rpc_servers: tuple[str, ...] = ()

    def argv(self, verbose: bool) -> list[str]:
        args = [
            "runner",
            "--model",
            self.model_path,
            "--ctx",
            str(self.num_ctx),
            "--parallel",
            str(self.num_parallel),
            "--batch",
            str(self.num_batch),
            "--threads",
            str(self.num_thread),
            "--n-gpu-layers",
            str(self.num_gpu),
            "--main-gpu",
            str(self.main_gpu),
            "--flash-attention",
            self.flash_attention,
            "--kv-cache-type",
            self.kv_cache_type,
        ]
        for adapter in self.adapters:
            args += ["--lora", adapter]
        if not self.use_mmap:
            args.append("--no-mmap")
        if self.draft_path:
            args += ["--draft", self.draft_path, "--draft-max", str(self.draft_num_predict)]
        if self.projector_path:
            args += ["--mmproj", self.projector_path]
        if self.rpc_servers:
            args += ["--rpc", ",".join(self.rpc_servers)]
        if verbose:
            args.append("--verbose")
        return args


class RunnerProcess:
    """The server's handle on one ``ollama runner`` child."""

    def __init__(self, options: LoadOptions, verbose: bool = False) -> None:
        self.options = options
        self.verbose = verbose
        self.process: trio.Process | None = None
        self.info: dict[str, Any] = {}
        self.dead = False
        self.death_reason = ""
        self.rpc_failure = ""  # which RPC worker went away, when that is why the runner died
        self._ids = itertools.count(1)
        self._channels: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._send_lock = trio.Lock()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=30)
        self._ready = trio.Event()
        self._exited = trio.Event()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Start the process and serve it until it exits; ``task_status`` fires when it is ready."""
        cmd = [*self_command(), *self.options.argv(self.verbose)]
        log.debug("starting runner: %s", " ".join(cmd))
        self.process = await trio.lowlevel.open_process(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._drain_stderr)
                nursery.start_soon(self._read_events)
                nursery.start_soon(self._watch_exit, task_status)
        finally:
            await self._kill()
            await self._close_pipes()

    async def _close_pipes(self) -> None:
        # trio.Process leaves its pipes open when the child exits: without this, every runner that
        # was ever stopped kept three descriptors of the server's (found by bench/bench_soak.py).
        assert self.process is not None
        with trio.CancelScope(shield=True):
            for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    await stream.aclose()

    async def _watch_exit(self, task_status: Any) -> None:
        assert self.process is not None
        started = False
        async with trio.open_nursery() as nursery:

            async def ready() -> None:
                nonlocal started
                await self._ready.wait()
                started = True
                task_status.started()

            nursery.start_soon(ready)
            await self.process.wait()
            await self._exited.wait()  # the reader has seen EOF and failed every open request
            nursery.cancel_scope.cancel()
        if not started:
            raise RunnerError(self.failure_message())

    def failure_message(self) -> str:
        if self.rpc_failure:
            return self.rpc_failure
        code = self.process.returncode if self.process else None
        tail = " | ".join(line for line in list(self._stderr_tail)[-5:] if line.strip())
        reason = self.death_reason or (
            f"runner exited with status {code}" if code is not None else "runner stopped"
        )
        if code is not None and code < 0:
            reason = f"runner was killed by signal {signal.Signals(-code).name}"
        return f"{reason}{': ' + tail if tail and not self.death_reason else ''}"

    async def _drain_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for line in _lines(self.process.stderr):
            text = line.decode("utf-8", "replace").rstrip()
            self._stderr_tail.append(text)
            log.debug("runner %s: %s", self.pid, text)

    async def _read_events(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        try:
            async for line in _lines(self.process.stdout):
                try:
                    event = protocol.decode(line)
                except ValueError:
                    log.warning("runner %s sent a bad line: %r", self.pid, line[:200])
                    continue
                kind = event.get("event")
                if kind == "ready":
                    self.info = event
                    self._ready.set()
                elif kind == "error" and "id" not in event:
                    self.death_reason = str(event.get("error"))
                else:
                    channel = self._channels.get(event.get("id", -1))
                    if channel is not None:
                        try:
                            channel.send_nowait(event)
                        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
        finally:
            self.dead = True
            if self.process is not None and self.process.returncode is None:
                with trio.move_on_after(2):
                    await self.process.wait()
            servers = self.options.rpc_servers
            if servers and self.process is not None and self.process.returncode not in _STOPPED_BY_US:
                # llama.cpp aborts when a worker goes away: name the worker rather than the signal.
                with trio.CancelScope(shield=True):
                    self.rpc_failure = await trio.to_thread.run_sync(rpc.explain_death, servers)
            message = self.failure_message()
            for channel in self._channels.values():
                try:
                    channel.send_nowait({"event": "error", "error": message, "fatal": True})
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            self._exited.set()

    async def send(self, obj: dict[str, Any]) -> None:
        if self.dead or self.process is None or self.process.stdin is None:
            raise RunnerError(self.failure_message())
        async with self._send_lock:
            try:
                await self.process.stdin.send_all(protocol.encode(obj))
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise RunnerError(self.failure_message()) from exc

    async def request(
        self, obj: dict[str, Any], on_cancel: Callable[[Callable[[], None]], None] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Send a request and yield its events until ``done``/``result``/``error``.

        If the consumer stops early (client gone, Ctrl+C), the runner is told to cancel, which
        frees the slot at its next step.  ``on_cancel``, if given, is handed a function that ends
        the events early the same way (the request was cancelled while it waits for the next one).
        """
        rid = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](math.inf)
        self._channels[rid] = send
        finished = False
        if on_cancel is not None:

            def interrupt() -> None:
                try:
                    send.send_nowait(_INTERRUPT)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the request is over

            on_cancel(interrupt)
        try:
            await self.send({**obj, "id": rid})
            async with receive:
                async for event in receive:
                    if event is _INTERRUPT:
                        return  # not finished: the runner is told to cancel below
                    kind = event.get("event")
                    if kind == "error":
                        finished = True
                        if event.get("status") == 400:
                            raise BadRequest(str(event.get("error")))
                        raise RunnerError(str(event.get("error")))
                    if kind in ("done", "result"):
                        finished = True
                    yield event
                    if finished:
                        return
        finally:
            self._channels.pop(rid, None)
            if not finished and not self.dead:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    try:
                        await self.send({"op": "cancel", "id": rid})
                    except RunnerError:
                        pass

    async def stop(self) -> str:
        """Ask the runner to exit; kill it if it does not within RUNNER_STOP_GRACE_S.  Returns what
        happened, for the log ("" when it had already gone)."""
        if self.process is None or self.process.returncode is not None:
            return ""
        with trio.move_on_after(0.5):
            try:
                await self.send({"op": "shutdown"})
            except RunnerError:
                pass
        with trio.move_on_after(RUNNER_STOP_GRACE_S):
            await self.process.wait()
        if self.process.returncode is not None:
            return f"exited cleanly (status {self.process.returncode})"
        await self._kill()
        return f"did not exit within {RUNNER_STOP_GRACE_S:.0f}s and was killed"

    async def _kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                await self.process.wait()


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    buffer = bytearray()
    while True:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            if buffer:
                yield bytes(buffer)
            return
        buffer += chunk
        while True:
            nl = buffer.find(b"\n")
            if nl < 0:
                break
            line = bytes(buffer[:nl])
            del buffer[: nl + 1]
            yield line
        if len(buffer) > protocol.MAX_LINE_BYTES:
            raise RunnerError("runner sent an over-long line")
