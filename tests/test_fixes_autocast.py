from __future__ import annotations

import warnings

import pytest
import torch

from perfcallbacks import DeviceProfile
from perfcallbacks.fixes import Tolerance, guarded_autocast
from tests._tiny import snapshot, tiny_bert, tiny_bert_batch


def _fast_bf16_cpu() -> bool:
    isa = set(DeviceProfile.detect().isa)
    return bool(isa & {"avx512_bf16", "amx", "amx_bf16"})


def test_bf16_autocast_is_measured_and_rejected_on_this_cpu(cpu_profile):
    model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.GELU(), torch.nn.Linear(256, 256))
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result, ctx = guarded_autocast(model, torch.randn(64, 256), profile=cpu_profile, repeats=3)
    assert result.id == "autocast" and result.details["dtype"] == "bfloat16"
    assert result.speedup is not None and result.fidelity["cosine_mean"] > 0.9
    assert snapshot(model) == before
    if _fast_bf16_cpu():
        pytest.skip("this CPU has native bf16: emulation is not what is measured here")
    assert result.status == "rejected" and ctx is None and result.speedup < 1.05


def test_impossible_tolerance_rejects(cpu_profile):
    model = tiny_bert()
    result, ctx = guarded_autocast(model, tiny_bert_batch(), profile=cpu_profile, margin=0.0,
                                   tolerance=Tolerance(max_abs_error=0.0), repeats=2)
    assert result.status == "rejected" and ctx is None


def test_argument_errors(cpu_profile):
    with pytest.raises(ValueError, match="margin"):
        guarded_autocast(torch.nn.Linear(2, 2), torch.zeros(1, 2), profile=cpu_profile, margin=-1)
    with pytest.raises(TypeError, match="profile"):
        guarded_autocast(torch.nn.Linear(2, 2), torch.zeros(1, 2), profile="cpu")
    with pytest.raises(TypeError, match="tolerance"):
        guarded_autocast(torch.nn.Linear(2, 2), torch.zeros(1, 2), profile=cpu_profile, tolerance=0.9)


def test_failure_is_reported_not_raised(cpu_profile):
    result, ctx = guarded_autocast(torch.nn.Linear(4, 4), torch.zeros(2, 5), profile=cpu_profile)
    assert result.status == "failed" and ctx is None
