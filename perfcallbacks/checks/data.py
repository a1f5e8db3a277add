"""Data checks: ``dataloader-bottleneck`` and ``pin-memory-off``, both on measured time.

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
from perfcallbacks.context import RunContext
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
    what="Fires when a DataLoader with num_workers > 0 and persistent_workers=False spends a real share of the epoch (default > 5%) starting its workers: the wait for the first batch of an epoch, minus the steady-state wait, times the epochs to come.",
    why="Without persistent_workers every epoch (and every validation run) forks the workers again and re-imports the dataset in each: users report minutes of start-up per epoch and +25% wall time.",
    fix="Lightning / plain PyTorch: DataLoader(..., num_workers=N, persistent_workers=True); HF: TrainingArguments(dataloader_persistent_workers=True).",
    evidence=("num_workers", "persistent_workers", "first_batch_wait_s", "steady_wait_ms", "startup_s_per_epoch", "epoch_s_estimate", "startup_share_of_epoch", "epochs", "batches_per_epoch", "restarts_to_come", "seconds_saved_estimate"),
)


@check(WORKERS_RESTART, phases=("warmup",))
def workers_restart(ctx: RunContext) -> Hint | None:
    loader = ctx.loader
    if loader is None or loader.num_workers <= 0 or loader.persistent_workers or not ctx.epoch_first_waits:
        return None
    epochs, batches = ctx.epochs, ctx.batches_per_epoch
    if not epochs or epochs < 2 or not batches or len(ctx.step_times) < MIN_STEPS:
        return None  # one epoch starts its workers once: nothing is re-created
    steady = statistics.median(ctx.data_wait_times) if ctx.data_wait_times else 0.0
    first = statistics.median(ctx.epoch_first_waits)
    startup = first - steady
    if startup < MIN_STARTUP_S:
        return None
    per_batch = statistics.fmean(ctx.step_times) + (statistics.fmean(ctx.data_wait_times)
                                                    if ctx.data_wait_times else 0.0)
    epoch_s = batches * per_batch + startup
    share = startup / epoch_s
    if share < STARTUP_EPOCH_SHARE:
        return None
    restarts = epochs - 1
    fix = fix_text(ctx, lightning=f"DataLoader(..., num_workers={loader.num_workers}, persistent_workers=True) "
                                  f"(train and val loaders)",
                   hf="TrainingArguments(dataloader_persistent_workers=True)",
                   torch=f"DataLoader(..., num_workers={loader.num_workers}, persistent_workers=True)")
    return WORKERS_RESTART.make(
        ctx.phase,
        f"The loader's {loader.num_workers} workers start again every epoch: {startup:.2f} s of start-up before "
        f"each epoch's first batch ({share:.0%} of a {epoch_s:.1f} s epoch), {restarts} more time(s) in this fit.",
        fix,
        evidence={"num_workers": loader.num_workers, "persistent_workers": False,
                  "first_batch_wait_s": [round(w, 4) for w in ctx.epoch_first_waits],
                  "steady_wait_ms": round(steady * 1e3, 3), "startup_s_per_epoch": round(startup, 4),
                  "epoch_s_estimate": round(epoch_s, 3), "startup_share_of_epoch": round(share, 4),
                  "epochs": epochs, "batches_per_epoch": batches, "restarts_to_come": restarts,
                  "seconds_saved_estimate": round(startup * restarts, 3)},
        impact=epoch_s / (epoch_s - startup))
