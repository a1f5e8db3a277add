"""Batch checks: ``batch-size-small`` (measured, inference), and helpers on observed batches.

``batch-size-small`` reads ``ctx.facts.measured.batch_scaling``
(:class:`~perfcallbacks.run_facts.BatchScaling`, from
:func:`perfcallbacks.probes.probe_batch_scaling`)
(forward latency of the observed batch repeated 1x, 2x, 4x). It fires when
throughput still grows by more than :data:`THROUGHPUT_GAIN_MIN` at a larger
batch whose measured latency stays within ``latency_budget_ms``. It never
fires on the batch size alone.
"""

from __future__ import annotations

from collections import Counter

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import BatchStats, RunContext
from perfcallbacks.hints import Hint, HintSpec

# Doubling the batch must buy at least 30% more throughput to be worth a hint:
# below that, timing noise on a shared machine (~5-10%) and the extra memory
# and latency make the advice doubtful.
THROUGHPUT_GAIN_MIN = 1.30


def observed_batches(ctx: RunContext) -> list[BatchStats]:
    """The batches relevant to the current phase: inference batches in ``inference``, else training ones."""
    if ctx.phase == "inference":
        return list(ctx.inference_batches)
    return list(ctx.batches)


def typical_batch_size(batches: list[BatchStats], loader_batch_size: int | None = None) -> int | None:
    """The configured batch size, else the most common observed one (a short last batch does not count)."""
    if loader_batch_size:
        return int(loader_batch_size)
    sizes = [b.batch_size for b in batches if b.batch_size]
    if not sizes:
        return None
    counts = Counter(sizes)
    return max(counts, key=lambda size: (counts[size], size))  # ties: the larger (a short last batch loses)


BATCH_SIZE_SMALL = HintSpec(
    id="batch-size-small", category="batch", severity="info",
    title="Batch size leaves throughput on the table",
    what="Fires when measured throughput still grows with the batch size (step time nearly flat when doubling it) and memory / latency budget allow more.",
    why="Small batches leave the device underused: fixed per-step costs dominate.",
    fix="Increase the batch size (Lightning: Tuner(trainer).scale_batch_size(model); HF: auto_find_batch_size=True), within latency_budget_ms.",
    evidence=("batch_size", "suggested_batch_size", "latency_ms", "throughput_gain", "latency_budget_ms"),
)


@check(BATCH_SIZE_SMALL, phases=("inference",))
def batch_size_small(ctx: RunContext) -> Hint | None:
    measure = ctx.facts.measured.batch_scaling
    if measure is None:
        return None
    latency, base = measure.latency_s, measure.batch_size
    if base not in latency or len(latency) < 2:
        return None
    budget_s = None if ctx.latency_budget_ms is None else ctx.latency_budget_ms / 1000.0
    base_tput = base / latency[base]
    allowed = {b: t for b, t in latency.items() if b > base and (budget_s is None or t <= budget_s)}
    if not allowed:
        return None
    best = max(allowed, key=lambda b: b / allowed[b])
    gain = (best / allowed[best]) / base_tput
    if gain < THROUGHPUT_GAIN_MIN:
        return None
    budget_note = f" within the {ctx.latency_budget_ms:g} ms latency budget" if budget_s is not None else ""
    fix = fix_text(ctx,
                   lightning=f"DataLoader(..., batch_size={best}) for predict/validation "
                             f"(or Tuner(trainer).scale_batch_size(model, mode=\"binsearch\"))",
                   hf=f"TrainingArguments(per_device_eval_batch_size={best}) (or auto_find_batch_size=True)",
                   torch=f"DataLoader(..., batch_size={best}) for inference")
    return BATCH_SIZE_SMALL.make(
        ctx.phase,
        f"Inference throughput still grows with the batch size: batch {base} takes "
        f"{latency[base] * 1e3:.1f} ms, batch {best} takes {allowed[best] * 1e3:.1f} ms "
        f"({gain:.2f}x the rows per second){budget_note}.",
        fix,
        evidence={"batch_size": base, "suggested_batch_size": best,
                  "latency_ms": {str(b): round(t * 1e3, 3) for b, t in sorted(latency.items())},
                  "throughput_gain": round(gain, 3), "latency_budget_ms": ctx.latency_budget_ms},
        impact=gain)
