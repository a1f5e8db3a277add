"""fp8-eligible: large Linear layers on an FP8-capable target (H100 preset), judged from a CPU."""

from __future__ import annotations

import pytest
from torch import nn

from perfcallbacks import Advisor, DeviceProfile
from perfcallbacks.context import BatchStats


def _advisor(model: nn.Module, target="h100", tokens=(8, 512), suppress=(), framework="lightning") -> Advisor:
    adv = Advisor(model, target=target, warn=False, suppress=suppress, framework=framework,
                  local=DeviceProfile.preset("cpu-avx2"))
    adv.context.batches = [BatchStats(batch_size=tokens[0], seq_len=tokens[1])] * 4
    adv.run_checks("warmup")
    return adv


def _mlp(width=4096, hidden=8192):
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width), nn.Linear(width, 10))


def test_fires_on_h100_with_large_linears_and_lists_layers():
    hint = _advisor(_mlp()).report.hint("fp8-eligible")
    assert hint is not None and hint.evidence["eligible_layers"] == 2
    assert hint.evidence["eligible_flop_share"] > 0.99 and hint.evidence["tokens_per_step"] == 4096
    assert [l["name"] for l in hint.evidence["layers"]] == ["0", "2"]
    assert 1.3 < hint.impact <= 1.39
    assert "convert_to_float8_training" in hint.fix and "configure_model" in hint.fix


def test_quiet_for_small_layers_few_tokens_non_fp8_devices_and_suppressed():
    assert _advisor(_mlp(512, 1024)).report.hint("fp8-eligible") is None  # below break-even
    assert _advisor(_mlp(), tokens=(8, 16)).report.hint("fp8-eligible") is None  # 128 rows per GEMM
    assert _advisor(_mlp(), target="a100").report.hint("fp8-eligible") is None  # no FP8 on Ampere
    assert _advisor(_mlp(), target=None).report.hint("fp8-eligible") is None  # this CPU
    assert "fp8-eligible" not in _advisor(_mlp(), suppress=["fp8-eligible"]).report.hint_ids


@pytest.mark.parametrize("framework,snippet", [("hf", "TrainingArguments(bf16=True)"),
                                               ("torch", "torch.compile(model)")])
def test_fix_is_framework_specific(framework, snippet):
    assert snippet in _advisor(_mlp(), framework=framework).report.hint("fp8-eligible").fix
