"""On a real GPU: the detected profile against its preset, and the device hints (gpu-unused, gpus-idle)."""

from __future__ import annotations

import pytest
import torch

from claims import compare_profiles
from perfcallbacks import Advisor, DeviceProfile
from perfcallbacks.presets import match_preset
from scenarios import find_hint, mlp, vector_loader

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::perfcallbacks.hints.PerfHintWarning")]


def test_detect_matches_the_real_device():
    profile = DeviceProfile.detect()
    props = torch.cuda.get_device_properties(0)
    assert profile.kind == "cuda" and profile.source == "detected"
    assert profile.name == props.name
    assert profile.count == torch.cuda.device_count()
    assert profile.compute_capability == (props.major, props.minor)
    assert profile.memory_gb == pytest.approx(props.total_memory / 2**30, abs=0.1)
    # Native bf16 (Ampere and later) is what "fast" means; torch agrees it is supported there.
    assert profile.is_fast("bf16") == (props.major >= 8)
    if profile.is_fast("bf16"):
        assert torch.cuda.is_bf16_supported()


def test_detect_agrees_with_its_preset():
    profile = DeviceProfile.detect()
    preset = match_preset(profile.name)
    if preset is None:
        pytest.fail(f"no preset matches {profile.name!r}: add one to perfcallbacks/presets.py")
    bad = [c.to_dict() for c in compare_profiles(profile, preset) if c.verdict != "pass"]
    assert not bad, bad


def test_fp8_level_matches_what_the_hardware_runs():
    profile = DeviceProfile.detect()
    if not (hasattr(torch, "float8_e4m3fn") and hasattr(torch, "_scaled_mm")):
        pytest.skip(f"torch {torch.__version__} has no float8 / _scaled_mm")
    a = torch.randn(64, 64, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(64, 64, device="cuda").t().contiguous().to(torch.float8_e4m3fn).t()
    one = torch.ones((), device="cuda")
    try:
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        torch.cuda.synchronize()
        runs = True
    except Exception:
        runs = False
    assert runs == profile.is_fast("fp8"), (profile.name, profile.compute_capability, runs)


def test_gpu_unused_fires_for_a_model_left_on_the_cpu():
    report = Advisor(mlp(64, 2), warn=False).analyze("setup")
    hint = find_hint(report, "gpu-unused")
    assert hint is not None
    assert hint.evidence["model_device"] == "cpu"
    assert hint.evidence["accelerators"] == torch.cuda.device_count()
    assert hint.evidence["accelerator_name"] == torch.cuda.get_device_name(0)


def test_gpu_unused_fires_through_lightning_on_accelerator_cpu():
    pytest.importorskip("lightning")
    from lit_models import LitClassifier, quiet_trainer
    from perfcallbacks import PerfHintCallback

    cb = PerfHintCallback(verbose=False, warmup_steps=3)
    quiet_trainer(accelerator="cpu", devices=1, max_steps=4, callbacks=[cb]).fit(
        LitClassifier(mlp(32, 2, out=4)), vector_loader(64, 32, batch_size=16, classes=4))
    assert find_hint(cb.advisor.report, "gpu-unused") is not None


def test_gpu_unused_quiet_for_a_model_on_the_gpu(cuda):
    report = Advisor(mlp(64, 2, device=cuda), warn=False).analyze("setup")
    assert find_hint(report, "gpu-unused") is None


def test_gpus_idle_matches_the_visible_count(cuda):
    report = Advisor(mlp(64, 2, device=cuda), warn=False).analyze("setup")
    hint = find_hint(report, "gpus-idle")
    count = torch.cuda.device_count()
    if count == 1:
        assert hint is None
        pytest.skip("one GPU visible: gpus-idle can only be checked quiet here")
    assert hint is not None and hint.evidence == {"devices_used": 1, "devices_visible": count}
