"""The validation side of workers-restart: the fit's validation schedule and the watch's own arithmetic."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader, TensorDataset

from perfcallbacks.adapters.validation_watch import (
    ValidationWatch,
    first_loader,
    hf_validation_schedule,
    lightning_validation_schedule,
)
from perfcallbacks.context import LoaderInfo


def _trainer(every=1, step=10, batches=10):
    return SimpleNamespace(check_val_every_n_epoch=every, val_check_batch=step, num_training_batches=batches)


def test_lightning_schedule():
    assert lightning_validation_schedule(_trainer(), epochs=5) == (1.0, 5)
    assert lightning_validation_schedule(_trainer(every=2), epochs=5) == (0.5, 2)  # after epochs 2 and 4
    assert lightning_validation_schedule(_trainer(step=5), epochs=3) == (2.0, 6)  # val_check_interval=0.5
    assert lightning_validation_schedule(_trainer(every=None, step=25), epochs=5) == (0.4, 2)  # across epochs
    assert lightning_validation_schedule(_trainer(), epochs=None) == (1.0, None)
    assert lightning_validation_schedule(_trainer(batches=math.inf), epochs=5) == (None, None)  # no length


def test_hf_schedule():
    state = SimpleNamespace(max_steps=100, num_train_epochs=4)
    assert hf_validation_schedule(SimpleNamespace(eval_strategy="epoch"), state, 25) == (1.0, 4)
    assert hf_validation_schedule(SimpleNamespace(eval_strategy="steps", eval_steps=10), state, 25) == (2.5, 10)
    assert hf_validation_schedule(SimpleNamespace(eval_strategy="steps", eval_steps=0.25), state, 25) == (1.0, 4)
    assert hf_validation_schedule(SimpleNamespace(eval_strategy="steps", eval_steps=None, logging_steps=50),
                                  state, 25) == (0.5, 2)
    assert hf_validation_schedule(SimpleNamespace(eval_strategy="no"), state, 25) == (None, None)
    old_name = SimpleNamespace(evaluation_strategy=SimpleNamespace(value="epoch"))  # older 4.x, an enum
    assert hf_validation_schedule(old_name, state, 25) == (1.0, 4)


def test_first_loader_of_what_frameworks_hold():
    loader = DataLoader(TensorDataset(torch.zeros(4, 2)), batch_size=2)
    assert first_loader(loader) is loader
    assert first_loader([None, loader]) is loader
    assert first_loader({"a": loader}) is loader
    assert first_loader(SimpleNamespace(iterables=[loader])) is loader  # a CombinedLoader
    assert first_loader(object()) is None and first_loader(None) is None


def test_watch_without_a_training_step_measures_nothing():
    watch = ValidationWatch()
    watch.begin(now=1.0)  # validation before any training step
    assert not watch.measuring and not watch.timing_batches and not watch.waiting
    watch.batch_start(now=1.5)
    watch.batch_end(now=1.6)
    assert watch.timing(LoaderInfo(num_workers=1), batches_per_run=2, runs_per_epoch=1.0, runs_total=3) is None


def test_watch_times_at_most_its_batch_budget():
    from perfcallbacks.adapters.validation_watch import VAL_BATCHES_TIMED

    watch = ValidationWatch()
    watch.train_step_ended(now=0.0)
    watch.begin(now=0.0)
    watch.own_work_done(now=0.2)
    now = 1.0
    for _ in range(VAL_BATCHES_TIMED + 5):
        watch.batch_start(now=now)
        watch.batch_end(now=now + 0.01)
        now += 0.02
    timing = watch.timing(LoaderInfo(num_workers=1), batches_per_run=40, runs_per_epoch=1.0, runs_total=3)
    assert timing.first_waits == [0.8]  # 1.0 s after the last step, less our own 0.2 s
    assert len(timing.batch_times) == VAL_BATCHES_TIMED - 1 and len(timing.steady_waits) == VAL_BATCHES_TIMED - 1
    assert not watch.measuring  # the result was taken: the watch is done
