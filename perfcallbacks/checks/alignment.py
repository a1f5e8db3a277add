"""Alignment checks: layer widths, vocabulary, batch size and sequence length vs the device's alignment.

Only where the device (or ``target``) cares: ``profile.alignment_for(dtype) > 1``
for the dtype the GEMMs run in; batch size and sequence length only on an
accelerator with matrix units. Only layers carrying a real share of the
Linear/Conv FLOPs count (a 2-class head is not worth a hint), and widths that
the task or the data fix (the output width of the final layer, ``num_labels``,
the input features of the first layer: :func:`task_fixed_sides`) are never
asked to change. CPUs count too: AVX2 holds 8 fp32 per register, AVX-512 16,
and unaligned widths need masked tails; how much that costs was measured per
ISA (constants below, ``benchmarks/impacts.md``). The fix proposes one width
per offending size and names the layers (``767 -> 768 (model.0 out, ...)``).

Facts read: ``ctx.facts.model`` (GEMM layers with FLOP shares, the vocabulary projection, the
widths the task fixes) and ``ctx.facts.hf.pad_to_multiple_of`` (seq-len-unaligned stays quiet when
it is a multiple of 8).
"""

from __future__ import annotations

from perfcallbacks.checks.batch import observed_batches, typical_batch_size
from perfcallbacks.checks.precision import precision_dtypes
from perfcallbacks.checks.registry import check, fix_text, nearest_multiples
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# A layer must hold at least 5% of the model's Linear/Conv FLOPs to matter:
# fixing a smaller one cannot gain more than a few percent end to end.
MIN_FLOP_SHARE = 0.05
# Slowdown of one unaligned GEMM vs its aligned neighbour, by the alignment the
# CPU wants. AVX2 (8 fp32): measured on an AVX2 machine (fp32 Linear stack,
# 767/769/770 vs 768): 1.35-1.53x forward, 1.35-1.41x forward+backward; the low
# end is used. AVX-512 (16 fp32, Zen4 EPYC, benchmarks/impacts.md): 767 vs 768
# 1.01-1.08x, a 1530- vs 1536-wide BERT FFN 1.04x forward / 1.11x train step:
# 1.08 is used, so the hint stays quiet there (below MIN_PREDICTED_SPEEDUP).
# Unknown alignments take the AVX-512 figure (no warning without evidence).
CPU_UNALIGNED_SLOWDOWN = {8: 1.35, 16: 1.08}
CPU_UNALIGNED_SLOWDOWN_DEFAULT = 1.08
# The vocabulary projection is the one GEMM whose output (tokens x vocab) is
# large enough to be bound by memory, and misaligned rows cost far more there:
# measured on the AVX-512 EPYC (Linear(384, V) on 256 tokens, 1 thread), 30522
# vs 30528 is 1.42x forward and 1.21x forward+backward (30512, 16-aligned, is
# as fast as 30528). The hint is raised at setup, for training: the
# forward+backward figure is used (whole MiniLM-shaped MLM: predicted 1.11x,
# measured 1.00-1.07x train step, 1.20-1.22x forward). AVX2 keeps the
# Linear-stack figure.
VOCAB_CPU_UNALIGNED_SLOWDOWN = {8: 1.35, 16: 1.21}
# Tensor Cores: unaligned fp16/bf16 dims fall back to slower kernels (NVIDIA
# "Matrix Multiplication Background" guide); 1.5x is a conservative end-to-end
# figure, not measured here (no GPU).
MATRIX_UNIT_UNALIGNED_SLOWDOWN = 1.5
# dim-unaligned asks for an architecture change (retraining): it fires only when
# the predicted end-to-end gain is at least 10%, above the run-to-run noise of
# the measurements behind the slowdowns.
MIN_PREDICTED_SPEEDUP = 1.10
# Vocabulary projections want multiples of 64 (DESIGN; nanoGPT 50257 -> 50304).
VOCAB_MULTIPLE = 64
# Tensor Core tiles want batch and sequence dims in multiples of 8 (fp16/bf16).
TOKEN_DIM_MULTIPLE = 8
# seq-len-unaligned fires when most observed batches are unaligned.
UNALIGNED_BATCH_SHARE = 0.5
# Conv inputs with this few channels are images/audio (RGB = 3): nothing to round.
INPUT_CHANNELS_MAX = 4

def compute_dtype(ctx: RunContext) -> str:
    """The dtype the GEMMs run in (or will, once tensor-cores-idle's advice is followed)."""
    used = precision_dtypes(ctx)
    if "bf16" in used:
        return "bf16"
    if "fp16" in used:
        return "fp16"
    profile = ctx.profile
    if profile.is_fast("tf32") and ctx.matmul_precision != "highest":
        return "tf32"
    if profile.is_accelerator and profile.has_matrix_units:
        fast = profile.fast_autocast_dtype()
        if fast is not None:
            return "bf16" if str(fast).endswith("bfloat16") else "fp16"
    return ctx.param_dtype if ctx.param_dtype in ("fp32", "fp64") else "fp32"


def _slowdown(ctx: RunContext, multiple: int | None = None) -> float:
    if ctx.profile.has_matrix_units:
        return MATRIX_UNIT_UNALIGNED_SLOWDOWN
    multiple = multiple or ctx.profile.alignment_for(compute_dtype(ctx))
    return CPU_UNALIGNED_SLOWDOWN.get(multiple, CPU_UNALIGNED_SLOWDOWN_DEFAULT)


def _vocab_slowdown(ctx: RunContext) -> float:
    if ctx.profile.has_matrix_units:
        return MATRIX_UNIT_UNALIGNED_SLOWDOWN
    multiple = ctx.profile.alignment_for(compute_dtype(ctx))
    return VOCAB_CPU_UNALIGNED_SLOWDOWN.get(multiple, VOCAB_CPU_UNALIGNED_SLOWDOWN[16])


def _impact(share: float, slowdown: float) -> float:
    # Time share of GEMMs ~ FLOP share: fixing them removes (slowdown - 1) of their time.
    return 1.0 + share * (slowdown - 1.0)


def qualified(name: str) -> str:
    """A module name as the user writes it: ``model.classifier`` (``model`` for the root)."""
    return f"model.{name}" if name else "model"


def aligned_width(width: int, multiple: int) -> int:
    """The one width proposed for ``width``: the next multiple up (never shrinks capacity).

    Example::

        >>> aligned_width(767, 16), aligned_width(769, 16)
        (768, 784)
    """
    return nearest_multiples(width, multiple)[1]


DIM_UNALIGNED = HintSpec(
    id="dim-unaligned", category="alignment", severity="warning",
    title="Layer widths not multiples of the device's alignment",
    what="Fires when Linear/Conv dims that carry a real share of the FLOPs, other than widths fixed by the task or data (output classes, num_labels, input features), are not multiples of the device's alignment and the predicted gain is at least 10%.",
    why="Unaligned GEMMs fall back to masked kernels: fp32 width 767 measured 1.35-1.53x slower than 768 on AVX2, 1.01-1.11x on AVX-512 (benchmarks/impacts.md); Tensor Cores need multiples of 8 (fp16/bf16).",
    fix="Round the listed widths up to the one suggested multiple (the message names the layers).",
    evidence=("alignment", "dtype", "unaligned_flop_share", "widths", "layers", "suggested", "task_fixed"),
)


@check(DIM_UNALIGNED, phases=("setup",))
def dim_unaligned(ctx: RunContext) -> Hint | None:
    dtype = compute_dtype(ctx)
    multiple = ctx.profile.alignment_for(dtype)
    model = ctx.facts.model
    if multiple <= 1 or not model.present:
        return None
    vocab, layers, fixed = model.vocab_projection, model.layers, model.task_fixed
    offenders: dict[int, list[str]] = {}
    where: dict[int, list[str]] = {}
    share = 0.0
    for layer in layers:
        if layer.share < MIN_FLOP_SHARE:
            continue
        sides = []
        locked = fixed.get(layer.name, set())
        if not (layer.kind == "conv" and layer.in_dim <= INPUT_CHANNELS_MAX) and "in" not in locked:
            sides.append(("in", layer.in_dim))
        if (vocab is None or layer.name != vocab.name) and "out" not in locked:  # the vocabulary has its own hint
            sides.append(("out", layer.out_dim))
        bad = [(side, d) for side, d in sides if d % multiple]
        for side, d in bad:
            label = layer.name or "<model>"
            if label not in offenders.get(d, []):
                offenders.setdefault(d, []).append(label)
            where.setdefault(d, []).append(f"{qualified(layer.name)} {side}")
        if bad:
            share += layer.share
    impact = _impact(share, _slowdown(ctx, multiple))
    if not offenders or impact < MIN_PREDICTED_SPEEDUP:
        return None
    suggestions = {str(d): list(nearest_multiples(d, multiple)) for d in sorted(offenders)}
    proposed = {d: aligned_width(d, multiple) for d in sorted(offenders)}

    def places(d: int) -> str:
        names = where[d]
        return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

    listed = "; ".join(f"{d} -> {proposed[d]} ({places(d)})" for d in sorted(offenders))
    fix = (f"build these layers with widths rounded up to a multiple of {multiple}: {listed} "
           f"(the output and input widths fixed by the task and data are left as they are)")
    return DIM_UNALIGNED.make(
        ctx.phase,
        f"Layers holding {share:.0%} of the Linear/Conv FLOPs have widths that are not multiples of {multiple} "
        f"(what {ctx.profile.name} wants for {dtype}): {listed}.",
        fix,
        evidence={"alignment": multiple, "dtype": dtype, "unaligned_flop_share": round(share, 4),
                  "widths": suggestions, "layers": {str(d): names[:4] for d, names in sorted(offenders.items())},
                  "suggested": {str(d): v for d, v in proposed.items()},
                  "task_fixed": {qualified(n): sorted(s) for n, s in sorted(fixed.items())}},
        impact=impact)


VOCAB_UNALIGNED = HintSpec(
    id="vocab-unaligned", category="alignment", severity="info",
    title="Vocabulary projection not a multiple of 64",
    what="Fires when an output projection onto the vocabulary (LM head, tied embeddings) has a size that is not a multiple of 64.",
    why="The LM head is often the largest GEMM of a language model; padding the vocabulary to a multiple of 64 gives aligned tiles (nanoGPT's 50257 -> 50304 gave ~25%).",
    fix="model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64).",
    evidence=("vocab_size", "layer", "flop_share", "suggested"),
)


@check(VOCAB_UNALIGNED, phases=("setup",))
def vocab_unaligned(ctx: RunContext) -> Hint | None:
    if ctx.profile.alignment_for(compute_dtype(ctx)) <= 1:
        return None
    head = ctx.facts.model.vocab_projection
    if head is None or head.out_dim % VOCAB_MULTIPLE == 0 or head.share < MIN_FLOP_SHARE:
        return None
    below, above = nearest_multiples(head.out_dim, VOCAB_MULTIPLE)
    fix = fix_text(ctx,
                   lightning=f"model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={VOCAB_MULTIPLE}) "
                             f"(HF model) or build the embedding/head with {above} rows and ignore the extra logits",
                   hf=f"model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={VOCAB_MULTIPLE})",
                   torch=f"nn.Embedding({above}, dim) / nn.Linear(dim, {above}) and ignore the extra logits")
    return VOCAB_UNALIGNED.make(
        ctx.phase,
        f"The vocabulary projection {head.name!r} has {head.out_dim} outputs ({head.share:.0%} of the Linear FLOPs), "
        f"not a multiple of {VOCAB_MULTIPLE}: pad it to {above}.",
        fix,
        evidence={"vocab_size": head.out_dim, "layer": head.name, "flop_share": round(head.share, 4),
                  "suggested": above},
        impact=_impact(head.share, _vocab_slowdown(ctx)))


def _matrix_accelerator(ctx: RunContext) -> bool:
    return ctx.profile.is_accelerator and ctx.profile.has_matrix_units and ctx.judged_on_accelerator


BATCH_SIZE_UNALIGNED = HintSpec(
    id="batch-size-unaligned", category="alignment", severity="info",
    title="Batch size not a multiple of 8",
    what="Fires on an accelerator with matrix units when the batch size is not a multiple of 8.",
    why="The batch dimension becomes a GEMM dimension; Tensor Core tiles want multiples of 8.",
    fix="Use a batch size that is a multiple of 8 (the message gives the nearest).",
    evidence=("batch_size", "multiple", "suggested", "batches_seen"),
)


@check(BATCH_SIZE_UNALIGNED, phases=("warmup", "inference"))
def batch_size_unaligned(ctx: RunContext) -> Hint | None:
    if not _matrix_accelerator(ctx):
        return None
    batches = observed_batches(ctx)
    loader_size = ctx.loader.batch_size if ctx.loader and ctx.phase != "inference" else None
    size = typical_batch_size(batches, loader_size)
    if not size or size % TOKEN_DIM_MULTIPLE == 0 or size < TOKEN_DIM_MULTIPLE:
        return None
    below, above = nearest_multiples(size, TOKEN_DIM_MULTIPLE)
    fix = fix_text(ctx, lightning=f"DataLoader(..., batch_size={above})  (or {below})",
                   hf=f"TrainingArguments(per_device_train_batch_size={above})  (or {below})",
                   torch=f"DataLoader(..., batch_size={above})  (or {below})")
    return BATCH_SIZE_UNALIGNED.make(
        ctx.phase,
        f"Batch size {size} is not a multiple of {TOKEN_DIM_MULTIPLE}, which {ctx.profile.name}'s matrix units want: "
        f"use {above} (or {below}).",
        fix, evidence={"batch_size": size, "multiple": TOKEN_DIM_MULTIPLE, "suggested": [below, above],
                       "batches_seen": len(batches)})


SEQ_LEN_UNALIGNED = HintSpec(
    id="seq-len-unaligned", category="alignment", severity="info",
    title="Padded sequence lengths not multiples of 8",
    what="Fires on an accelerator with matrix units when padded sequence lengths are not multiples of 8.",
    why="Sequence length is a GEMM dimension in attention and every projection.",
    fix="DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8) or tokenizer(..., pad_to_multiple_of=8).",
    evidence=("unaligned_share", "seq_lens", "multiple", "pad_to_multiple_of"),
)


@check(SEQ_LEN_UNALIGNED, phases=("warmup", "inference"))
def seq_len_unaligned(ctx: RunContext) -> Hint | None:
    if not _matrix_accelerator(ctx):
        return None
    multiple_set = ctx.facts.hf.pad_to_multiple_of
    if multiple_set is not None and multiple_set > 0 and multiple_set % TOKEN_DIM_MULTIPLE == 0:
        return None
    lens = [b.seq_len for b in observed_batches(ctx) if b.seq_len]
    if not lens:
        return None
    unaligned = [n for n in lens if n % TOKEN_DIM_MULTIPLE]
    share = len(unaligned) / len(lens)
    if share <= UNALIGNED_BATCH_SHARE:
        return None
    fix = fix_text(ctx, lightning="collate_fn=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)",
                   hf="Trainer(..., data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8))",
                   torch="tokenizer(..., padding=True, pad_to_multiple_of=8) or "
                         "DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)")
    return SEQ_LEN_UNALIGNED.make(
        ctx.phase,
        f"{len(unaligned)} of {len(lens)} observed batches have a padded length that is not a multiple of "
        f"{TOKEN_DIM_MULTIPLE} (e.g. {', '.join(map(str, unaligned[:5]))}).",
        fix, evidence={"unaligned_share": round(share, 4), "seq_lens": lens[:16], "multiple": TOKEN_DIM_MULTIPLE,
                       "pad_to_multiple_of": multiple_set})
