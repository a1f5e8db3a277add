"""The ``dynamic-quantization`` fix: guarded int8 dynamic quantization of ``nn.Linear`` layers.

How it stays faithful: each Linear's own error is measured on the real batch
(one forward with hooks), the whole model is quantized, and the most sensitive
layers go back to fp32 one step at a time until the outputs are within
tolerance. Each available backend is built and timed against the untouched
model in the same process; the fastest faithful one is kept only if it beats
fp32 by the margin. The user's model is never modified (we work on a copy).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import Tolerance, check_margin, is_compiled, model_device, quiet_torch, safe_copy
from perfcallbacks.fixes.int8 import (
    OPS_BACKENDS,
    BACKENDS,
    WEIGHT_BITS,
    Int8DynamicLinear,
    available_backends,
    int8_linear,
    is_quantized,
    linear_layers,
    relative_error,
    set_submodule,
)
from perfcallbacks.measure import (
    call_model,
    compare_times,
    eval_mode,
    fidelity,
    output_kind,
    output_tensor,
    padding_mask,
)
from perfcallbacks.report import FixResult

log = logging.getLogger(__name__)
FIX_ID = "dynamic-quantization"


@dataclass(frozen=True)
class QuantTolerance(Tolerance):
    """Tolerance of the int8 fix: output fidelity plus an optional task-metric guard.

    Args:
        cosine_mean / argmax_agreement / cosine_min / max_abs_error: see :class:`Tolerance`.
        task_rel: how much worse (relative) the ``validate_fn`` metric may get, 0.01 = 1%.
        task_higher_is_better: ``False`` for a loss, ``True`` for an accuracy.
        max_fp32_fraction: at most this share of Linear layers may be kept in fp32.

    Example::

        >>> from perfcallbacks.fixes import QuantTolerance
        >>> QuantTolerance(cosine_mean=0.995, task_rel=0.02).task_ok(1.0, 1.01)
        True
    """

    task_rel: float = 0.01
    task_higher_is_better: bool = False
    max_fp32_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.task_rel, (int, float)) or self.task_rel < 0:
            raise ValueError(f"QuantTolerance task_rel must be >= 0, got {self.task_rel!r}")
        if not isinstance(self.max_fp32_fraction, (int, float)) or not 0 <= self.max_fp32_fraction <= 1:
            raise ValueError(f"QuantTolerance max_fp32_fraction must be in [0, 1], got {self.max_fp32_fraction!r}")

    def task_ok(self, reference: float, metric: float) -> bool:
        """Whether ``metric`` (quantized) is within ``task_rel`` of ``reference`` (fp32)."""
        if math.isnan(metric):
            return False
        slack = self.task_rel * max(abs(reference), 1e-12)
        return metric >= reference - slack if self.task_higher_is_better else metric <= reference + slack


def _sensitivity(work: nn.Module, batch: Any, layers: dict[str, nn.Linear], backend: str) -> dict[str, float]:
    """Relative output error of each Linear quantized alone, on its real input from ``batch``."""
    scores: dict[str, float] = {}
    names = {id(m): n for n, m in layers.items()}

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        name = names[id(module)]
        if name not in scores and args and isinstance(args[0], torch.Tensor):
            scores[name] = relative_error(out, int8_linear(module, backend)(args[0]))

    handles = [m.register_forward_hook(hook) for m in layers.values()]
    try:
        with torch.inference_mode():
            call_model(work, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: scores.get(n, 0.0) for n in layers}


def _build(work: nn.Module, batch: Any, ref: torch.Tensor, layers: dict[str, nn.Linear], order: list[str],
           backend: str, tol: QuantTolerance, *, argmax: bool, start: int = 0
           ) -> tuple[nn.Module, dict[str, float], list[str], list[str]]:
    """Quantize a copy of ``work`` keeping the ``k`` most sensitive layers fp32, smallest ``k`` within ``tol``.

    Fidelity grows about monotonically with ``k``: try ``start`` (0, or what an
    earlier backend needed), then the cap, then bisect (a handful of forwards).
    """
    cand = safe_copy(work)
    originals = {n: cand.get_submodule(n) for n in layers}
    with quiet_torch():
        int8 = {n: int8_linear(lin, backend) for n, lin in originals.items()}
    max_keep = int(tol.max_fp32_fraction * len(order))
    seen: dict[int, tuple[dict[str, float], list[str]]] = {}

    def trial(k: int) -> tuple[dict[str, float], list[str]]:
        if k not in seen:
            fp32 = set(order[:k])
            for name in order:  # the k most sensitive stay fp32, the rest int8
                set_submodule(cand, name, originals[name] if name in fp32 else int8[name])
            with torch.inference_mode():
                fid = fidelity(ref, output_tensor(call_model(cand, batch)), argmax=argmax,
                               mask=padding_mask(batch, ref))
            seen[k] = (fid, tol.violations(fid))
        return seen[k]

    start = min(start, max_keep)
    k = start
    if trial(start)[1]:
        # Exponential then binary search: usually only a few layers need fp32.
        lo, hi = start, start + 1
        while hi < max_keep and trial(hi)[1]:
            lo, hi = hi, min(max_keep, start + 2 * (hi - start))
        hi = min(hi, max_keep)
        if not trial(hi)[1]:
            while hi - lo > 1:  # invariant: lo fails, hi passes
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if not trial(mid)[1] else (mid, hi)
        k = hi
    fid, bad = trial(k)
    fp32 = set(order[:k])
    for name in order:
        set_submodule(cand, name, originals[name] if name in fp32 else int8[name])
    return cand, fid, order[:k], bad


def _skip_reason(model: nn.Module) -> str | None:
    if is_compiled(model):
        return ("model is torch.compile'd (OptimizedModule): quantize the original module "
                "(model._orig_mod) before compiling")
    reason = is_quantized(model)
    if reason:
        return f"model is already quantized: {reason}"
    device = model_device(model)
    if device.type != "cpu":
        return f"model is on {device.type}: int8 dynamic quantization is a CPU inference fix"
    layers = linear_layers(model)
    if not layers:
        return "model has no nn.Linear layer to quantize"
    if any(lin.weight.dtype != torch.float32 for lin in layers.values()):
        return "Linear weights are not fp32: int8 dynamic quantization expects an fp32 model"
    return None


def _backends(backend: str) -> list[str]:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    have = available_backends()
    if backend != "auto":
        return [backend] if backend in have else []
    ops = [b for b in have if b in OPS_BACKENDS]
    # torchao int8 is slower than fp32 in eager mode on CPU (measured 0.83x): only when torch.ao is gone.
    return ops or [b for b in have if b in ("torch.ao", "torchao")][:1]


def quantize_guarded(model: nn.Module, example_batch: Any, *, tolerance: QuantTolerance | None = None,
                     margin: float = 0.05, validate_fn: Callable[[nn.Module], float] | None = None,
                     backend: str = "auto", repeats: int = 5) -> tuple[FixResult, nn.Module]:
    """Int8 dynamic quantization of ``model``'s Linear layers, kept only if measured faster and faithful.

    Returns ``(result, new_model)``: a new quantized model when ``applied``, else
    the original ``model`` itself. The original is never modified (its parameters
    stay byte-identical), so its fp32 weights remain available. Already-quantized,
    ``torch.compile``'d, non-CPU or Linear-free models are ``skipped``; a fix that
    is not ``1 + margin`` times faster, breaks ``tolerance`` or the task guard
    (``validate_fn(model) -> metric``, e.g. a validation loss) is ``rejected``;
    any internal error gives ``failed``. Deprecation noise of ``torch.ao`` is
    silenced around our calls only.

    Args:
        backend: ``"auto"`` (measure every backend available here and keep the
            fastest), ``"fbgemm"``, ``"onednn"``, ``"torch.ao"`` (stock
            per-tensor ``quantize_dynamic``) or ``"torchao"``.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes import quantize_guarded
        >>> model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        >>> result, qmodel = quantize_guarded(model, torch.randn(64, 256))
        >>> result.status in ("applied", "rejected"), (qmodel is model) == (result.status != "applied")
        (True, True)
    """
    tol = QuantTolerance() if tolerance is None else tolerance
    if not isinstance(tol, QuantTolerance):
        raise TypeError(f"tolerance must be a QuantTolerance, got {type(tolerance).__name__}")
    margin = check_margin(margin)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if validate_fn is not None and not callable(validate_fn):
        raise TypeError(f"validate_fn must be callable or None, got {type(validate_fn).__name__}")
    backends = _backends(backend)
    details: dict[str, Any] = {"requested_backend": backend, "weight_bits": WEIGHT_BITS,
                               "tolerance": tol.to_dict()}
    reason = _skip_reason(model)
    if reason:
        return FixResult(FIX_ID, "skipped", reason, details=details), model
    if not backends:
        hint = "pip install torchao" if backend in ("auto", "torchao") else "use backend='auto'"
        return FixResult(FIX_ID, "skipped", f"no int8 backend {backend!r} available in this torch build ({hint})",
                         details=details), model
    try:
        return _quantize(model, example_batch, tol, margin, validate_fn, backends, details, repeats)
    except Exception as err:  # a measurement failure never reaches the user's run
        log.debug("dynamic-quantization fix failed", exc_info=True)
        return FixResult(FIX_ID, "failed", f"measurement failed: {type(err).__name__}: {err}",
                         details=details), model


def _quantize(model: nn.Module, batch: Any, tol: QuantTolerance, margin: float,
              validate_fn: Callable[[nn.Module], float] | None, backends: list[str],
              details: dict[str, Any], repeats: int) -> tuple[FixResult, nn.Module]:
    work = safe_copy(model).eval()
    layers = linear_layers(work)
    with eval_mode(model), torch.inference_mode():
        out = call_model(model, batch)
        argmax = output_kind(out, model) == "scores"
        ref = output_tensor(out).detach().clone()
    with quiet_torch():
        sens = _sensitivity(work, batch, layers, backends[0])
    order = sorted(layers, key=lambda n: -sens[n])
    details.update(layers_total=len(layers),
                   most_sensitive={n: round(sens[n], 5) for n in order[:5]})

    built: dict[str, tuple[nn.Module, dict[str, float], list[str]]] = {}
    tried: list[dict[str, Any]] = []
    start = 0
    for name in backends:
        cand, fid, kept, bad = _build(work, batch, ref, layers, order, name, tol, argmax=argmax, start=start)
        start = len(kept)
        tried.append({"backend": name, "fidelity": fid, "layers_fp32": len(kept), "violations": bad})
        if not bad:
            built[name] = (cand, fid, kept)
    details["candidates"] = tried
    if not built:
        worst = tried[0]
        return FixResult(FIX_ID, "rejected", f"int8 outside tolerance even with {worst['layers_fp32']} of "
                         f"{len(layers)} Linear layers kept fp32: {'; '.join(worst['violations'])}",
                         fidelity=worst["fidelity"], details=details), model

    def runner(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return call_model(m, batch)
        return run

    with eval_mode(model):
        times = compare_times({"fp32": runner(model), **{n: runner(c[0]) for n, c in built.items()}},
                              repeats=repeats, warmup=1)
    for row in tried:
        if row["backend"] in times:
            row["speedup"] = times["fp32"] / times[row["backend"]]
    best = min(built, key=times.__getitem__)
    cand, fid, kept = built[best]
    speedup = times["fp32"] / times[best]
    details.update(backend=best, fp32_s=times["fp32"], int8_s=times[best], layers_int8=len(layers) - len(kept),
                   layers_fp32=kept)
    if speedup < 1.0 + margin:
        return FixResult(FIX_ID, "rejected", f"int8 ({best}) measured {speedup:.3f}x vs fp32 "
                         f"(needs {1 + margin:.2f}x)", speedup=speedup, fidelity=fid, details=details), model
    if validate_fn is not None:
        with eval_mode(model), torch.no_grad():
            ref_metric = float(validate_fn(model))
        with eval_mode(cand), torch.no_grad():
            metric = float(validate_fn(cand))
        details.update(task_metric_fp32=ref_metric, task_metric_int8=metric)
        if not tol.task_ok(ref_metric, metric):
            return FixResult(FIX_ID, "rejected", f"task metric moved {ref_metric:.5g} -> {metric:.5g}, beyond "
                             f"task_rel={tol.task_rel}", speedup=speedup, fidelity=fid, details=details), model
    cand.train(model.training)  # the new model mirrors the user's train/eval state
    note = f", {len(kept)} most sensitive kept fp32" if kept else ""
    return FixResult(FIX_ID, "applied", f"int8 {best}: {speedup:.2f}x faster, cosine {fid['cosine_mean']:.4f}, "
                     f"{len(layers) - len(kept)}/{len(layers)} Linear layers int8{note}",
                     speedup=speedup, fidelity=fid, details=details), cand
