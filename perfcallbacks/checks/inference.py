"""Inference checks: autograd/train mode in inference, int8, autocast, threads, repeated inputs.

They read ``ctx.inference`` (how forwards ran), ``ctx.inference_batches``
(with row hashes), ``ctx.facts.model`` and ``ctx.facts.measured``
(:class:`~perfcallbacks.run_facts.Measurements`, parsed from what
:func:`perfcallbacks.probes.run_inference_probes` or a guarded fix measured):
the thread sweep, int8 and autocast against fp32 (int8 with the guard's
decision and whether it came from the probe or the fix), and the autograd
overhead.

A measured number always wins over an estimate: a measured int8 or autocast
result that gains nothing silences its hint.
"""

from __future__ import annotations

from perfcallbacks.checks.precision import TENSOR_CORE_SPEEDUP, precision_dtypes
from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.device import EMULATED, UNSUPPORTED
from perfcallbacks.hints import Hint, HintSpec
from perfcallbacks.run_facts import Int8Measure

# A measured fix must gain at least 5% (the guarded fixes' default margin).
MEASURED_GAIN_MIN = 1.05
# int8: Linear layers must hold most of the GEMM FLOPs for a whole-model gain.
INT8_MIN_LINEAR_SHARE = 0.6
# Without a measurement, skip small models: below ~0.5M Linear weights the
# per-call quantization of activations costs about what the int8 GEMM saves.
INT8_MIN_LINEAR_PARAMS = 500_000
# Measured: all-Linear int8 dynamic quantization of MiniLM-L6 is 1.37x end to end
# on an AVX2 machine; on the AVX-512 VNNI EPYC (benchmarks/impacts.md) the guarded
# fix measured 2.88-2.97x at 8x64 tokens, 1 thread, and 2.5 is used (longer
# sequences give attention, which stays fp32, a larger share). Scaled by the
# Linear share for other models.
INT8_MINILM_SPEEDUP = 1.37
INT8_VNNI_MINILM_SPEEDUP = 2.5
_VNNI_ISA = ("avx512_vnni", "avx_vnni", "amx", "amx_int8")
# threads-untuned: the current count must be > 5% slower than the best.
THREADS_GAIN_MIN = 1.05
# repeated-inputs: at least this many rows seen, and more than 20% duplicates.
REPEAT_MIN_ROWS = 16
REPEAT_SHARE = 0.20


def _ms(seconds: float) -> str:
    """Milliseconds with 3 significant digits (a 0.02 ms forward is not "0.0 ms")."""
    return f"{seconds * 1e3:.3g} ms"


GRAD_IN_INFERENCE = HintSpec(
    id="grad-in-inference", category="inference", severity="warning",
    title="Inference with autograd on or in train mode",
    what="Fires when a validation/predict forward runs with autograd enabled or the model in train mode.",
    why="Autograd keeps activations alive for a backward that never comes; train mode keeps dropout on.",
    fix="Wrap inference in torch.inference_mode() and call model.eval().",
    evidence=("calls", "grad_enabled_calls", "train_mode_calls", "stage", "grad_overhead_measured"),
)


@check(GRAD_IN_INFERENCE, phases=("inference",))
def grad_in_inference(ctx: RunContext) -> Hint | None:
    info = ctx.inference
    if info.calls < 1 or (info.grad_enabled_calls == 0 and info.train_mode_calls == 0):
        return None
    problems = []
    if info.grad_enabled_calls:
        problems.append(f"autograd on in {info.grad_enabled_calls} of {info.calls}")
    if info.train_mode_calls:
        problems.append(f"train mode (dropout on) in {info.train_mode_calls} of {info.calls}")
    fix = fix_text(ctx,
                   lightning="keep Trainer(inference_mode=True) (the default) and do not call "
                             "torch.set_grad_enabled(True) or self.train() in validation/predict steps",
                   hf="do not call model.train() or torch.enable_grad() in evaluation/prediction code "
                      "(Trainer.evaluate/predict already run under torch.no_grad)",
                   torch="model.eval(); with torch.inference_mode(): outputs = model(batch)")
    overhead = ctx.facts.measured.grad_overhead
    return GRAD_IN_INFERENCE.make(
        ctx.phase,
        f"Inference forwards ran with {' and '.join(problems)} calls"
        + (f" ({info.stage})" if info.stage else "") + ".",
        fix,
        evidence={"calls": info.calls, "grad_enabled_calls": info.grad_enabled_calls,
                  "train_mode_calls": info.train_mode_calls, "stage": info.stage,
                  "grad_overhead_measured": overhead},
        impact=overhead if overhead is not None and overhead > 1 else None)


INT8_AVAILABLE = HintSpec(
    id="int8-available", category="inference", severity="info",
    title="int8 dynamic quantization would speed up CPU inference",
    what="Fires for CPU inference of a Linear-heavy fp32 model. Not after auto_apply applied int8 (the fix entry carries the numbers).",
    why="int8 GEMMs do ~2-4x the work per cycle of fp32 on x86: measured on MiniLM, 1.25-1.37x end to end on AVX2, 2.3-3.0x with AVX-512 VNNI (benchmarks/impacts.md).",
    fix="PerfHintCallback(auto_apply=True) / HFPerfHints(auto_apply=True) / Advisor(auto_apply=True).optimize_inference(model, batch) measure and apply guarded int8 on the job; perfcallbacks.quantize_for_export(model, path, example_inputs=batch) writes an int8 artifact.",
    evidence=("linear_flop_share", "linear_params", "int8_support", "measured_speedup", "fidelity"),
    fix_id="dynamic-quantization",
)


@check(INT8_AVAILABLE, phases=("inference",))
def int8_available(ctx: RunContext) -> Hint | None:
    """int8 dynamic quantization would speed up CPU inference (measured when possible).

    After ``auto_apply`` applied int8 (``facts.measured.int8`` from the fix with
    ``status == "applied"``) the opportunity is taken: the hint does not fire and
    the report's ``fixes`` entry carries the measured speedup and fidelity (a user
    reads ``hints`` as what is still open). A guard that measured int8 faster but
    rejected it (outputs beyond tolerance, or the task guard) silences the hint too:
    the measurement says int8 is not safe for this model.
    """
    outcome, model = ctx.facts.measured.int8 or Int8Measure(), ctx.facts.model
    measured = outcome.speedup
    if outcome.status == "applied" and outcome.source == "fix":
        return None
    if outcome.status == "rejected" and (measured or 0) >= MEASURED_GAIN_MIN:
        return None
    if not ctx.judged_on_cpu or ctx.profile.supports("int8_dynamic") in (EMULATED, UNSUPPORTED):
        return None
    if not model.present or ctx.param_dtype not in (None, "fp32") or model.quantized:
        return None
    share = model.linear_share
    if share < INT8_MIN_LINEAR_SHARE:
        return None
    linear_params = model.linear_params
    if measured is not None:
        if measured < MEASURED_GAIN_MIN:
            return None
        impact, basis = measured, "measured on this model"
    else:
        if linear_params < INT8_MIN_LINEAR_PARAMS:
            return None
        vnni = any(isa in ctx.profile.isa for isa in _VNNI_ISA)
        per_model = INT8_VNNI_MINILM_SPEEDUP if vnni else INT8_MINILM_SPEEDUP
        impact, basis = 1.0 + (per_model - 1.0) * share, "estimated from the Linear share"
    fix = fix_text(ctx,
                   lightning="PerfHintCallback(auto_apply=True) measures and keeps guarded int8 quantization for "
                             "predict; or perfcallbacks.quantize_for_export(model, path, example_inputs=batch)",
                   hf="HFPerfHints(auto_apply=True) measures and keeps guarded int8 quantization for predict; "
                      "or perfcallbacks.quantize_for_export(model, path, example_inputs=batch)",
                   torch="model = Advisor(auto_apply=True).optimize_inference(model, first_batch, "
                         "expected_batches=len(loader)) (decides int8 on the job's own batches; the fp32 model "
                         "answers unless int8 is faster and faithful), or "
                         "perfcallbacks.quantize_for_export(model, path, example_inputs=batch)")
    return INT8_AVAILABLE.make(
        ctx.phase,
        f"CPU inference of an fp32 model whose Linear layers hold {share:.0%} of the GEMM FLOPs: int8 dynamic "
        f"quantization is {impact:.2f}x faster ({basis}).",
        fix,
        evidence={"linear_flop_share": round(share, 4), "linear_params": linear_params,
                  "int8_support": ctx.profile.supports("int8_dynamic"), "measured_speedup": measured,
                  "fidelity": outcome.fidelity},
        impact=impact)


AUTOCAST_AVAILABLE = HintSpec(
    id="autocast-available", category="inference", severity="info",
    title="Accelerator inference in fp32",
    what="Fires for accelerator inference in fp32 where fp16/bf16 autocast is supported.",
    why="Low-precision inference uses Tensor Cores and halves memory traffic.",
    fix='with torch.autocast("cuda", dtype=torch.bfloat16): ... (or auto_apply=True to measure it).',
    evidence=("device", "param_dtype", "autocast_dtype", "autocast_calls", "measured_speedup"),
    fix_id="autocast",
)


@check(AUTOCAST_AVAILABLE, phases=("inference",))
def autocast_available(ctx: RunContext) -> Hint | None:
    profile = ctx.profile
    if not ctx.judged_on_accelerator or not profile.is_accelerator:
        return None
    dtype = profile.fast_autocast_dtype()
    if dtype is None or not ctx.facts.model.present or ctx.param_dtype not in (None, "fp32"):
        return None
    if precision_dtypes(ctx) or ctx.inference.autocast_calls:
        return None
    measured = ctx.facts.measured.autocast_speedup
    if measured is not None and measured < MEASURED_GAIN_MIN:
        return None
    impact = measured if measured is not None else (TENSOR_CORE_SPEEDUP if profile.has_matrix_units else None)
    name = "bfloat16" if str(dtype).endswith("bfloat16") else "float16"
    fix = fix_text(ctx,
                   lightning=f"Trainer(precision=\"{'bf16' if name == 'bfloat16' else '16'}-mixed\") for "
                             f"validate/predict, or PerfHintCallback(auto_apply=True) to measure it",
                   hf=f"TrainingArguments({'bf16' if name == 'bfloat16' else 'fp16'}=True) (its autocast also "
                      f"covers evaluate/predict) or HFPerfHints(auto_apply=True)",
                   torch=f"with torch.inference_mode(), torch.autocast(\"{profile.kind}\", dtype=torch.{name}): "
                         f"outputs = model(batch)")
    return AUTOCAST_AVAILABLE.make(
        ctx.phase,
        f"Inference runs in fp32 on {profile.name}, where {name} autocast is fast"
        + (f" (measured {measured:.2f}x)." if measured else "."),
        fix,
        evidence={"device": profile.name, "param_dtype": ctx.param_dtype, "autocast_dtype": name,
                  "autocast_calls": ctx.inference.autocast_calls, "measured_speedup": measured},
        impact=impact)


THREADS_UNTUNED = HintSpec(
    id="threads-untuned", category="inference", severity="info",
    title="Intra-op thread count is not the measured best",
    what="Fires when the measured best intra-op thread count for inference differs from the current one.",
    why="Too many threads per worker oversubscribe cores; too few leave them idle.",
    fix="torch.set_num_threads(N) with the measured N (auto_apply=True does it).",
    evidence=("current_threads", "best_threads", "latency_ms", "dropped_as_implausible"),
    fix_id="threads",
)


@check(THREADS_UNTUNED, phases=("inference",))
def threads_untuned(ctx: RunContext) -> Hint | None:
    """The measured best intra-op thread count differs from the current one.

    Timings whose ratio to the current count is physically impossible (more
    threads faster than the thread ratio allows, or, within the cores, fewer
    threads that much faster: :func:`perfcallbacks.probes.plausible_ratio`) are
    measurement errors and are ignored, whoever measured them (probe or fix).
    """
    from perfcallbacks.probes import plausible_ratio

    measure = ctx.facts.measured.threads
    if measure is None or ctx.judged_on_accelerator:
        return None
    latency = dict(measure.latency_s)
    current = measure.current
    if current not in latency:
        return None
    cores = ctx.local.physical_cores or (ctx.threads.physical_cores if ctx.threads else None) or max(latency)
    latency = {k: t for k, t in latency.items() if k == current or plausible_ratio(
        min(k, current), max(k, current), latency[min(k, current)] / latency[max(k, current)],
        oversubscribed=max(k, current) > cores)}
    if len(latency) < 2:
        return None
    best = min(latency, key=latency.__getitem__)
    gain = latency[current] / latency[best]
    if best == current or gain < THREADS_GAIN_MIN:
        return None
    fix = f"torch.set_num_threads({best}) before inference (or OMP_NUM_THREADS={best})"
    if ctx.framework in ("lightning", "hf"):
        fix += f"; {'PerfHintCallback' if ctx.framework == 'lightning' else 'HFPerfHints'}(auto_apply=True) does it"
    return THREADS_UNTUNED.make(
        ctx.phase,
        f"Inference with {current} intra-op threads takes {_ms(latency[current])} per batch; "
        f"{best} threads take {_ms(latency[best])} ({gain:.2f}x faster, steady-state medians).",
        fix,
        evidence={"current_threads": current, "best_threads": best,
                  "latency_ms": {str(k): float(f"{v * 1e3:.4g}") for k, v in sorted(latency.items())},
                  "dropped_as_implausible": measure.dropped},
        impact=gain)


REPEATED_INPUTS = HintSpec(
    id="repeated-inputs", category="inference", severity="info",
    title="Identical inputs seen repeatedly in predict",
    what="Fires when identical inputs are seen repeatedly across predict batches.",
    why="Recomputing the same outputs wastes the whole forward pass; a cache returns them for free.",
    fix="Deduplicate inputs before predict or cache outputs by input hash (functools.lru_cache on a tuple of token ids).",
    evidence=("rows_seen", "distinct_rows", "duplicate_share", "batches_seen"),
)


@check(REPEATED_INPUTS, phases=("inference",))
def repeated_inputs(ctx: RunContext) -> Hint | None:
    hashes = [h for b in ctx.inference_batches for h in b.row_hashes]
    if len(hashes) < REPEAT_MIN_ROWS:
        return None
    unique = len(set(hashes))
    share = 1.0 - unique / len(hashes)
    if share <= REPEAT_SHARE:
        return None
    fix = ("deduplicate before the forward and scatter back: "
           "uniq, inverse = torch.unique(input_ids, dim=0, return_inverse=True); "
           "out = model(uniq)[inverse] (or cache outputs keyed by the input's token ids)")
    return REPEATED_INPUTS.make(
        ctx.phase,
        f"{share:.0%} of the {len(hashes)} inference rows seen are exact repeats ({unique} distinct): "
        f"a cache or deduplication would skip their forward passes.",
        fix,
        evidence={"rows_seen": len(hashes), "distinct_rows": unique, "duplicate_share": round(share, 4),
                  "batches_seen": len(ctx.inference_batches)},
        impact=len(hashes) / unique)
