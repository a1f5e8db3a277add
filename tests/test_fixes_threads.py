from __future__ import annotations

import pytest
import torch

from perfcallbacks.fixes import restore_threads, training_thread_cap, tune_threads
from perfcallbacks.report import FixResult
from tests._tiny import mlp


def test_training_thread_cap():
    assert training_thread_cap(16, 4) == 4
    assert training_thread_cap(2, 4) == 1
    with pytest.raises(ValueError, match="physical_cores"):
        training_thread_cap(0)
    with pytest.raises(ValueError, match="local_processes"):
        training_thread_cap(4, 0)


def test_tune_threads_measures_every_candidate_and_never_exceeds_cores():
    before = torch.get_num_threads()
    result = tune_threads(mlp(), torch.randn(32, 128), physical_cores=2, repeats=2)
    assert result.id == "threads" and result.status in ("applied", "rejected")
    assert set(result.details["timings_s"]) >= {"1", "2"}
    assert 1 <= result.details["chosen"] <= 2
    if result.status == "applied":
        assert torch.get_num_threads() == result.details["chosen"]
    restore_threads(result)
    assert torch.get_num_threads() == before


def test_oversubscribed_threads_are_capped_per_process():
    torch.set_num_threads(2)
    result = tune_threads(mlp(), torch.randn(8, 128), physical_cores=2, local_processes=2, repeats=2)
    assert result.status == "applied" and result.details["cap"] == 1
    assert torch.get_num_threads() == 1 and "exceed the cap" in result.reason
    restore_threads(result)
    assert torch.get_num_threads() == 2


def test_apply_false_leaves_threads_alone():
    torch.set_num_threads(2)
    result = tune_threads(mlp(), torch.randn(8, 128), physical_cores=2, local_processes=2, apply=False, repeats=2)
    assert result.status == "skipped" and torch.get_num_threads() == 2


def test_measurement_failure_is_a_failed_result():
    result = tune_threads(torch.nn.Linear(4, 4), torch.randn(2, 5), physical_cores=2, repeats=1)
    assert result.status == "failed" and "measurement failed" in result.reason
    with pytest.raises(TypeError, match="result"):
        restore_threads("threads")  # type: ignore[arg-type]
    restore_threads(FixResult("threads", "rejected", "x"))
