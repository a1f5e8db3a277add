"""On a real GPU: pin-memory-off and the batch-scaling probe on CUDA runs.

Whether pin-memory-off *fires* and whether batch-size-small fires or stays
quiet depend on measured times: those are claims of the GPU benchmarks
(sections ``pin-memory`` and ``batch-size-small``). Here: the deterministic
sides, quiet with a pinning loader, and a probe that measures device work.
"""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor
from scenarios import find_hint, mlp, vector_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")]


def _fit(pin: bool):
    pytest.importorskip("lightning")
    from lit_models import LitClassifier, quiet_trainer
    from perfcallbacks import PerfHintCallback

    cb = PerfHintCallback(verbose=False, warmup_steps=10)
    loader = vector_loader(2048, 4096, batch_size=512, pin_memory=pin)
    quiet_trainer(accelerator="cuda", devices=1, max_steps=14, callbacks=[cb]).fit(
        LitClassifier(torch.nn.Linear(4096, 8)), loader)
    return cb.advisor


def test_pin_memory_off_quiet_when_the_loader_pins():
    advisor = _fit(pin=True)
    assert advisor.context.loader.pin_memory is True
    assert find_hint(advisor.report, "pin-memory-off") is None


def test_pin_memory_off_evidence_when_it_fires():
    advisor = _fit(pin=False)
    assert advisor.context.loader.pin_memory is False
    hint = find_hint(advisor.report, "pin-memory-off")
    if hint is None:
        pytest.skip("pin-memory-off did not fire on this run (a timing verdict: see the pin-memory benchmark)")
    assert hint.evidence["pin_memory"] is False
    share = hint.evidence.get("h2d_copy_share", hint.evidence.get("data_wait_share"))
    assert share is not None and 0 < share <= 1


def test_batch_scaling_probe_times_device_work_not_launches(cuda, strict_fp32):
    """A forward of ~1e12 FLOPs cannot take under 1 ms on any GPU: a probe reporting less timed kernel launches."""
    model = mlp(4096, 4, device=cuda).eval()
    x = torch.randn(8192, 4096, device=cuda)
    advisor = Advisor(model, warn=False)
    advisor.probe_inference(model, x)
    flops = 2 * 8192 * 4096 * 4096 * 4
    forward_s = advisor.context.measurements.get("forward_s")
    assert forward_s is not None
    assert forward_s > flops / 1e15, f"probe forward {forward_s * 1e3:.3f} ms for {flops / 1e12:.1f} TFLOP"
    scaling = advisor.context.measurements.get("batch_scaling")
    if scaling:
        latency = {int(k): float(v) for k, v in scaling["latency_s"].items()}
        assert all(t > (flops * n / 8192) / 1e15 for n, t in latency.items()), latency
