"""The ``threads`` fix: intra-op thread count measured on the user's model, capped per process."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import check_margin, model_device
from perfcallbacks.measure import measure_threads
from perfcallbacks.probes import plausible_ratio, thread_candidates
from perfcallbacks.report import FixResult

log = logging.getLogger(__name__)
FIX_ID = "threads"


def training_thread_cap(physical_cores: int, local_processes: int = 1) -> int:
    """Intra-op threads each of ``local_processes`` processes may use without oversubscribing.

    Example::

        >>> from perfcallbacks.fixes import training_thread_cap
        >>> training_thread_cap(16, 4), training_thread_cap(2, 4)
        (4, 1)
    """
    if isinstance(physical_cores, bool) or not isinstance(physical_cores, int) or physical_cores < 1:
        raise ValueError(f"physical_cores must be a positive int, got {physical_cores!r}")
    if isinstance(local_processes, bool) or not isinstance(local_processes, int) or local_processes < 1:
        raise ValueError(f"local_processes must be a positive int, got {local_processes!r}")
    return max(1, physical_cores // local_processes)


def tune_threads(model: nn.Module, example_batch: Any, *, physical_cores: int, local_processes: int = 1,
                 margin: float = 0.05, apply: bool = True, repeats: int = 5) -> FixResult:
    """Measure intra-op thread counts on ``model``/``example_batch`` and keep the fastest.

    Candidates are :func:`perfcallbacks.probes.thread_candidates` up to ``physical_cores // local_processes`` (never
    more than the physical cores, divided among local processes). The best count
    is applied only if it beats the current one by ``margin``, or if the current
    count exceeds the per-process cap (oversubscription that one process cannot
    see by timing itself). ``details`` holds ``previous``, ``chosen``, ``cap`` and
    ``timings_s`` per count. Measurement errors give a ``failed`` result.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes import tune_threads, restore_threads
        >>> r = tune_threads(torch.nn.Linear(64, 64), torch.randn(32, 64), physical_cores=1)
        >>> r.status in ("applied", "rejected"), r.details["cap"]
        (True, 1)
        >>> restore_threads(r)
    """
    cap = training_thread_cap(physical_cores, local_processes)
    margin = check_margin(margin)
    previous = torch.get_num_threads()
    details: dict[str, Any] = {"previous": previous, "cap": cap, "physical_cores": physical_cores,
                               "local_processes": local_processes}
    try:
        device = model_device(model)
        if device.type != "cpu":
            return FixResult(FIX_ID, "skipped", f"model is on {device.type}: intra-op CPU threads do not "
                             "drive its forward", details=details)
        # The same candidate list as the threads-untuned hint (one list: the hint never recommends a count
        # the fix would not try).
        candidates = thread_candidates(cap, previous if previous <= cap else None)
        timings = measure_threads(model, example_batch, sorted(candidates), repeats=repeats)
    except Exception as err:  # a measurement failure never reaches the user's run
        log.debug("threads fix failed", exc_info=True)
        torch.set_num_threads(previous)
        return FixResult(FIX_ID, "failed", f"measurement failed: {type(err).__name__}: {err}", details=details)

    best = min(timings, key=timings.__getitem__)
    details["timings_s"] = {str(n): t for n, t in sorted(timings.items())}
    details["chosen"] = best
    oversubscribed = previous > cap
    # Baseline: the current count when it is a legal candidate, else the capped setting we must move to.
    base = timings.get(previous, timings[cap])
    speedup = base / timings[best] if timings[best] > 0 else None
    base_count = previous if previous in timings else cap
    if speedup is not None and not oversubscribed and not plausible_ratio(min(best, base_count), max(best, base_count),
                                                                          1 / speedup if best < base_count else speedup):
        # A thread-count "speedup" beyond the thread ratio is a measurement error (a busy machine), not a result.
        return FixResult(FIX_ID, "rejected", f"implausible measurement ({speedup:.2f}x from {base_count} to {best} "
                         "threads): the machine was busy; nothing changed", speedup=None,
                         details={**details, "chosen": previous, "implausible": True})
    if best == previous:
        return FixResult(FIX_ID, "rejected", f"current {previous} intra-op threads is already the fastest measured",
                         speedup=1.0, details={**details, "chosen": previous})
    if not oversubscribed and (speedup is None or speedup < 1.0 + margin):
        return FixResult(FIX_ID, "rejected", f"best {best} threads is only {speedup or 0:.3f}x vs current "
                         f"{previous} (needs {1 + margin:.2f}x)", speedup=speedup,
                         details={**details, "chosen": previous})
    why = (f"{previous} threads exceed the cap of {cap} per process ({physical_cores} physical cores / "
           f"{local_processes} local processes); " if oversubscribed else "")
    if not apply:
        return FixResult(FIX_ID, "skipped", f"{why}measured best is {best} threads ({speedup:.2f}x); apply=False",
                         speedup=speedup, details=details)
    torch.set_num_threads(best)
    return FixResult(FIX_ID, "applied", f"{why}set intra-op threads {previous} -> {best} ({speedup:.2f}x measured)",
                     speedup=speedup, details=details)


def restore_threads(result: FixResult) -> None:
    """Undo an applied :func:`tune_threads` (sets the previous thread count back).

    Example::

        >>> from perfcallbacks.fixes import restore_threads
        >>> from perfcallbacks.report import FixResult
        >>> restore_threads(FixResult("threads", "rejected", "already best"))  # no-op
    """
    if not isinstance(result, FixResult):
        raise TypeError(f"result must be a FixResult, got {type(result).__name__}")
    previous = result.details.get("previous")
    if result.id == FIX_ID and result.status == "applied" and isinstance(previous, int) and previous > 0:
        torch.set_num_threads(previous)
