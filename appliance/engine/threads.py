"""How many threads llama.cpp decodes with, chosen from how long its steps take.

Why: llama.cpp's threads meet at a barrier after every op (an OpenMP barrier in our build, a
spinning one in others).  When they equal the cores, one busy neighbour keeps one of them off its
core now and then and the others wait for it: decoding slows 35-70x and worse (bench/RESULTS.md).
Even a nice 19 neighbour does this: with autogroup scheduling (the kernel's default) nice counts
only within a session, and the runner has a session of its own.  With fewer threads than cores the
neighbour runs beside us instead.

What: :class:`DecodeThreads` is fed the wall time of every ``llama_decode`` and answers, now and
then, with another thread count for the runner to set (``llama_set_n_threads``).  It never goes
above its ceiling (the runner's ``--threads``: physical cores, or the user's ``num_thread``).

- A step is compared per token, and only with steps of a similar batch size (a bucket per power
  of two), so a prompt chunk never looks "fast" next to a single-token step.
- **Slow**: ``slow_steps`` steps in a row take more than ``slow_factor`` times the best recent step
  at the current count.  Then a *trial* of one thread fewer starts.
- **Probe**: every ``probe_interval_s`` (doubling after each failed probe, up to
  ``max_probe_interval_s``) a trial of one thread more starts (or, at the ceiling, one fewer: the
  machine may have been busy since the start).  A probe down goes only while other processes keep
  ``neighbour_cores`` or more busy (``other_cores``, from /proc/stat less this process's own CPU
  time, by :class:`OtherCores`): on a quiet machine one thread fewer cannot win, and each such
  trial cost three steps at about half speed, ~5% of 8-client throughput (bench/RESULTS.md).
  A probe up goes at that pace only while the machine has an idle core for the extra thread
  (``idle_cores``, read from /proc/stat by :class:`IdleCores`), which is how the neighbour's
  leaving shows; without one it is *blind*, every ``blind_probe_interval_s``, doubling after each
  failure up to ``max_blind_interval_s``.  Blind
  probes matter: a niced neighbour leaves no idle core yet may not hurt two threads at all
  (measured here on a quiet machine), but one step with two threads among test suites took 8.5 s.
- **Trial**: ``trial_steps`` steps at the other count; it is kept when their median per-token time
  beats the reference by ``margin``.  The reference is the *mean* of the last 16 steps at the
  current count, slow run included: throughput is what counts, so a short slow spell among fast
  steps does not make one thread fewer look better, and a stall of seconds does.  A single step
  ``abort_factor`` times the reference ends it at once, so probing into a contended count costs
  one step.  A kept trial goes on in the same direction at once, so the count walks to the best
  value in a few steps.

Nothing here sleeps or reads a clock of its own accord: the clock is passed in, which keeps the
class testable with synthetic step times.
"""

from __future__ import annotations

import collections
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThreadStatistics:
    """What the controller has done so far."""

    threads: int
    max_threads: int
    adaptations: int  # kept changes of the thread count
    trials: int  # trials started (kept or not)


@dataclass
class _Trial:
    target: int
    home: int
    bucket: int
    reference: float  # per-token seconds the trial must beat
    reason: str
    chained: bool = False  # follows a kept trial in the same direction
    samples: list[float] = field(default_factory=list)
    steps: int = 0  # steps at the target count, counted in any bucket


class DecodeThreads:
    """Adapts the decode thread count to the machine's load; see the module docstring."""

    def __init__(
        self,
        max_threads: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] | None = None,
        idle_cores: Callable[[], float | None] | None = None,
        other_cores: Callable[[], float | None] | None = None,
        spare_core: float = 0.75,
        neighbour_cores: float = 0.5,
        slow_factor: float = 2.0,
        slow_steps: int = 3,
        trial_steps: int = 3,
        margin: float = 0.1,
        abort_factor: float = 2.0,
        probe_interval_s: float = 1.0,
        max_probe_interval_s: float = 3.0,
        blind_probe_interval_s: float = 3.0,
        max_blind_interval_s: float = 60.0,
        memory_s: float = 20.0,
    ) -> None:
        self.max_threads = max(1, max_threads)
        self.threads = self.max_threads
        self._clock = clock
        self._log = log
        self._idle_cores = idle_cores
        self._other_cores = other_cores
        self.spare_core = spare_core
        self.neighbour_cores = neighbour_cores
        self.slow_factor = slow_factor
        self.slow_steps = slow_steps
        self.trial_steps = trial_steps
        self.margin = margin
        self.abort_factor = abort_factor
        self.probe_interval_s = probe_interval_s
        self.max_probe_interval_s = max_probe_interval_s
        self.blind_probe_interval_s = blind_probe_interval_s
        self.max_blind_interval_s = max_blind_interval_s
        self.memory_s = memory_s
        self._recent: dict[tuple[int, int], collections.deque[tuple[float, float]]] = {}
        self._slow_run: list[float] = []
        self._trial: _Trial | None = None
        self._interval = probe_interval_s
        self._next_probe = clock() + probe_interval_s
        self._blind_interval = blind_probe_interval_s
        self._next_blind_probe = clock() + blind_probe_interval_s
        self._slow_hold_until = 0.0  # after a slow-triggered trial failed, give it time
        self._adaptations = 0
        self._trials = 0

    def statistics(self) -> ThreadStatistics:
        return ThreadStatistics(self.threads, self.max_threads, self._adaptations, self._trials)

    def for_step(self, n_tokens: int) -> int:
        """The thread count to run a step of ``n_tokens`` tokens with.

        A trial runs only steps of its own batch-size bucket at the trial's count: a prompt arriving
        during a trial begun on single-token steps runs at the settled count, so a probe never
        lands on a request's time to first token (it cost ~85 ms a request at 1 client)."""
        trial = self._trial
        if trial is not None and n_tokens.bit_length() != trial.bucket:
            return trial.home
        return self.threads

    def observe(self, seconds: float, n_tokens: int) -> int | None:
        """Record one decode step of ``n_tokens`` tokens that took ``seconds``, run at
        ``for_step(n_tokens)`` threads.

        Returns the thread count of the next steps when it changes, else None."""
        if self.max_threads == 1 or n_tokens <= 0:
            return None
        now = self._clock()
        per_token = max(seconds, 0.0) / n_tokens
        bucket = n_tokens.bit_length()
        before = self.threads
        if self._trial is not None:
            self._trial_step(now, per_token, bucket)
        else:
            self._steady_step(now, per_token, bucket)
        return self.threads if self.threads != before else None

    def idle(self) -> None:
        """The runner has nothing to decode: a trial in progress is called off without a verdict (its
        remaining steps would measure another request, after a pause), and probing starts over."""
        trial = self._trial
        if trial is None:
            return
        self._trial = None
        self.threads = trial.home
        self._next_probe = self._clock() + self._interval

    # -- steady state ---------------------------------------------------------------------------

    def _steady_step(self, now: float, per_token: float, bucket: int) -> None:
        recent = self._remember(now, self.threads, bucket, per_token)
        if self.threads > 1 and now >= self._slow_hold_until:
            best = min(p for _t, p in recent)
            if per_token > self.slow_factor * best:
                self._slow_run.append(per_token)
            else:
                self._slow_run.clear()
            if len(self._slow_run) >= self.slow_steps:
                reference = _typical(recent)
                reason = f"{len(self._slow_run)} steps over {self.slow_factor:g}x the best {_ms(best)}"
                self._start(self.threads - 1, bucket, reference, reason)
                return
        if now < self._next_probe or len(recent) < self.trial_steps:
            return
        reference = _typical(recent)
        if self.threads < self.max_threads:
            if self._room_for_one_more():
                self._start(self.threads + 1, bucket, reference, "probe up")
            elif now >= self._next_blind_probe:
                self._start(self.threads + 1, bucket, reference, "blind probe up")
            else:
                self._next_probe = now + self.probe_interval_s
        elif self._neighbour_busy():
            self._start(self.threads - 1, bucket, reference, "probe down")
        else:  # nothing else runs: one thread fewer cannot win, and trying costs steps at half speed
            self._next_probe = now + self._interval

    def _remember(
        self, now: float, threads: int, bucket: int, per_token: float
    ) -> collections.deque[tuple[float, float]]:
        recent = self._recent.setdefault((threads, bucket), collections.deque(maxlen=64))
        recent.append((now, per_token))
        while recent and recent[0][0] < now - self.memory_s:
            recent.popleft()
        return recent

    # -- trials ---------------------------------------------------------------------------------

    def _start(self, target: int, bucket: int, reference: float, reason: str, chained: bool = False) -> None:
        self._trials += 1
        self._trial = _Trial(target, self.threads, bucket, reference, reason, chained)
        self._slow_run.clear()
        self.threads = target

    def _trial_step(self, now: float, per_token: float, bucket: int) -> None:
        trial = self._trial
        assert trial is not None
        trial.steps += 1
        if bucket != trial.bucket:  # ran at the settled count (see for_step)
            self._remember(now, trial.home, bucket, per_token)
        else:
            trial.samples.append(per_token)
            if per_token > self.abort_factor * trial.reference:
                self._end(now, trial, kept=False)
                return
        if len(trial.samples) >= self.trial_steps:
            median = statistics.median(trial.samples)
            self._end(now, trial, kept=median < (1 - self.margin) * trial.reference)
        elif trial.steps >= 4 * self.trial_steps:  # the batch sizes changed under it: call it off
            self._end(now, trial, kept=False)

    def _end(self, now: float, trial: _Trial, kept: bool) -> None:
        self._trial = None
        going_up = trial.target > trial.home
        if not kept:
            self.threads = trial.home
            if trial.chained:  # the step before it was kept: nothing to back off from
                pass
            elif trial.reason.startswith("blind"):
                self._blind_interval = min(self._blind_interval * 2, self.max_blind_interval_s)
                self._next_blind_probe = now + self._blind_interval
            elif trial.reason.startswith("probe"):  # probing costs a step or more: probe less often
                self._interval = min(self._interval * 2, self.max_probe_interval_s)
            else:  # one fewer thread did not help: do not retry at every slow run
                self._slow_hold_until = now + self._interval
            self._next_probe = now + self._interval
            return
        self._adaptations += 1
        median = statistics.median(trial.samples)
        self._say(f"decode threads {trial.home} -> {trial.target} ({trial.reason}; "
                  f"{_ms(median)} per token vs {_ms(trial.reference)})")
        recent = self._recent.setdefault((trial.target, trial.bucket), collections.deque(maxlen=64))
        recent.clear()
        recent.extend((now, p) for p in trial.samples)
        self._interval = self.probe_interval_s
        self._next_probe = now + self._interval
        if going_up:
            self._blind_interval = self.blind_probe_interval_s
            self._next_blind_probe = now + self._blind_interval
        nxt = trial.target + 1 if going_up else trial.target - 1
        if 1 <= nxt <= self.max_threads and (not going_up or self._room_for_one_more()):
            # it helped: try one more step the same way at once
            self._start(nxt, trial.bucket, median, trial.reason, chained=True)

    def _neighbour_busy(self) -> bool:
        others = self._other_cores() if self._other_cores is not None else None
        return others is None or others >= self.neighbour_cores

    def _room_for_one_more(self) -> bool:
        idle = self._idle_cores() if self._idle_cores is not None else None
        return idle is None or idle >= self.spare_core

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)


def _typical(recent: collections.deque[tuple[float, float]]) -> float:
    return statistics.fmean(p for _t, p in list(recent)[-16:])


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _cpu_ticks(path: str) -> tuple[int, int] | None:
    """The machine's idle (idle + iowait) and total clock ticks so far, from /proc/stat's first line
    (guest time is inside user time); None when the file cannot tell."""
    try:
        with open(path, "rb") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    if len(values) < 5:
        return None
    return values[3] + values[4], sum(values)


class IdleCores:
    """Calling it gives the machine's idle cores on average since the previous call (None when
    /proc/stat cannot tell, e.g. not on Linux, or too little time has passed to say)."""

    def __init__(self, path: str = "/proc/stat") -> None:
        self._path = path
        self._cpus = os.cpu_count() or 1
        self._last = self._read()

    def _read(self) -> tuple[int, int] | None:
        return _cpu_ticks(self._path)

    def __call__(self) -> float | None:
        now = self._read()
        if now is None or self._last is None:
            self._last = now
            return None
        d_idle, d_total = now[0] - self._last[0], now[1] - self._last[1]
        if d_total < 5 * self._cpus:  # a few clock ticks per CPU at least
            return None
        self._last = now
        return self._cpus * d_idle / d_total


class OtherCores:
    """Calling it gives the cores that other processes kept busy on average since the previous call:
    the machine's busy time from /proc/stat less this process's own CPU time (None when /proc/stat
    cannot tell, or too little time has passed to say)."""

    def __init__(self, path: str = "/proc/stat", own: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._path = path
        self._own = own
        self._clock = clock
        try:
            self._tick = 1.0 / os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            self._tick = 0.01
        self._last = self._read()

    def _read(self) -> tuple[float, float, float] | None:
        ticks = _cpu_ticks(self._path)
        if ticks is None:
            return None
        idle, total = ticks
        return self._clock(), (total - idle) * self._tick, self._own()

    def __call__(self) -> float | None:
        now = self._read()
        last, self._last = self._last, now
        if now is None or last is None:
            return None
        wall = now[0] - last[0]
        if wall < 0.2:  # a few clock ticks at least
            self._last = last
            return None
        return max(0.0, (now[1] - last[1]) - (now[2] - last[2])) / wall
