"""Alignment checks: layer widths, vocabulary, batch size and sequence length vs the device's alignment.

Only where the device (or ``target``) cares: ``profile.alignment_for(dtype) > 1``
for the dtype the GEMMs run in; batch size and sequence length only on an
accelerator with matrix units. Only layers carrying a real share of the
Linear/Conv FLOPs count (a 2-class head is not worth a hint). CPUs count too:
AVX2 holds 8 fp32 per register, AVX-512 16, and unaligned widths need masked
tails (measured here, AVX2 fp32 Linear stack: widths 767/769/770 run
1.35-1.53x slower than 768 forward, 1.35-1.41x forward+backward).

Settings read (``ctx.settings``, absent = unknown):
    ``pad_to_multiple_of``: int or None (seq-len-unaligned stays quiet when it is a multiple of 8).
"""

from __future__ import annotations

from torch import nn

from perfcallbacks.checks.batch import observed_batches, typical_batch_size
from perfcallbacks.checks.model import GemmLayer, gemm_layers, model_config
from perfcallbacks.checks.precision import precision_dtypes
from perfcallbacks.checks.registry import check, fix_text, nearest_multiples
from perfcallbacks.context import RunContext
from perfcallbacks.hints import REGISTRY, Hint

# A layer must hold at least 5% of the model's Linear/Conv FLOPs to matter:
# fixing a smaller one cannot gain more than a few percent end to end.
MIN_FLOP_SHARE = 0.05
# Slowdown of one unaligned GEMM vs its aligned neighbour. CPU: measured here
# (AVX2, fp32 Linear stack, 767/769/770 vs 768): 1.35-1.53x forward and
# 1.35-1.41x forward+backward; the low end is used. Tensor Cores: unaligned
# fp16/bf16 dims fall back to slower kernels (NVIDIA "Matrix Multiplication
# Background" guide); 1.5x is a conservative end-to-end figure, not measured here.
CPU_UNALIGNED_SLOWDOWN = 1.35
MATRIX_UNIT_UNALIGNED_SLOWDOWN = 1.5
# Vocabulary projections want multiples of 64 (DESIGN; nanoGPT 50257 -> 50304).
VOCAB_MULTIPLE = 64
# Tensor Core tiles want batch and sequence dims in multiples of 8 (fp16/bf16).
TOKEN_DIM_MULTIPLE = 8
# seq-len-unaligned fires when most observed batches are unaligned.
UNALIGNED_BATCH_SHARE = 0.5
# Conv inputs with this few channels are images/audio (RGB = 3): nothing to round.
INPUT_CHANNELS_MAX = 4

# Embedding tables smaller than this are positions/segments/classes, not a vocabulary.
MIN_VOCAB = 256

_VOCAB_HEAD_NAMES = ("lm_head", "decoder", "output", "generator", "embed_out", "head")


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


def _slowdown(ctx: RunContext) -> float:
    return MATRIX_UNIT_UNALIGNED_SLOWDOWN if ctx.profile.has_matrix_units else CPU_UNALIGNED_SLOWDOWN


def _impact(share: float, slowdown: float) -> float:
    # Time share of GEMMs ~ FLOP share: fixing them removes (slowdown - 1) of their time.
    return 1.0 + share * (slowdown - 1.0)


def vocab_projection(model: nn.Module | None) -> GemmLayer | None:
    """The Linear that projects onto the vocabulary (LM head / tied embedding), or ``None``.

    An encoder's input embedding alone is not one: only an output projection is.
    """
    if model is None:
        return None
    layers = {layer.name: layer for layer in gemm_layers(model)}
    head = None
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except Exception:  # some models raise NotImplementedError
            head = None
    embed_weights = {id(m.weight): m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)
                     and m.num_embeddings >= MIN_VOCAB}
    vocab = getattr(model_config(model), "vocab_size", None)
    for name, module in model.named_modules():
        if name not in layers:
            continue
        if head is not None and module is head:
            return layers[name]
        weight = getattr(module, "weight", None)
        tied = id(weight) in embed_weights
        named_head = name.rsplit(".", 1)[-1] in _VOCAB_HEAD_NAMES
        out = layers[name].out_dim
        if tied or (named_head and (out == vocab or out in embed_weights.values())):
            return layers[name]
    return None


@check("dim-unaligned", phases=("setup",))
def dim_unaligned(ctx: RunContext) -> Hint | None:
    dtype = compute_dtype(ctx)
    multiple = ctx.profile.alignment_for(dtype)
    if multiple <= 1 or ctx.model is None:
        return None
    vocab = vocab_projection(ctx.model)
    offenders: dict[int, list[str]] = {}
    share = 0.0
    for layer in gemm_layers(ctx.model):
        if layer.share < MIN_FLOP_SHARE:
            continue
        dims = []
        if not (layer.kind == "conv" and layer.in_dim <= INPUT_CHANNELS_MAX):
            dims.append(layer.in_dim)
        if vocab is None or layer.name != vocab.name:  # the vocabulary has its own hint
            dims.append(layer.out_dim)
        bad = [d for d in dims if d % multiple]
        for d in bad:
            offenders.setdefault(d, []).append(layer.name or "<model>")
        if bad:
            share += layer.share
    if not offenders:
        return None
    suggestions = {str(d): list(nearest_multiples(d, multiple)) for d in sorted(offenders)}
    listed = ", ".join(f"{d} -> {' or '.join(map(str, nearest_multiples(d, multiple)))}" for d in sorted(offenders))
    impact = _impact(share, _slowdown(ctx))
    fix = f"round these widths to multiples of {multiple}: {listed}"
    return REGISTRY["dim-unaligned"].make(
        ctx.phase,
        f"Layers holding {share:.0%} of the Linear/Conv FLOPs have widths that are not multiples of {multiple} "
        f"(what {ctx.profile.name} wants for {dtype}): {listed}.",
        fix,
        evidence={"alignment": multiple, "dtype": dtype, "unaligned_flop_share": round(share, 4),
                  "widths": suggestions, "layers": {str(d): names[:4] for d, names in sorted(offenders.items())}},
        impact=impact)


@check("vocab-unaligned", phases=("setup",))
def vocab_unaligned(ctx: RunContext) -> Hint | None:
    if ctx.profile.alignment_for(compute_dtype(ctx)) <= 1:
        return None
    head = vocab_projection(ctx.model)
    if head is None or head.out_dim % VOCAB_MULTIPLE == 0 or head.share < MIN_FLOP_SHARE:
        return None
    below, above = nearest_multiples(head.out_dim, VOCAB_MULTIPLE)
    fix = fix_text(ctx,
                   lightning=f"model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={VOCAB_MULTIPLE}) "
                             f"(HF model) or build the embedding/head with {above} rows and ignore the extra logits",
                   hf=f"model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of={VOCAB_MULTIPLE})",
                   torch=f"nn.Embedding({above}, dim) / nn.Linear(dim, {above}) and ignore the extra logits")
    return REGISTRY["vocab-unaligned"].make(
        ctx.phase,
        f"The vocabulary projection {head.name!r} has {head.out_dim} outputs ({head.share:.0%} of the Linear FLOPs), "
        f"not a multiple of {VOCAB_MULTIPLE}: pad it to {above}.",
        fix,
        evidence={"vocab_size": head.out_dim, "layer": head.name, "flop_share": round(head.share, 4),
                  "suggested": above},
        impact=_impact(head.share, _slowdown(ctx)))


def _matrix_accelerator(ctx: RunContext) -> bool:
    return ctx.profile.is_accelerator and ctx.profile.has_matrix_units and ctx.judged_on_accelerator


@check("batch-size-unaligned", phases=("warmup", "inference"))
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
    return REGISTRY["batch-size-unaligned"].make(
        ctx.phase,
        f"Batch size {size} is not a multiple of {TOKEN_DIM_MULTIPLE}, which {ctx.profile.name}'s matrix units want: "
        f"use {above} (or {below}).",
        fix, evidence={"batch_size": size, "multiple": TOKEN_DIM_MULTIPLE, "suggested": [below, above],
                       "batches_seen": len(batches)})


@check("seq-len-unaligned", phases=("warmup", "inference"))
def seq_len_unaligned(ctx: RunContext) -> Hint | None:
    if not _matrix_accelerator(ctx):
        return None
    multiple_set = ctx.settings.get("pad_to_multiple_of")
    if isinstance(multiple_set, int) and multiple_set > 0 and multiple_set % TOKEN_DIM_MULTIPLE == 0:
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
    return REGISTRY["seq-len-unaligned"].make(
        ctx.phase,
        f"{len(unaligned)} of {len(lens)} observed batches have a padded length that is not a multiple of "
        f"{TOKEN_DIM_MULTIPLE} (e.g. {', '.join(map(str, unaligned[:5]))}).",
        fix, evidence={"unaligned_share": round(share, 4), "seq_lens": lens[:16], "multiple": TOKEN_DIM_MULTIPLE,
                       "pad_to_multiple_of": multiple_set})
