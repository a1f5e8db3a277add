"""Compile checks: a ``torch.compile``d model that recompiles, or whose forward breaks into pieces.

Read from dynamo's own records (:func:`perfcallbacks.facts.capture_process_facts`): recompilations
with the guard that failed, graph-break counters with their reasons. Counted from the start of the
run (the baseline), process-wide: dynamo does not tag them by model.
"""

from __future__ import annotations

import re

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# One recompilation is dynamo's automatic-dynamic step (the changed dim becomes symbolic): expected.
# From the second on, shapes keep being specialised.
MIN_RECOMPILES = 2
REASONS_KEPT = 5
REASON_CHARS = 240
_SIZE = re.compile(r"expected (\d+), actual (\d+)")


def _short(reason: str) -> str:
    """Dynamo's reason without its hints and debug context: the headline and its explanation."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return " ".join(lines[:2])[:REASON_CHARS]


COMPILE_RECOMPILES = HintSpec(
    id="compile-recompiles", category="compile", severity="warning",
    title="A compiled model recompiled during the observed steps",
    what="Fires when torch.compile recompiled the model during warm-up, read from dynamo's own compilation records (the guard that failed, e.g. a new sequence length).",
    why="Each recompilation costs seconds to minutes and, once torch._dynamo.config.cache_size_limit is reached, the model silently falls back to eager: one graph per padded length turns the compile win into a loss.",
    fix="torch.compile(model, dynamic=True) or torch._dynamo.mark_dynamic(input_ids, 1); pad to a multiple (pad_to_multiple_of=64) or bucket lengths so few shapes occur.",
    evidence=("recompiles", "reasons", "sizes_in_guards", "seq_lens_seen", "recompile_seconds", "compiled_modules"),
)


@check(COMPILE_RECOMPILES, phases=("warmup", "inference"))
def compile_recompiles(ctx: RunContext) -> Hint | None:
    facts = ctx.compile
    if facts is None or not facts.compiled or len(facts.recompiles) < MIN_RECOMPILES:
        return None
    reasons = [_short(r) for r in facts.recompile_reasons]
    sizes = sorted({int(v) for r in reasons for pair in _SIZE.findall(r) for v in pair})
    lengths = sorted({b.seq_len for b in (ctx.batches if ctx.phase == "warmup" else ctx.inference_batches)
                      if b.seq_len is not None})
    seconds = facts.recompile_seconds
    fix = fix_text(ctx,
                   lightning="torch.compile(model, dynamic=True) (or torch._dynamo.mark_dynamic(input_ids, 1) in "
                             "training_step); pad to a multiple: DataCollatorWithPadding(tokenizer, "
                             "pad_to_multiple_of=64), or bucket lengths (perfcallbacks.padding.LengthGroupedBatchSampler)",
                   hf="DataCollatorWithPadding(tokenizer, pad_to_multiple_of=64) and "
                      "TrainingArguments(train_sampling_strategy=\"group_by_length\") so few shapes occur; or compile "
                      "the model yourself with torch.compile(model, dynamic=True) instead of torch_compile=True",
                   torch="torch.compile(model, dynamic=True) or torch._dynamo.mark_dynamic(x, dim); pad lengths to a "
                         "multiple (pad_to_multiple_of=64) or bucket them")
    total = f", {sum(seconds):.1f} s of compiling" if seconds else ""
    return COMPILE_RECOMPILES.make(
        ctx.phase,
        f"The compiled model recompiled {len(facts.recompiles)} times in the observed steps{total}; "
        f"first reason: {reasons[0]!r}.",
        fix,
        evidence={"recompiles": len(facts.recompiles), "reasons": reasons[:REASONS_KEPT],
                  "sizes_in_guards": sizes[:16], "seq_lens_seen": lengths[:16],
                  "recompile_seconds": round(sum(seconds), 3) if seconds else None,
                  "compiled_modules": facts.modules[:8]},
        severity="warning")


COMPILE_GRAPH_BREAKS = HintSpec(
    id="compile-graph-breaks", category="compile", severity="warning",
    title="A compiled model's forward has graph breaks",
    what="Fires when dynamo reports graph breaks while compiling the model (counts and reasons from dynamo's counters).",
    why="Every graph break splits the model into separately compiled pieces with eager Python in between: fusion stops at each break and the pieces pay their own launch and guard costs.",
    fix="Remove the listed constructs from forward (print, .item(), data-dependent Python control flow, unsupported calls); find them with torch._dynamo.explain(model)(*inputs) or TORCH_LOGS=graph_breaks.",
    evidence=("graph_breaks", "distinct_reasons", "reasons", "unique_graphs", "compiled_modules"),
)


@check(COMPILE_GRAPH_BREAKS, phases=("warmup", "inference"))
def compile_graph_breaks(ctx: RunContext) -> Hint | None:
    facts = ctx.compile
    if facts is None or not facts.compiled or not facts.graph_breaks:
        return None
    ranked = sorted(facts.graph_breaks.items(), key=lambda kv: -kv[1])
    count = sum(facts.graph_breaks.values())
    reasons = [{"reason": _short(reason), "count": n} for reason, n in ranked[:REASONS_KEPT]]
    fix = fix_text(ctx,
                   lightning="move the listed constructs out of forward/training_step (self.log of tensors is fine; "
                             "print, .item(), .tolist(), data-dependent if are not); find them with "
                             "torch._dynamo.explain(model)(batch) or TORCH_LOGS=graph_breaks",
                   hf="remove the listed constructs from the model's forward; find them with "
                      "torch._dynamo.explain(model)(**batch) or TORCH_LOGS=graph_breaks python train.py",
                   torch="remove the listed constructs from forward; torch._dynamo.explain(model)(*inputs) lists them, "
                         "torch.compile(model, fullgraph=True) makes each one an error")
    return COMPILE_GRAPH_BREAKS.make(
        ctx.phase,
        f"The compiled model has {count} graph break(s) ({len(ranked)} distinct reason(s)); first: "
        f"{reasons[0]['reason']!r}.",
        fix,
        evidence={"graph_breaks": count, "distinct_reasons": len(ranked), "reasons": reasons,
                  "unique_graphs": facts.unique_graphs, "compiled_modules": facts.modules[:8]})
