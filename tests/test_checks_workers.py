"""workers-restart: loader workers started again every epoch, measured on a real Lightning fit."""

from __future__ import annotations

import time

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

from _scenario import lightning_fit, loud_new_hints, mlp_module  # noqa: E402
from test_checks_debug import NEW_IDS  # noqa: E402

from perfcallbacks import DeviceProfile  # noqa: E402
from perfcallbacks.checks.data import workers_restart  # noqa: E402
from perfcallbacks.context import LoaderInfo, RunContext  # noqa: E402

STARTUP_S = 0.4


def slow_worker_start(worker_id: int) -> None:
    time.sleep(STARTUP_S)  # what opening a dataset / importing a tokenizer in each worker costs


def _loader(persistent: bool) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(48, 32, generator=g), torch.randint(0, 4, (48,), generator=g))
    return DataLoader(data, batch_size=16, num_workers=1, persistent_workers=persistent,
                      worker_init_fn=slow_worker_start, multiprocessing_context="fork")


def test_workers_restarting_every_epoch_fire_with_measured_startup():
    report, cb, _ = lightning_fit(mlp_module(), _loader(False), epochs=4, warmup=8)
    ctx = cb.advisor.context
    assert ctx.epochs == 4 and ctx.batches_per_epoch == 3
    assert len(ctx.epoch_first_waits) >= 2  # warm-up spanned epochs: each start was measured
    hint = report.hint("workers-restart")
    assert hint is not None
    ev = hint.evidence
    assert ev["startup_s_per_epoch"] >= STARTUP_S * 0.8  # the planted start-up, seen at each epoch start
    assert ev["restarts_to_come"] == 3 and ev["num_workers"] == 1
    assert hint.impact > 1.0 and "persistent_workers=True" in hint.fix


def test_persistent_workers_are_quiet_and_suppress_works():
    report, cb, _ = lightning_fit(mlp_module(), _loader(True), epochs=4, warmup=8)
    assert report.hint("workers-restart") is None
    assert not loud_new_hints(report, NEW_IDS)
    report, _, _ = lightning_fit(mlp_module(), _loader(False), epochs=3, warmup=6, suppress=["workers-restart"])
    assert "workers-restart" not in report.hint_ids


def _ctx(epochs=5, first=(0.5,), steady=0.001, step=0.01, batches=20, workers=2, persistent=False) -> RunContext:
    ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"), framework="hf", epochs=epochs, batches_per_epoch=batches)
    ctx.phase = "warmup"
    ctx.loader = LoaderInfo(batch_size=8, num_workers=workers, persistent_workers=persistent)
    ctx.epoch_first_waits, ctx.data_wait_times, ctx.step_times = list(first), [steady] * 8, [step] * 8
    return ctx


def test_workers_restart_thresholds():
    hint = workers_restart(_ctx())
    assert hint.evidence["startup_s_per_epoch"] == pytest.approx(0.499)
    assert hint.evidence["epoch_s_estimate"] == pytest.approx(20 * 0.011 + 0.499)
    assert hint.fix == "TrainingArguments(dataloader_persistent_workers=True)"
    assert workers_restart(_ctx(epochs=1)) is None  # one epoch: the workers start once anyway
    assert workers_restart(_ctx(epochs=None)) is None  # unknown length: no guess
    assert workers_restart(_ctx(first=(0.02,))) is None  # start-up is noise
    assert workers_restart(_ctx(batches=100000)) is None  # a tiny share of a long epoch
    assert workers_restart(_ctx(persistent=True)) is None
    assert workers_restart(_ctx(workers=0)) is None
