"""Inference probes: a few timed forwards on the user's model and a real batch.

:func:`run_inference_probes` fills ``ctx.measurements`` for the inference
checks (see :mod:`perfcallbacks.checks.inference` and
:mod:`perfcallbacks.checks.batch` for the keys). The model's thread count and
train/eval flags are restored; the model itself is never modified; a failing
probe is logged at DEBUG and left out.

Two rules make the numbers trustworthy and the cost bounded:

* **Budget by construction.** Every probe runs against one :class:`Deadline`
  (``PROBE_BUDGET_S`` by default, read from an injectable clock). No timing
  starts unless its estimated cost, from the forward times already measured,
  fits the time left, and the clock is read after every call, so a sample
  running far over its estimate is cut short; a probe that cannot get its
  minimum number of samples is skipped and says so in
  ``measurements["probes_skipped"]``. Only the one call running when the
  deadline passes can overrun it.
* **Steady state, interleaved, sanity-bounded.** :func:`steady_times` times
  *samples* of many calls (at least :data:`SAMPLE_S` of work each, so a 0.02 ms
  forward is timed over ~1000 calls and one GIL switch or preemption is
  amortised), alternates the variants sample by sample (machine drift hits all
  alike) and returns medians. A thread-count or batch-size ratio that physics
  forbids (2 threads more than ~2x faster than 1) is a measurement error: the
  sweep is re-measured once and the implausible entries are dropped.

Example::

    >>> import torch
    >>> from perfcallbacks.probes import Deadline, steady_times
    >>> d = Deadline(1.0)
    >>> t = steady_times({"a": lambda: sum(range(100))}, {"a": 1e-5}, d)
    >>> t is not None and t["a"] > 0
    True
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from perfcallbacks.context import RunContext
from perfcallbacks.model_facts import model_device

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# A forward slower than this gets no further probes: thread sweeps and batch
# doubling would cost seconds of the user's time.
MAX_FORWARD_S = 0.5
# The fewest of the job's calls a probing budget must hold: the forward probe (a warm-up and 3 samples) and one
# two-variant comparison (threads, int8, ...). A smaller budget would be spent on the forward probe alone.
MIN_PROBE_CALLS = 12
# Wall time all probes together may take (the default deadline).
PROBE_BUDGET_S = 3.0
# One sample is at least this much work: a tiny forward (~0.02 ms) is timed over
# ~1000 calls, so a 5 ms GIL switch or preemption costs a few % of one sample
# instead of 250x one call (issue: 145x-371x "speedups" from single-call timings).
SAMPLE_S = 0.02
# Calls per sample never exceed this (a forward estimated at ~0 s must still end).
MAX_CALLS_PER_SAMPLE = 5000
# Samples per variant: the median of at least 3 shrugs off one slow sample.
SAMPLES, MIN_SAMPLES = 5, 3
# Estimates are charged with this margin before a timing is started.
COST_SAFETY = 1.2
# A sample taking this many times its estimate is cut short after the current call.
OVERRUN_FACTOR = 3.0
# A ratio between two thread counts (or batch sizes) beyond their ratio times
# this slack is a measurement error (superlinear speedups need cache effects
# that a forward at these sizes does not show).
RATIO_SLACK = 1.1
# Batch scaling: try the observed batch repeated 2x and 4x.
BATCH_FACTORS = (2, 4)
# int8 probe: the guarded quantizer copies the model, times every backend and
# falls back layer by layer. Measured here (2-core EPYC, MLPs 128-512 wide):
# 0.4-0.7 s fixed plus the forwards; it runs only for models whose forward takes
# <= 10 ms, and only when that estimate fits the time left.
INT8_MAX_FORWARD_S = 0.01
INT8_FIXED_COST_S = 0.7
INT8_COST_FORWARDS = 200
# At most this many counts when the cores are many: one timing per power of two.
_ALL_COUNTS_UP_TO = 4


class ProbeSkipped(Exception):
    """A probe that could not run within its budget (its reason goes to ``probes_skipped``)."""


class Deadline:
    """The time left for probing, read from ``clock`` (injectable so tests can simulate slow machines).

    ``soft`` is a per-probe share: optional extra samples stop there, while the
    minimum samples of a probe only need to fit the hard end.

    Example::

        >>> from perfcallbacks.probes import Deadline
        >>> t = [0.0]
        >>> d = Deadline(2.0, clock=lambda: t[0])
        >>> d.allows(1.5), d.allows(2.5)
        (True, False)
        >>> t[0] = 1.0
        >>> round(d.left(), 3), round(d.elapsed(), 3)
        (1.0, 1.0)
    """

    def __init__(self, budget_s: float, clock: Clock = time.perf_counter) -> None:
        if isinstance(budget_s, bool) or not isinstance(budget_s, (int, float)) or not budget_s > 0:
            raise ValueError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {type(clock).__name__}")
        self.clock = clock
        self.start = float(clock())
        self.end = self.start + float(budget_s)
        self.soft_end = self.end

    def left(self) -> float:
        return self.end - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def allows(self, cost_s: float) -> bool:
        """Whether a timing estimated at ``cost_s`` can still finish before the hard end."""
        return self.left() >= cost_s * COST_SAFETY

    def allows_soft(self, cost_s: float) -> bool:
        """Whether an optional timing fits the current probe's share."""
        return self.soft_end - self.clock() >= cost_s * COST_SAFETY and self.allows(cost_s)

    def share(self, probes_left: int) -> None:
        """Give the next probe an equal share of the time left (for its optional samples)."""
        now = self.clock()
        self.soft_end = now + max(0.0, self.end - now) / max(1, probes_left)


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


def calls_per_sample(per_call_s: float) -> int:
    """Calls needed for one sample of at least :data:`SAMPLE_S` (1 for a slow forward).

    Example::

        >>> calls_per_sample(0.5), calls_per_sample(0.00002)
        (1, 1000)
    """
    if not per_call_s or per_call_s <= 0:
        return MAX_CALLS_PER_SAMPLE
    return int(max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(SAMPLE_S / per_call_s - 1e-9))))


def steady_times(fns: Mapping[str, Callable[[], Any]], per_call_s: Mapping[str, float], deadline: Deadline, *,
                 before: Mapping[str, Callable[[], Any]] | None = None, samples: int = SAMPLES,
                 min_samples: int = MIN_SAMPLES, warmup: bool = True,
                 device: torch.device | None = None) -> dict[str, float] | None:
    """Steady-state seconds per call of each callable: medians of interleaved multi-call samples.

    ``per_call_s`` holds an estimate for each name (sizes the samples and the
    cost checks). ``before[name]()`` runs untimed before each of that variant's
    samples (e.g. setting a thread count). Returns ``None`` when ``min_samples``
    rounds cannot finish before ``deadline`` (checked before starting, before
    each round and after every call); optional rounds stop at the deadline's
    soft end. The primitive lives here
    rather than in :mod:`perfcallbacks.measure` because it needs the deadline
    and the injected clock.
    """
    names = list(fns)
    if not names:
        return {}
    if samples < 1 or min_samples < 1 or min_samples > samples:
        raise ValueError(f"need 1 <= min_samples <= samples, got {min_samples!r}, {samples!r}")
    est = {n: max(0.0, float(per_call_s[n])) for n in names}
    calls = {n: calls_per_sample(est[n]) for n in names}
    hooks = before or {}
    clock = deadline.clock

    def round_cost() -> float:
        return sum(calls[n] * est[n] for n in names)

    if not deadline.allows((sum(est.values()) if warmup else 0.0) + min_samples * round_cost()):
        return None
    if warmup:
        for n in names:
            if n in hooks:
                hooks[n]()
            fns[n]()
        _sync(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for index in range(samples):
        cost = round_cost()
        if index >= min_samples and not deadline.allows_soft(cost):
            break
        if index < min_samples and not deadline.allows(cost):
            return None  # estimates were too low (slow machine): no half-measured numbers
        for n in (names if index % 2 == 0 else names[::-1]):  # alternate order: drift hits all alike
            if n in hooks:
                hooks[n]()
            start = clock()
            # A sample running far over its estimate (the machine got slower, or this variant is far
            # slower than guessed) ends early: its calls so far still give a per-call time.
            cut = min(deadline.end, start + max(SAMPLE_S, calls[n] * est[n]) * OVERRUN_FACTOR)
            done = 0
            for _ in range(calls[n]):
                fns[n]()
                done += 1
                if clock() > cut:
                    break
            _sync(device)
            end = clock()
            if end > deadline.end:
                return None  # out of time: no half-measured numbers
            times[n].append((end - start) / done)
        for n in names:  # later cost checks use what was measured, not the first guess
            est[n] = statistics.median(times[n])
    return {n: statistics.median(ts) for n, ts in times.items()}


def plausible_ratio(small: int, large: int, ratio: float, *, oversubscribed: bool = False) -> bool:
    """Whether ``time(small) / time(large)`` is physically possible for thread counts (or batch sizes).

    Going from ``small`` to ``large`` threads can speed a forward up by at most
    ``large / small`` (times :data:`RATIO_SLACK`); within the cores, fewer threads
    cannot be more than that much faster either (only oversubscription, more
    threads than cores, makes extra threads that costly: pass ``oversubscribed``).

    Example::

        >>> plausible_ratio(1, 2, 1.8), plausible_ratio(1, 2, 2.6), plausible_ratio(1, 2, 1 / 371)
        (True, False, False)
    """
    if not ratio or ratio <= 0 or not math.isfinite(ratio):
        return False
    bound = (max(small, large) / max(1, min(small, large))) * RATIO_SLACK
    if ratio > bound:
        return False
    return oversubscribed or ratio >= 1.0 / bound


def thread_candidates(physical_cores: int, current: int | None = None) -> list[int]:
    """Intra-op thread counts worth timing: every count up to 4 cores, powers of two plus the core count beyond.

    ``current`` (the count in use) is always included when given, even above the
    cores (the checks compare against it). The one list used by the
    ``threads-untuned`` probe and the ``threads`` fix.

    Example::

        >>> thread_candidates(2, 2), thread_candidates(4), thread_candidates(12, 3)
        ([1, 2], [1, 2, 3, 4], [1, 2, 3, 4, 8, 12])
    """
    if isinstance(physical_cores, bool) or not isinstance(physical_cores, int) or physical_cores < 1:
        raise ValueError(f"physical_cores must be a positive int, got {physical_cores!r}")
    if current is not None and (isinstance(current, bool) or not isinstance(current, int) or current < 1):
        raise ValueError(f"current must be a positive int or None, got {current!r}")
    if physical_cores <= _ALL_COUNTS_UP_TO:
        found = set(range(1, physical_cores + 1))
    else:
        found = {1 << i for i in range(physical_cores.bit_length()) if 1 << i <= physical_cores}
        found.add(physical_cores)
    if current is not None:
        found.add(current)
    return sorted(found)


def _batch_size(batch: Any) -> int | None:
    from perfcallbacks.observe import batch_stats

    stats = batch_stats(batch)
    return stats.batch_size if stats else None


def _on_cpu(model: nn.Module) -> bool:
    return model_device(model).type == "cpu"


def _deadline(deadline: Deadline | None) -> Deadline:
    return deadline if deadline is not None else Deadline(PROBE_BUDGET_S)


def probe_forward(model: nn.Module, batch: Any, deadline: Deadline | None = None) -> float:
    """Steady-state latency (s) of one inference forward: one warm-up call, then up to 3 samples in budget.

    A first call slower than :data:`MAX_FORWARD_S` gets one more timed call when
    the deadline allows (first calls pay lazy initialisation), and the faster counts.
    """
    from perfcallbacks.measure import eval_mode, timed_forward

    deadline = _deadline(deadline)
    with eval_mode(model):
        run = timed_forward(model, batch)
        start = deadline.clock()
        run()
        first = deadline.clock() - start
        if first > MAX_FORWARD_S:
            if first > MAX_FORWARD_S * 4 or not deadline.allows(first):
                return first
            start = deadline.clock()
            run()
            first = min(first, deadline.clock() - start)
            if first > MAX_FORWARD_S:
                return first
        times = steady_times({"forward": run}, {"forward": first}, deadline, samples=3, min_samples=1,
                             warmup=False)
    return times["forward"] if times else first


def _thread_setter(count: int) -> Callable[[], None]:
    return lambda: torch.set_num_threads(count)


def probe_threads(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float,
                  deadline: Deadline | None = None) -> dict[str, Any]:
    """Steady-state forward latency per intra-op thread count (CPU models only), sanity-bounded.

    Entries whose ratio to the current count is impossible (see :func:`plausible_ratio`)
    trigger one re-measurement of the sweep; those still impossible are dropped
    and listed under ``dropped``.
    """
    from perfcallbacks.measure import eval_mode, timed_forward

    deadline = _deadline(deadline)
    current = torch.get_num_threads()
    cores = ctx.local.physical_cores or (ctx.threads.physical_cores if ctx.threads else None) or 1
    candidates = thread_candidates(int(cores), current)
    if len(candidates) < 2:
        return {}
    # Fewer threads than now: up to current/k times slower; more: assume no faster.
    est = {str(k): forward_s * max(1.0, current / k) for k in candidates}

    def sweep(counts: list[int]) -> dict[int, float] | None:
        names = {str(k): k for k in counts}
        with eval_mode(model):
            run = timed_forward(model, batch)
            try:
                times = steady_times({n: run for n in names}, {n: est[n] for n in names}, deadline,
                                     before={n: _thread_setter(k) for n, k in names.items()})
            finally:
                torch.set_num_threads(current)
        return None if times is None else {names[n]: t for n, t in times.items()}

    def implausible(times: dict[int, float]) -> list[int]:
        return [k for k in times if k != current and not plausible_ratio(
            min(k, current), max(k, current),
            times[min(k, current)] / times[max(k, current)], oversubscribed=max(k, current) > cores)]

    times = sweep(candidates)
    if times is None:
        raise ProbeSkipped(f"thread sweep ({len(candidates)} counts) does not fit the time left")
    remeasured = False
    if implausible(times):
        again = sweep(candidates)
        remeasured = again is not None
        times = again or times
    dropped = {str(k): round(times[current] / times[k], 3) for k in implausible(times)}
    kept = {k: t for k, t in times.items() if str(k) not in dropped}
    out: dict[str, Any] = {"current": current, "latency_s": {str(k): v for k, v in sorted(kept.items())},
                           "calls_per_sample": {str(k): calls_per_sample(t) for k, t in sorted(kept.items())}}
    if remeasured or dropped:
        out["remeasured"] = remeasured
    if dropped:
        out["dropped"] = dropped  # speedup vs current that physics rules out
    return {"threads": out}


def probe_batch_scaling(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float,
                        deadline: Deadline | None = None) -> dict[str, Any]:
    """Steady-state latency of the batch repeated 1x, 2x, 4x; sizes past the latency budget or
    :data:`MAX_FORWARD_S` are not tried, and a size whose latency is impossibly low is dropped."""
    from perfcallbacks.measure import concat_batch, eval_mode, timed_forward

    deadline = _deadline(deadline)
    size = _batch_size(batch)
    if not size:
        return {}
    budget_s = ctx.latency_budget_ms / 1000.0 if ctx.latency_budget_ms else None
    fns = {str(size): timed_forward(model, batch)}
    est = {str(size): forward_s}
    for factor in BATCH_FACTORS:
        # Latency grows at most linearly: skip sizes sure to exceed the caps.
        if forward_s * factor > MAX_FORWARD_S * 2 or (budget_s is not None and forward_s > budget_s):
            break
        fns[str(size * factor)] = timed_forward(model, concat_batch(batch, factor))
        est[str(size * factor)] = forward_s * factor
    if len(fns) < 2:
        return {}

    def measure() -> dict[str, float] | None:
        with eval_mode(model):
            return steady_times(fns, est, deadline)

    def implausible(times: dict[str, float]) -> list[str]:
        # k times the rows cannot take less time than the base batch (throughput gain <= k).
        return [n for n in times if n != str(size) and times[str(size)] > times[n] * RATIO_SLACK]

    times = measure()
    if times is None:
        raise ProbeSkipped(f"batch scaling ({len(fns)} sizes) does not fit the time left")
    if implausible(times):
        times = measure() or times
    dropped = implausible(times)
    kept = {n: t for n, t in times.items() if n not in dropped}
    if len(kept) < 2:  # never silently: the reason lands in measurements["probes_skipped"]
        raise ProbeSkipped(f"batch scaling: every larger batch timed impossibly fast ({sorted(dropped)}): "
                           "a busy machine, nothing to conclude")
    out: dict[str, Any] = {"batch_size": size, "latency_s": kept}
    if dropped:
        out["dropped"] = dropped
    return {"batch_scaling": out}


def probe_int8(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float = 0.0,
               deadline: Deadline | None = None) -> dict[str, Any]:
    """Measured int8 dynamic quantization (the guarded fix, on a copy) for Linear-heavy CPU models.

    The result is a *probe* (``"source": "probe"``): ``status`` is what the guard
    would decide, nothing is applied to the user's model.
    """
    from perfcallbacks.checks.inference import INT8_MIN_LINEAR_SHARE
    from perfcallbacks.model_facts import is_quantized, linear_share

    if ctx.param_dtype not in (None, "fp32") or is_quantized(model) or linear_share(model) < INT8_MIN_LINEAR_SHARE:
        return {}
    deadline = _deadline(deadline)
    if not deadline.allows(INT8_FIXED_COST_S + INT8_COST_FORWARDS * forward_s):
        raise ProbeSkipped("int8 measurement does not fit the time left")
    try:
        from perfcallbacks.fixes import quantize_guarded
    except ImportError:  # fixes not installed/ready: the check falls back to its estimate
        return {}
    result, _ = quantize_guarded(model, batch)
    if result.speedup is None:
        return {}
    return {"int8": {"speedup": float(result.speedup), "status": result.status, "source": "probe",
                     "fidelity": dict(result.fidelity)}}


def probe_autocast(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float,
                   deadline: Deadline | None = None) -> dict[str, Any]:
    """Measured autocast speedup on an accelerator (fast dtype of the local device)."""
    from perfcallbacks.measure import eval_mode, timed_forward

    dtype = ctx.local.fast_autocast_dtype()
    kind = ctx.local.kind
    if dtype is None or kind == "cpu":
        return {}
    deadline = _deadline(deadline)
    plain = timed_forward(model, batch)

    def autocast() -> Any:
        with torch.autocast(kind, dtype=dtype):
            return plain()

    with eval_mode(model):
        times = steady_times({"fp32": plain, "autocast": autocast}, {"fp32": forward_s, "autocast": forward_s},
                             deadline, device=torch.device(kind))
    if times is None:
        raise ProbeSkipped("autocast timing does not fit the time left")
    return {"autocast": {"speedup": times["fp32"] / times["autocast"], "dtype": str(dtype).replace("torch.", "")}}


def probe_grad_overhead(model: nn.Module, batch: Any, forward_s: float,
                        deadline: Deadline | None = None) -> dict[str, Any]:
    """Forward time with autograd on over time under ``inference_mode`` (eval mode for both)."""
    from perfcallbacks.measure import call_model, eval_mode

    deadline = _deadline(deadline)

    def with_grad() -> Any:
        with torch.enable_grad():
            return call_model(model, batch)

    def without() -> Any:
        with torch.inference_mode():
            return call_model(model, batch)

    with eval_mode(model):
        times = steady_times({"grad": with_grad, "inference": without},
                             {"grad": forward_s * 1.5, "inference": forward_s}, deadline)
    if times is None:
        raise ProbeSkipped("autograd overhead timing does not fit the time left")
    return {"grad_overhead": times["grad"] / times["inference"]}


def run_inference_probes(ctx: RunContext, model: nn.Module, batch: Any, *, sweep: bool = True,
                         deadline_s: float | None = None, clock: Clock = time.perf_counter) -> dict[str, Any]:
    """Run the probes that fit this model, device and budget; returns the measurements (never raises).

    Args:
        sweep: also run the thread sweep and batch scaling (the costly probes
            that only pay off before a long inference job; pass ``False`` during
            fit's own validation).
        deadline_s: wall-time budget for all probes (default :data:`PROBE_BUDGET_S`).
        clock: seconds counter used for every timing and for the deadline.

    Besides the probes' keys, the result holds ``forward_s``, ``probe_s`` (time
    spent, by ``clock``) and ``probes_skipped`` (probe name -> why) when any was left out.

    Example::

        import torch
        from perfcallbacks import Advisor
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        advisor = Advisor(model, warn=False)
        advisor.probe_inference(model, torch.randn(16, 256))
        advisor.context.measurements["threads"]   # {"current": ..., "latency_s": {...}}
    """
    deadline = Deadline(PROBE_BUDGET_S if deadline_s is None else deadline_s, clock)
    out: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    try:
        forward_s = probe_forward(model, batch, deadline)
    except Exception:
        log.debug("perfcallbacks: forward probe failed", exc_info=True)
        return out
    out["forward_s"] = forward_s
    if forward_s > MAX_FORWARD_S:
        out["probes_skipped"] = {"all": f"forward takes {forward_s:.2f} s > {MAX_FORWARD_S} s"}
        out["probe_s"] = deadline.elapsed()
        return out
    on_cpu = _on_cpu(model)
    steps: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if sweep and on_cpu:
        steps.append(("threads", lambda: probe_threads(ctx, model, batch, forward_s, deadline)))
    if sweep:
        steps.append(("batch_scaling", lambda: probe_batch_scaling(ctx, model, batch, forward_s, deadline)))
    if on_cpu:
        if forward_s <= INT8_MAX_FORWARD_S and ctx.local.supports("int8_dynamic") in ("fast", "supported"):
            steps.append(("int8", lambda: probe_int8(ctx, model, batch, forward_s, deadline)))
    else:
        steps.append(("autocast", lambda: probe_autocast(ctx, model, batch, forward_s, deadline)))
    if ctx.inference.grad_enabled_calls:
        steps.append(("grad_overhead", lambda: probe_grad_overhead(model, batch, forward_s, deadline)))
    for index, (name, probe) in enumerate(steps):
        deadline.share(len(steps) - index)
        try:
            out.update(probe())
        except ProbeSkipped as why:
            skipped[name] = str(why)
        except Exception:  # principle 1: a probe that fails is skipped
            log.debug("perfcallbacks: probe %s failed", name, exc_info=True)
    if skipped:
        out["probes_skipped"] = skipped
    out["probe_s"] = deadline.elapsed()
    return out
