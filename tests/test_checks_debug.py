"""debug-mode-on: anomaly detection, launch blocking, sync debug, profilers, determinism left on while training."""

from __future__ import annotations

import os

import pytest
import torch

from perfcallbacks import Advisor, DeviceProfile
from perfcallbacks.checks.debug import debug_mode_on, step_time_saved
from perfcallbacks.context import RunContext

pl = pytest.importorskip("lightning.pytorch")

from _scenario import lightning_fit, loud_new_hints, mlp_loader, mlp_module  # noqa: E402

NEW_IDS = {"debug-mode-on", "ddp-find-unused", "workers-restart", "compile-recompiles", "compile-graph-breaks",
           "attention-eager", "channels-last-off", "cudnn-benchmark-off", "fp8-eligible"}



@pytest.fixture
def probe_budget(monkeypatch):
    """A generous probe budget: these tests check what the probe measures, not whether this (shared, loaded)
    machine's short fits leave room for it (the budget itself: test_facts.py)."""
    import perfcallbacks.facts

    monkeypatch.setattr(perfcallbacks.facts, "PROBE_MIN_BUDGET_S", 60.0)

def _ctx(**kw) -> RunContext:
    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2), **kw)
    ctx.phase = "warmup"
    return ctx


def test_lightning_detect_anomaly_fires_with_measured_cost(probe_budget):
    assert not torch.is_anomaly_enabled()
    report, cb, warned = lightning_fit(mlp_module(depth=24), mlp_loader(), steps=8, warmup=5,
                                       trainer_kwargs={"detect_anomaly": True})
    ctx = cb.advisor.context
    assert ctx.debug.anomaly and ctx.debug.sources == {"anomaly": "Trainer(detect_anomaly=True)"}
    measured = ctx.debug.measured
    assert measured["modes"] == ["anomaly"] and measured["with_s"] > 0 and measured["without_s"] > 0
    assert ctx.probe_input is None and not torch.is_anomaly_enabled()  # input dropped; Lightning restored it
    # The check's rule (step_time_saved, its own unit test below): the saved forward+backward, at most the step.
    step, with_s, without_s = ctx.median_step_s, measured["with_s"], measured["without_s"]
    share = step_time_saved(step, with_s, without_s) / step
    hint = report.hint("debug-mode-on")
    if share < 0.05:  # the check's own threshold (a load spike on this shared machine can inflate the step)
        assert hint is None
        return
    assert hint is not None and hint.phase == "warmup"
    ev = hint.evidence
    assert "not_measured" not in ev, ev
    assert ev["modes"] == ["anomaly"] and ev["sources"] == {"anomaly": "Trainer(detect_anomaly=True)"}
    assert ev["measured_modes"] == ["anomaly"]
    assert ev["probe_with_ms"] == pytest.approx(measured["with_s"] * 1e3, abs=1e-3)
    assert ev["cost_share_of_step"] == pytest.approx(share, abs=1e-4) and hint.impact > 1.0
    assert hint.severity == ("warning" if share >= 0.10 else "info")
    assert "detect_anomaly=False" in hint.fix
    assert any("[debug-mode-on]" in str(w.message) for w in warned)


def test_clean_lightning_fit_is_quiet():
    report, _, _ = lightning_fit(mlp_module(), mlp_loader(), steps=8, warmup=5)
    assert report.hint("debug-mode-on") is None
    assert not loud_new_hints(report, NEW_IDS)


def test_suppress_silences_debug_mode():
    report, cb, warned = lightning_fit(mlp_module(), mlp_loader(), steps=8, warmup=5, suppress=["debug-mode-on"],
                                       trainer_kwargs={"detect_anomaly": True})
    assert "debug-mode-on" not in report.hint_ids
    assert not any("[debug-mode-on]" in str(w.message) for w in warned)


def test_plain_loop_global_anomaly_is_measured_and_state_restored(probe_budget):
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(32, 32), nn.Tanh())], nn.Linear(32, 4))
    x, y = torch.randn(16, 32), torch.randint(0, 4, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    advisor = Advisor(model, warmup_steps=4, warn=False)
    with torch.autograd.set_detect_anomaly(True):
        advisor.run_checks("setup")
        for _ in range(5):
            with advisor.step((x, y)):
                nn.functional.cross_entropy(model(x), y).backward()
                grads = [p.grad.clone() for p in model.parameters()]
                opt.step()
                opt.zero_grad()
        assert torch.is_anomaly_enabled()  # the probe restored the user's setting
    measured = advisor.context.debug.measured
    assert set(measured) >= {"with_s", "without_s", "modes"} and measured["modes"] == ["anomaly"]
    assert grads and all(p.grad is None for p in model.parameters())  # probe used autograd.grad, not .grad
    assert all(m.training for m in model.modules())


def test_launch_blocking_fires_on_cuda_target_unmeasured():
    ctx = _ctx(target=DeviceProfile.preset("h100"), framework="hf")
    ctx.debug.launch_blocking = True
    ctx.debug.sources["launch_blocking"] = "TrainingArguments(full_determinism=True) sets CUDA_LAUNCH_BLOCKING=1"
    hint = debug_mode_on(ctx)
    assert hint is not None and hint.evidence["modes"] == ["launch_blocking"] and hint.severity == "warning"
    assert "full_determinism=False" in hint.fix and "CUDA_LAUNCH_BLOCKING" in hint.fix
    assert hint.impact is None and "cannot be measured" in hint.message


def test_launch_blocking_ignored_on_a_cpu_run():
    ctx = _ctx()
    ctx.debug.launch_blocking = True
    assert debug_mode_on(ctx) is None


def test_sync_debug_mode_and_profiler_fire_with_their_values():
    ctx = _ctx(target=DeviceProfile.preset("a100"), framework="lightning")
    ctx.debug.sync_debug_mode = 1
    ctx.debug.profiler = "AdvancedProfiler"
    ctx.debug.sources["profiler"] = "Trainer(profiler=AdvancedProfiler(...))"
    hint = debug_mode_on(ctx)
    assert hint.evidence["modes"] == ["sync_debug_mode", "profiler"]
    assert hint.evidence["sync_debug_mode"] == 1 and hint.evidence["profiler"] == "AdvancedProfiler"
    assert "set_sync_debug_mode(0)" in hint.fix and "profiler=None" in hint.fix


def test_deterministic_measured_cheap_stays_quiet():
    ctx = _ctx()
    ctx.step_times = [0.010] * 6
    ctx.debug.deterministic = True
    ctx.debug.measured = {"modes": ["deterministic"], "with_s": 0.0081, "without_s": 0.0080}
    assert debug_mode_on(ctx) is None  # measured: costs 0.1 ms of a 10 ms step
    ctx.debug.measured = {"modes": ["deterministic"], "with_s": 0.0060, "without_s": 0.0020}
    hint = debug_mode_on(ctx)
    assert hint.evidence["extra_ms_per_step"] == pytest.approx(4.0)
    assert hint.evidence["estimated_step_slowdown"] == pytest.approx(10 / 6, rel=1e-3)
    assert "use_deterministic_algorithms(False)" in hint.fix


def test_a_probe_slower_than_the_step_counts_as_the_step():
    # A plain loop's forward is shallower than the probe's, where anomaly detection costs more: 6 ms with the
    # mode against a 4 ms step. The time without it (1 ms) does not depend on the depth and is kept as measured:
    # 4 ms / 1 ms, not the probe's own 6x ratio.
    ctx = _ctx()
    ctx.step_times = [0.004] * 6
    ctx.debug.anomaly = True
    ctx.debug.measured = {"modes": ["anomaly"], "with_s": 0.006, "without_s": 0.001}
    ev = debug_mode_on(ctx).evidence
    assert ev["estimated_step_slowdown"] == pytest.approx(4.0) and ev["cost_share_of_step"] == pytest.approx(0.75)
    # The step ran faster than the probe without the mode (the machine was busier during the probe): only the
    # probe's own ratio is comparable, 6 / 4.5 ms.
    ctx.debug.measured = {"modes": ["anomaly"], "with_s": 0.006, "without_s": 0.0045}
    assert debug_mode_on(ctx).evidence["estimated_step_slowdown"] == pytest.approx(6 / 4.5, rel=1e-3)


def test_active_torch_profiler_is_seen():
    from perfcallbacks.facts import active_profiler

    assert active_profiler() is None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]):
        assert active_profiler() == "torch.profiler"
    assert active_profiler() is None


def test_env_launch_blocking_read_from_environment():
    from perfcallbacks.facts import capture_process_facts

    ctx = _ctx()
    os.environ["CUDA_LAUNCH_BLOCKING"] = "1"  # restored by conftest
    capture_process_facts(ctx)
    assert ctx.debug.launch_blocking


@pytest.mark.parametrize("offset", [+25, -20])
def test_debug_probe_times_the_forward_at_the_users_stack_depth(offset):
    # Anomaly detection's cost grows with the stack depth of the forward: the probe times the forward where
    # the user's runs when it can add frames (Lightning), and from two depths when it is deeper (a plain loop).
    from perfcallbacks.facts import _StackPlan, stack_depth
    from perfcallbacks.measure import compare_times

    model, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    depths: list[int] = []
    model.register_forward_pre_hook(lambda m, a: depths.append(stack_depth()))
    plan = _StackPlan(model, user_depth=0)  # learns where a probe's forward lands (no frames added)
    compare_times({"with": plan.variant(lambda: model(x))}, repeats=1, warmup=1)
    natural = plan.natural
    user = natural + offset
    depths.clear()
    plan = _StackPlan(model, user_depth=user)
    compare_times({"with": plan.variant(lambda: model(x)), "with_deeper": plan.variant(lambda: model(x), deeper=True)},
                  repeats=2, warmup=1)
    assert plan.gap == offset
    if offset > 0:
        assert depths[1:] == [user] * 2  # after the learning call: exactly the user's depth; 'deeper' not run
    else:
        assert sorted(set(depths[1:])) == [natural, natural - offset]  # the probe's depth and once more deeper
        # linear per-frame cost: 5 ms at the probe's depth, 7 ms 20 frames deeper -> 3 ms at the user's depth
        assert plan.at_user_depth(0.005, 0.007, 0.001) == pytest.approx(0.003)
        assert plan.at_user_depth(0.005, 0.011, 0.001) == 0.001  # never below the mode-off time
