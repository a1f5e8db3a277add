"""The framework-free helpers both adapters share (perfcallbacks.adapters.common)."""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor, Report
from perfcallbacks.adapters import common
from perfcallbacks.hints import REGISTRY
from perfcallbacks.report import FixResult


def test_default_report_path():
    assert common.default_report_path("/x/r.json", "/logs") == Path("/x/r.json")
    assert common.default_report_path(None, "/logs") == Path("/logs/perf_hints.json")
    assert common.default_report_path(None, None) is None
    assert common.default_report_path(None, "") is None


def test_hint_count_metrics_counts_by_severity():
    make = REGISTRY["tensor-cores-idle"].make
    hints = [make("setup", "m", "f"), make("setup", "m", "f", severity="critical"),
             REGISTRY["vocab-unaligned"].make("setup", "m", "f")]
    report = Report(hints=hints, fixes=[FixResult("threads", "applied", "r"), FixResult("autocast", "rejected", "r")])
    metrics = common.hint_count_metrics(report)
    assert metrics == {"perf_hints/count": 3.0, "perf_hints/info": 1.0, "perf_hints/warning": 1.0,
                       "perf_hints/critical": 1.0, "perf_hints/fixes_applied": 1.0}


@pytest.mark.parametrize(("name", "expected"), [
    ("ddp", True), ("ddp_spawn", True), ("FSDPStrategy", True), ("deepspeed_stage_2", True),
    ("MULTI_CPU", False), ("single_device", False), (None, False), ("auto", False)])
def test_is_distributed_name(name, expected):
    assert common.is_distributed_name(name) is expected


def test_find_pad_token_id():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, pad_token_id=7)
    wrapper = nn.Module()
    wrapper.model = BertForSequenceClassification(cfg)
    assert common.find_pad_token_id(wrapper) == 7
    assert common.find_pad_token_id(nn.Linear(2, 2)) is None
    assert common.find_pad_token_id(None) is None


def test_example_batch_keeps_first_per_stage():
    keep = common.ExampleBatch()
    assert keep.offer("predict", "a") and not keep.offer("predict", "b") and keep.offer("test", "c")
    assert not keep.offer("validate", None)
    assert (keep.get("predict"), keep.get("test"), keep.get("validate")) == ("a", "c", None)
    keep.clear("predict")
    assert keep.get("predict") is None and keep.get("test") == "c"


class Scaled(nn.Module):
    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = copy.deepcopy(linear)

    def forward(self, x):
        return self.linear(x) * 2


def test_module_swap_nested_and_fp32_state_dict():
    model = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    replacement = copy.deepcopy(model)
    replacement[1][1] = Scaled(model[1][1])
    x = torch.randn(3, 4)
    ref = model(x)
    swap = common.ModuleSwap(model, replacement)
    assert swap.names == ["1.1"] and swap.active
    torch.testing.assert_close(model(x), ref * 2)
    state = swap.fp32_state_dict(model.state_dict())
    assert set(state) == {"0.weight", "0.bias", "1.1.weight", "1.1.bias"}
    swap.restore()
    assert type(model[1][1]) is nn.Linear and not swap.active
    torch.testing.assert_close(model(x), ref)


def test_module_swap_without_differences_is_a_no_op():
    model = nn.Linear(2, 2)
    swap = common.ModuleSwap(model, copy.deepcopy(model))
    assert not swap.active and swap.fp32_state_dict({"weight": 1}) == {"weight": 1}


def test_method_patch_runs_inside_the_context_and_restores():
    entered = []

    @contextlib.contextmanager
    def ctx():
        entered.append(torch.is_grad_enabled())
        with torch.no_grad():
            yield

    model = nn.Linear(2, 2)
    patch = common.MethodPatch(model, ("forward", "missing_method"), ctx)
    out = model(torch.randn(1, 2))
    assert entered == [True] and not out.requires_grad and list(patch.patched) == ["forward"]
    patch.restore()
    assert model(torch.randn(1, 2)).requires_grad and "forward" not in vars(model)


def test_safe_hook_swallows_logs_and_times(caplog):
    class Hooked:
        _hook_s = 0.0

        @common.safe_hook
        def broken(self):
            raise RuntimeError("internal bug")

        @common.safe_hook
        def works(self, value):
            return value + 1

    obj = Hooked()
    with caplog.at_level(logging.DEBUG, logger="perfcallbacks"):
        assert obj.broken() is None
    assert "internal bug" in caplog.text and obj._hook_s > 0
    assert obj.works(1) == 2


def test_run_inference_fixes_records_each_outcome(monkeypatch, cpu_profile):
    import perfcallbacks.fixes as fixes

    model = nn.Sequential(nn.Linear(8, 8))
    quantized = copy.deepcopy(model)
    monkeypatch.setattr(fixes, "tune_threads", lambda m, b, **k: FixResult("threads", "rejected", "no gain"))
    monkeypatch.setattr(fixes, "quantize_guarded",
                        lambda m, b, **k: (FixResult("dynamic-quantization", "applied", "ok", speedup=1.4), quantized))
    advisor = Advisor(local=cpu_profile, warn=False)
    results, amp, int8 = common.run_inference_fixes(advisor, model, torch.randn(2, 8), stage="predict",
                                                    physical_cores=2)
    assert [r.id for r in results] == ["threads", "dynamic-quantization"]
    assert amp is None and int8 is quantized
    assert {f.id: f.status for f in advisor.fixes} == {"threads": "rejected", "dynamic-quantization": "applied"}
    results, _, int8 = common.run_inference_fixes(advisor, model, torch.randn(2, 8), stage="test", physical_cores=2)
    assert [r.id for r in results] == ["threads"] and int8 is None  # int8 only before predict


def test_run_inference_fixes_never_raises(monkeypatch, cpu_profile):
    import perfcallbacks.fixes as fixes

    def boom(*a, **k):
        raise RuntimeError("bug in a fix")

    monkeypatch.setattr(fixes, "tune_threads", boom)
    advisor = Advisor(local=cpu_profile, warn=False)
    assert common.run_inference_fixes(advisor, nn.Linear(2, 2), torch.randn(1, 2), stage="predict",
                                      physical_cores=2) == ([], None, None)


def test_format_fixes_lines():
    lines = list(common.format_fixes([FixResult("dynamic-quantization", "applied", "int8 fbgemm", speedup=1.37,
                                                fidelity={"cosine_min": 0.9991, "argmax_agreement": 1.0})]))
    assert lines == ["perfcallbacks fix [dynamic-quantization] applied: speedup 1.37x, cosine 0.9991, "
                     "argmax agreement 1.000 - int8 fbgemm"]
