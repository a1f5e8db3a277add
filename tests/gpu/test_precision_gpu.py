"""On a real GPU: tensor-cores-idle on fp32 runs, and the autocast fix recorded by auto_apply on predict.

Whether the guard *keeps* autocast depends on timing, so that verdict (and its
speedup against a synchronised measurement) is a claim of the GPU benchmarks
(``benchmarks/gpu/run_gpu.py``, section ``autocast``); here: the record is
there, well formed, and the user's module is left as found.
"""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor
from scenarios import find_fix, find_hint, mlp, vector_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")]


def _fit(precision: str, **kw):
    pytest.importorskip("lightning")
    from lit_models import LitClassifier, quiet_trainer
    from perfcallbacks import PerfHintCallback

    cb = PerfHintCallback(verbose=False, warmup_steps=5, **kw)
    quiet_trainer(accelerator="cuda", devices=1, max_steps=8, precision=precision, callbacks=[cb]).fit(
        LitClassifier(mlp(256, 3, out=8)), vector_loader(256, 256, batch_size=32))
    return cb


def test_tensor_cores_idle_fires_on_an_fp32_cuda_model(cuda, strict_fp32):
    hint = find_hint(Advisor(mlp(512, 3, device=cuda), warn=False).analyze("setup"), "tensor-cores-idle")
    assert hint is not None
    assert hint.evidence["matmul_precision"] == "highest"
    assert hint.evidence["device"] == torch.cuda.get_device_name(0)
    assert hint.impact is not None and hint.impact > 1


def test_tensor_cores_idle_fires_on_a_real_fp32_lightning_fit(strict_fp32):
    hint = find_hint(_fit("32-true").advisor.report, "tensor-cores-idle")
    assert hint is not None and hint.evidence["precision"] in ("32-true", "32")
    assert "bf16-mixed" in hint.fix or "16-mixed" in hint.fix


def test_tensor_cores_idle_quiet_with_bf16_mixed(strict_fp32):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    assert find_hint(_fit("bf16-mixed").advisor.report, "tensor-cores-idle") is None


def test_tensor_cores_idle_quiet_with_tf32_matmuls(cuda):
    from perfcallbacks import DeviceProfile

    if not DeviceProfile.detect().is_fast("tf32"):
        pytest.skip("no TF32 on this GPU")
    torch.set_float32_matmul_precision("high")
    assert find_hint(Advisor(mlp(512, 3, device=cuda), warn=False).analyze("setup"), "tensor-cores-idle") is None


def test_autocast_fix_is_measured_and_recorded_on_predict(strict_fp32):
    pytest.importorskip("lightning")
    from lit_models import LitClassifier, quiet_trainer
    from perfcallbacks import PerfHintCallback

    lit = LitClassifier(mlp(1024, 4, out=16))
    cb = PerfHintCallback(auto_apply=True, verbose=False)
    forward_before = lit.forward
    out = quiet_trainer(accelerator="cuda", devices=1, callbacks=[cb]).predict(
        lit, vector_loader(64 * 32, 1024, batch_size=64, classes=16))
    fix = find_fix(cb.advisor.report, "autocast")
    # Measured means decided on timings: "skipped" or "failed" is what this test exists to catch.
    assert fix is not None and fix.status in ("applied", "rejected"), fix and fix.reason
    assert fix.speedup is not None and fix.speedup > 0
    assert fix.details["dtype"] in ("bfloat16", "float16")
    assert fix.details["device_type"] == "cuda"
    assert 0.9 < fix.fidelity["cosine_mean"] <= 1.0 + 1e-6
    if fix.status == "applied":  # once decided, the remaining batches really ran in the low-precision dtype
        assert out[-1].dtype in (torch.bfloat16, torch.float16)
    assert lit.forward == forward_before  # the stage's patch is gone
    assert all(p.dtype == torch.float32 for p in lit.parameters())
