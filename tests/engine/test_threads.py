"""DecodeThreads fed synthetic step times on a fake clock: no real decoding, no sleeping."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from appliance.engine.threads import DecodeThreads, IdleCores, OtherCores

#: per-token seconds of one decode step at a thread count
Cost = Callable[[int], float]


class Machine:
    """A fake clock advanced by the steps it runs, and a controller driven by them."""

    def __init__(self, max_threads: int, hint: bool = True) -> None:
        self.now = 0.0
        self.logged: list[str] = []
        self.idle: float | None = 1.0  # what /proc/stat would say: idle cores lately
        self.others: float | None = None  # cores other processes kept busy lately (None: cannot tell)
        self.ctl = DecodeThreads(max_threads, clock=lambda: self.now, log=self.logged.append,
                                 idle_cores=(lambda: self.idle) if hint else None,
                                 other_cores=(lambda: self.others) if hint else None)
        self.history: list[int] = []  # the thread count of every step run

    def run(self, seconds: float, cost: Cost, n_tokens: int = 1) -> None:
        end = self.now + seconds
        while self.now < end:
            threads = self.ctl.for_step(n_tokens)  # as the runner asks before every decode
            step = cost(threads) * n_tokens
            self.now += step
            self.history.append(threads)
            self.ctl.observe(step, n_tokens)

    def time_to(self, threads: int, cost: Cost, limit_s: float) -> float:
        """Simulated seconds until a step runs at ``threads``."""
        start = self.now
        while self.ctl.threads != threads:
            assert self.now - start < limit_s, f"still at {self.ctl.threads} threads after {limit_s} s"
            self.run(0.001, cost)
        return self.now - start


def quiet(threads: int) -> float:
    """Two cores to ourselves: two threads beat one."""
    return {1: 0.020, 2: 0.012}.get(threads, 0.012)


def neighbour(threads: int) -> float:
    """A busy process beside us: two threads wait at every barrier, one thread runs beside it."""
    return {1: 0.022, 2: 0.500}[threads]


def test_quiet_machine_keeps_every_thread() -> None:
    m = Machine(2)
    m.run(30.0, quiet)
    assert m.ctl.threads == 2
    assert m.ctl.statistics().adaptations == 0
    assert m.history.count(2) / len(m.history) > 0.98  # the down probes cost a few steps only
    assert not m.logged


def test_nothing_else_running_means_no_probe_down_at_all() -> None:
    # Each probe down on a quiet machine ran three steps at about half speed: ~5% of 8-client throughput.
    m = Machine(2)
    m.others = 0.1  # the server and the clients reading the streams
    m.run(60.0, quiet, n_tokens=8)
    assert m.ctl.statistics().trials == 0
    assert set(m.history) == {2}


def test_a_neighbour_from_the_start_is_probed_for_once_it_shows() -> None:
    m = Machine(2)
    m.others = 0.1
    slowish = lambda t: {1: 0.022, 2: 0.030}[t]  # noqa: E731  busy, yet never 2x its best: no slow run
    m.run(5.0, slowish)
    assert m.ctl.threads == 2
    m.others = 1.0  # a process that keeps a core busy
    m.time_to(1, slowish, limit_s=m.ctl.max_probe_interval_s + 1.0)


def test_a_busy_neighbour_is_met_with_fewer_threads_and_left_with_all() -> None:
    m = Machine(2)
    m.run(5.0, quiet)
    m.time_to(1, neighbour, limit_s=5.0)
    m.idle = 0.0  # the neighbour takes the core we left
    m.history.clear()
    m.run(30.0, neighbour)
    assert m.ctl.threads == 1
    # no idle core: only blind probes up, each one slow step, ever rarer
    assert m.history.count(2) <= 5
    assert m.history.count(1) * neighbour(1) / 30.0 > 0.9
    assert m.logged and "2 -> 1" in m.logged[0]
    # the neighbour goes away: a core is idle, back to full threads within a probe interval
    m.idle = 1.0
    assert m.time_to(2, quiet, limit_s=5.0) <= m.ctl.probe_interval_s + 0.1
    m.run(0.5, quiet)
    assert m.ctl.threads == 2
    assert "1 -> 2" in m.logged[-1]


def test_a_machine_busy_from_the_start_is_found_by_probing() -> None:
    # all steps equally slow from the first one: no "slower than its best", only a probe finds it
    m = Machine(2)
    m.time_to(1, lambda t: {1: 0.022, 2: 0.060}[t], limit_s=5.0)


def test_without_a_load_hint_probes_back_off_and_cost_one_step_each() -> None:
    m = Machine(2, hint=False)
    m.time_to(1, neighbour, limit_s=5.0)
    before = m.ctl.statistics().trials
    m.history.clear()
    m.run(60.0, neighbour)
    probes = m.ctl.statistics().trials - before
    assert probes <= 60 / m.ctl.max_probe_interval_s + 3
    assert m.history.count(2) == probes  # each failed probe ran one step, then gave up
    assert m.ctl.threads == 1


def test_a_slow_spell_where_fewer_threads_do_not_help_is_left_alone() -> None:
    m = Machine(2)
    m.run(3.0, quiet)
    m.history.clear()
    m.run(10.0, lambda t: 0.040 if t == 2 else 0.080)  # everything slower, two threads still best
    assert m.ctl.statistics().adaptations == 0
    assert m.history.count(2) / len(m.history) > 0.95  # trials of one thread end at their first step


def test_many_cores_walk_down_to_the_best_count_and_back() -> None:
    def one_neighbour_on_8(threads: int) -> float:
        return 0.100 / threads if threads <= 7 else 0.400

    def quiet_8(threads: int) -> float:
        return 0.100 / threads

    m = Machine(8)
    m.run(3.0, quiet_8)
    m.time_to(7, one_neighbour_on_8, limit_s=5.0)
    m.run(20.0, one_neighbour_on_8)
    assert m.ctl.threads == 7  # not lower: each step down must pay
    m.time_to(8, quiet_8, limit_s=5.0)


def test_the_ceiling_is_never_passed() -> None:
    m = Machine(3)
    m.run(20.0, lambda t: 0.100 / t)  # more threads always faster
    assert max(m.history) == 3
    single = Machine(1)
    single.run(5.0, neighbour)
    assert set(single.history) == {1}
    assert single.ctl.statistics().trials == 0


def test_prompt_batches_are_compared_with_prompt_batches() -> None:
    m = Machine(2)
    m.run(3.0, quiet)  # single-token steps: 12 ms per token
    m.run(3.0, lambda t: quiet(t) / 20, n_tokens=512)  # prompt chunks: far cheaper per token
    m.run(3.0, quiet)
    assert m.ctl.statistics().adaptations == 0
    assert m.ctl.threads == 2


def test_empty_and_odd_steps_are_ignored() -> None:
    ctl = DecodeThreads(2, clock=lambda: 0.0)
    assert ctl.observe(0.5, 0) is None
    assert ctl.observe(-1.0, 1) is None
    assert ctl.threads == 2


def test_a_probe_up_waits_for_an_idle_core() -> None:
    m = Machine(2)
    m.time_to(1, neighbour, limit_s=5.0)
    m.idle = 0.3  # someone else uses most of the core we left
    m.run(10.0, neighbour)
    assert m.ctl.threads == 1
    m.idle = None  # cannot tell: probe blind (with back-off)
    m.time_to(2, quiet, limit_s=5.0)


def test_idle_cores_from_proc_stat(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 50 0 50 400 0 0 0 0 0 0\n")
    idle = IdleCores(str(stat))
    stat.write_text("cpu  400 0 100 1500 100 0 0 0 0 0\n")  # +300 busy, +800 idle or iowait
    assert idle() == (os.cpu_count() or 1) * 800 / 1100
    assert idle() is None  # no time has passed
    assert IdleCores(str(tmp_path / "missing"))() is None


def test_other_cores_from_proc_stat_less_our_own_time(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    tick = 1.0 / os.sysconf("SC_CLK_TCK")
    stat.write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    clock, own = [10.0], [3.0]
    others = OtherCores(str(stat), own=lambda: own[0], clock=lambda: clock[0])
    # 2 s later: +300 busy ticks (+40 iowait, not busy), of which 1.5 s were our own
    stat.write_text("cpu  350 10 140 1200 40 0 0 0 0 0\n")
    clock[0], own[0] = 12.0, 4.5
    assert abs(others() - (300 * tick - 1.5) / 2.0) < 1e-9  # type: ignore[operator]
    clock[0] = 12.1
    assert others() is None  # too little time to say
    own[0] = 99.0  # more than the machine's busy time (clock skew): never below zero
    clock[0] = 14.0
    assert others() == 0.0
    assert OtherCores(str(tmp_path / "missing"))() is None


def test_a_neighbour_that_does_not_hurt_all_threads_is_found_by_a_blind_probe() -> None:
    # e.g. a nice 19 loop on a kernel that keeps it out of the way: no idle core, yet two threads win
    m = Machine(2)
    m.run(2.0, quiet)
    m.time_to(1, neighbour, limit_s=5.0)
    m.idle = 0.0
    assert m.time_to(2, quiet, limit_s=10.0) <= m.ctl.blind_probe_interval_s + 0.5


def test_a_short_slow_spell_is_weighed_against_the_fast_steps_around_it() -> None:
    m = Machine(2)
    m.run(2.0, quiet)
    spell = iter([0.030] * 3)
    m.run(0.1, lambda t: next(spell, quiet(t)) if t == 2 else 0.013)  # one thread beats the spell only
    m.run(0.5, quiet)
    assert m.ctl.threads == 2
    assert m.ctl.statistics().adaptations == 0


def test_a_prompt_never_runs_inside_a_probe_of_single_token_steps() -> None:
    # At 1 client on a quiet machine the ceiling's "probe down" trials began on a request's last
    # steps and took the next request's prompt to one thread: ~85 ms more to the first token.
    m = Machine(2)
    prompt_threads = []
    for _ in range(40):  # requests one after the other: a prompt, 100 tokens, a pause
        prompt_threads.append(m.ctl.for_step(32))
        m.run(0.0001, quiet, n_tokens=32)
        for _ in range(100):
            m.run(0.0001, quiet)
        m.ctl.idle()
        m.now += 0.5
    assert m.ctl.statistics().trials > 0  # probes did happen ...
    assert prompt_threads == [2] * 40  # ... but never on a prompt
    assert m.ctl.threads == 2


def test_idle_calls_off_a_trial_without_a_verdict() -> None:
    m = Machine(2)
    m.run(1.5, quiet)  # past the first probe interval: a probe down starts
    while m.ctl.for_step(1) == 2:
        m.run(0.0001, quiet)
    m.ctl.idle()
    assert m.ctl.for_step(1) == 2 and m.ctl.threads == 2
    assert m.ctl.statistics().adaptations == 0
