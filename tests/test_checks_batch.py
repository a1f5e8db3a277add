"""batch-size-small: measured throughput scaling, latency budget respected."""

from __future__ import annotations

import pytest
import torch

from perfcallbacks import Advisor
from perfcallbacks.checks.batch import typical_batch_size
from perfcallbacks.context import BatchStats
from perfcallbacks.probes import Deadline, ProbeSkipped, probe_batch_scaling


def _run(latency, *, budget=None, suppress=(), local=None):
    adv = Advisor(warn=False, suppress=suppress, latency_budget_ms=budget, local=local)
    adv.context.measurements["batch_scaling"] = {"batch_size": 8, "latency_s": latency}
    adv.run_checks("inference")
    return adv.hints


FLAT = {"8": 0.010, "16": 0.011, "32": 0.013}


def test_batch_size_small_fires_when_throughput_grows(cpu_profile):
    hint = _run(FLAT, local=cpu_profile)["batch-size-small"]
    assert hint.evidence["suggested_batch_size"] == 32
    assert hint.evidence["throughput_gain"] == pytest.approx(4 * 0.010 / 0.013, abs=1e-3)
    assert hint.impact == pytest.approx(3.08, abs=0.01)
    assert "batch_size=32" in hint.fix


def test_batch_size_small_respects_latency_budget(cpu_profile):
    hint = _run(FLAT, budget=12, local=cpu_profile)["batch-size-small"]
    assert hint.evidence["suggested_batch_size"] == 16 and hint.evidence["latency_budget_ms"] == 12
    assert "batch-size-small" not in _run(FLAT, budget=10.5, local=cpu_profile)  # only batch 8 fits


def test_batch_size_small_quiet_when_linear_or_suppressed(cpu_profile):
    linear = {"8": 0.010, "16": 0.0195, "32": 0.039}
    assert "batch-size-small" not in _run(linear, local=cpu_profile)
    assert "batch-size-small" not in _run(FLAT, suppress=["batch-size-small"], local=cpu_profile)


def test_typical_batch_size_ignores_short_last_batch():
    batches = [BatchStats(batch_size=b) for b in (64, 64, 64, 10)]
    assert typical_batch_size(batches) == 64
    assert typical_batch_size(batches, loader_batch_size=48) == 48
    assert typical_batch_size([]) is None


def test_probe_batch_scaling_measures_real_forwards(cpu_profile):
    adv = Advisor(warn=False, local=cpu_profile)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    try:
        out = probe_batch_scaling(adv.context, model, torch.randn(4, 64), forward_s=1e-4, deadline=Deadline(60.0))
    except ProbeSkipped as why:  # a loaded machine timed every larger batch faster than the base one
        pytest.skip(f"timings not plausible on this busy machine: {why}")
    assert out["batch_scaling"]["batch_size"] == 4
    assert set(out["batch_scaling"]["latency_s"]) | set(out["batch_scaling"].get("dropped", [])) == {"4", "8", "16"}
    assert all(t > 0 for t in out["batch_scaling"]["latency_s"].values())


def test_probe_batch_scaling_stops_at_the_latency_budget(cpu_profile):
    adv = Advisor(warn=False, local=cpu_profile, latency_budget_ms=1)
    out = probe_batch_scaling(adv.context, torch.nn.Linear(8, 8), torch.randn(4, 8), forward_s=0.002)
    assert out == {}
