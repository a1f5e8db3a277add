"""The int8 building blocks: every backend leaves the user's Linear as it was; a removed torch API disables a
backend with a reason instead of crashing."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from perfcallbacks.fixes.int8 import (
    BackendUnavailable,
    Int8WeightLinear,
    available_backends,
    backend_status,
    int8_linear,
    is_quantized,
)
from tests._tiny import mlp, snapshot



@pytest.fixture(autouse=True)
def _fresh_backend_status(monkeypatch):
    """backend_status() is looked up once per process; these tests change what torch offers."""
    import perfcallbacks.fixes.int8 as int8_module

    monkeypatch.setattr(int8_module, "_STATUS", {})

def _state(linear: torch.nn.Linear) -> tuple[dict[str, bytes], set[str], type, type]:
    """Bytes, instance attributes and tensor types: what a quantizer working in place would change."""
    return snapshot(linear), set(vars(linear)), type(linear.weight), type(linear)


def test_status_names_every_backend_and_agrees_with_available():
    status = backend_status()
    assert set(status) == {"fbgemm", "onednn", "torch.ao", "torchao"}
    assert available_backends() == [name for name, problem in status.items() if problem is None]
    for name, problem in status.items():
        assert problem is None or (isinstance(problem, str) and problem), name


@pytest.mark.parametrize("backend", ["fbgemm", "onednn", "torch.ao", "torchao"])
def test_backend_leaves_the_users_linear_untouched(backend):
    if backend not in available_backends():
        pytest.skip(f"{backend}: {backend_status()[backend]}")
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 32).eval()
    before = _state(lin)
    x = torch.randn(8, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no torch.ao / torchao deprecation may reach the user
        q = int8_linear(lin, backend)
        again = int8_linear(lin, backend)  # twice: the first call must not have turned lin into int8
    assert _state(lin) == before and not hasattr(lin, "qconfig")
    assert q is not lin and q.weight is not lin.weight
    with torch.inference_mode():
        ref = lin(x)
        for module in (q, again):
            assert torch.nn.functional.cosine_similarity(module(x), ref).min() > 0.98


def test_torch_ao_writes_no_attribute_on_the_users_linear():
    if "torch.ao" not in available_backends():
        pytest.skip(f"torch.ao: {backend_status()['torch.ao']}")
    lin = torch.nn.Linear(16, 8)
    attrs = set(vars(lin))
    int8_linear(lin, "torch.ao")
    assert set(vars(lin)) == attrs


@pytest.mark.skipif("torchao" not in available_backends(), reason="torchao not installed (make test-matrix, leg c)")
def test_torchao_on_a_model_quantizes_copies_only():
    model = mlp(width=128).eval()
    before = snapshot(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    qs = {n: int8_linear(m, "torchao") for n, m in layers.items()}
    assert snapshot(model) == before and is_quantized(model) is None  # the model under measurement stays fp32
    assert all(type(m.weight) is torch.nn.Parameter for m in layers.values())
    assert all(is_quantized(torch.nn.Sequential(q)) for q in qs.values())


def test_removed_torch_api_disables_backends_with_a_reason(monkeypatch):
    monkeypatch.delattr(torch, "quantize_per_channel")
    status = backend_status()
    for name in ("fbgemm", "onednn", "torch.ao"):
        assert "torch.quantize_per_channel" in status[name] and "removed" in status[name]
    assert not {"fbgemm", "onednn", "torch.ao"} & set(available_backends())
    with pytest.raises(BackendUnavailable, match="quantize_per_channel"):
        int8_linear(torch.nn.Linear(4, 4), "fbgemm")


def test_removed_torch_api_does_not_crash_the_guarded_fix(monkeypatch):
    from perfcallbacks.fixes import quantize_guarded

    monkeypatch.delattr(torch, "quantize_per_channel")
    model = mlp()
    result, out = quantize_guarded(model, torch.randn(16, 128), repeats=1)
    has_torchao = backend_status()["torchao"] is None
    assert result.status == ("rejected" if has_torchao else "skipped") or (has_torchao and result.applied)
    assert result.reason and (out is model) == (result.status != "applied")


def test_torchao_that_does_not_import_is_unavailable_with_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)  # what a missing or broken install looks like to import
    monkeypatch.delitem(sys.modules, "torchao.quantization", raising=False)
    problem = backend_status()["torchao"]
    assert problem is not None and "torchao" in problem
    assert "torchao" not in available_backends()
    with pytest.raises(BackendUnavailable, match="torchao"):
        int8_linear(torch.nn.Linear(4, 4), "torchao")


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend"):
        int8_linear(torch.nn.Linear(4, 4), "tensorrt")
    with pytest.raises(ValueError, match="backend"):
        int8_linear(torch.nn.Linear(4, 4), "auto")


def test_weight_only_linear_is_plain_int8_and_faithful():
    torch.manual_seed(0)
    lin = torch.nn.Linear(96, 48)
    q = Int8WeightLinear.from_linear(lin)
    assert q.qweight.dtype == torch.int8 and q.qweight.shape == (48, 96) and q.scale.shape == (48, 1)
    x = torch.randn(5, 96)
    with torch.inference_mode():
        assert torch.nn.functional.cosine_similarity(q(x), lin(x)).min() > 0.999
        assert q(x.to(torch.bfloat16)).dtype == torch.bfloat16
    assert is_quantized(torch.nn.Sequential(q)) is not None
    nobias = Int8WeightLinear.from_linear(torch.nn.Linear(8, 4, bias=False))
    assert nobias.bias is None and nobias(torch.ones(2, 8)).shape == (2, 4)

