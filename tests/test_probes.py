"""Inference probes: deadline by construction (injected clock), steady-state samples, sanity bounds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor
from perfcallbacks.probes import (
    PROBE_BUDGET_S,
    Deadline,
    calls_per_sample,
    plausible_ratio,
    probe_threads,
    run_inference_probes,
    steady_times,
    thread_candidates,
)


class FakeClock:
    """A clock that only moves when the model runs: each forward costs what ``cost()`` says."""

    def __init__(self) -> None:
        self.now = 100.0
        self.calls = 0

    def __call__(self) -> float:
        return self.now


class Costly(nn.Module):
    """A real (tiny) Linear whose forward advances the fake clock by ``cost(threads, rows)`` seconds."""

    def __init__(self, clock: FakeClock, cost) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)
        self.clock, self.cost = clock, cost

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.clock.calls += 1
        self.clock.now += self.cost(torch.get_num_threads(), x.shape[0], self.clock.calls)
        return self.lin(x)


def _ctx(cpu_profile, **kw):
    return Advisor(warn=False, local=cpu_profile, **kw).context


@pytest.mark.parametrize("forward_s", [1e-4, 1e-3, 0.03, 0.2, 0.45, 0.9])
@pytest.mark.parametrize("deadline_s", [0.3, 1.0, PROBE_BUDGET_S])
def test_probes_stay_within_the_deadline_under_a_slow_clock(cpu_profile, forward_s, deadline_s):
    clock = FakeClock()
    # 1 thread twice as slow as 2 (plausible), batch latency grows with rows.
    model = Costly(clock, lambda threads, rows, _: forward_s * (2.0 / threads) * (0.5 + rows / 16))
    ctx = _ctx(cpu_profile)
    threads = torch.get_num_threads()
    start = clock()
    out = run_inference_probes(ctx, model, torch.randn(8, 16), deadline_s=deadline_s, clock=clock)
    spent = clock() - start
    assert out["forward_s"] > 0
    # The one warm-up call is all a forward longer than the whole budget can cost.
    assert spent <= max(deadline_s, out["forward_s"] * 1.0001)
    if "probe_s" in out:
        assert out["probe_s"] == pytest.approx(spent)
    assert torch.get_num_threads() == threads
    assert set(out) - {"forward_s", "probe_s", "probes_skipped", "threads", "batch_scaling", "int8"} == set()


def test_a_generous_deadline_runs_every_probe_and_a_tight_one_says_what_it_skipped(cpu_profile):
    clock = FakeClock()
    model = Costly(clock, lambda threads, rows, _: 0.01 * (2.0 / threads) * rows / 8)
    full = run_inference_probes(_ctx(cpu_profile), model, torch.randn(8, 16), deadline_s=60.0, clock=clock)
    assert set(full["threads"]["latency_s"]) == {"1", "2"}
    assert full["threads"]["latency_s"]["1"] == pytest.approx(0.02) and full["threads"]["latency_s"]["2"] == \
        pytest.approx(0.01)
    assert set(full["batch_scaling"]["latency_s"]) == {"8", "16", "32"}
    tight = run_inference_probes(_ctx(cpu_profile), model, torch.randn(8, 16), deadline_s=0.15, clock=clock)
    assert "threads" not in tight and "batch_scaling" not in tight
    assert set(tight["probes_skipped"]) == {"threads", "batch_scaling"}


def test_sweep_false_runs_no_thread_sweep_and_no_batch_scaling(cpu_profile):
    clock = FakeClock()
    model = Costly(clock, lambda threads, rows, _: 0.02)
    out = run_inference_probes(_ctx(cpu_profile), model, torch.randn(8, 16), sweep=False, deadline_s=60.0,
                               clock=clock)
    assert "threads" not in out and "batch_scaling" not in out and "probes_skipped" not in out
    assert out["forward_s"] == pytest.approx(0.02)
    assert clock.calls <= 5  # warm-up plus at most 3 samples of one call (and nothing else)


def test_run_inference_probes_rejects_bad_arguments(cpu_profile):
    with pytest.raises(ValueError, match="budget_s"):
        run_inference_probes(_ctx(cpu_profile), nn.Linear(2, 2), torch.randn(1, 2), deadline_s=0)
    with pytest.raises(TypeError, match="clock"):
        run_inference_probes(_ctx(cpu_profile), nn.Linear(2, 2), torch.randn(1, 2), clock=3.0)


def test_tiny_forwards_are_timed_over_many_calls_per_sample():
    assert calls_per_sample(2e-5) == 1000 and calls_per_sample(0.5) == 1
    clock = FakeClock()
    seen = []

    def tiny():
        clock.now += 2e-5
        seen.append(1)

    times = steady_times({"tiny": tiny}, {"tiny": 2e-5}, Deadline(1.0, clock))
    assert times["tiny"] == pytest.approx(2e-5)
    assert len(seen) == 1 + 5 * 1000  # warm-up + 5 samples of 1000 calls


def test_one_slow_call_does_not_move_the_median():
    clock = FakeClock()
    n = {"a": 0}

    def a():
        n["a"] += 1
        clock.now += 0.5 if n["a"] == 3 else 1e-3  # one 500x call (a GIL switch, a preemption)

    def b():
        clock.now += 2e-3

    times = steady_times({"a": a, "b": b}, {"a": 1e-3, "b": 2e-3}, Deadline(10.0, clock))
    assert times["a"] == pytest.approx(1e-3) and times["b"] == pytest.approx(2e-3)


def test_steady_times_returns_none_without_running_when_the_minimum_does_not_fit():
    clock = FakeClock()
    ran = []
    assert steady_times({"a": lambda: ran.append(1)}, {"a": 0.1}, Deadline(0.2, clock)) is None
    assert ran == []


# -- sanity bound ---------------------------------------------------------------------

def test_plausible_ratio_bounds_thread_speedups():
    assert plausible_ratio(1, 2, 1.9) and plausible_ratio(1, 2, 0.8)
    assert not plausible_ratio(1, 2, 2.5)  # 2 threads cannot be 2.5x faster than 1
    assert not plausible_ratio(1, 2, 1 / 371)  # the "1 thread 0.0 ms, 2 threads 8.0 ms"
    assert plausible_ratio(2, 8, 1 / 10, oversubscribed=True)  # 8 threads on 2 cores can be that slow
    assert not plausible_ratio(1, 2, float("inf")) and not plausible_ratio(1, 2, 0.0)


def test_impossible_thread_speedup_is_remeasured_then_dropped(cpu_profile):
    clock = FakeClock()
    # Within 2 cores, 1 thread 50x faster than 2: physics says measurement error, every time.
    model = Costly(clock, lambda threads, rows, _: 1e-4 if threads == 1 else 5e-3)
    ctx = _ctx(cpu_profile)
    torch.set_num_threads(2)
    out = probe_threads(ctx, model, torch.randn(4, 16), 5e-3, Deadline(30.0, clock))["threads"]
    assert out["remeasured"] is True and set(out["dropped"]) == {"1"}
    assert set(out["latency_s"]) == {"2"}
    adv = Advisor(warn=False, local=cpu_profile)
    adv.context.measurements["threads"] = out
    adv.run_checks("inference")
    assert "threads-untuned" not in adv.hints


def test_a_transient_is_remeasured_and_kept(cpu_profile):
    clock = FakeClock()
    # The first sweep's 2-thread samples absorb a stall; the re-measured sweep is clean (1.6x plausible).
    model = Costly(clock, lambda threads, rows, calls: 0.05 if (threads == 2 and calls <= 32) else
                   (0.008 if threads == 1 else 0.005))
    torch.set_num_threads(2)
    out = probe_threads(_ctx(cpu_profile), model, torch.randn(4, 16), 0.005, Deadline(30.0, clock))["threads"]
    assert out["remeasured"] is True and "dropped" not in out
    assert out["latency_s"]["2"] == pytest.approx(0.005) and out["latency_s"]["1"] == pytest.approx(0.008)


def test_threads_untuned_ignores_impossible_numbers_from_any_source(cpu_profile):
    adv = Advisor(warn=False, local=cpu_profile)
    adv.context.measurements["threads"] = {"current": 2, "latency_s": {"1": 0.00002, "2": 0.008},
                                           "source": "fix"}
    adv.run_checks("inference")
    assert "threads-untuned" not in adv.hints
    ok = Advisor(warn=False, local=cpu_profile)
    ok.context.measurements["threads"] = {"current": 2, "latency_s": {"1": 0.00002, "2": 0.000031}}
    ok.run_checks("inference")
    assert not ok.check_failures, ok.check_failures
    hint = ok.hints["threads-untuned"]
    assert hint.evidence["latency_ms"] == {"1": 0.02, "2": 0.031} and "0.02 ms" in hint.message


def test_probe_threads_restores_the_thread_count_when_a_forward_raises(cpu_profile):
    clock = FakeClock()

    def cost(threads, rows, calls):
        if calls > 3:
            raise RuntimeError("boom")
        return 1e-3

    torch.set_num_threads(2)
    with pytest.raises(RuntimeError):
        probe_threads(_ctx(cpu_profile), Costly(clock, cost), torch.randn(2, 16), 1e-3, Deadline(5.0, clock))
    assert torch.get_num_threads() == 2


# -- thread candidates (shared with the threads fix) ----------------------------------

def test_thread_candidates_all_counts_for_few_cores_powers_of_two_beyond():
    assert thread_candidates(1) == [1]
    assert thread_candidates(2, 2) == [1, 2]
    assert thread_candidates(2, 4) == [1, 2, 4]  # the current count is always measured
    assert thread_candidates(4) == [1, 2, 3, 4]
    assert thread_candidates(6) == [1, 2, 4, 6]
    assert thread_candidates(16, 4) == [1, 2, 4, 8, 16]
    assert thread_candidates(12, 3) == [1, 2, 3, 4, 8, 12]
    assert thread_candidates(64, 64) == [1, 2, 4, 8, 16, 32, 64]
    for bad in (0, -1, 2.0, True, None):
        with pytest.raises(ValueError, match="physical_cores"):
            thread_candidates(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="current"):
        thread_candidates(4, 0)


def test_a_variant_far_slower_than_its_estimate_cannot_blow_the_deadline():
    # Estimated 0.1 ms, really 50 ms per call (2 threads on a loaded machine): 200 calls/sample planned.
    clock = FakeClock()

    def slow():
        clock.now += 0.05

    deadline = Deadline(1.0, clock)
    start = clock()
    steady_times({"slow": slow, "fast": lambda: None}, {"slow": 1e-4, "fast": 1e-4}, deadline)
    assert clock() - start <= 1.0 + 0.05  # at most the one call running when the deadline passed
