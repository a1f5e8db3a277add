"""The framework-free helpers both adapters share (perfcallbacks.adapters.common)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
from torch import nn

from perfcallbacks.adapters import common
from perfcallbacks.report import FixResult


def test_default_report_path():
    assert common.default_report_path("/x/r.json", "/logs") == Path("/x/r.json")
    assert common.default_report_path(None, "/logs") == Path("/logs/perf_hints.json")
    assert common.default_report_path(None, None) is None
    assert common.default_report_path(None, "") is None


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


def test_format_fixes_lines():
    lines = list(common.format_fixes([FixResult("dynamic-quantization", "applied", "int8 fbgemm", speedup=1.37,
                                                fidelity={"cosine_min": 0.9991, "argmax_agreement": 1.0})]))
    assert lines == ["perfcallbacks fix [dynamic-quantization] applied: 1.37x, min cosine 0.9991, "
                     "agreement 1.000 - int8 fbgemm"]
    skipped, = common.format_fixes([FixResult("autocast", "skipped", "emulated here")])
    assert skipped == "perfcallbacks fix [autocast] skipped: emulated here"
