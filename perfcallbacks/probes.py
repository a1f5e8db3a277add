"""Inference probes: a few timed forwards on the user's model and a real batch.

:func:`run_inference_probes` fills ``ctx.measurements`` for the inference
checks (see :mod:`perfcallbacks.checks.inference` and
:mod:`perfcallbacks.checks.batch` for the keys). Probes are cheap and bounded:
the total probing time aims at :data:`PROBE_BUDGET_S`, a model whose single
forward takes more than :data:`MAX_FORWARD_S` gets only the one timing, and a
failing probe is logged at DEBUG and left out. The model's thread count and
train/eval flags are restored; the model itself is never modified.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from perfcallbacks.context import RunContext

log = logging.getLogger(__name__)

# A forward slower than this gets no further probes: thread sweeps and batch
# doubling would cost seconds of the user's time.
MAX_FORWARD_S = 0.5
# Target time for all probes together (each probe sizes its repeats from it).
PROBE_BUDGET_S = 3.0
# Bounds on repeats per timing (median of at least 3 to shrug off one outlier).
MIN_REPEATS, MAX_REPEATS = 3, 7
# Batch scaling: try the observed batch repeated 2x and 4x.
BATCH_FACTORS = (2, 4)
# int8 probe: the guarded quantizer copies the model, times every backend and
# falls back layer by layer (measured here: ~200 forwards' worth of time), so
# it runs only for models whose forward takes <= 10 ms (~2 s of probing).
INT8_MAX_FORWARD_S = 0.01


def _repeats(forward_s: float, timings: int) -> int:
    if forward_s <= 0:
        return MAX_REPEATS
    per = PROBE_BUDGET_S / max(1, timings) / forward_s
    return int(max(MIN_REPEATS, min(MAX_REPEATS, per)))


def thread_candidates(physical_cores: int, current: int) -> list[int]:
    """1..physical cores (powers of two plus the core count beyond 8), plus the current count.

    Example::

        >>> thread_candidates(2, 2), thread_candidates(16, 4)
        ([1, 2], [1, 2, 4, 8, 16])
    """
    cores = max(1, int(physical_cores))
    if cores <= 8:
        found = set(range(1, cores + 1))
    else:
        found = {1 << i for i in range(cores.bit_length()) if 1 << i <= cores} | {cores}
    found.add(max(1, int(current)))
    return sorted(found)


def _batch_size(batch: Any) -> int | None:
    from perfcallbacks.observe import batch_stats

    stats = batch_stats(batch)
    return stats.batch_size if stats else None


def _on_cpu(model: nn.Module) -> bool:
    from perfcallbacks.context import model_device_kind

    return model_device_kind(model) == "cpu"


def probe_forward(model: nn.Module, batch: Any) -> float:
    """Median latency (s) of one inference forward (3 runs after one warm-up)."""
    from perfcallbacks.measure import eval_mode, median_time, timed_forward

    with eval_mode(model):
        return median_time(timed_forward(model, batch), repeats=3, warmup=1)


def probe_threads(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float) -> dict[str, Any]:
    """Forward latency per intra-op thread count (CPU models only)."""
    from perfcallbacks.measure import measure_threads

    current = torch.get_num_threads()
    cores = ctx.local.physical_cores or (ctx.threads.physical_cores if ctx.threads else 1)
    candidates = thread_candidates(cores, current)
    if len(candidates) < 2:
        return {}
    times = measure_threads(model, batch, candidates, repeats=_repeats(forward_s * 2, len(candidates)), warmup=1)
    return {"threads": {"current": current, "latency_s": {str(k): v for k, v in times.items()}}}


def probe_batch_scaling(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float) -> dict[str, Any]:
    """Latency of the batch repeated 1x, 2x, 4x; stops past the latency budget or the time cap."""
    from perfcallbacks.measure import compare_times, concat_batch, eval_mode, timed_forward

    size = _batch_size(batch)
    if not size:
        return {}
    budget_s = ctx.latency_budget_ms / 1000.0 if ctx.latency_budget_ms else None
    fns = {str(size): timed_forward(model, batch)}
    for factor in BATCH_FACTORS:
        # Latency grows at most linearly: skip sizes sure to exceed the caps.
        if forward_s * factor > MAX_FORWARD_S * 2 or (budget_s is not None and forward_s > budget_s):
            break
        fns[str(size * factor)] = timed_forward(model, concat_batch(batch, factor))
    if len(fns) < 2:
        return {}
    with eval_mode(model):
        times = compare_times(fns, repeats=_repeats(forward_s * 7, 1), warmup=1)
    return {"batch_scaling": {"batch_size": size, "latency_s": times}}


def probe_int8(ctx: RunContext, model: nn.Module, batch: Any) -> dict[str, Any]:
    """Measured int8 dynamic quantization (the guarded fix, on a copy) for Linear-heavy CPU models."""
    from perfcallbacks.checks.inference import INT8_MIN_LINEAR_SHARE
    from perfcallbacks.checks.model import is_quantized, linear_share

    if ctx.param_dtype not in (None, "fp32") or is_quantized(model) or linear_share(model) < INT8_MIN_LINEAR_SHARE:
        return {}
    try:
        from perfcallbacks.fixes import quantize_guarded
    except ImportError:  # fixes not installed/ready: the check falls back to its estimate
        return {}
    result, _ = quantize_guarded(model, batch)
    if result.speedup is None:
        return {}
    return {"int8": {"speedup": float(result.speedup), "status": result.status,
                     "fidelity": dict(result.fidelity)}}


def probe_autocast(ctx: RunContext, model: nn.Module, batch: Any, forward_s: float) -> dict[str, Any]:
    """Measured autocast speedup on an accelerator (fast dtype of the local device)."""
    from perfcallbacks.measure import compare_times, eval_mode, timed_forward

    dtype = ctx.local.fast_autocast_dtype()
    kind = ctx.local.kind
    if dtype is None or kind == "cpu":
        return {}
    plain = timed_forward(model, batch)

    def autocast() -> Any:
        with torch.autocast(kind, dtype=dtype):
            return plain()

    with eval_mode(model):
        times = compare_times({"fp32": plain, "autocast": autocast}, repeats=_repeats(forward_s * 2, 1),
                              warmup=1, device=torch.device(kind))
    return {"autocast": {"speedup": times["fp32"] / times["autocast"], "dtype": str(dtype).replace("torch.", "")}}


def probe_grad_overhead(model: nn.Module, batch: Any, forward_s: float) -> dict[str, Any]:
    """Forward time with autograd on over time under ``inference_mode`` (eval mode for both)."""
    from perfcallbacks.measure import call_model, compare_times, eval_mode

    def with_grad() -> Any:
        with torch.enable_grad():
            return call_model(model, batch)

    def without() -> Any:
        with torch.inference_mode():
            return call_model(model, batch)

    with eval_mode(model):
        times = compare_times({"grad": with_grad, "inference": without}, repeats=_repeats(forward_s * 2, 1))
    return {"grad_overhead": times["grad"] / times["inference"]}


def run_inference_probes(ctx: RunContext, model: nn.Module, batch: Any) -> dict[str, Any]:
    """Run the probes that fit this model and device; returns the measurements (never raises).

    Example::

        import torch
        from perfcallbacks import Advisor
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
        advisor = Advisor(model, warn=False)
        advisor.probe_inference(model, torch.randn(16, 256))
        advisor.context.measurements["threads"]   # {"current": ..., "latency_s": {...}}
    """
    out: dict[str, Any] = {}
    try:
        forward_s = probe_forward(model, batch)
    except Exception:
        log.debug("perfcallbacks: forward probe failed", exc_info=True)
        return out
    out["forward_s"] = forward_s
    if forward_s > MAX_FORWARD_S:
        out["probes_skipped"] = f"forward takes {forward_s:.2f} s > {MAX_FORWARD_S} s"
        return out
    on_cpu = _on_cpu(model)
    steps = [("batch_scaling", lambda: probe_batch_scaling(ctx, model, batch, forward_s))]
    if on_cpu:
        steps.insert(0, ("threads", lambda: probe_threads(ctx, model, batch, forward_s)))
        if forward_s <= INT8_MAX_FORWARD_S and ctx.local.supports("int8_dynamic") in ("fast", "supported"):
            steps.append(("int8", lambda: probe_int8(ctx, model, batch)))
    else:
        steps.append(("autocast", lambda: probe_autocast(ctx, model, batch, forward_s)))
    if ctx.inference.grad_enabled_calls:
        steps.append(("grad_overhead", lambda: probe_grad_overhead(model, batch, forward_s)))
    for name, probe in steps:
        try:
            out.update(probe())
        except Exception:  # principle 1: a probe that fails is skipped
            log.debug("perfcallbacks: probe %s failed", name, exc_info=True)
    return out
