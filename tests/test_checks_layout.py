"""channels-last-off and cudnn-benchmark-off on a real small ResNet-style Lightning fit (the CNN example's model)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

pl = pytest.importorskip("lightning.pytorch")

from _scenario import lightning_fit, loud_new_hints  # noqa: E402
from test_checks_debug import NEW_IDS  # noqa: E402

from perfcallbacks import Advisor, DeviceProfile  # noqa: E402
from perfcallbacks.checks.device import cudnn_benchmark_off, fixed_shapes  # noqa: E402
from perfcallbacks.checks.layout import channels_last_off  # noqa: E402
from perfcallbacks.context import LayoutFacts, RunContext  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples" / "lightning"))
from image_classification import ImageClassifier, StripeImages  # noqa: E402



@pytest.fixture
def probe_budget(monkeypatch):
    """A generous probe budget: these tests check what the probe measures, not whether this (shared, loaded)
    machine's short fits leave room for it (the budget itself: test_facts.py)."""
    import perfcallbacks.facts

    monkeypatch.setattr(perfcallbacks.facts, "PROBE_MIN_BUDGET_S", 60.0)

def _loader(n=96, size=16, batch=16):
    return DataLoader(StripeImages(n, size), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))


def test_cnn_fit_measures_channels_last_and_reports_what_it_measured(probe_budget):
    report, cb, _ = lightning_fit(ImageClassifier(width=16), _loader(), steps=6, warmup=4)
    layout = cb.advisor.context.layout
    assert layout is not None and layout.conv2d_layers == 9
    m = layout.measured
    assert {"contiguous_s", "channels_last_s", "speedup", "conv2d_flop_share"} <= set(m)
    assert m["conv2d_flop_share"] > 0.9  # FLOPs at the real spatial sizes: the head's Linear is tiny
    assert layout.input_shapes[0] == (16, 3, 16, 16) and layout.inputs_channels_last is False
    hint = report.hint("channels-last-off")
    if m["speedup"] >= 1.05:  # the check's own threshold: it fires exactly when the probe measured a gain
        assert hint is not None and hint.evidence["measured_speedup"] == pytest.approx(m["speedup"], abs=1e-3)
        assert hint.evidence["contiguous_step_ms"] == pytest.approx(m["contiguous_s"] * 1e3, abs=1e-3)
        assert "channels_last" in hint.fix and "configure_model" in hint.fix
    else:
        assert hint is None
    # The probe worked on a copy: the user's model is still contiguous, and in train mode.
    model = cb.advisor.context.model
    assert all(p.is_contiguous() for p in model.parameters()) and model.training


def test_channels_last_model_is_quiet():
    report, cb, _ = lightning_fit(ImageClassifier(width=16, channels_last=True), _loader(), steps=6, warmup=4)
    assert cb.advisor.context.layout.weights_channels_last
    assert report.hint("channels-last-off") is None
    assert not loud_new_hints(report, NEW_IDS)


def _ctx(speedup=None, share=0.95, target=None) -> RunContext:
    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), framework="lightning",
                     target=DeviceProfile.preset(target) if target else None)
    ctx.phase = "warmup"
    ctx.layout = LayoutFacts(conv2d_share=share, conv2d_layers=9, input_shapes=[(32, 3, 32, 32)] * 5,
                             inputs_channels_last=False)
    if speedup is not None:
        ctx.layout.measured = {"speedup": speedup, "contiguous_s": 0.02 * speedup, "channels_last_s": 0.02}
    return ctx


def test_channels_last_off_thresholds():
    assert channels_last_off(_ctx(speedup=1.01)) is None  # measured: no gain
    assert channels_last_off(_ctx(speedup=1.5, share=0.3)) is None  # not conv-heavy
    assert channels_last_off(_ctx(speedup=None)) is None  # CPU, unmeasured: no guess
    info = channels_last_off(_ctx(speedup=1.1))
    assert info.severity == "info" and info.impact == pytest.approx(1.1)
    warn = channels_last_off(_ctx(speedup=1.4))
    assert warn.severity == "warning" and warn.evidence["measured_speedup"] == pytest.approx(1.4)
    planned = channels_last_off(_ctx(speedup=1.4, target="a100"))  # a CPU measurement says nothing about an A100
    assert planned.impact is None and "not measured on the target" in planned.message


def test_suppress_silences_channels_last_off():
    adv = Advisor(warn=False, suppress=["channels-last-off"], local=DeviceProfile.preset("cpu-avx2"))
    adv.context.layout = _ctx(speedup=1.4).layout
    adv.run_checks("warmup")
    assert "channels-last-off" not in adv.report.hint_ids


def test_cudnn_benchmark_off_planned_for_a100_on_a_real_fit():
    assert torch.backends.cudnn.benchmark is False
    report, _, _ = lightning_fit(ImageClassifier(width=16), _loader(), steps=6, warmup=4, target="a100")
    hint = report.hint("cudnn-benchmark-off")
    assert hint is not None and hint.evidence["input_shape"] == [16, 3, 16, 16]
    assert hint.evidence["distinct_shapes"] == 1 and hint.evidence["shapes_observed"] >= 3
    assert hint.fix == "Trainer(benchmark=True)"


def test_cudnn_benchmark_on_or_cpu_run_is_quiet():
    previous = torch.backends.cudnn.benchmark
    try:
        report, _, _ = lightning_fit(ImageClassifier(width=16), _loader(), steps=6, warmup=4, target="a100",
                                     trainer_kwargs={"benchmark": True})
        assert report.hint("cudnn-benchmark-off") is None
    finally:
        torch.backends.cudnn.benchmark = previous
    assert cudnn_benchmark_off(_ctx()) is None  # judged on this CPU: no cuDNN


def test_fixed_shapes_allows_a_smaller_last_batch_only():
    assert fixed_shapes([(32, 3, 8, 8)] * 4 + [(7, 3, 8, 8)])
    assert not fixed_shapes([(32, 3, 8, 8), (32, 3, 9, 9), (32, 3, 8, 8)])
    assert not fixed_shapes([(32, 3, 8, 8)] * 2)  # too few seen
    ctx = _ctx(target="h100")
    ctx.layout.input_shapes = [(32, 3, 8, 8), (32, 3, 12, 12), (32, 3, 16, 16)]
    assert cudnn_benchmark_off(ctx) is None  # varying shapes: benchmark would search per shape
