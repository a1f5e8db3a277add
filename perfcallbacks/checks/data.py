"""Data checks: ``dataloader-bottleneck``, ``pin-memory-off`` and ``workers-restart``, all on measured time.

``dataloader-bottleneck`` fires on the measured wait for the next batch
(``ctx.data_wait_times``) against the step time (``ctx.step_times``), never on
``num_workers`` alone: Lightning's own warning fires whenever ``num_workers < 2``
even when data costs nothing, and users rightly ignore it.

``pin-memory-off`` also reads ``ctx.facts.measured.h2d_copy_s``: seconds per step spent copying
the batch host -> device (an adapter or probe may time ``batch.to(device)``; ``None`` = unknown).
"""

from __future__ import annotations

import math
import statistics

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import LoaderInfo, RunContext
from perfcallbacks.hints import Hint, HintSpec

# Waiting for data longer than 20% of the step time (DESIGN default).
DATA_WAIT_SHARE = 0.20
# Below ~2 ms per batch a worker process cannot help: moving a batch through a
# worker's queue (pickling + IPC) costs about as much as the wait itself, and the
# "wait" measured between hooks also holds the framework's own loop overhead
# (0.3-1 ms per step seen for Lightning on a loaded 2-core machine).
MIN_WAIT_S = 0.002
# Fewer timed steps than this are noise (the first step is already excluded).
MIN_STEPS = 3
# pin-memory-off: copies (or, unmeasured, the data wait) must be at least this
# share of the step for pinning to be worth a hint.
PIN_COPY_SHARE = 0.05
PIN_WAIT_SHARE = 0.10


def data_wait_ratio(ctx: RunContext) -> tuple[float, float, float] | None:
    """(mean wait s, mean compute s, wait share of the whole step) or ``None`` without enough timed steps.

    The whole step is wait + compute: a share of 0.5 means half of every
    iteration is spent waiting for the next batch.

    Means, not medians: with workers the wait is bimodal (one batch in N waits),
    and throughput follows the mean.
    """
    waits, steps = ctx.data_wait_times, ctx.step_times
    if len(waits) < MIN_STEPS or len(steps) < MIN_STEPS:
        return None
    wait, step = statistics.fmean(waits), statistics.fmean(steps)
    if step <= 0:
        return None
    return wait, step, wait / (wait + step)


def suggested_workers(ctx: RunContext, wait: float, step: float) -> tuple[int, int]:
    """(workers that would hide the measured wait, cores available for them in this process)."""
    current = ctx.loader.num_workers if ctx.loader else 0
    processes = max(1, ctx.threads.local_processes if ctx.threads else ctx.local_world_size)
    cores = ctx.local.physical_cores or (ctx.threads.physical_cores if ctx.threads else 1) or 1
    available = max(1, cores // processes - 1)  # leave one core for the training process itself
    # Cost of producing one batch: the wait itself without workers; with N
    # workers still waiting, each batch costs them about N x (wait + step).
    per_batch = wait if current == 0 else current * (wait + step)
    needed = math.ceil(per_batch / step) + 1  # +1: slack for jitter
    return max(needed, 1), available


DATALOADER_BOTTLENECK = HintSpec(
    id="dataloader-bottleneck", category="data", severity="warning",
    title="The model waits for data",
    what="Fires when measured time waiting for the next batch is a large share (default > 20%) of the step time. Never fires on num_workers alone.",
    why="Every second waiting for data is a second the device idles.",
    fix="DataLoader(num_workers=N, persistent_workers=True) (pin_memory=True on CUDA); move tokenisation out of __getitem__.",
    evidence=("data_wait_ms", "step_ms", "wait_share_of_step", "steps_timed", "num_workers", "suggested_workers", "physical_cores"),
)


@check(DATALOADER_BOTTLENECK, phases=("warmup",))
def dataloader_bottleneck(ctx: RunContext) -> Hint | None:
    measured = data_wait_ratio(ctx)
    if measured is None:
        return None
    wait, step, ratio = measured
    if ratio <= DATA_WAIT_SHARE or wait < MIN_WAIT_S:
        return None
    current = ctx.loader.num_workers if ctx.loader else 0
    needed, available = suggested_workers(ctx, wait, step)
    workers = max(current + 1, min(needed, available))
    on_cuda = ctx.profile.kind == "cuda" and ctx.judged_on_accelerator
    pin = ", pin_memory=True" if on_cuda else ""
    hf_pin = ", dataloader_pin_memory=True" if on_cuda else ""
    fix = fix_text(ctx,
                   lightning=f"DataLoader(..., num_workers={workers}, persistent_workers=True{pin})",
                   hf=f"TrainingArguments(dataloader_num_workers={workers}, dataloader_persistent_workers=True{hf_pin})",
                   torch=f"DataLoader(..., num_workers={workers}, persistent_workers=True{pin})")
    if needed > available:
        fix += (f"; this machine has only {available} spare core(s) for workers: also make each item cheaper "
                f"(tokenize/decode once up front, not in __getitem__)")
    return DATALOADER_BOTTLENECK.make(
        ctx.phase,
        f"Each step waits {wait * 1e3:.1f} ms for data against {step * 1e3:.1f} ms of compute "
        f"({ratio:.0%} of each step is waiting) with num_workers={current}.",
        fix,
        evidence={"data_wait_ms": round(wait * 1e3, 3), "step_ms": round(step * 1e3, 3),
                  "wait_share_of_step": round(ratio, 4), "steps_timed": len(ctx.step_times),
                  "num_workers": current, "suggested_workers": workers,
                  "physical_cores": ctx.local.physical_cores},
        impact=(wait + step) / step)


PIN_MEMORY_OFF = HintSpec(
    id="pin-memory-off", category="data", severity="info",
    title="Loader does not pin memory on a CUDA run",
    what="Fires on CUDA runs whose DataLoader does not pin memory while host-to-device copies are significant.",
    why="Pinned memory makes host-to-device copies faster and lets them overlap with compute (non_blocking=True).",
    fix="DataLoader(pin_memory=True) / TrainingArguments(dataloader_pin_memory=True).",
    evidence=("pin_memory", "num_workers"),
)


@check(PIN_MEMORY_OFF, phases=("warmup",))
def pin_memory_off(ctx: RunContext) -> Hint | None:
    if ctx.profile.kind != "cuda" or not ctx.judged_on_accelerator or ctx.loader is None or ctx.loader.pin_memory:
        return None
    step = ctx.median_step_s
    copy = ctx.facts.measured.h2d_copy_s
    measured = data_wait_ratio(ctx)
    if copy is not None and step:
        significant, share, basis = copy / step >= PIN_COPY_SHARE, copy / step, "h2d_copy_share"
    elif measured is not None:
        significant, share, basis = measured[2] >= PIN_WAIT_SHARE, measured[2], "data_wait_share"
    else:
        return None
    if not significant:
        return None
    fix = fix_text(ctx, lightning="DataLoader(..., pin_memory=True)",
                   hf="TrainingArguments(dataloader_pin_memory=True)",
                   torch="DataLoader(..., pin_memory=True) and batch.to('cuda', non_blocking=True)")
    return PIN_MEMORY_OFF.make(
        ctx.phase,
        f"The loader does not pin memory on a CUDA run while moving data costs {share:.0%} of the step "
        f"({basis.replace('_', ' ')}).",
        fix, evidence={basis: round(share, 4), "pin_memory": False, "num_workers": ctx.loader.num_workers},
        impact=None)


# workers-restart: start-up below these is noise (fork of a few workers is ~10-50 ms).
MIN_STARTUP_S = 0.05
STARTUP_EPOCH_SHARE = 0.05


WORKERS_RESTART = HintSpec(
    id="workers-restart", category="data", severity="warning",
    title="Loader workers are started again every epoch",
    what="Fires when a DataLoader with num_workers > 0 and persistent_workers=False spends a real share of the epoch (default > 5%) starting its workers: the wait for the first batch of an epoch (training loader, at the end of the warm-up) or of a validation run inside the fit (validation loader, after the fit's first validation), minus the steady-state wait, times the restarts to come.",
    why="Without persistent_workers every epoch (and every validation run) forks the workers again and re-imports the dataset in each: users report minutes of start-up per epoch and +25% wall time.",
    fix="Lightning / plain PyTorch: DataLoader(..., num_workers=N, persistent_workers=True) for the train and val loaders; HF: TrainingArguments(dataloader_persistent_workers=True).",
    evidence=("loader", "num_workers", "persistent_workers", "first_batch_wait_s", "steady_wait_ms", "startup_s_per_epoch", "epoch_s_estimate", "startup_share_of_epoch", "epochs", "batches_per_epoch", "restarts_to_come", "seconds_saved_estimate"),
)


def _restarting(loader: LoaderInfo | None) -> bool:
    return loader is not None and loader.num_workers > 0 and not loader.persistent_workers


def _workers(loader: LoaderInfo) -> str:
    return f"{loader.num_workers} worker{'s' if loader.num_workers != 1 else ''}"


def _train_epoch_s(ctx: RunContext) -> float | None:
    """Seconds of one training epoch's steps (compute + steady data wait), from the warm-up's timed steps."""
    if not ctx.batches_per_epoch or len(ctx.step_times) < MIN_STEPS:
        return None
    wait = statistics.fmean(ctx.data_wait_times) if ctx.data_wait_times else 0.0
    return ctx.batches_per_epoch * (statistics.fmean(ctx.step_times) + wait)


@check(WORKERS_RESTART, phases=("warmup", "inference"))
def workers_restart(ctx: RunContext) -> Hint | None:
    """The training loader at the end of the warm-up; the validation loader after the fit's first validation."""
    return _train_restart(ctx) if ctx.phase == "warmup" else _validation_restart(ctx)


def _train_restart(ctx: RunContext) -> Hint | None:
    loader = ctx.loader
    if not _restarting(loader) or not ctx.epoch_first_waits:
        return None
    epochs = ctx.epochs
    steps_s = _train_epoch_s(ctx)
    if not epochs or epochs < 2 or steps_s is None:
        return None  # one epoch starts its workers once: nothing is re-created
    steady = statistics.median(ctx.data_wait_times) if ctx.data_wait_times else 0.0
    startup = statistics.median(ctx.epoch_first_waits) - steady
    return _restart_hint(ctx, loader, "train", startup, steady, ctx.epoch_first_waits,
                         epoch_s=steps_s + startup, restarts=epochs - 1,
                         text=f"The training loader's {_workers(loader)} start again every epoch: "
                              f"{startup:.2f} s of start-up before each epoch's first batch")


def _validation_restart(ctx: RunContext) -> Hint | None:
    timing = ctx.validation
    if timing is None or not _restarting(timing.loader) or not timing.first_waits or not timing.batches_per_run:
        return None
    if not timing.runs_per_epoch or timing.runs_total is None or timing.runs_total <= 1:
        return None  # no validation left in this fit: no restart to save
    train_s = _train_epoch_s(ctx)
    if train_s is None:
        return None  # no training epoch to measure the share against
    steady = statistics.median(timing.steady_waits) if timing.steady_waits else 0.0
    startup = statistics.median(timing.first_waits) - steady
    per_batch = (statistics.fmean(timing.batch_times) if timing.batch_times else 0.0) + steady
    run_s = timing.batches_per_run * per_batch + startup
    loader = timing.loader
    runs = timing.runs_per_epoch
    every = "every validation run" if runs >= 1 else f"each validation (every {round(1 / runs)} epochs)"
    hint = _restart_hint(ctx, loader, "val", startup * runs, steady, timing.first_waits,
                         epoch_s=train_s + runs * run_s, restarts=timing.runs_total - 1,
                         saved_per_restart=startup,
                         text=f"The validation loader's {_workers(loader)} start again at {every}: "
                              f"{startup:.2f} s of start-up before its first batch")
    if hint is not None:
        hint.evidence.update({"val_batches_per_run": timing.batches_per_run,
                              "validation_runs_per_epoch": round(runs, 4), "validation_runs_total": timing.runs_total})
    return hint


def _restart_hint(ctx: RunContext, loader: LoaderInfo, which: str, startup: float, steady: float,
                  first_waits: list[float], *, epoch_s: float, restarts: int, text: str,
                  saved_per_restart: float | None = None) -> Hint | None:
    """The hint, when ``startup`` (seconds per epoch) is above noise and a real share of ``epoch_s``."""
    if startup < MIN_STARTUP_S or restarts < 1:
        return None
    share = startup / epoch_s
    if share < STARTUP_EPOCH_SHARE:
        return None
    saved = (startup if saved_per_restart is None else saved_per_restart) * restarts
    name = "train and val loaders" if which == "train" else "val loader"
    fix = fix_text(ctx, lightning=f"DataLoader(..., num_workers={loader.num_workers}, persistent_workers=True) "
                                  f"({name})",
                   hf="TrainingArguments(dataloader_persistent_workers=True)",
                   torch=f"DataLoader(..., num_workers={loader.num_workers}, persistent_workers=True)")
    return WORKERS_RESTART.make(
        ctx.phase,
        text + f" ({share:.0%} of a {epoch_s:.1f} s epoch), {restarts} more time(s) "
                                       f"in this fit.",
        fix,
        evidence={"loader": which, "num_workers": loader.num_workers, "persistent_workers": False,
                  "first_batch_wait_s": [round(w, 4) for w in first_waits],
                  "steady_wait_ms": round(steady * 1e3, 3), "startup_s_per_epoch": round(startup, 4),
                  "epoch_s_estimate": round(epoch_s, 3), "startup_share_of_epoch": round(share, 4),
                  "epochs": ctx.epochs, "batches_per_epoch": ctx.batches_per_epoch, "restarts_to_come": restarts,
                  "seconds_saved_estimate": round(saved, 3)},
        impact=epoch_s / (epoch_s - startup))
