"""How long a fit's validation loader takes to start (the validation side of ``workers-restart``).

Both frameworks create the validation loader's iterator (and so fork its workers) between the last
training step before a validation run and that run's first batch: Lightning inside its evaluation
loop's ``reset``, before ``on_validation_start``; HF in ``get_eval_dataloader`` + ``evaluation_loop``
after ``on_step_end`` / ``on_epoch_end``. No hook sits between the two, so the wait is measured from
the last training step's end to the first validation batch, and the steady wait between validation
batches is subtracted by the check.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable

from perfcallbacks.context import LoaderInfo, ValidationLoaderTiming
from perfcallbacks.observe import StepTimer

# Validation batches timed per run: enough for a steady wait and batch time, bounded cost.
VAL_BATCHES_TIMED = 16


class ValidationWatch:
    """Times the fit's first validation run: the wait for its first batch and its steady batches.

    Example:
        >>> watch = ValidationWatch()
        >>> watch.train_step_ended(now=10.0)
        >>> watch.begin(now=10.0); watch.own_work_done(now=10.1)  # our own 0.1 s is not the loader's
        >>> watch.batch_start(now=10.5); watch.batch_end(now=10.6)
        >>> watch.batch_start(now=10.61); watch.batch_end(now=10.71)
        >>> timing = watch.timing(LoaderInfo(num_workers=2), batches_per_run=8, runs_per_epoch=1.0, runs_total=4)
        >>> [round(w, 3) for w in timing.first_waits], [round(w, 3) for w in timing.steady_waits]
        ([0.4], [0.01])
    """

    def __init__(self) -> None:
        self.waiting = True  # until the fit's first validation begins: train step ends are stamped
        self._last_train_end: float | None = None
        self._timer: StepTimer | None = None
        self._begun_at: float | None = None
        self._own_s = 0.0  # our own hooks' time inside the first wait: not the loader's

    def train_step_ended(self, now: float | None = None) -> None:
        """A training step ended (the hot path calls this only while ``waiting``)."""
        self._last_train_end = time.perf_counter() if now is None else now

    def begin(self, sync: Callable[[], None] | None = None, now: float | None = None) -> None:
        """The fit's first validation run begins (its loader may already be waiting on its workers)."""
        self.waiting = False
        if self._last_train_end is None:
            return  # validation before any training step (or a restart): no start to measure from
        self._begun_at = time.perf_counter() if now is None else now
        self._timer = StepTimer(sync=sync)
        self._timer.mark_epoch_start(now=self._last_train_end)

    def own_work_done(self, now: float | None = None) -> None:
        """Our stage-start work (begun at :meth:`begin`) ends: its time is taken out of the first wait.

        A loader with a length fetches its first batch after ``on_validation_start``, while its workers
        start in parallel with that work: taking it out can only make the measured start-up smaller.
        """
        if self._begun_at is not None:
            self._own_s += (time.perf_counter() if now is None else now) - self._begun_at
            self._begun_at = None

    @property
    def measuring(self) -> bool:
        """True from :meth:`begin` (with a training step before it) until :meth:`timing` took the result."""
        return self._timer is not None

    @property
    def timing_batches(self) -> bool:
        """True while validation batches are still timed (cheap: a None check and an int compare)."""
        return self._timer is not None and self._timer.steps_seen < VAL_BATCHES_TIMED

    def batch_start(self, now: float | None = None) -> None:
        if self.timing_batches:
            self._timer.start(now)  # type: ignore[union-attr]

    def batch_end(self, now: float | None = None) -> None:
        if self._timer is not None and self._timer.in_step:
            self._timer.end(now)

    def timing(self, loader: LoaderInfo | None, *, batches_per_run: int | None, runs_per_epoch: float | None,
               runs_total: int | None) -> ValidationLoaderTiming | None:
        """What was measured, with the loader's settings and the fit's validation schedule; then stop."""
        timer, self._timer = self._timer, None
        if timer is None or not timer.epoch_first_waits:
            return None
        first = [max(0.0, wait - self._own_s) for wait in timer.epoch_first_waits]
        return ValidationLoaderTiming(loader=loader, first_waits=first,
                                      steady_waits=list(timer.data_wait_times), batch_times=list(timer.step_times),
                                      batches_per_run=batches_per_run, runs_per_epoch=runs_per_epoch,
                                      runs_total=runs_total)


def lightning_validation_schedule(trainer: Any, epochs: int | None) -> tuple[float | None, int | None]:
    """(validation runs per training epoch, runs in the whole fit) from a Lightning ``Trainer``.

    ``check_val_every_n_epoch=k`` validates after every k-th epoch, ``val_check_interval`` within one
    (``val_check_batch`` training batches apart); ``check_val_every_n_epoch=None`` counts batches across
    epochs. ``None`` where a length is unknown.
    """
    every = getattr(trainer, "check_val_every_n_epoch", 1)
    step = getattr(trainer, "val_check_batch", None)
    batches = getattr(trainer, "num_training_batches", None)
    if not _finite(step) or not _finite(batches) or step <= 0:
        return None, None
    if every is None:
        per_epoch = batches / step
        total = math.floor(epochs * batches / step) if epochs else None
    else:
        within = int(batches // step)
        per_epoch = within / max(1, int(every))
        total = (epochs // max(1, int(every))) * within if epochs else None
    return per_epoch, total


def first_loader(loaders: Any) -> Any:
    """The first DataLoader of what a framework holds (one loader, a list, a dict, a CombinedLoader)."""
    if loaders is None or hasattr(loaders, "dataset"):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return next((first_loader(item) for item in loaders if item is not None), None)
    return first_loader(getattr(loaders, "iterables", None))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def hf_validation_schedule(args: Any, state: Any, steps_per_epoch: int | None) -> tuple[float | None, int | None]:
    """(evaluations per training epoch, evaluations in the whole ``train()``) from HF ``TrainingArguments``.

    ``eval_strategy`` (``evaluation_strategy`` in older 4.x) ``"epoch"``: one per epoch; ``"steps"``: one
    every ``eval_steps`` optimizer steps (``logging_steps`` when unset, a float below 1 is a share of
    ``max_steps``); ``steps_per_epoch`` counts optimizer steps. ``None`` where a length is unknown or
    evaluation is off.
    """
    strategy = getattr(args, "eval_strategy", None) or getattr(args, "evaluation_strategy", None)
    strategy = str(getattr(strategy, "value", strategy))
    max_steps = getattr(state, "max_steps", None)
    max_steps = max_steps if _finite(max_steps) and max_steps > 0 else None
    epochs = getattr(state, "num_train_epochs", None)
    if strategy == "epoch":
        return 1.0, int(epochs) if _finite(epochs) and epochs > 0 else None
    if strategy != "steps":
        return None, None
    every = getattr(args, "eval_steps", None) or getattr(args, "logging_steps", None)
    if not _finite(every) or every <= 0:
        return None, None
    if every < 1:
        if max_steps is None:
            return None, None
        every = math.ceil(max_steps * every)
    per_epoch = steps_per_epoch / every if steps_per_epoch else None
    return per_epoch, int(max_steps // every) if max_steps else None
