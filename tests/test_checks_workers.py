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


# -- the validation loader: re-created at every validation run of the fit ------------------------------
def _val_fit(val_persistent: bool, epochs: int = 4, num_sanity_val_steps: int = 0, **trainer_kwargs):
    import warnings

    from perfcallbacks import PerfHintCallback
    from perfcallbacks.hints import PerfHintWarning

    class WithValidation(type(mlp_module())):
        def validation_step(self, batch, batch_idx):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self(x), y))

    g = torch.Generator().manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(96, 32, generator=g), torch.randint(0, 4, (96,), generator=g)),
                       batch_size=8)  # 12 steps an epoch: the warm-up ends before the first validation
    val = DataLoader(TensorDataset(torch.randn(48, 32, generator=g), torch.randint(0, 4, (48,), generator=g)),
                     batch_size=8, num_workers=1, persistent_workers=val_persistent,
                     worker_init_fn=slow_worker_start, multiprocessing_context="fork")
    cb = PerfHintCallback(warmup_steps=8, verbose=False)
    trainer = pl.Trainer(callbacks=[cb], accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_epochs=epochs,
                         num_sanity_val_steps=num_sanity_val_steps, **trainer_kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PerfHintWarning)
        trainer.fit(WithValidation(), train, val)
    return cb.advisor.report, cb


def _val_hint(report):
    return next((h for h in report.hints if h.id == "workers-restart" and h.evidence.get("loader") == "val"), None)


def test_validation_workers_restarting_every_run_fire_with_measured_startup():
    report, cb = _val_fit(False, num_sanity_val_steps=2)  # the sanity check starts the workers once more
    timing = cb.advisor.context.validation
    assert timing is not None and timing.batches_per_run == 6 and timing.runs_per_epoch == 1.0
    assert timing.runs_total == 4 and len(timing.steady_waits) == 5  # 6 batches timed: 5 gaps
    hint = _val_hint(report)
    assert hint is not None and hint.phase == "inference"
    ev = hint.evidence
    assert STARTUP_S * 0.8 <= ev["startup_s_per_epoch"] <= STARTUP_S * 3  # the planted start-up, once per run
    assert ev["restarts_to_come"] == 3 and ev["validation_runs_total"] == 4 and ev["val_batches_per_run"] == 6
    assert ev["seconds_saved_estimate"] == pytest.approx(3 * ev["startup_s_per_epoch"], rel=1e-3)
    assert "val loader" in hint.fix and "persistent_workers=True" in hint.fix
    assert not any(h.id == "workers-restart" and h.evidence.get("loader") == "train" for h in report.hints)


def test_validation_every_other_epoch_counts_the_runs_to_come():
    report, _ = _val_fit(False, epochs=6, check_val_every_n_epoch=2)
    hint = _val_hint(report)
    assert hint is not None
    assert hint.evidence["validation_runs_per_epoch"] == 0.5 and hint.evidence["restarts_to_come"] == 2
    assert "every 2 epochs" in hint.message


def test_persistent_validation_workers_and_a_last_validation_are_quiet():
    report, _ = _val_fit(True)
    assert _val_hint(report) is None
    assert not loud_new_hints(report, NEW_IDS)
    report, _ = _val_fit(False, epochs=1)  # the fit's only validation: no restart left to save
    assert _val_hint(report) is None


def _val_ctx(runs_total=4, runs_per_epoch=1.0, first=(0.5,), steady=0.001, persistent=False, steps=8) -> RunContext:
    from perfcallbacks.context import ValidationLoaderTiming

    ctx = _ctx(first=())
    ctx.phase = "inference"
    ctx.step_times = [0.01] * steps
    ctx.validation = ValidationLoaderTiming(
        loader=LoaderInfo(num_workers=2, persistent_workers=persistent), first_waits=list(first),
        steady_waits=[steady] * 4, batch_times=[0.004] * 4, batches_per_run=10, runs_per_epoch=runs_per_epoch,
        runs_total=runs_total)
    return ctx


def test_validation_restart_thresholds():
    hint = workers_restart(_val_ctx())
    ev = hint.evidence
    assert ev["loader"] == "val" and ev["startup_s_per_epoch"] == pytest.approx(0.499)
    # train epoch (20 x 11 ms) + one validation run (10 x 5 ms + the start-up)
    assert ev["epoch_s_estimate"] == pytest.approx(20 * 0.011 + 10 * 0.005 + 0.499)
    assert ev["restarts_to_come"] == 3 and ev["seconds_saved_estimate"] == pytest.approx(3 * 0.499)
    half = workers_restart(_val_ctx(runs_total=2, runs_per_epoch=0.5)).evidence
    assert half["startup_s_per_epoch"] == pytest.approx(0.499 / 2) and half["restarts_to_come"] == 1
    assert workers_restart(_val_ctx(runs_total=1)) is None  # the fit's only validation was this one
    assert workers_restart(_val_ctx(runs_total=None)) is None  # unknown schedule: no guess
    assert workers_restart(_val_ctx(first=(0.03,))) is None  # start-up is noise
    assert workers_restart(_val_ctx(persistent=True)) is None
    assert workers_restart(_val_ctx(steps=2)) is None  # no training epoch timed to weigh it against
    ctx = _val_ctx()
    ctx.phase = "warmup"  # the warm-up judges the training loader only
    assert workers_restart(ctx) is None
