"""The fix pipeline: budget, shadow timing on the job's own calls, fidelity bounds, reuse, timing sync."""

from __future__ import annotations

import copy
import time

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor, DeviceProfile
from perfcallbacks.fixes import pipeline
from perfcallbacks.fixes._guard import Tolerance
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.fixes.pipeline import FixSpec, GuardedCalls, rows_for_agreement, wilson_lower


class Slow(nn.Module):
    """A model whose forward pays a fixed delay (the candidate copy does not)."""

    def __init__(self, delay_s: float = 0.03, states: bool = True) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.calls = 0
        self.layer = nn.Linear(16, 16 if states else 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        return self.layer(x)


def spec(*, noise: float = 0.0, tol: Tolerance | None = None, fix_id: str = "fake-fast") -> FixSpec:
    tol = tol or Tolerance(cosine_mean=0.999, argmax_agreement=None)

    def build(model, batch, profile, params):
        fast = copy.deepcopy(model)
        fast.delay_s, fast.calls = 0.0, 0
        if noise:
            with torch.no_grad():
                fast.layer.weight.add_(noise * torch.randn_like(fast.layer.weight))
        return Candidate(fix_id, fast, tolerance=tol, params={"noise": noise})

    return FixSpec(fix_id, ("predict",), build, plausible_max=1e6, tolerance=tol)


def batches(n: int, rows: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(rows, 16, generator=gen) for _ in range(n)]


def run_job(guard_or_model, data):
    with torch.inference_mode():
        return [guard_or_model(x) for x in data]


def test_wilson_bound_and_rows_needed():
    assert wilson_lower(32, 32) < 0.93  # no disagreement in 32 rows still allows 7% disagreement
    assert wilson_lower(rows_for_agreement(0.99), rows_for_agreement(0.99)) >= 0.99
    assert wilson_lower(0, 0) == 0.0 and wilson_lower(50, 100) < 0.5


def test_fix_decided_on_the_job_and_answers_the_rest():
    model, results = Slow(), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model)
    data = batches(40)
    outs = run_job(guard, data)
    guard.finish()
    ref = run_job(copy.deepcopy(model).eval(), data)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))
    [result] = results
    assert result.status == "applied", result.reason
    measured = result.details["calls_measured"]
    shadowed = result.details["calls_shadowed"]
    assert shadowed == measured  # every shadow call is a speed sample (a cold one can only delay the decision)
    assert 2 <= measured < 10 and model.calls == shadowed  # the original answered the trial calls only
    assert result.cost_s > 0 and result.fidelity["rows"] == 16 * shadowed


class ColdFirstCall(nn.Module):
    """A candidate as oneDNN makes them: its first call pays a one-off set-up, later calls are faster."""

    def __init__(self, inner: nn.Module, cold_s: float, warm_s: float) -> None:
        super().__init__()
        self.inner, self.cold_s, self.warm_s, self.calls = inner, cold_s, warm_s, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.cold_s if self.calls == 1 else self.warm_s)
        return self.inner.layer(x)


def test_a_candidates_cold_first_call_delays_the_decision_but_cannot_reject_it():
    # 0.01 s -> 0.005 s steady (2x), but the first call costs 0.05 s: on [cold, warm] = [0.2x, 2x] the slow end
    # is 0.65x. The warm calls decide; the cold one only costs time.
    def build(model, batch, profile, params):
        return Candidate("fake-fast", ColdFirstCall(model, cold_s=0.05, warm_s=0.005),
                         tolerance=Tolerance(cosine_mean=0.999, argmax_agreement=None))

    tol = Tolerance(cosine_mean=0.999, argmax_agreement=None)
    model, results = Slow(delay_s=0.01), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=200,
                         record=results.append, cache=None, original=model,
                         specs=[FixSpec("fake-fast", ("predict",), build, plausible_max=1e6, tolerance=tol)])
    run_job(guard, batches(200))
    guard.finish()
    [result] = results
    assert result.status == "applied", result.reason
    ratios = result.details["ratios"]
    assert ratios[0] < 0.5 and len(ratios) >= 3  # the cold sample is recorded, and more calls were measured
    assert result.details["speed_judged_on"] == "warm calls" and result.speedup > 1.5
    assert result.cost_s >= 0.05  # the cold call is the guard's cost


def test_unfaithful_candidate_is_rejected_and_the_user_keeps_the_original_outputs():
    model, results = Slow(), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec(noise=1.0)], original=model)
    data = batches(40)
    outs = run_job(guard, data)
    guard.finish()
    ref = run_job(copy.deepcopy(model), data)
    assert all(torch.allclose(a, b) for a, b in zip(outs, ref))
    assert results[0].status == "rejected" and "cosine" in results[0].reason


def test_short_job_is_skipped_with_the_numbers():
    model, results = Slow(), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=4,
                         record=results.append, cache=None, specs=[spec()], original=model)
    run_job(guard, batches(4))
    guard.finish()
    [result] = results
    assert result.status == "skipped" and "job" in result.reason and result.cost_s == 0
    assert model.calls == 4  # nothing ran twice


def test_agreement_claim_needs_enough_rows():
    """Scores with an argmax tolerance of 0.99 need ~268 agreeing rows: a 10-call job of 16 rows cannot say."""
    model, results = Slow(states=False), []
    tol = Tolerance(cosine_mean=0.9, argmax_agreement=0.99)
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=10,
                         record=results.append, cache=None, specs=[spec(tol=tol)], original=model, )
    guard.guard_budget = 1.0  # even with all the budget in the world
    run_job(guard, batches(10))
    guard.finish()
    assert results[0].status == "skipped" and "support" in results[0].reason


def test_unknown_job_length_measures_nothing():
    model, results = Slow(), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=None,
                         record=results.append, cache=None, specs=[spec()], original=model)
    run_job(guard, batches(3))
    guard.finish()
    assert results[0].status == "skipped" and "expected_batches" in results[0].reason


def test_every_timed_region_is_synchronised():
    """On CUDA a timer that does not synchronise measures kernel launches: each region is fenced."""
    from perfcallbacks.measure import compare_times, median_time
    from perfcallbacks.observe import StepTimer

    events: list[str] = []
    sync = lambda: events.append("sync")  # noqa: E731
    work = lambda: events.append("work")  # noqa: E731
    median_time(work, repeats=2, warmup=0, sync=sync)
    assert events == ["sync", "work", "sync"] * 2
    events.clear()
    compare_times({"a": work, "b": work}, repeats=1, warmup=0, sync=sync)
    assert events == ["sync", "work", "sync"] * 2
    events.clear()
    timer = StepTimer(sync=sync)
    timer.start()
    events.append("work")
    timer.end()
    assert events == ["sync", "work", "sync"]

    events.clear()
    model = Slow(delay_s=0.0)
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=lambda r: None, cache=None, specs=[spec()], original=model, sync=sync)
    guard(torch.randn(16, 16))
    assert events.count("sync") >= 4  # the user's call and the candidate's shadow, each fenced twice


def test_device_synchronizer_is_none_on_cpu():
    from perfcallbacks.measure import device_synchronizer

    assert device_synchronizer("cpu") is None and device_synchronizer(None) is None


def test_plain_loop_optimize_inference_returns_the_model_to_use(monkeypatch):
    monkeypatch.setattr(pipeline, "FIXES", (spec(),))
    model = Slow()
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    advisor = Advisor(auto_apply=True, warn=False)
    data = batches(40)
    fast = advisor.optimize_inference(model, data[0], expected_batches=len(data))
    outs = run_job(fast, data)
    advisor.finish_inference()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, run_job(copy.deepcopy(model), data)))
    fix = next(f for f in advisor.report.fixes if f.id == "fake-fast")
    assert fix.status == "applied" and fast.chosen is not model
    assert advisor.report.overhead_s >= fix.cost_s > 0
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)
    assert fast.layer is model.layer  # attributes reach the original model


def test_optimize_inference_without_auto_apply_is_the_model_itself():
    model = Slow(delay_s=0.0)
    advisor = Advisor(warn=False)
    assert advisor.optimize_inference(model, torch.randn(2, 16)) is model
    with pytest.raises(ValueError, match="expected_batches"):
        advisor.optimize_inference(model, torch.randn(2, 16), expected_batches=0)
    with pytest.raises(TypeError, match="model"):
        advisor.optimize_inference("not a model", None)


def test_decision_is_reused_from_the_disk_cache_in_a_new_process(monkeypatch, tmp_path):
    from perfcallbacks.fixes.cache import DecisionCache

    monkeypatch.setattr(pipeline, "FIXES", (spec(),))
    cache = DecisionCache(tmp_path)
    model, data = Slow(), batches(40)
    cold: list = []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=cold.append, cache=cache, original=model)
    run_job(guard, data)
    guard.finish()
    assert cold[0].status == "applied"
    pipeline.clear_memo()  # a new process: only the disk remembers
    model.calls = 0
    warm: list = []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=warm.append, cache=cache, original=model)
    run_job(guard, data)
    guard.finish()
    assert warm[0].status == "applied" and "cache" in warm[0].reason
    assert model.calls == 0 and warm[0].cost_s <= 0.2 * cold[0].cost_s + 0.01


def test_changed_weights_verify_fidelity_again(monkeypatch):
    monkeypatch.setattr(pipeline, "FIXES", (spec(),))
    monkeypatch.setenv("PERFCALLBACKS_CACHE", "off")
    model, data, results = Slow(), batches(40), []
    for _ in range(2):
        guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(),
                             expected_calls=40, record=results.append, cache=None, original=model)
        run_job(guard, data)
        guard.finish()
        with torch.no_grad():
            model.layer.weight.mul_(1.5)  # one "training step"
    assert [r.status for r in results] == ["applied", "applied"]
    assert "verified again" in results[1].reason and results[1].cost_s > 0


def test_corrupt_cache_file_never_fails_the_job(monkeypatch, tmp_path):
    from perfcallbacks.fixes.cache import DecisionCache

    monkeypatch.setattr(pipeline, "FIXES", (spec(),))
    cache = DecisionCache(tmp_path)
    model, data, results = Slow(), batches(40), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=cache, original=model)
    run_job(guard, data)
    guard.finish()
    for path in tmp_path.glob("*.json"):
        path.write_bytes(b"\x00garbage{")
    pipeline.clear_memo()
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=cache, original=model)
    outs = run_job(guard, data)
    guard.finish()
    assert len(outs) == 40 and results[-1].status == "applied" and "reused" not in results[-1].reason


def test_a_candidate_that_raises_later_rolls_back_to_the_original(monkeypatch):
    class Flaky(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.calls = inner, 0

        def forward(self, x):
            self.calls += 1
            if self.calls > 6:
                raise RuntimeError("candidate broke")
            return self.inner(x)

    tol = Tolerance(cosine_mean=0.999, argmax_agreement=None)

    def build(model, batch, profile, params):
        inner = copy.deepcopy(model)
        inner.delay_s = 0.0
        return Candidate("flaky", Flaky(inner), tolerance=tol)

    model, results = Slow(), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, original=model,
                         specs=[FixSpec("flaky", ("predict",), build, plausible_max=1e6, tolerance=tol)])
    outs = run_job(guard, batches(40))
    guard.finish()
    assert len(outs) == 40 and [r.status for r in results] == ["applied", "failed"]


class ScriptedRanks:
    """A :class:`RankGroup` seen from one rank: the siblings' answers are scripted, every exchange recorded."""

    def __init__(self, rank: int, counts: list[int], payloads: list | None = None) -> None:
        self.rank, self.world_size = rank, len(counts)
        self.counts, self.payloads, self.sent = counts, list(payloads or []), []

    def gather(self, obj):
        return [obj if r == self.rank else c for r, c in enumerate(self.counts)]

    def broadcast(self, obj):
        self.sent.append(obj)
        return obj if self.rank == 0 else (self.payloads.pop(0) if self.payloads else {"final": False})


def test_rank_zero_decides_within_the_shortest_ranks_job_and_shares_it():
    model, results = Slow(), []
    ranks = ScriptedRanks(0, [40, 39])
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model, ranks=ranks)
    run_job(guard, batches(40))
    guard.finish()
    [result] = results
    assert result.status == "applied", result.reason
    finals = [p for p in ranks.sent if p["final"]]
    assert len(finals) == 1 and ranks.sent[-1] is finals[0]  # one exchange per call until decided, then none
    assert len(ranks.sent) == result.details["calls_shadowed"]
    assert finals[0]["active"] == {"fix_id": "fake-fast", "params": {"noise": 0.0}, "reason": result.reason}


def test_rank_zero_concludes_when_the_shortest_rank_ends():
    # Rank 1 makes only 1 call: rank zero must share a final decision at its 1st call, with one sample.
    model, results = Slow(), []
    ranks = ScriptedRanks(0, [40, 1])
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model, ranks=ranks,
                         guard_budget=1.0)
    run_job(guard, batches(40))
    guard.finish()
    assert [p["final"] for p in ranks.sent] == [True] and ranks.sent[-1]["active"] is None
    [result] = results
    assert result.status == "skipped" and "not enough calls to time it (1 of 2)" in result.reason
    assert model.calls == 40  # nothing was applied: the user's model answered every call


def test_other_ranks_follow_rank_zeros_decision_without_measuring():
    pipeline.clear_memo()
    model, results = Slow(), []
    decision = {"final": True, "active": {"fix_id": "fake-fast", "params": {"noise": 0.0}, "reason": "2.0x"}}
    ranks = ScriptedRanks(1, [40, 40], payloads=[{"final": False}, {"final": False}, decision])
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model, ranks=ranks)
    data = batches(40)
    outs = run_job(guard, data)
    guard.finish()
    assert model.calls == 3 and len(ranks.sent) == 3  # the user's model until rank zero's decision, then the copy
    [result] = results
    assert result.status == "applied" and "decided on rank 0" in result.reason
    ref = run_job(copy.deepcopy(model), data)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(outs, ref))


def test_a_rank_without_a_job_length_means_no_rank_measures():
    model, results = Slow(), []
    ranks = ScriptedRanks(0, [40, -1])
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model, ranks=ranks)
    run_job(guard, batches(5))
    guard.finish()
    assert model.calls == 5 and ranks.sent == []
    [result] = results
    assert result.status == "skipped" and "does not know its job's length" in result.reason


def test_a_broken_rank_group_never_fails_the_users_calls():
    class Broken(ScriptedRanks):
        def gather(self, obj):
            raise RuntimeError("connection reset by peer")

    model, results = Slow(delay_s=0.0), []
    guard = GuardedCalls(model, "__call__", stage="predict", profile=DeviceProfile.detect(), expected_calls=40,
                         record=results.append, cache=None, specs=[spec()], original=model,
                         ranks=Broken(0, [40, 40]))
    outs = run_job(guard, batches(3))
    guard.finish()
    assert len(outs) == 3 and model.calls == 3
    [result] = results
    assert result.status == "skipped" and "could not agree on a trial window" in result.reason
