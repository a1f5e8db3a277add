"""Padding checks: ``padding-waste`` and ``static-padding``, with a token cost model.

Both are measured on the observed batches (``BatchStats.lengths`` from the
attention mask or the pad id): training batches in ``warmup``, predict batches
in ``inference``.

Cost model (:func:`batch_cost`): a transformer spends ``12 h^2`` multiply-adds
per token and layer in its projections and FFN, plus ``2 L h`` in attention
(QK^T and AV over a padded length ``L``). So a batch of ``B`` rows padded to
``L`` costs ``B L (1 + L / 6h)`` units by FLOP count; without a known hidden
size ``h`` only the linear term is used. On CPUs eager attention (softmax and
memory-bound batched matmuls over ``L x L`` per head) costs far more than its
FLOP share: measured on MiniLM here, a padded token at ``L=128`` costs 1.32x one
at ``L~28``, which ``1 + L / h`` reproduces (``1 + L / 6h`` predicts 1.04x), so
CPU runs use divisor 1 and accelerators (fused attention kernels) the FLOP
count. The impact of ``padding-waste`` is the cost of the
observed batches over the cost of the same lengths sorted into batches of the
same size, each padded to its own longest row (what length-grouped dynamic
padding gives); ``static-padding`` compares against dynamic padding in arrival
order. ``benchmarks/padding.py`` checks the prediction against measured
throughput on MiniLM.

Facts read: ``ctx.facts.model.hidden_size``, the HF adapter's settings
(``ctx.facts.hf``: collator, ``pad_to_multiple_of``, sampling strategy,
tokenizer padding) and ``ctx.facts.transformers_version``.
"""

from __future__ import annotations

from collections.abc import Sequence

from perfcallbacks.checks.batch import observed_batches, typical_batch_size
from perfcallbacks.checks.registry import check
from perfcallbacks.context import BatchStats, RunContext
from perfcallbacks.hints import Hint, HintSpec

# Share of pad tokens above which padding-waste fires (DESIGN default): a
# quarter of the compute spent on nothing is worth a code change.
PAD_FRACTION_THRESHOLD = 0.25
# Do not advise a change the model predicts to gain less than 10%: smaller
# gains are within the noise of per-batch overheads the model ignores.
MIN_PREDICTED_SPEEDUP = 1.10
# static-padding: dynamic padding (each batch to its own longest row) must
# save at least 25% of the cost for "far above the real lengths".
STATIC_MIN_SPEEDUP = 1.0 / (1.0 - 0.25)
# Fewer batches than this cannot show that the padded length is fixed.
STATIC_MIN_BATCHES = 2
# Projections + FFN cost 12 h^2 per token and layer, attention 2 L h: the
# attention term relative to the linear one is L / (6 h) by FLOP count.
ATTENTION_RATIO_DIVISOR = 6
# On CPU, measured (benchmarks/padding.md): the attention term behaves like L / h.
CPU_ATTENTION_RATIO_DIVISOR = 1


def batch_cost(rows: int, padded_len: int, hidden: int | None = None,
               divisor: float = ATTENTION_RATIO_DIVISOR) -> float:
    """Relative compute of ``rows`` rows padded to ``padded_len`` (see the module docstring).

    Example::

        >>> batch_cost(8, 128), round(batch_cost(8, 128, hidden=384), 1)
        (1024, 1080.9)
    """
    cost = rows * padded_len
    if hidden:
        cost *= 1.0 + padded_len / (divisor * hidden)
    return cost


def _round_up(value: int, multiple: int | None) -> int:
    if not multiple or multiple <= 1:
        return value
    return -(-value // multiple) * multiple


def grouped_cost(lengths: Sequence[int], batch_size: int, hidden: int | None = None,
                 pad_to_multiple_of: int | None = None, divisor: float = ATTENTION_RATIO_DIVISOR) -> float:
    """Cost of ``lengths`` sorted into batches of ``batch_size``, each padded to its longest row.

    Example::

        >>> grouped_cost([1, 9, 2, 8], batch_size=2)  # batches (9, 8) and (2, 1)
        22.0
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    ordered = sorted((int(n) for n in lengths), reverse=True)
    total = 0.0
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        total += batch_cost(len(chunk), _round_up(max(chunk), pad_to_multiple_of), hidden, divisor)
    return total


def observed_cost(batches: Sequence[BatchStats], hidden: int | None = None,
                  divisor: float = ATTENTION_RATIO_DIVISOR) -> float:
    """Cost of the batches as they were padded."""
    return sum(batch_cost(b.batch_size or len(b.lengths), b.seq_len or 0, hidden, divisor) for b in batches)


def dynamic_cost(batches: Sequence[BatchStats], hidden: int | None = None,
                 pad_to_multiple_of: int | None = None, divisor: float = ATTENTION_RATIO_DIVISOR) -> float:
    """Cost of the same batches, each padded to its own longest row (arrival order kept)."""
    return sum(batch_cost(len(b.lengths), _round_up(max(b.lengths), pad_to_multiple_of), hidden, divisor)
               for b in batches if b.lengths)


def predicted_grouping_speedup(batches: Sequence[BatchStats], hidden: int | None = None,
                               batch_size: int | None = None, pad_to_multiple_of: int | None = None,
                               divisor: float = ATTENTION_RATIO_DIVISOR) -> float | None:
    """Predicted speedup of length-grouped dynamic padding over the observed padding.

    Example::

        >>> from perfcallbacks.context import BatchStats
        >>> b = [BatchStats(batch_size=2, seq_len=10, lengths=(10, 1)), BatchStats(batch_size=2, seq_len=10, lengths=(9, 2))]
        >>> predicted_grouping_speedup(b)  # 40 tokens padded vs 2x10 + 2x2 grouped
        1.67
    """
    usable = [b for b in batches if b.lengths and b.seq_len]
    if not usable:
        return None
    size = batch_size or typical_batch_size(usable)
    lengths = [n for b in usable for n in b.lengths]
    fixed = grouped_cost(lengths, size or 1, hidden, pad_to_multiple_of, divisor)
    return round(observed_cost(usable, hidden, divisor) / fixed, 2) if fixed else None


def attention_divisor(ctx: RunContext) -> float:
    """How heavy attention is relative to its FLOP share on the device the run is judged on."""
    return CPU_ATTENTION_RATIO_DIVISOR if ctx.profile.kind == "cpu" else ATTENTION_RATIO_DIVISOR


def pad_fraction(batches: Sequence[BatchStats]) -> float | None:
    """Share of pad tokens over all batches with known lengths."""
    usable = [b for b in batches if b.lengths and b.seq_len]
    total = sum(b.total_tokens or 0 for b in usable)
    if not total:
        return None
    return max(0.0, 1.0 - sum(b.real_tokens or 0 for b in usable) / total)


def transformers_major(ctx: RunContext) -> int | None:
    """Major version of transformers: from the adapter's setting, else the installed package."""
    version = ctx.facts.transformers_version
    if not version:
        return None  # not installed: advice without version-specific flags
    try:
        return int(version.split(".")[0])
    except ValueError:
        return None


def group_by_length_arg(ctx: RunContext) -> str:
    """The TrainingArguments flag for length-grouped sampling in the installed transformers."""
    major = transformers_major(ctx)
    if major is not None and major < 5:
        return "group_by_length=True"
    return 'train_sampling_strategy="group_by_length"'


def _collator_snippet(ctx: RunContext) -> str:
    multiple = ", pad_to_multiple_of=8" if ctx.judged_on_accelerator else ""
    return f"DataCollatorWithPadding(tokenizer{multiple})"


# Share of observed batches that must be padded to their own longest row (up to
# pad_to_multiple_of) for the loader to count as padding dynamically.
DYNAMIC_BATCH_SHARE = 0.9


def observed_padding(batches: Sequence[BatchStats], pad_to_multiple_of: int | None = None) -> str | None:
    """What the observed shapes say: ``"static"``, ``"dynamic"``, or ``None`` (they cannot tell).

    Static: at least two batches, all padded to one length above every real row.
    Dynamic: at least two different padded lengths, and (nearly) every batch
    padded exactly to its own longest row, rounded up to ``pad_to_multiple_of``
    (or to 8, the usual accelerator setting, when unknown).

    Example::

        >>> from perfcallbacks.context import BatchStats
        >>> observed_padding([BatchStats(batch_size=2, seq_len=9, lengths=(9, 3)),
        ...                   BatchStats(batch_size=2, seq_len=5, lengths=(2, 5))])
        'dynamic'
    """
    usable = [b for b in batches if b.seq_len and b.lengths]
    if len(usable) < STATIC_MIN_BATCHES:
        return None
    padded = {b.seq_len for b in usable}
    if len(padded) == 1:
        return "static" if max(max(b.lengths) for b in usable) < next(iter(padded)) else None
    multiples = {1, 8} if not pad_to_multiple_of else {1, int(pad_to_multiple_of)}
    tight = sum(1 for b in usable if any(b.seq_len == _round_up(max(b.lengths), m) for m in multiples))
    return "dynamic" if tight >= DYNAMIC_BATCH_SHARE * len(usable) else None


def _is_dynamic(ctx: RunContext, batches: Sequence[BatchStats] = ()) -> bool:
    """Whether batches are already padded per batch: the observed lengths first, the
    configuration second. Data tokenized with ``padding="max_length"`` stays static even
    behind a ``DataCollatorWithPadding``; a plain collate fn calling
    ``tokenizer.pad(padding="longest")`` is dynamic whatever its name."""
    hf = ctx.facts.hf
    seen = observed_padding(batches, hf.pad_to_multiple_of)
    if seen is not None:
        return seen == "dynamic"
    collator = hf.collator or (ctx.loader.collate_fn if ctx.loader else "") or ""
    padding = hf.tokenizer_padding
    return padding != "max_length" and ("WithPadding" in collator or "ForLanguageModeling" in collator
                                        or "ForSeq2Seq" in collator or padding == "longest")


def padding_fix(ctx: RunContext, *, group: bool, dynamic: bool) -> str:
    """The fix for the framework in use: dynamic padding and/or length grouping."""
    collator = _collator_snippet(ctx)
    parts: list[str] = []
    if ctx.phase == "inference":
        if dynamic:
            parts.append(f"tokenize without padding (padding=False, truncation=True) and pad per batch with {collator}")
        parts.append("predict in length-grouped batches, results back in input order: "
                     "perfcallbacks.padding.predict_length_grouped(model, texts, tokenizer, batch_size=...)")
        return "; ".join(parts)
    if dynamic:
        parts.append("tokenize without padding (padding=False, truncation=True)")
    if ctx.framework == "hf":
        if dynamic:
            parts.append(f"Trainer(..., data_collator={collator})")
        if group and ctx.facts.hf.sampling_strategy != "group_by_length":
            parts.append(f"TrainingArguments(..., {group_by_length_arg(ctx)})")
    else:
        loader = "DataLoader(dataset"
        if group:
            loader += ", batch_sampler=perfcallbacks.padding.LengthGroupedBatchSampler(lengths, batch_size)"
        if dynamic:
            loader += f", collate_fn={collator}"
        parts.append(loader + ")")
    return "; ".join(parts)


def _lengths_summary(batches: Sequence[BatchStats]) -> dict[str, float]:
    lengths = sorted(n for b in batches for n in b.lengths)
    if not lengths:
        return {}
    return {"real_len_median": lengths[len(lengths) // 2], "real_len_max": lengths[-1],
            "real_len_mean": round(sum(lengths) / len(lengths), 1)}


PADDING_WASTE = HintSpec(
    id="padding-waste", category="padding", severity="warning",
    title="Most of the batch is padding",
    what="Fires when the measured share of pad tokens in observed batches exceeds the threshold (default 25%).",
    why="Pad tokens cost the same compute as real ones: measured on MiniLM here, length-grouped dynamic padding gives 3.3-5x the throughput of max_length=128 padding (benchmarks/padding.md).",
    fix='Dynamic padding (DataCollatorWithPadding) plus length-grouped batches (HF: train_sampling_strategy="group_by_length"; predict: perfcallbacks.padding.length_grouped_batches).',
    evidence=("pad_fraction", "batches_seen", "padded_len_max", "real_len_median", "real_len_max", "real_len_mean", "grouped_pad_fraction", "batch_size", "collator", "sampling_strategy"),
)


@check(PADDING_WASTE, phases=("warmup", "inference"))
def padding_waste(ctx: RunContext) -> Hint | None:
    batches = [b for b in observed_batches(ctx) if b.lengths and b.seq_len]
    fraction = pad_fraction(batches)
    if fraction is None or fraction <= PAD_FRACTION_THRESHOLD:
        return None
    hf, hidden = ctx.facts.hf, ctx.facts.model.hidden_size
    multiple = hf.pad_to_multiple_of or (8 if ctx.judged_on_accelerator else None)
    size = typical_batch_size(batches, ctx.loader.batch_size if ctx.loader and ctx.phase != "inference" else None)
    impact = predicted_grouping_speedup(batches, hidden, size, multiple, attention_divisor(ctx))
    if impact is None or impact < MIN_PREDICTED_SPEEDUP:
        return None
    grouped_tokens = grouped_cost([n for b in batches for n in b.lengths], size or 1, None, multiple)
    grouped_share = 1.0 - sum(b.real_tokens or 0 for b in batches) / max(1.0, grouped_tokens)
    group = ctx.phase == "inference" or hf.sampling_strategy != "group_by_length"
    fix = padding_fix(ctx, group=group, dynamic=not _is_dynamic(ctx, batches))
    model_note = "tokens + attention (quadratic)" if hidden else "tokens"
    return PADDING_WASTE.make(
        ctx.phase,
        f"{fraction:.0%} of the tokens in {len(batches)} observed batches are padding; "
        f"length-grouped dynamic padding would leave {max(0.0, grouped_share):.0%} and is predicted "
        f"{impact:.2f}x faster (cost model: {model_note}).",
        fix,
        evidence={"pad_fraction": round(fraction, 4), "batches_seen": len(batches),
                  "padded_len_max": max(b.seq_len or 0 for b in batches),
                  **_lengths_summary(batches),
                  "grouped_pad_fraction": round(max(0.0, grouped_share), 4),
                  "batch_size": size, "collator": hf.collator, "sampling_strategy": hf.sampling_strategy},
        impact=impact)


STATIC_PADDING = HintSpec(
    id="static-padding", category="padding", severity="warning",
    title="Every batch padded to one fixed length",
    what="Fires when every observed batch is padded to the same length, far above the real lengths.",
    why='padding="max_length" pays for the longest possible input on every batch.',
    fix="Tokenize without padding and pad per batch: DataCollatorWithPadding(tokenizer).",
    evidence=("padded_len", "batches_seen", "batch_longest_mean", "batch_longest_max", "pad_fraction", "tokenizer_padding"),
)


@check(STATIC_PADDING, phases=("warmup", "inference"))
def static_padding(ctx: RunContext) -> Hint | None:
    batches = [b for b in observed_batches(ctx) if b.lengths and b.seq_len]
    if len(batches) < STATIC_MIN_BATCHES or len({b.seq_len for b in batches}) != 1:
        return None
    hf, hidden = ctx.facts.hf, ctx.facts.model.hidden_size
    multiple = hf.pad_to_multiple_of or (8 if ctx.judged_on_accelerator else None)
    dynamic = dynamic_cost(batches, hidden, multiple, attention_divisor(ctx))
    if not dynamic:
        return None
    impact = observed_cost(batches, hidden, attention_divisor(ctx)) / dynamic
    if impact < STATIC_MIN_SPEEDUP:
        return None
    fixed_len = batches[0].seq_len
    longest = [max(b.lengths) for b in batches]
    fix = padding_fix(ctx, group=False, dynamic=True)
    return STATIC_PADDING.make(
        ctx.phase,
        f"All {len(batches)} observed batches are padded to {fixed_len} tokens, but their longest rows average "
        f"{sum(longest) / len(longest):.0f} tokens: padding each batch to its own longest row is predicted "
        f"{impact:.2f}x faster.",
        fix,
        evidence={"padded_len": fixed_len, "batches_seen": len(batches),
                  "batch_longest_mean": round(sum(longest) / len(longest), 1), "batch_longest_max": max(longest),
                  "pad_fraction": round(pad_fraction(batches) or 0.0, 4),
                  "tokenizer_padding": hf.tokenizer_padding},
        impact=impact)
