"""Synchronised, side-by-side timing for the GPU suite.

CUDA work is asynchronous: ``fn()`` returns once its kernels are queued, so a
host clock read right after it measures the launches, not the work. Every
timed region here starts after a synchronise (nothing of the previous
candidate is still running) and ends after one (all of this candidate's work
is done). Candidates are interleaved and the order rotates each round, so
clock and thermal drift hit all of them alike; the median of the rounds is
the result.

The synchroniser and the clock are arguments, so the logic is tested on CPU
(``tests/gpu/test_cpu_side.py``) with a fake queue that only finishes its
work when synchronised.

Example::

    >>> from synctime import time_side_by_side
    >>> t = time_side_by_side({"a": lambda: sum(range(100)), "b": lambda: sum(range(10))},
    ...                       repeats=3, warmup=1)
    >>> sorted(t), t["a"].median > 0
    (['a', 'b'], True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

Sync = Callable[[], None]
Clock = Callable[[], float]


def no_sync() -> None:
    """The synchroniser of host-only work (CPU tensors finish before the call returns)."""


def cuda_sync(device: Any = None) -> Sync:
    """``torch.cuda.synchronize(device)`` as a no-argument callable."""
    import torch

    def sync() -> None:
        torch.cuda.synchronize(device)

    return sync


def sync_for(device: Any) -> Sync:
    """The right synchroniser for a ``torch.device`` (or its string): CUDA syncs, anything else is host-only."""
    kind = getattr(device, "type", None) or str(device).split(":")[0]
    return cuda_sync(device) if kind == "cuda" else no_sync


@dataclass
class Timing:
    """Per-call seconds of one candidate: every sample, their median and relative spread."""

    name: str
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """Interquartile range over the median (0.05 = the middle half of the rounds lies within 5%)."""
        if len(self.samples) < 4 or not self.median:
            return float("nan")
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / self.median

    def to_dict(self) -> dict[str, Any]:
        return {"median_s": self.median, "spread": self.spread, "samples_s": list(self.samples)}


def time_side_by_side(fns: Mapping[str, Callable[[], Any]], *, repeats: int = 15, warmup: int = 3,
                      number: int = 1, sync: Sync = no_sync, clock: Clock = time.perf_counter) -> dict[str, Timing]:
    """Median per-call time of each candidate, measured in interleaved, synchronised rounds.

    Args:
        fns: name -> no-argument callable (one forward, one training step, ...).
        repeats: timed rounds; each round times every candidate once.
        warmup: untimed rounds first (allocator, cuBLAS/cuDNN heuristics, autotuning).
        number: calls per timed region (amortises the synchronise for sub-millisecond work);
            each sample is the region's time divided by ``number``.
        sync: waits until all queued device work is done (``cuda_sync()`` on a GPU).
        clock: seconds, monotonic.

    Raises:
        ValueError: for an empty ``fns`` or non-positive counts.
    """
    if not fns:
        raise ValueError("fns must name at least one callable")
    for name, value, low in (("repeats", repeats, 1), ("warmup", warmup, 0), ("number", number, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    sync()
    timings = {name: Timing(name) for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:  # each candidate goes first equally often
            fn = fns[name]
            sync()
            start = clock()
            for _ in range(number):
                fn()
            sync()
            timings[name].samples.append((clock() - start) / number)
    return timings


def ratio(slow: Timing, fast: Timing) -> float:
    """``slow.median / fast.median``: the measured slowdown of ``slow`` (speedup of ``fast``)."""
    return slow.median / fast.median if fast.median > 0 else float("nan")


def time_once(fn: Callable[[], Any], *, sync: Sync = no_sync, clock: Clock = time.perf_counter) -> float:
    """Seconds of one synchronised call (for whole runs: a fit, a predict)."""
    sync()
    start = clock()
    fn()
    sync()
    return clock() - start
