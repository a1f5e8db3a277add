"""Behaviour that differs between the versions users install (transformers 4.x / 5.x, torch releases).

The matrix itself (`make test-matrix`) runs the whole fast suite on each stack; these tests pin the
version-dependent decisions, with stand-ins for the other version where one process cannot have both.
"""

from __future__ import annotations

import types

import pytest

transformers = pytest.importorskip("transformers")

from perfcallbacks.adapters.hf import group_by_length_fix, run_layout, sampling_strategy  # noqa: E402

_LAUNCHER_ENV = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE")


def _args(**kw):
    base = {"parallel_mode": types.SimpleNamespace(value="not_parallel"), "world_size": 1, "n_gpu": 0,
            "fsdp": "", "deepspeed": None}
    return types.SimpleNamespace(**{**base, **kw})


@pytest.fixture
def no_launcher(monkeypatch):
    for name in _LAUNCHER_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_on_transformers_4x_is_not_distributed(no_launcher):
    # transformers 4.x: a plain `python train.py` has local_rank=0 (5.x: -1); neither is a launcher.
    for local_rank in (0, -1):
        layout = run_layout(_args(local_rank=local_rank))
        assert layout["distributed"] is False and layout["strategy"] is None
        assert layout["world_size"] == 1 and layout["local_world_size"] == 1


def test_torchrun_with_one_process_is_distributed(no_launcher):
    no_launcher.setenv("LOCAL_RANK", "0")
    no_launcher.setenv("RANK", "0")
    no_launcher.setenv("WORLD_SIZE", "1")
    layout = run_layout(_args(local_rank=0, parallel_mode=types.SimpleNamespace(value="distributed")))
    assert layout["distributed"] is True and layout["strategy"] == "ddp"


def test_multi_process_run_is_distributed(no_launcher):
    no_launcher.setenv("LOCAL_RANK", "1")
    no_launcher.setenv("LOCAL_WORLD_SIZE", "2")
    layout = run_layout(_args(local_rank=1, world_size=2, parallel_mode=types.SimpleNamespace(value="distributed")))
    assert layout["distributed"] is True and layout["local_world_size"] == 2


def test_real_training_arguments_of_this_transformers_single_process(no_launcher, tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert run_layout(args)["distributed"] is False, (transformers.__version__, args.local_rank)


def test_length_grouping_spelled_for_the_installed_transformers(tmp_path):
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    if "train_sampling_strategy" in fields:  # 5.x
        args = TrainingArguments(output_dir=str(tmp_path), train_sampling_strategy="group_by_length", report_to=[])
        assert group_by_length_fix(args) == 'TrainingArguments(train_sampling_strategy="group_by_length")'
    else:  # 4.x
        args = TrainingArguments(output_dir=str(tmp_path), group_by_length=True, report_to=[])
        assert group_by_length_fix(args) == "TrainingArguments(group_by_length=True)"
    assert sampling_strategy(args) == "group_by_length"
    assert group_by_length_fix() == group_by_length_fix(args)  # no args: asks the installed class


def test_4x_style_arguments_read_without_train_sampling_strategy():
    old = types.SimpleNamespace(group_by_length=True)
    assert sampling_strategy(old) == "group_by_length"
    assert group_by_length_fix(old) == "TrainingArguments(group_by_length=True)"
    assert sampling_strategy(types.SimpleNamespace(group_by_length=False)) == "random"
