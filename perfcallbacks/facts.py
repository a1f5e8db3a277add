"""Process-wide facts the checks read: debug modes, determinism, cudnn, compile counters, layout, attention.

Framework-free: called by the :class:`~perfcallbacks.advisor.Advisor` before each phase's checks,
so every adapter and a plain loop see the same facts. Must be cheap (it runs at setup, end of
warm-up and each inference stage) and never raise.

Where a fact is worth measuring (the cost of anomaly detection, the channels_last or SDPA speedup),
a one-shot forward pre-hook keeps one real input of the model during warm-up and
:func:`run_warmup_probes` measures forward + backward on it at the end of warm-up: no optimizer
step, gradients returned by ``torch.autograd.grad`` (never accumulated into ``.grad``), eval mode
(no BatchNorm statistics updated), RNG state restored. Nothing runs when no probe is wanted.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from perfcallbacks.context import (
    AttentionFacts,
    CompileFacts,
    LayoutFacts,
    ProbeInput,
    RunContext,
)
from perfcallbacks.model_facts import model_device

log = logging.getLogger("perfcallbacks")

# Pre-hook calls observed for input shapes (cudnn-benchmark-off) before the hook removes itself.
SHAPE_CALLS = 64
# Probes measure only when they cost at most this share of the fit (or this many seconds for a short or
# unknown one); like the fix guard, a one-off measurement, and skipped (with the numbers) when it would not fit.
PROBE_JOB_SHARE = 0.05
PROBE_MIN_BUDGET_S = 1.0
PROBE_MIN_REPEATS = 2
PROBE_MAX_REPEATS = 21  # ms-scale steps: more repeats, still inside the budget (single calls are noisy)
# A model copy (channels_last / SDPA probes) only when the copy is this small (bytes) ...
COPY_MAX_BYTES = 1 << 30
# ... and, on CUDA, at most this share of the free memory.
COPY_CUDA_FREE_SHARE = 0.2
# Conv2d weight share above which a model is worth the channels_last probe.
CONV_PROBE_SHARE = 0.2
# Hand-written attention: softmax over a matmul of queries and keys, without SDPA.
_SOFTMAX = re.compile(r"\bsoftmax\s*\(")
_MATMUL = re.compile(r"(@|\bmatmul\s*\(|\bbmm\s*\(|\beinsum\s*\()")
_SKIP_SOURCE_PREFIXES = ("torch.", "transformers.", "lightning.", "pytorch_lightning.", "perfcallbacks.")

_source_cache: "weakref.WeakKeyDictionary[type, bool]" = weakref.WeakKeyDictionary()


def capture_process_facts(ctx: RunContext, model: Any = None) -> None:
    """Fill the process-wide facts of ``ctx``; at the end of warm-up, run the warm-up probes.

    Each part is contained: a failing part is logged at DEBUG and the others still run.

    Example::

        >>> import torch
        >>> from perfcallbacks import DeviceProfile
        >>> from perfcallbacks.context import RunContext
        >>> from perfcallbacks.facts import capture_process_facts
        >>> ctx = RunContext(local=DeviceProfile.preset("cpu-avx2"))
        >>> with torch.autograd.set_detect_anomaly(True):
        ...     capture_process_facts(ctx)
        >>> ctx.debug.anomaly
        True
    """
    model = model if isinstance(model, nn.Module) else None
    parts: list[Callable[[RunContext, nn.Module | None], None]] = [
        _debug_facts, _compile_facts, _layout_facts, _attention_facts]
    if ctx.phase == "setup":
        parts.append(_attach_probe_hook)
    elif ctx.phase == "warmup":
        parts.append(run_warmup_probes)
    else:
        parts.append(_release_probe)
    for part in parts:
        try:
            part(ctx, model)
        except Exception:  # principle 1
            log.debug("perfcallbacks: process facts %s failed", part.__name__, exc_info=True)


# -- debug modes ---------------------------------------------------------------------------------
def active_profiler() -> str | None:
    """The profiler recording this thread, if any: the autograd/kineto profiler or a ``sys.setprofile`` one."""
    try:
        if torch.autograd.profiler._is_profiler_enabled:
            return "torch.profiler"
    except Exception:
        pass
    try:
        if torch._C._autograd._profiler_enabled():
            return "torch.profiler"
    except Exception:
        pass
    hook = sys.getprofile()
    if hook is not None:
        owner = getattr(hook, "__self__", None)
        kind = type(owner if owner is not None else hook)
        return f"{kind.__module__}.{kind.__qualname__}"
    return None


def _debug_facts(ctx: RunContext, model: nn.Module | None) -> None:
    debug = ctx.debug
    debug.anomaly = bool(torch.is_anomaly_enabled())
    debug.launch_blocking = os.environ.get("CUDA_LAUNCH_BLOCKING", "").strip().lower() not in ("", "0", "false")
    debug.deterministic = bool(torch.are_deterministic_algorithms_enabled())
    debug.cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
    # Never initialise CUDA to read a debug flag: only when the process already uses it.
    cuda = sys.modules.get("torch.cuda")
    if cuda is not None and cuda.is_initialized():
        debug.sync_debug_mode = int(cuda.get_sync_debug_mode())
    # A profiler named by the framework (Lightning's Trainer(profiler=...)) stays known between its actions.
    debug.profiler = active_profiler() or (debug.profiler if "profiler" in debug.sources else None)


# -- torch.compile -------------------------------------------------------------------------------
def compiled_modules(model: nn.Module | None) -> list[str]:
    """Names of the compiled modules of ``model`` ("" = the model itself): ``torch.compile(m)`` wrappers,
    ``m.compile()`` and Lightning's compiled LightningModule. Imports nothing."""
    if model is None:
        return []
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    optimized = getattr(eval_frame, "OptimizedModule", None)
    names = []
    for name, module in model.named_modules():
        if (optimized is not None and isinstance(module, optimized)) or \
                getattr(module, "_compiled_call_impl", None) is not None or \
                getattr(module, "_compiler_ctx", None) is not None:
            names.append(name)
    return names


def _dynamo_snapshot() -> dict[str, Any] | None:
    """Dynamo's own counters, or ``None`` when dynamo was never imported (nothing was compiled)."""
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None:
        return None
    counters = getattr(utils, "counters", {})
    breaks = {str(k): int(v) for k, v in dict(counters.get("graph_break", {})).items()}
    unique = dict(counters.get("stats", {})).get("unique_graphs")
    records = []
    get_metrics = getattr(utils, "get_compilation_metrics", None)
    if callable(get_metrics):
        for metric in get_metrics():
            reason = getattr(metric, "recompile_reason", None)
            compile_id = str(getattr(metric, "compile_id", ""))
            seconds = getattr(metric, "entire_frame_compile_time_s", None)
            # torch._dynamo.reset() restarts compile ids ("0/0" again) but keeps the records: the id alone
            # would hide a new run's recompiles behind an earlier run's; the start time tells them apart.
            key = f"{compile_id}@{getattr(metric, 'start_time_us', None) or getattr(metric, 'start_time', '')}"
            records.append({"compile_id": compile_id, "key": key, "frame": str(getattr(metric, "co_name", "") or ""),
                            "reason": str(reason) if reason else "",
                            "compile_s": float(seconds) if isinstance(seconds, (int, float)) else None})
    return {"graph_breaks": breaks, "unique_graphs": unique, "records": records}


def _compile_facts(ctx: RunContext, model: nn.Module | None) -> None:
    names = compiled_modules(model)
    facts = ctx.compile
    if facts is None:
        if not names:
            return
        facts = ctx.compile = CompileFacts()
    if names:
        facts.compiled = True
        facts.modules = names
    snap = _dynamo_snapshot()
    if not facts.baseline and (snap is None or ctx.phase == "setup"):
        # What dynamo did before this run (other models, earlier fits) is not this run's doing; dynamo not
        # loaded yet (HF compiles in train()) means nothing was compiled before: a zero baseline.
        facts.baseline = {"graph_breaks": dict(snap["graph_breaks"]) if snap else {},
                          "unique_graphs": (snap["unique_graphs"] or 0) if snap else 0,
                          "compile_keys": [r["key"] for r in snap["records"]] if snap else []}
    if snap is None or ctx.phase == "setup":
        return
    base_breaks = facts.baseline.get("graph_breaks", {})
    facts.graph_breaks = {k: v - base_breaks.get(k, 0) for k, v in snap["graph_breaks"].items()
                          if v - base_breaks.get(k, 0) > 0}
    seen = set(facts.baseline.get("compile_keys", []))
    facts.recompiles = [r for r in snap["records"] if r["reason"] and r["key"] not in seen]
    if snap["unique_graphs"] is not None:
        facts.unique_graphs = int(snap["unique_graphs"]) - int(facts.baseline.get("unique_graphs", 0) or 0)


# -- layout (conv models) ------------------------------------------------------------------------
def conv_weight_share(model: nn.Module) -> tuple[float, int]:
    """(share of Linear+Conv weights in Conv2d layers, number of Conv2d layers): a static proxy."""
    conv = other = layers = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            conv += module.weight.numel()
            layers += 1
        elif isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            weight = getattr(module, "weight", None)
            if isinstance(weight, torch.Tensor) and not isinstance(weight, nn.parameter.UninitializedParameter):
                other += weight.numel()
    total = conv + other
    return (conv / total if total else 0.0), layers


def _layout_facts(ctx: RunContext, model: nn.Module | None) -> None:
    if model is None:
        return
    share, layers = conv_weight_share(model)
    if not layers:
        ctx.layout = None
        return
    from perfcallbacks.fixes.channels_last import weights_channels_last

    layout = ctx.layout or LayoutFacts()
    layout.conv2d_layers = layers
    if not layout.measured.get("conv2d_flop_share"):
        layout.conv2d_share = share
    layout.weights_channels_last = weights_channels_last(model)
    ctx.layout = layout


# -- attention -----------------------------------------------------------------------------------
def _hand_written_attention(cls: type) -> bool:
    cached = _source_cache.get(cls)
    if cached is not None:
        return cached
    found = False
    if not cls.__module__.startswith(_SKIP_SOURCE_PREFIXES):
        try:
            source = inspect.getsource(cls.forward)
            found = bool(_SOFTMAX.search(source) and _MATMUL.search(source)
                         and "scaled_dot_product_attention" not in source)
        except (OSError, TypeError):
            found = False
    _source_cache[cls] = found
    return found


def eager_attention_modules(model: nn.Module, limit: int = 8) -> list[str]:
    """Modules whose own ``forward`` computes ``softmax(q @ k^T)`` by hand (read from the source, once per class)."""
    found = []
    for name, module in model.named_modules():
        if _hand_written_attention(type(module)):
            found.append(name or type(module).__name__)
            if len(found) >= limit:
                break
    return found


def _attention_facts(ctx: RunContext, model: nn.Module | None) -> None:
    if model is None:
        return
    from perfcallbacks.fixes.sdpa import attention_implementation, hf_attention_modules, supports_sdpa

    facts = ctx.attention or AttentionFacts()
    modules = hf_attention_modules(model)
    if modules:
        _, hf = modules[0]
        facts.implementation = attention_implementation(hf)
        facts.supports_sdpa = supports_sdpa(hf)
        facts.model_class = type(hf).__name__
    elif ctx.phase == "setup":
        facts.eager_modules = eager_attention_modules(model)
    if modules or facts.eager_modules:
        ctx.attention = facts


# -- probes --------------------------------------------------------------------------------------
def probes_wanted(ctx: RunContext) -> list[str]:
    """Which warm-up probes this run calls for (none on a clean run: no hook is attached then)."""
    wanted = []
    if ctx.debug.anomaly or ctx.debug.deterministic:
        wanted.append("debug")
    if ctx.layout is not None and ctx.layout.conv2d_layers and ctx.layout.conv2d_share >= CONV_PROBE_SHARE:
        wanted.append("channels_last")
    attn = ctx.attention
    if attn is not None and attn.implementation == "eager" and attn.supports_sdpa:
        wanted.append("sdpa")
    return wanted


def _attach_probe_hook(ctx: RunContext, model: nn.Module | None) -> None:
    if model is None or ctx.step_times or ctx.probe_input is not None or not probes_wanted(ctx):
        return
    if ctx.compile is not None and ctx.compile.compiled:
        return  # a Python hook would break the compiled graph
    probe = ProbeInput()

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        try:
            probe.calls += 1
            if probe.calls == 1:
                probe.args, probe.kwargs = tuple(args), dict(kwargs)
                probe.depth = stack_depth()
            layout = ctx.layout
            if layout is not None:
                images = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() == 4]
                if images:
                    layout.input_shapes.append(tuple(int(s) for s in images[0].shape))
                    layout.inputs_channels_last = bool(images[0].is_contiguous(memory_format=torch.channels_last)
                                                       and not images[0].is_contiguous())
            if probe.calls >= SHAPE_CALLS:
                _remove_hook(probe)
        except Exception:  # principle 1: never break the user's forward
            log.debug("perfcallbacks: probe input capture failed", exc_info=True)

    probe.handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    ctx.probe_input = probe


def _remove_hook(probe: ProbeInput) -> None:
    handle = getattr(probe, "handle", None)
    if handle is not None:
        handle.remove()
        probe.handle = None


def _release_probe(ctx: RunContext, model: nn.Module | None) -> None:
    if ctx.probe_input is not None:
        _remove_hook(ctx.probe_input)
        ctx.probe_input = None


def _probe_budget_s(ctx: RunContext) -> float:
    """Seconds the warm-up probes may spend: a small share of the fit still to come."""
    step = ctx.median_step_s
    if not step or not ctx.batches_per_epoch:
        return PROBE_MIN_BUDGET_S
    batches = ctx.batches_per_epoch * max(1, ctx.epochs or 1)
    return max(PROBE_MIN_BUDGET_S, PROBE_JOB_SHARE * batches * step)


def _copy_affordable(model: nn.Module) -> bool:
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if size > COPY_MAX_BYTES:
        return False
    device = model_device(model)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return size <= COPY_CUDA_FREE_SHARE * free
    return True


def _as_batch(probe: ProbeInput) -> Any:
    return dict(probe.kwargs) if probe.kwargs and not probe.args else tuple(probe.args)


def _train_step(model: nn.Module, batch: Any) -> Callable[[], None]:
    """Forward + backward of ``model`` on ``batch``; gradients are returned, never stored in ``.grad``."""
    from perfcallbacks.measure import call_model, output_tensor

    params = [p for p in model.parameters() if p.requires_grad]

    def run() -> None:
        with torch.enable_grad():
            out = output_tensor(call_model(model, batch))
            if params and out.requires_grad:
                torch.autograd.grad(out.float().sum(), params, allow_unused=True)

    return run


class _RestoreRng:
    """Probes must not shift the user's random streams (dropout masks, shuffling)."""

    def __enter__(self) -> None:
        self.cpu = torch.random.get_rng_state()
        cuda = sys.modules.get("torch.cuda")
        self.cuda = cuda.get_rng_state_all() if cuda is not None and cuda.is_initialized() else None

    def __exit__(self, *exc: Any) -> None:
        torch.random.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)


def _repeats(ctx: RunContext, variants: int, budget_s: float) -> int:
    """Timed repeats per variant that fit the budget (one untimed warm-up run each, 2 to 7 repeats)."""
    step = ctx.median_step_s or 0.05
    affordable = int(budget_s / max(step * variants, 1e-6)) - 1
    return max(PROBE_MIN_REPEATS, min(PROBE_MAX_REPEATS, affordable))


def _over_budget(ctx: RunContext, variants: int, budget_s: float) -> str | None:
    """Why the smallest probe would not fit the budget, or ``None`` when it fits."""
    step = ctx.median_step_s
    if not step:
        return None
    cost = (1 + PROBE_MIN_REPEATS) * variants * step
    if cost <= budget_s:
        return None
    return f"probe would take ~{cost:.1f} s, over its budget of {budget_s:.1f} s (5% of the fit)"


def _compare(ctx: RunContext, fns: dict[str, Callable[[], None]], budget_s: float) -> dict[str, float]:
    from perfcallbacks.measure import compare_times

    device = model_device(ctx.model) if ctx.model is not None else None
    return compare_times(fns, repeats=_repeats(ctx, len(fns), budget_s), warmup=1, device=device)


def stack_depth() -> int:
    """Frames on the calling thread's Python stack."""
    frame, depth = sys._getframe(1), 0
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def _padded(pad: int, fn: Callable[[], Any]) -> Any:
    return fn() if pad <= 0 else _padded(pad - 1, fn)


class _StackPlan:
    """Brings the probe's forward to the user's stack depth.

    Anomaly detection formats the whole Python stack for every op, so its cost grows with how deep the
    forward runs: the probe must time it where the user's runs. The first (untimed, warm-up) call of any
    variant learns where the probe's forward lands; later calls add frames up to the user's depth. A probe
    already deeper than the user (a plain loop's forward is ~15 frames shallower than advisor -> checks ->
    probe) cannot remove frames: it also times the mode that many frames deeper again and extrapolates the
    linear per-frame cost back to the user's depth (:meth:`at_user_depth`).
    """

    def __init__(self, model: nn.Module, user_depth: int) -> None:
        self.model, self.user_depth = model, user_depth
        self.natural: int | None = None

    @property
    def gap(self) -> int:
        """Frames from the probe's forward to the user's (negative: the probe is deeper)."""
        return 0 if self.natural is None or not self.user_depth else self.user_depth - self.natural

    def variant(self, fn: Callable[[], Any], deeper: bool = False) -> Callable[[], Any]:
        """``fn`` at the user's depth (``deeper``: plus the probe's excess depth once more)."""
        def call() -> Any:
            if deeper and self.gap >= 0:
                return None  # the probe is not deeper than the user: nothing to extrapolate, nothing to time
            if self.natural is None:
                handle = self.model.register_forward_pre_hook(self._learn)
                try:
                    return _padded(0, fn)
                finally:
                    handle.remove()
            return _padded(max(0, self.gap) + (max(0, -self.gap) if deeper else 0), fn)

        return call

    def _learn(self, module: nn.Module, args: tuple) -> None:
        if self.natural is None:
            self.natural = stack_depth()

    def at_user_depth(self, with_s: float, deeper_s: float | None, without_s: float) -> float:
        """The mode's time at the user's depth: measured there, or extrapolated linearly from two depths."""
        if self.gap >= 0 or deeper_s is None:
            return with_s
        return max(without_s, with_s - (deeper_s - with_s))  # one excess-depth step back up


def _probe_debug(ctx: RunContext, model: nn.Module, batch: Any, budget_s: float, depth: int = 0) -> None:
    """Forward + backward with the debug mode on (as the run is) and toggled off, interleaved."""
    debug = ctx.debug
    run = _train_step(model, batch)
    anomaly, deterministic = debug.anomaly, debug.deterministic
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_det = torch.backends.cudnn.deterministic

    def with_mode() -> None:
        run()  # the run's own settings

    def without_mode() -> None:
        try:
            if deterministic:
                torch.use_deterministic_algorithms(False)
                torch.backends.cudnn.deterministic = False
            with torch.autograd.set_detect_anomaly(False):
                run()
        finally:
            if deterministic:
                torch.use_deterministic_algorithms(True, warn_only=warn_only)
                torch.backends.cudnn.deterministic = cudnn_det

    # Only anomaly detection's cost depends on the stack depth; a third variant extrapolates it (see _StackPlan).
    variants = 3 if anomaly and depth else 2
    over = _over_budget(ctx, variants, budget_s)
    if over:
        debug.measured = {"skipped": over}
        return
    start = time.perf_counter()
    plan = _StackPlan(model, depth)
    fns = {"with": plan.variant(with_mode), "without": plan.variant(without_mode)}
    if variants == 3:
        fns["with_deeper"] = plan.variant(with_mode, deeper=True)
    times = _compare(ctx, fns, budget_s)
    deeper = times.get("with_deeper") if plan.gap < 0 else None
    modes = [name for name, on in (("anomaly", anomaly), ("deterministic", deterministic)) if on]
    debug.measured = {"modes": modes, "with_s": plan.at_user_depth(times["with"], deeper, times["without"]),
                      "without_s": times["without"], "with_at_probe_depth_s": times["with"],
                      "with_deeper_s": deeper, "user_stack_depth": depth, "depth_difference": plan.gap,
                      "probe_s": time.perf_counter() - start}


def _probe_channels_last(ctx: RunContext, model: nn.Module, batch: Any, budget_s: float) -> None:
    from perfcallbacks.fixes.channels_last import channels_last_candidate

    layout = ctx.layout
    if layout is None:
        return
    layout.measured["conv2d_flop_share"] = conv_flop_share(model, batch)
    if layout.measured["conv2d_flop_share"] is not None:
        layout.conv2d_share = layout.measured["conv2d_flop_share"]
    _probe_candidate(ctx, model, batch, budget_s, layout.measured, channels_last_candidate,
                     ("contiguous", "channels_last"))


def _probe_sdpa(ctx: RunContext, model: nn.Module, batch: Any, budget_s: float) -> None:
    from perfcallbacks.fixes.sdpa import sdpa_candidate

    if ctx.attention is not None:
        _probe_candidate(ctx, model, batch, budget_s, ctx.attention.measured, sdpa_candidate, ("eager", "sdpa"))


def _probe_candidate(ctx: RunContext, model: nn.Module, batch: Any, budget_s: float, measured: dict[str, Any],
                     build: Callable[..., Any], names: tuple[str, str]) -> None:
    """One training step of ``model`` and of the fix's candidate copy, interleaved, into ``measured``:
    ``<before>_s``, ``<after>_s``, ``speedup`` and ``probe_s`` (or ``skipped`` with the reason)."""
    from perfcallbacks.fixes.candidate import Candidate

    over = _over_budget(ctx, 2, budget_s) or (None if _copy_affordable(model) else
                                              "model too large to copy for the probe")
    if over:
        measured["skipped"] = over
        return
    cand = build(model, batch, profile=ctx.profile)
    if not isinstance(cand, Candidate):
        measured["skipped"] = cand.reason
        return
    start = time.perf_counter()
    cand.model.train(False)
    before, after = names
    times = _compare(ctx, {before: _train_step(model, batch),
                           after: _train_step(cand.model, cand.prepare(batch))}, budget_s)
    measured.update({f"{before}_s": times[before], f"{after}_s": times[after],
                     "speedup": times[before] / max(times[after], 1e-12), "probe_s": time.perf_counter() - start})


def conv_flop_share(model: nn.Module, batch: Any) -> float | None:
    """Share of Linear+Conv multiply-adds in Conv2d layers, at the sizes one forward of ``batch`` runs at."""
    from perfcallbacks.measure import call_model

    flops = {"conv": 0, "other": 0}

    def hook(module: nn.Module, args: tuple, out: Any) -> None:
        if not isinstance(out, torch.Tensor):
            return
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            return
        if isinstance(module, nn.Conv2d):
            flops["conv"] += weight.numel() * out.shape[0] * out.shape[-2] * out.shape[-1]
        elif isinstance(module, nn.Linear):
            flops["other"] += weight.numel() * (out.numel() // max(1, out.shape[-1]))
        else:
            flops["other"] += weight.numel() * (out.numel() // max(1, out.shape[1] if out.dim() > 1 else 1))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.inference_mode():
            call_model(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    total = flops["conv"] + flops["other"]
    return flops["conv"] / total if total else None


def run_warmup_probes(ctx: RunContext, model: nn.Module | None) -> None:
    """At the end of warm-up: measure what the captured input allows, then drop the input."""
    probe = ctx.probe_input
    if probe is None:
        return
    _remove_hook(probe)
    ctx.probe_input = None
    if model is None or probe.calls == 0 or (probe.args and probe.kwargs):
        return
    from perfcallbacks.measure import eval_mode

    batch = _as_batch(probe)
    budget = _probe_budget_s(ctx)
    wanted = probes_wanted(ctx)
    probes = {"debug": _probe_debug, "channels_last": _probe_channels_last, "sdpa": _probe_sdpa}
    with _RestoreRng(), eval_mode(model):
        for name in wanted:
            start = time.perf_counter()
            try:
                if name == "debug":
                    _probe_debug(ctx, model, batch, budget / len(wanted), depth=probe.depth)
                else:
                    probes[name](ctx, model, batch, budget / len(wanted))
            except Exception as err:  # principle 1: a probe that fails costs its measurement only
                log.debug("perfcallbacks: %s probe failed", name, exc_info=True)
                target = {"debug": ctx.debug.measured, "channels_last": getattr(ctx.layout, "measured", {}),
                          "sdpa": getattr(ctx.attention, "measured", {})}[name]
                target["error"] = f"{type(err).__name__}: {err}"
            log.debug("perfcallbacks: %s probe took %.3f s", name, time.perf_counter() - start)
