from __future__ import annotations

import warnings

import pytest
import torch

from perfcallbacks.fixes import QuantTolerance, quantize_guarded
from perfcallbacks.fixes.int8 import Int8DynamicLinear, available_backends
from tests._tiny import mlp, snapshot, tiny_bert, tiny_bert_batch


def _wide_mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(512, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 512),
                               torch.nn.ReLU(), torch.nn.Linear(512, 16))


def test_guarded_quantization_runs_for_real_without_leaking_warnings():
    model = _wide_mlp().train()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch.ao DeprecationWarning may reach the user
        # Random weights give near-tied logits: argmax agreement is judged at 0.95 here.
        result, qmodel = quantize_guarded(model, torch.randn(256, 512), margin=0.0, repeats=3,
                                          tolerance=QuantTolerance(argmax_agreement=0.95))
        if result.status == "applied":
            qmodel(torch.randn(4, 512))
    assert result.id == "dynamic-quantization"
    assert result.status in ("applied", "rejected"), result.reason
    assert snapshot(model) == before and model.training  # the user's model is untouched
    assert result.details["candidates"] and result.speedup is not None
    assert result.fidelity["cosine_mean"] >= 0.99 and result.fidelity["argmax_agreement"] >= 0.95
    if result.status == "applied":
        assert qmodel is not model and qmodel.training == model.training
        assert any(isinstance(m, Int8DynamicLinear) for m in qmodel.modules())
    else:
        assert qmodel is model


def test_impossible_tolerance_is_rejected_and_model_unchanged():
    model = tiny_bert()
    before = snapshot(model)
    tol = QuantTolerance(max_abs_error=0.0, max_fp32_fraction=0.0)
    result, qmodel = quantize_guarded(model, tiny_bert_batch(), tolerance=tol, repeats=1)
    assert result.status == "rejected" and "tolerance" in result.reason
    assert qmodel is model and snapshot(model) == before


def test_sensitive_layers_are_kept_fp32_until_within_tolerance():
    model = tiny_bert()
    tol = QuantTolerance(max_abs_error=1e-6, max_fp32_fraction=1.0)
    result, _ = quantize_guarded(model, tiny_bert_batch(), tolerance=tol, margin=0.0, repeats=1)
    kept = result.details["candidates"][0]["layers_fp32"]
    assert kept > 0  # a stricter bound than int8 alone can meet: layers went back to fp32
    assert result.details["most_sensitive"]


def test_slower_fix_is_rejected():
    model = mlp(width=16, classes=4)  # far too small for int8 to pay: needs 10x to pass
    before = snapshot(model)
    result, qmodel = quantize_guarded(model, torch.randn(4, 16), margin=9.0, repeats=2)
    assert result.status == "rejected" and "needs 10.00x" in result.reason
    assert qmodel is model and snapshot(model) == before


def test_task_guard_rejects_a_worse_metric():
    model = _wide_mlp()
    calls = []

    def validate(m):  # a "loss" that is worse for anything but the original model
        calls.append(m)
        return 1.0 if m is model else 2.0

    result, qmodel = quantize_guarded(model, torch.randn(64, 512), margin=0.0, validate_fn=validate, repeats=1)
    if result.details.get("task_metric_int8") is None:
        pytest.skip(f"int8 not faster here, task guard not reached: {result.reason}")
    assert result.status == "rejected" and "task metric" in result.reason and qmodel is model


def test_skips_compiled_quantized_and_linear_free_models():
    result, m = quantize_guarded(torch.nn.Sequential(torch.nn.ReLU()), torch.zeros(2, 2))
    assert result.status == "skipped" and "no nn.Linear" in result.reason
    with warnings.catch_warnings():  # torch.compile's own TorchScript deprecation noise (user code, not ours)
        warnings.simplefilter("ignore", DeprecationWarning)
        compiled = torch.compile(mlp())
    result, m = quantize_guarded(compiled, torch.zeros(2, 128))
    assert result.status == "skipped" and "compile" in result.reason and m is compiled
    once, qmodel = quantize_guarded(_wide_mlp(), torch.randn(64, 512), margin=0.0, repeats=1)
    if once.status == "applied":
        again, _ = quantize_guarded(qmodel, torch.randn(64, 512))
        assert again.status == "skipped" and "already quantized" in again.reason
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        ao = quantize_dynamic(mlp(), {torch.nn.Linear}, dtype=torch.qint8)
    result, _ = quantize_guarded(ao, torch.zeros(2, 128))
    assert result.status == "skipped" and "already quantized" in result.reason


def test_torchao_backend_is_graceful_when_missing():
    result, m = quantize_guarded(mlp(), torch.zeros(2, 128), backend="torchao", repeats=1)
    if "torchao" in available_backends():
        assert result.status in ("applied", "rejected")
    else:
        assert result.status == "skipped" and "pip install torchao" in result.reason


def test_argument_errors():
    with pytest.raises(ValueError, match="backend"):
        quantize_guarded(mlp(), torch.zeros(2, 128), backend="tensorrt")
    with pytest.raises(TypeError, match="tolerance"):
        quantize_guarded(mlp(), torch.zeros(2, 128), tolerance=0.99)
    with pytest.raises(ValueError, match="margin"):
        quantize_guarded(mlp(), torch.zeros(2, 128), margin=-0.1)
    with pytest.raises(ValueError, match="max_fp32_fraction"):
        QuantTolerance(max_fp32_fraction=2)


def test_measurement_failure_is_failed_not_raised():
    result, m = quantize_guarded(mlp(), torch.zeros(2, 7))
    assert result.status == "failed" and "measurement failed" in result.reason
