"""Process facts (perfcallbacks.facts) and framework facts (perfcallbacks.adapters.facts): cheap, never raising,
no probe hook on a clean run."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from perfcallbacks import DeviceProfile
from perfcallbacks.adapters.facts import hf_run_facts, lightning_epochs, observe_gradients
from perfcallbacks.context import RunContext
from perfcallbacks.facts import capture_process_facts, compiled_modules, conv_flop_share, probes_wanted


def _ctx(phase="setup", **kw) -> RunContext:
    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), **kw)
    ctx.phase = phase
    return ctx


def test_clean_mlp_gets_no_probe_hook_and_default_facts():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    ctx = _ctx()
    capture_process_facts(ctx, model)
    assert not probes_wanted(ctx) and ctx.probe_input is None
    assert not model._forward_pre_hooks
    assert ctx.debug.anomaly is False and ctx.debug.deterministic is False and ctx.debug.profiler is None
    assert ctx.layout is None and ctx.attention is None and ctx.compile is None


def test_deterministic_and_cudnn_flags_are_read_and_left_as_found():
    det, warn_only, bench = (torch.are_deterministic_algorithms_enabled(),
                             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = True
        ctx = _ctx()
        capture_process_facts(ctx)
        assert ctx.debug.deterministic and ctx.debug.cudnn_benchmark
    finally:
        torch.use_deterministic_algorithms(det, warn_only=warn_only)
        torch.backends.cudnn.benchmark = bench


def test_conv_model_gets_a_one_shot_capture_hook_removed_at_warmup():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    ctx = _ctx()
    capture_process_facts(ctx, model)
    assert probes_wanted(ctx) == ["channels_last"] and len(model._forward_pre_hooks) == 1
    for _ in range(3):
        model(torch.randn(2, 3, 12, 12))
    assert ctx.layout.input_shapes == [(2, 3, 12, 12)] * 3 and ctx.probe_input.calls == 3
    ctx.phase = "warmup"
    capture_process_facts(ctx, model)
    assert not model._forward_pre_hooks and ctx.probe_input is None
    assert ctx.layout.measured["conv2d_flop_share"] == 1.0


def test_conv_flop_share_counts_spatial_sizes():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 8 * 8, 10))
    share = conv_flop_share(model, torch.randn(2, 3, 8, 8))
    conv, linear = 16 * 3 * 9 * 2 * 64, 16 * 64 * 10 * 2
    assert share == pytest.approx(conv / (conv + linear))


def test_compiled_modules_found_without_compiling():
    inner = nn.Linear(4, 4)
    outer = nn.Sequential(nn.ReLU(), inner)
    assert compiled_modules(outer) == []
    inner.compile(backend="eager")  # lazy: compiles on first call only
    assert compiled_modules(outer) == ["1"]


def test_a_broken_model_never_raises():
    class Weird(nn.Module):
        def named_modules(self, *a, **k):
            raise RuntimeError("boom")

    ctx = _ctx()
    capture_process_facts(ctx, Weird())  # every part contained
    capture_process_facts(ctx, "not a module")


def test_observe_gradients_counts_missing_per_step():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].weight.requires_grad_(False)
    ctx = _ctx()
    model(torch.randn(2, 4)).sum().backward()
    observe_gradients(model, ctx)
    assert ctx.gradients.trainable == 3 and ctx.gradients.steps == 1 and ctx.gradients.all_used


def test_lightning_epochs_from_max_steps_or_max_epochs():
    assert lightning_epochs(SimpleNamespace(max_epochs=None, max_steps=30, accumulate_grad_batches=1), 10) == 3
    assert lightning_epochs(SimpleNamespace(max_epochs=2, max_steps=-1, accumulate_grad_batches=1), 10) == 2
    assert lightning_epochs(SimpleNamespace(max_epochs=-1, max_steps=-1, accumulate_grad_batches=1), 10) is None
    assert lightning_epochs(SimpleNamespace(max_epochs=5, max_steps=10, accumulate_grad_batches=2), 10) == 2


def test_hf_run_facts_full_determinism_compile_and_epochs():
    ctx = _ctx(framework="hf")
    args = SimpleNamespace(full_determinism=True, torch_compile=True, num_train_epochs=3.0, max_steps=-1)
    hf_run_facts(args, nn.Linear(2, 2), ctx, train_dataloader=[1, 2, 3, 4])
    assert "deterministic" in ctx.debug.sources and "launch_blocking" in ctx.debug.sources
    assert ctx.compile.compiled and ctx.epochs == 3 and ctx.batches_per_epoch == 4
    assert ctx.ddp is None  # single process
    args.gradient_accumulation_steps = 3  # the step hooks then time optimizer steps of 3 batches each
    hf_run_facts(args, nn.Linear(2, 2), ctx, train_dataloader=[1, 2, 3, 4])
    assert ctx.batches_per_epoch == 2


def test_probe_skipped_with_its_numbers_when_over_budget():
    from perfcallbacks.facts import run_warmup_probes

    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
    ctx = _ctx(batches_per_epoch=10, epochs=1)
    capture_process_facts(ctx, model)
    model(torch.randn(2, 3, 12, 12))
    ctx.phase, ctx.step_times = "warmup", [0.5] * 5  # 3 runs x 2 variants x 0.5 s > max(1 s, 5% of 5 s)
    run_warmup_probes(ctx, model)
    assert "over its budget" in ctx.layout.measured["skipped"] and "speedup" not in ctx.layout.measured
