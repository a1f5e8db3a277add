"""The Advisor engine: argument validation, containment of failing checks, once-only warnings."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor, DeviceProfile, PerfHintWarning
from perfcallbacks.checks import registry
from perfcallbacks.checks.registry import Check


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 8))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"warmup_steps": -1}, ValueError, "warmup_steps must be a non-negative int, got -1"),
        ({"warmup_steps": 2.5}, TypeError, "warmup_steps must be a non-negative int"),
        ({"warmup_steps": True}, TypeError, "warmup_steps"),
        ({"target": "a1000"}, ValueError, "target: unknown device preset"),
        ({"target": 3}, TypeError, "target must be None, a preset name"),
        ({"suppress": ["gpu-unsued"]}, ValueError, "Did you mean 'gpu-unused'"),
        ({"latency_budget_ms": 0}, ValueError, "latency_budget_ms must be a positive, finite number"),
        ({"latency_budget_ms": -5}, ValueError, "latency_budget_ms"),
        ({"latency_budget_ms": "fast"}, TypeError, "latency_budget_ms"),
        ({"auto_apply": "yes"}, TypeError, "auto_apply must be True or False"),
    ],
)
def test_bad_arguments_fail_fast(kwargs, error, match):
    with pytest.raises(error, match=match):
        Advisor(**kwargs)


def test_report_path_directory_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="report_path must be a file path, got the directory"):
        Advisor(report_path=tmp_path)


def test_model_type_is_checked():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        Advisor(model="bert")


def test_target_fires_tensor_cores_idle_and_warns_once():
    advisor = Advisor(_mlp(), target="a100")
    with pytest.warns(PerfHintWarning, match=r"\[tensor-cores-idle\]") as caught:
        advisor.run_checks("setup")
        advisor.run_checks("setup")
    assert len([w for w in caught if "tensor-cores-idle" in str(w.message)]) == 1
    hint = advisor.report.hint("tensor-cores-idle")
    assert hint.evidence["matmul_precision"] == "highest" and hint.phase == "setup"


def test_suppress_silences_a_hint():
    advisor = Advisor(_mlp(), target="a100", suppress=["tensor-cores-idle"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfHintWarning)
        report = advisor.analyze(phase="setup")
    assert "tensor-cores-idle" not in report.hint_ids


def test_failing_check_is_contained_and_counted(monkeypatch):
    def broken(ctx):
        raise RuntimeError("boom")

    monkeypatch.setattr(registry, "CHECKS", [Check("gpu-unused", ("setup",), broken), *registry.CHECKS])
    advisor = Advisor(_mlp(), target="a100", warn=False)
    report = advisor.analyze(phase="setup")
    assert "tensor-cores-idle" in report.hint_ids  # the others still ran
    assert report.check_failures and "boom" in report.check_failures[0]["error"]


def test_plain_loop_with_step_context_manager():
    model = _mlp()
    advisor = Advisor(model, warmup_steps=5, warn=False, local=DeviceProfile.preset("cpu-avx2"))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(8):
        x, y = torch.randn(64, 64), torch.randint(0, 8, (64,))
        with advisor.step(x):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
    assert advisor.warmup_done
    assert len(advisor.context.step_times) == 4  # first step excluded
    assert len(advisor.context.batches) == 5
    assert advisor.report.overhead_s > 0


def test_hooks_return_at_once_after_warmup():
    advisor = Advisor(_mlp(), warmup_steps=1, warn=False)
    with advisor.step(torch.randn(4, 64)):
        pass
    overhead = advisor.overhead_s
    for _ in range(100):
        advisor.step_begin(torch.randn(4, 64))
        advisor.step_end()
    assert advisor.overhead_s == overhead
    assert len(advisor.context.batches) == 1


def test_state_dict_restores_warned_hints():
    first = Advisor(_mlp(), target="a100")
    with pytest.warns(PerfHintWarning):
        first.run_checks("setup")
    second = Advisor(_mlp(), target="a100")
    second.load_state_dict(first.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error", PerfHintWarning)
        second.run_checks("setup")  # already warned in the "previous run"
    assert "tensor-cores-idle" in second.report.hint_ids


def test_write_report_only_on_rank_zero(tmp_path):
    advisor = Advisor(_mlp(), warn=False, report_path=tmp_path / "r.json")
    advisor.is_rank_zero = False
    assert advisor.write_report() is None and not (tmp_path / "r.json").exists()
    advisor.is_rank_zero = True
    assert advisor.write_report() == tmp_path / "r.json"


def test_probe_deadline_is_one_budget_with_the_fixes_measuring():
    from perfcallbacks.probes import PROBE_BUDGET_S

    advisor = Advisor(warn=False)  # guard_budget 10%
    assert advisor.probe_deadline(10.0) == pytest.approx(1.0)
    assert advisor.probe_deadline(10.0, spent_s=0.6) == pytest.approx(0.4)  # the guard spent most of it
    assert advisor.probe_deadline(10.0, spent_s=5.0) == 0.05  # never negative: the floor
    assert advisor.probe_deadline(1000.0) == PROBE_BUDGET_S  # capped
