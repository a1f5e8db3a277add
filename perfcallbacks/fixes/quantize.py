"""The ``dynamic-quantization`` fix: int8 dynamic quantization of ``nn.Linear`` layers.

One code path, two callers:

- :func:`int8_candidate` only *builds*: a copy of the model whose Linear layers are
  int8, except the few whose own int8 error stands out (one forward on a few rows
  of the example batch ranks them), plus ``refine(violations)`` that keeps the next
  most sensitive ones fp32. The fix pipeline (:mod:`perfcallbacks.fixes.pipeline`)
  judges it on the job's own batches.
- :func:`quantize_guarded` builds the same candidate and judges it itself on the
  example batch (fidelity, then interleaved timing against the original), for
  callers outside the pipeline (``perfhints tune``, probes).

The user's model is never modified: the copy is a new module tree that *shares*
the original's parameters (read-only at inference; copying MiniLM's would cost
more than the rest of the build), with its own buffers and its own int8 layers.
"""

from __future__ import annotations

import copy
import logging
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from perfcallbacks.fixes._guard import Tolerance, check_margin, is_compiled, model_device, quiet_torch
from perfcallbacks.fixes.candidate import Candidate
from perfcallbacks.fixes.int8 import (
    BACKENDS,
    OPS_BACKENDS,
    WEIGHT_BITS,
    Int8DynamicLinear,  # noqa: F401  (re-exported: tests and callers look for it here)
    backend_status,
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

# Rows of the example batch the sensitivity forward sees: MiniLM's ranking from 4 rows is the
# one from 32 rows (same top 2, scores within 5%) at an eighth of the cost.
SENSITIVITY_ROWS = 4
# A layer is "clearly above the rest" at >= 2x the median layer's int8 error. MiniLM (512 real
# sentences): the FFN outputs of blocks 1 and 0 score 2.6x / 2.1x the median, the next 1.8x;
# keeping those two fp32 lifts token cosine 0.987 -> 0.991 (pooled 0.992 -> 0.995) for 1.88x -> 1.66x.
KEEP_FP32_ABOVE_MEDIAN = 2.0
# The backend micro-benchmark, once per process: the model's heaviest Linear shape on 1024 rows
# (a real batch is 32 x 128 tokens), 1 untimed + 3 timed calls per backend, the fastest call kept;
# a backend displaces the preferred one (fbgemm) only when 10% faster. Measured on this Zen4
# (AVX-512 VNNI), 2 threads, load ~8: the whole MiniLM int8 forward is 1.95x fp32 with fbgemm, 1.75x
# with onednn; at 1 thread both 2.25x. Under such load the bench itself is noisy (it picked onednn
# in 3 of 5 cold runs): a wrong pick costs speed the pipeline then measures, never fidelity.
_BENCH_ROWS = 1024
_BENCH_ROUNDS = 3
_BENCH_SHAPES = 1
_BENCH_TIE = 0.10
# (backends, shape buckets, threads) -> (chosen, ms per backend): measured once per process.
_FASTEST: dict[tuple[Any, ...], tuple[str, dict[str, float]]] = {}


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


# -- argument checks and skip reasons --------------------------------------------------------------
def _check_tolerance(tolerance: Any) -> QuantTolerance:
    tol = QuantTolerance() if tolerance is None else tolerance
    if not isinstance(tol, QuantTolerance):
        raise TypeError(f"tolerance must be a QuantTolerance, got {type(tolerance).__name__}")
    return tol


def _check_backend(backend: Any) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def _check_fp32_layers(fp32_layers: Any) -> list[str] | None:
    if fp32_layers is None:
        return None
    if isinstance(fp32_layers, (str, bytes)) or not isinstance(fp32_layers, Sequence) or not all(
            isinstance(n, str) for n in fp32_layers):
        raise TypeError(f"fp32_layers must be a sequence of layer names (str) or None, got {fp32_layers!r}")
    return list(dict.fromkeys(fp32_layers))


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


def _backend_candidates(backend: str) -> tuple[list[str], str]:
    """Backends ``backend`` may resolve to here, and why there are none (empty reason if some)."""
    status = backend_status()
    if backend != "auto":
        if status.get(backend) is None:
            return [backend], ""
        hint = "" if backend == "torchao" else " (use backend='auto')"
        return [], f"int8 backend {backend!r} unavailable: {status[backend]}{hint}"
    ops = [b for b in OPS_BACKENDS if status.get(b) is None]
    if ops:
        return ops, ""
    # torch.ao = fbgemm's kernels with coarser per-tensor weights; torchao weight-only int8 dequantizes
    # in eager mode (measured 0.83x of fp32). Neither is timed against the prepacked ops: fallbacks only.
    rest = [b for b in ("torch.ao", "torchao") if status.get(b) is None][:1]
    if rest:
        return rest, ""
    return [], ("no int8 backend available in this torch build: "
                + "; ".join(f"{name}: {why}" for name, why in status.items()) + " (pip install torchao)")


# -- the backend, chosen once per process ----------------------------------------------------------
def layer_shapes(layers: Mapping[str, nn.Module], top: int = _BENCH_SHAPES) -> dict[tuple[int, int], int]:
    """The ``top`` (in, out) Linear shapes carrying most weights, with how many layers have each."""
    count: dict[tuple[int, int], int] = {}
    for lin in layers.values():
        shape = (int(lin.in_features), int(lin.out_features))
        count[shape] = count.get(shape, 0) + 1
    heavy = sorted(count, key=lambda s: (-s[0] * s[1] * count[s], -s[0] * s[1]))[:top]  # ties: the bigger layer
    return {s: count[s] for s in heavy}


def _bucket(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def fastest_backend(candidates: Sequence[str], shapes: Mapping[tuple[int, int], int]) -> tuple[str, dict[str, float]]:
    """The fastest of ``candidates`` for Linear layers of ``shapes`` ((in, out) -> count), with each one's ms.

    Synthetic layers of those shapes on ``_BENCH_ROWS`` rows, calls interleaved, the
    fastest of a few rounds (the least disturbed by other processes), summed over the
    shapes weighted by their count. A backend replaces the first listed (the preference
    order) only when it is ``_BENCH_TIE`` faster: a closer call is noise. Measured
    once per process for each (candidates, shape buckets, thread count): kernels differ
    per machine (fbgemm vs oneDNN on AVX2 / AVX-512 VNNI / AMX), not per weight value.

    Example::

        >>> from perfcallbacks.fixes.int8 import available_backends
        >>> from perfcallbacks.fixes.quantize import fastest_backend
        >>> ops = [b for b in available_backends() if b in ("fbgemm", "onednn")]
        >>> not ops or fastest_backend(ops, {(256, 256): 2})[0] in ops
        True
    """
    names = list(dict.fromkeys(candidates))
    if len(names) == 1:
        return names[0], {}
    key = (tuple(names), tuple(sorted((_bucket(i), _bucket(o), n) for (i, o), n in shapes.items())),
           torch.get_num_threads())
    if key in _FASTEST:
        return _FASTEST[key]
    gen = torch.Generator().manual_seed(0)
    cases = []
    for (fan_in, fan_out), n in shapes.items():
        lin = nn.Linear(fan_in, fan_out)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(fan_out, fan_in, generator=gen) * fan_in ** -0.5)
        x = torch.randn(_BENCH_ROWS, fan_in, generator=gen)
        cases.append((n, x, {name: int8_linear(lin, name) for name in names}))
    best: dict[str, float] = dict.fromkeys(names, 0.0)
    with torch.inference_mode():
        for n, x, mods in cases:
            for mod in mods.values():  # first call: kernel selection / JIT, not timed
                mod(x)
            fastest = dict.fromkeys(names, math.inf)
            for _ in range(_BENCH_ROUNDS):
                for name, mod in mods.items():
                    start = time.perf_counter()
                    mod(x)
                    fastest[name] = min(fastest[name], time.perf_counter() - start)
            for name in names:
                best[name] += n * fastest[name]
    ms = {name: round(t * 1e3, 3) for name, t in best.items()}
    chosen = names[0]
    rival = min(names, key=best.__getitem__)
    if best[rival] * (1 + _BENCH_TIE) < best[chosen]:
        chosen = rival
    _FASTEST[key] = (chosen, ms)
    return _FASTEST[key]


# -- copying, slicing, scoring ---------------------------------------------------------------------
def _sharing_copy(model: nn.Module) -> nn.Module:
    """A new module tree for ``model`` that shares its parameters (and trainer back-references).

    Parameters are only read at inference, so sharing them is safe and skips copying
    the weights (MiniLM: ~1 s under load, 90 MB). Buffers are copied: a BatchNorm
    run in train mode writes its running stats, and those must not reach the user's model.
    """
    memo: dict[int, Any] = {id(p): p for p in model.parameters()}
    for attr in ("_trainer", "_fabric", "trainer_ref"):
        ref = model.__dict__.get(attr)
        if ref is not None:
            memo[id(ref)] = ref
    return copy.deepcopy(model, memo)


def _leading_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() >= 1 else None
    if isinstance(batch, Mapping):
        values: Any = batch.values()
    elif is_dataclass(batch) and not isinstance(batch, type):
        values = [getattr(batch, f.name) for f in fields(batch)]
    elif isinstance(batch, (tuple, list)):
        values = batch
    else:
        return None
    for value in values:
        size = _leading_size(value)
        if size is not None:
            return size
    return None


def _take_rows(batch: Any, n: int, size: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n] if batch.dim() >= 1 and batch.shape[0] == size else batch
    if isinstance(batch, Mapping):
        sliced = {k: _take_rows(v, n, size) for k, v in batch.items()}
        try:  # dict subclasses, BatchEncoding (its first argument is the data)
            return type(batch)(sliced)
        except Exception:  # noqa: BLE001 - a mapping type we cannot rebuild: call_model takes any mapping
            return sliced
    if is_dataclass(batch) and not isinstance(batch, type):
        return replace(batch, **{f.name: _take_rows(getattr(batch, f.name), n, size) for f in fields(batch)
                                 if f.init})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(_take_rows(v, n, size) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take_rows(v, n, size) for v in batch)
    return batch


def first_rows(batch: Any, n: int = SENSITIVITY_ROWS) -> Any:
    """``batch`` cut to its first ``n`` rows: every tensor whose dim 0 is the batch size, inside
    tensors, mappings (``BatchEncoding`` too), dataclasses, tuples and lists; other values kept.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.quantize import first_rows
        >>> b = first_rows({"input_ids": torch.zeros(32, 7), "n": 3, "mask": torch.ones(7)}, 4)
        >>> tuple(b["input_ids"].shape), b["n"], tuple(b["mask"].shape)
        ((4, 7), 3, (7,))
    """
    size = _leading_size(batch)
    return batch if size is None or size <= n else _take_rows(batch, n, size)


def _scores(model: nn.Module, batch: Any, layers: Mapping[str, nn.Module],
            int8: Mapping[str, nn.Module]) -> dict[str, float]:
    """Relative error of each of ``layers`` run int8 (``int8[name]``) on its real fp32 input, one forward."""
    scores: dict[str, float] = {}
    names = {id(m): n for n, m in layers.items()}

    def hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> None:
        name = names[id(module)]
        if name not in scores and args and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor):
            scores[name] = relative_error(out, int8[name](args[0]))

    handles = [m.register_forward_hook(hook) for m in layers.values()]
    try:
        with eval_mode(model), torch.inference_mode(), quiet_torch():
            call_model(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {n: scores.get(n, 0.0) for n in layers}  # never called: no error to rank


def _clearly_sensitive(order: Sequence[str], scores: Mapping[str, float]) -> list[str]:
    used = [scores[n] for n in order if scores[n] > 0]
    if not used:
        return []
    limit = KEEP_FP32_ABOVE_MEDIAN * statistics.median(used)
    return [n for n in order if scores[n] > 0 and scores[n] >= limit]


# -- the candidate ---------------------------------------------------------------------------------
@dataclass
class _Plan:
    """What every candidate of one build shares: the fp32 template, the int8 layers, the ranking."""

    template: nn.Module  # sharing copy of the user's model at build time (never handed out)
    names: list[str]  # every quantizable Linear, in module order
    int8: dict[str, nn.Module]
    backend: str
    tol: QuantTolerance
    rows: Any  # the sensitivity rows of the example batch, for a ranking computed later
    base_details: dict[str, Any]
    order: list[str] | None = None  # most sensitive first (None: not measured yet)
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def cap(self) -> int:
        return int(self.tol.max_fp32_fraction * len(self.names))

    def rank(self) -> list[str]:
        if self.order is None:  # fp32_layers came from a cached decision: rank only when refining
            todo = [n for n in self.names if n in self.int8]
            layers = {n: self.template.get_submodule(n) for n in todo}
            self.scores = _scores(self.template, self.rows, layers, self.int8)
            self.order = sorted(todo, key=lambda n: -self.scores[n])
        return self.order

    def candidate(self, fp32: list[str], start: float, timing: dict[str, float], **extra: Any) -> Candidate:
        """A new tree with the layers not in ``fp32`` swapped for the (shared, read-only) int8 ones."""
        t0 = time.perf_counter()
        model = _sharing_copy(self.template)
        keep = set(fp32)
        for name in self.names:
            if name not in keep:
                set_submodule(model, name, self.int8[name])
        details = dict(self.base_details)
        details.update(layers_fp32=list(fp32), layers_int8=len(self.names) - len(fp32), **extra)
        if self.order is not None:
            details["most_sensitive"] = {n: round(self.scores[n], 5) for n in self.order[:5]}
        timing = {**timing, "assemble": round(time.perf_counter() - t0, 4)}
        build_s = time.perf_counter() - start
        details["build_timing_s"] = {**timing, "total": round(build_s, 4)}
        return Candidate(FIX_ID, model, tolerance=self.tol, details=details, build_s=build_s,
                         refine=self.refiner(fp32), params={"backend": self.backend, "fp32_layers": list(fp32)})

    def refiner(self, fp32: list[str]) -> Callable[[list[str]], Candidate | None]:
        def refine(violations: list[str]) -> Candidate | None:
            """Twice as many layers fp32 (the next most sensitive), or ``None`` at the cap. Never raises."""
            start = time.perf_counter()
            try:
                want = min(self.cap, max(1, 2 * len(fp32)))
                if want <= len(fp32):
                    return None
                kept, timing = set(fp32), {}
                if self.order is None:
                    t0 = time.perf_counter()
                    self.rank()
                    timing["sensitivity"] = round(time.perf_counter() - t0, 4)
                more = [n for n in self.rank() if n not in kept][: want - len(fp32)]
                if not more:
                    return None
                return self.candidate(fp32 + more, start, timing, refined_from=len(fp32),
                                      violations=list(violations))
            except Exception:  # a refinement that fails ends the search: rejected, the run goes on
                log.debug("dynamic-quantization refine failed", exc_info=True)
                return None

        return refine


def int8_candidate(model: nn.Module, example_batch: Any, *, tolerance: QuantTolerance | None = None,
                   backend: str = "auto", fp32_layers: Sequence[str] | None = None) -> Candidate | FixResult:
    """Build the int8 candidate of ``model`` for the fix pipeline to judge (nothing is timed against fp32).

    The copy shares the user's parameters (never written) and swaps each Linear for
    an int8 one, except those kept fp32: the layers whose own int8 error, measured
    in one forward on the first rows of ``example_batch``, is at least twice the
    median layer's (capped at ``tolerance.max_fp32_fraction``), or exactly
    ``fp32_layers`` (a cached decision: no forward at all). ``refine(violations)``
    of the result keeps twice as many of the most sensitive layers fp32, reusing the
    int8 layers already built, until the cap (then ``None``).

    Returns a :class:`~perfcallbacks.fixes.candidate.Candidate`, or a ``FixResult``:
    ``skipped`` (compiled, already quantized, not on CPU, no Linear, not fp32, no
    backend) or ``failed`` (any internal error, e.g. the batch does not fit the model).

    Args:
        backend: ``"auto"`` (the fastest prepacked backend here, timed once per process
            on a synthetic Linear of the model's dominant shape), ``"fbgemm"``,
            ``"onednn"``, ``"torch.ao"`` (stock per-tensor) or ``"torchao"``.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes.quantize import int8_candidate
        >>> model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
        >>> cand = int8_candidate(model, torch.randn(8, 64))
        >>> cand.fix_id, cand.model is model, cand.details["layers_total"]
        ('dynamic-quantization', False, 2)
    """
    start = time.perf_counter()
    tol = _check_tolerance(tolerance)
    backend = _check_backend(backend)
    wanted = _check_fp32_layers(fp32_layers)
    details: dict[str, Any] = {"requested_backend": backend, "tolerance": tol.to_dict()}
    try:
        reason = _skip_reason(model)
        if reason:
            return FixResult(FIX_ID, "skipped", reason, details=details)
        candidates, why_none = _backend_candidates(backend)
        if not candidates:
            return FixResult(FIX_ID, "skipped", why_none, details=details)
        return _int8_candidate(model, example_batch, tol, candidates, wanted, details, start)
    except Exception as err:  # a build failure never reaches the user's run
        log.debug("dynamic-quantization candidate failed", exc_info=True)
        return FixResult(FIX_ID, "failed", f"int8 candidate build failed: {type(err).__name__}: {err}",
                         details=details)


def _int8_candidate(model: nn.Module, batch: Any, tol: QuantTolerance, candidates: list[str],
                    wanted: list[str] | None, details: dict[str, Any], start: float) -> Candidate | FixResult:
    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    template = _sharing_copy(model)
    layers = linear_layers(template)
    names = list(layers)
    timing["copy"] = round(time.perf_counter() - t0, 4)
    if wanted is not None and not set(wanted) <= set(names):
        unknown = sorted(set(wanted) - set(names))[:3]
        return FixResult(FIX_ID, "failed", f"fp32_layers names no Linear layer of this model: {unknown}",
                         details=details)

    t0 = time.perf_counter()
    if len(candidates) > 1:
        shapes = layer_shapes(layers)
        backend, bench_ms = fastest_backend(candidates, shapes)
        details["backend_choice"] = {"ms_per_model_layers": bench_ms, "shapes": [[*s, n] for s, n in shapes.items()],
                                     "rows": _BENCH_ROWS}
    else:
        backend = candidates[0]
    timing["backend"] = round(time.perf_counter() - t0, 4)

    t0 = time.perf_counter()
    todo = names if wanted is None else [n for n in names if n not in set(wanted)]
    with quiet_torch():
        int8 = {n: int8_linear(layers[n], backend) for n in todo}
    timing["quantize"] = round(time.perf_counter() - t0, 4)

    rows = first_rows(batch)
    details.update(backend=backend, layers_total=len(names),
                   weight_bits=WEIGHT_BITS if backend in OPS_BACKENDS else 8,
                   sensitivity_rows=_leading_size(rows))
    plan = _Plan(template, names, int8, backend, tol, rows, details)
    if wanted is None:
        t0 = time.perf_counter()
        plan.scores = _scores(template, rows, layers, int8)
        plan.order = sorted(names, key=lambda n: -plan.scores[n])
        timing["sensitivity"] = round(time.perf_counter() - t0, 4)
        fp32 = _clearly_sensitive(plan.order, plan.scores)[: plan.cap]
        details["fp32_rule"] = f"int8 error >= {KEEP_FP32_ABOVE_MEDIAN:g}x the median layer's, at most {plan.cap}"
    else:
        fp32 = [n for n in names if n in set(wanted)]  # module order, exactly those
        details["fp32_rule"] = "given (fp32_layers)"
    return plan.candidate(fp32, start, timing)


# -- the self-judging guard (callers outside the pipeline) -----------------------------------------
def quantize_guarded(model: nn.Module, example_batch: Any, *, tolerance: QuantTolerance | None = None,
                     margin: float = 0.05, validate_fn: Callable[[nn.Module], float] | None = None,
                     backend: str = "auto", repeats: int = 5) -> tuple[FixResult, nn.Module]:
    """Int8 dynamic quantization of ``model``'s Linear layers, kept only if measured faster and faithful.

    Builds the candidate of :func:`int8_candidate`, checks its fidelity on
    ``example_batch`` (refining, i.e. keeping more of the most sensitive layers
    fp32, until within ``tolerance`` or at ``max_fp32_fraction``), then times it
    against ``model`` on the same batch (``repeats`` interleaved runs, medians).

    Returns ``(result, new_model)``: a new quantized model when ``applied``, else
    the original ``model`` itself. The original is never modified (its parameters
    stay byte-identical; the new model reads them for its fp32 layers), so its
    fp32 weights remain available. Already-quantized, ``torch.compile``'d, non-CPU
    or Linear-free models are ``skipped``; a fix that is not ``1 + margin`` times
    faster, breaks ``tolerance`` or the task guard (``validate_fn(model) -> metric``,
    e.g. a validation loss) is ``rejected``; any internal error gives ``failed``.
    Deprecation noise of ``torch.ao`` is silenced around our calls only.

    Args:
        backend: ``"auto"`` (the fastest prepacked backend on this machine, timed once
            per process), ``"fbgemm"``, ``"onednn"``, ``"torch.ao"`` (stock per-tensor
            ``quantize_dynamic``) or ``"torchao"``.

    Example::

        >>> import torch
        >>> from perfcallbacks.fixes import quantize_guarded
        >>> model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))
        >>> result, qmodel = quantize_guarded(model, torch.randn(64, 256))
        >>> result.status in ("applied", "rejected"), (qmodel is model) == (result.status != "applied")
        (True, True)
    """
    start = time.perf_counter()
    tol = _check_tolerance(tolerance)
    margin = check_margin(margin)
    backend = _check_backend(backend)
    if validate_fn is not None and not callable(validate_fn):
        raise TypeError(f"validate_fn must be callable or None, got {type(validate_fn).__name__}")
    details: dict[str, Any] = {"requested_backend": backend, "weight_bits": WEIGHT_BITS, "tolerance": tol.to_dict()}
    try:
        reason = _skip_reason(model) or _backend_candidates(backend)[1]
        if reason:
            return FixResult(FIX_ID, "skipped", reason, details=details, cost_s=time.perf_counter() - start), model
        result, new = _judge(model, example_batch, tol, margin, validate_fn, backend, details, repeats)
    except Exception as err:  # a measurement failure never reaches the user's run
        log.debug("dynamic-quantization fix failed", exc_info=True)
        result, new = FixResult(FIX_ID, "failed", f"measurement failed: {type(err).__name__}: {err}",
                                details=details), model
    result.cost_s = time.perf_counter() - start
    return result, new


def _judge(model: nn.Module, batch: Any, tol: QuantTolerance, margin: float,
           validate_fn: Callable[[nn.Module], float] | None, backend: str,
           details: dict[str, Any], repeats: int) -> tuple[FixResult, nn.Module]:
    with eval_mode(model), torch.inference_mode():
        out = call_model(model, batch)
        argmax = output_kind(out, model) == "scores"
        ref = output_tensor(out).detach().clone()
    mask = padding_mask(batch, ref)
    built = int8_candidate(model, batch, tolerance=tol, backend=backend)
    if isinstance(built, FixResult):
        built.details = {**details, **built.details}
        return built, model
    cand: Candidate = built
    tried: list[dict[str, Any]] = []
    while True:
        with eval_mode(cand.model), torch.inference_mode():
            fid = fidelity(ref, output_tensor(call_model(cand.model, batch)), argmax=argmax, mask=mask)
        bad = tol.violations(fid)
        tried.append({"backend": cand.details["backend"], "fidelity": fid,
                      "layers_fp32": len(cand.details["layers_fp32"]), "violations": bad})
        if not bad:
            break
        nxt = cand.refine(bad) if cand.refine is not None else None
        if nxt is None:
            details.update(cand.details, candidates=tried)
            total = cand.details["layers_total"]
            return FixResult(FIX_ID, "rejected", f"int8 outside tolerance even with {tried[-1]['layers_fp32']} of "
                             f"{total} Linear layers kept fp32: {'; '.join(bad)}", fidelity=fid,
                             details=details), model
        cand = nxt
    details.update(cand.details, candidates=tried)

    def runner(m: nn.Module) -> Callable[[], Any]:
        def run() -> Any:
            with torch.inference_mode():
                return call_model(m, batch)
        return run

    with eval_mode(model), eval_mode(cand.model):
        times = compare_times({"fp32": runner(model), "int8": runner(cand.model)}, repeats=repeats, warmup=1)
    speedup = times["fp32"] / times["int8"]
    tried[-1]["speedup"] = speedup
    best, kept, total = cand.details["backend"], cand.details["layers_fp32"], cand.details["layers_total"]
    details.update(fp32_s=times["fp32"], int8_s=times["int8"])
    if speedup < 1.0 + margin:
        return FixResult(FIX_ID, "rejected", f"int8 ({best}) measured {speedup:.3f}x vs fp32 "
                         f"(needs {1 + margin:.2f}x)", speedup=speedup, fidelity=fid, details=details), model
    if validate_fn is not None:
        with eval_mode(model), torch.no_grad():
            ref_metric = float(validate_fn(model))
        with eval_mode(cand.model), torch.no_grad():
            metric = float(validate_fn(cand.model))
        details.update(task_metric_fp32=ref_metric, task_metric_int8=metric)
        if not tol.task_ok(ref_metric, metric):
            return FixResult(FIX_ID, "rejected", f"task metric moved {ref_metric:.5g} -> {metric:.5g}, beyond "
                             f"task_rel={tol.task_rel}", speedup=speedup, fidelity=fid, details=details), model
    cand.model.train(model.training)  # the new model mirrors the user's train/eval state
    note = f", {len(kept)} most sensitive kept fp32" if kept else ""
    return FixResult(FIX_ID, "applied", f"int8 {best}: {speedup:.2f}x faster, cosine {fid['cosine_mean']:.4f}, "
                     f"{total - len(kept)}/{total} Linear layers int8{note}",
                     speedup=speedup, fidelity=fid, details=details), cand.model
