"""Precision checks: fp32 on Tensor Cores, fp16 on CPUs, emulated bf16."""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.device import FAST
from perfcallbacks.hints import Hint, HintSpec

# Measured here (AVX2, MiniLM inference): bf16 autocast is 6.1x slower than fp32.
CPU_BF16_EMULATION_SLOWDOWN = 6.1
# fp32 -> bf16 mixed precision on Ampere/Hopper Tensor Cores: conservative
# end-to-end estimate for matmul-heavy models (peak ratio is 8-16x).
TENSOR_CORE_SPEEDUP = 2.0

_HALF_PRECISIONS = {"16", "16-mixed", "16-true", "fp16", "half", "float16"}
_BF16_PRECISIONS = {"bf16", "bf16-mixed", "bf16-true", "bfloat16"}


def precision_dtypes(ctx: RunContext) -> set[str]:
    """Low-precision dtypes the run computes in: parameters, autocast, framework setting."""
    used = set()
    for value in (ctx.param_dtype, ctx.autocast_dtype):
        if value in ("fp16", "bf16"):
            used.add(value)
    precision = str(ctx.precision or "").lower()
    if precision in _HALF_PRECISIONS:
        used.add("fp16")
    if precision in _BF16_PRECISIONS:
        used.add("bf16")
    return used


TENSOR_CORES_IDLE = HintSpec(
    id="tensor-cores-idle", category="precision", severity="warning",
    title="Tensor Cores idle: training in plain fp32",
    what="Fires on a device with Tensor Cores when the run is in fp32 without autocast and matmul precision is 'highest'.",
    why="Tensor Cores deliver 8-16x the fp32 matmul throughput in bf16/fp16 and ~8x in TF32.",
    fix='Lightning: Trainer(precision="bf16-mixed") ("16-mixed" before Ampere) and torch.set_float32_matmul_precision("high"); HF: TrainingArguments(bf16=True, tf32=True).',
    evidence=("param_dtype", "precision", "matmul_precision", "device"),
)


@check(TENSOR_CORES_IDLE, phases=("setup",))
def tensor_cores_idle(ctx: RunContext) -> Hint | None:
    profile = ctx.profile
    if not profile.is_fast("tensor_cores") or not ctx.facts.model.present:
        return None
    if precision_dtypes(ctx) or ctx.param_dtype not in (None, "fp32"):
        return None
    tf32_on = profile.is_fast("tf32") and ctx.matmul_precision != "highest"
    if tf32_on:
        return None
    if profile.kind == "cpu":
        fix = fix_text(ctx, lightning='Trainer(precision="bf16-mixed")',
                       hf="TrainingArguments(bf16=True)",
                       torch='with torch.autocast("cpu", dtype=torch.bfloat16): ...')
    else:
        amp = "bf16-mixed" if profile.is_fast("bf16") else "16-mixed"
        hf_flag = "bf16=True" if profile.is_fast("bf16") else "fp16=True"
        tf32 = ", tf32=True" if profile.is_fast("tf32") else ""
        fix = fix_text(ctx, lightning=f'Trainer(precision="{amp}")'
                       + ('; torch.set_float32_matmul_precision("high")' if profile.is_fast("tf32") else ""),
                       hf=f"TrainingArguments({hf_flag}{tf32})",
                       torch=f'with torch.autocast("{profile.kind}", dtype=torch.{"bfloat16" if profile.is_fast("bf16") else "float16"}): ...')
    return TENSOR_CORES_IDLE.make(
        ctx.phase,
        f"{profile.name} has matrix units (Tensor Cores/AMX) but the run is plain fp32 "
        f"(no autocast, matmul precision {ctx.matmul_precision!r}).",
        fix, evidence={"param_dtype": ctx.param_dtype, "precision": ctx.precision,
                       "matmul_precision": ctx.matmul_precision, "device": profile.name},
        impact=TENSOR_CORE_SPEEDUP)


HALF_ON_CPU = HintSpec(
    id="half-on-cpu", category="precision", severity="warning",
    title="fp16 on a CPU",
    what="Fires when the model holds fp16 weights or runs under fp16 autocast on a CPU.",
    why="CPUs without AMX-FP16 have no fp16 arithmetic: every op converts to fp32 and back, usually slower than fp32.",
    fix='Keep fp32 on CPU (Lightning precision="32-true"); use bf16 only on AMX / AVX512-BF16 CPUs; for inference try int8 dynamic quantization.',
    evidence=("param_dtype", "autocast_dtype", "precision", "fp16_support"),
)


@check(HALF_ON_CPU, phases=("setup", "inference"))
def half_on_cpu(ctx: RunContext) -> Hint | None:
    if not ctx.judged_on_cpu or "fp16" not in precision_dtypes(ctx) or ctx.profile.is_fast("fp16"):
        return None
    fix = fix_text(ctx, lightning='Trainer(precision="32-true") on CPU',
                   hf="TrainingArguments(fp16=False) on CPU",
                   torch="model.float() and no fp16 autocast on CPU")
    return HALF_ON_CPU.make(
        ctx.phase, f"fp16 is used on a CPU ({ctx.profile.name}) that has no fast fp16 arithmetic.",
        fix + "; for inference, int8 dynamic quantization is the fast low-precision path.",
        evidence={"param_dtype": ctx.param_dtype, "autocast_dtype": ctx.autocast_dtype,
                  "precision": ctx.precision, "fp16_support": ctx.profile.supports("fp16")})


BF16_EMULATED = HintSpec(
    id="bf16-emulated", category="precision", severity="warning",
    title="bf16 requested on a device without fast bf16",
    what="Fires when bf16 weights or bf16 autocast run on a device whose bf16 is emulated (AVX2 CPUs, pre-Ampere GPUs).",
    why="Emulated bf16 converts through fp32 on every op: measured here, bf16 autocast on AVX2 is 6.1x slower than fp32.",
    fix='Use fp32 (CPU) or fp16 mixed precision (pre-Ampere GPUs: precision="16-mixed" / fp16=True).',
    evidence=("precision", "param_dtype", "autocast_dtype", "bf16_support", "isa"),
)


@check(BF16_EMULATED, phases=("setup", "inference"))
def bf16_emulated(ctx: RunContext) -> Hint | None:
    profile = ctx.profile
    if "bf16" not in precision_dtypes(ctx) or profile.supports("bf16") == FAST:
        return None
    on_cpu = profile.kind == "cpu"
    if on_cpu:
        fix = fix_text(ctx, lightning='Trainer(precision="32-true")', hf="TrainingArguments(bf16=False)",
                       torch="drop the bf16 autocast / model.float()")
    else:
        fix = fix_text(ctx, lightning='Trainer(precision="16-mixed")',
                       hf="TrainingArguments(bf16=False, fp16=True)",
                       torch='torch.autocast("cuda", dtype=torch.float16)')
    return BF16_EMULATED.make(
        ctx.phase, f"bf16 is requested on {profile.name}, whose bf16 is {profile.supports('bf16')} (no native bf16 units).",
        fix, evidence={"precision": ctx.precision, "param_dtype": ctx.param_dtype,
                       "autocast_dtype": ctx.autocast_dtype, "bf16_support": profile.supports("bf16"),
                       "isa": list(profile.isa)},
        impact=CPU_BF16_EMULATION_SLOWDOWN if on_cpu else None)


# fp8-eligible: torchao float8 training pays for large GEMMs only (1.39x on large layers, 0.80x on small).
FP8_BREAK_EVEN_DIM = 2048  # both in and out features
FP8_BREAK_EVEN_TOKENS = 2048  # rows (tokens) per GEMM
FP8_MIN_SHARE = 0.5  # eligible layers' share of the Linear+Conv FLOPs
FP8_LARGE_SPEEDUP = 1.39
FP8_LAYERS_KEPT = 8


def _uses_fp8(ctx: RunContext) -> bool:
    precision = str(ctx.precision or "").lower()
    if "fp8" in precision or "transformer-engine" in precision:
        return True
    return ctx.facts.model.fp8_modules


def _tokens_per_step(ctx: RunContext) -> int | None:
    sizes = [b.total_tokens or b.batch_size for b in ctx.batches if (b.total_tokens or b.batch_size)]
    return int(sorted(sizes)[len(sizes) // 2]) if sizes else None


FP8_ELIGIBLE = HintSpec(
    id="fp8-eligible", category="precision", severity="info",
    title="Linear layers large enough to gain from FP8",
    what="Fires on an FP8-capable device (H100/H200/B200 or real) when Linear layers at or above the break-even size (both dims >= 2048, and >= 2048 tokens per step where tokens are known) carry most of the Linear FLOPs and the run is not in FP8.",
    why="FP8 GEMMs double the Tensor Core throughput of bf16, but the casts cost a fixed share per layer: torchao measures 1.39x on large layers and 0.80x on small ones.",
    fix="from torchao.float8 import convert_to_float8_training; convert_to_float8_training(model, module_filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= 2048) with bf16 mixed precision.",
    evidence=("device", "eligible_layers", "eligible_flop_share", "break_even_dim", "break_even_tokens", "tokens_per_step", "layers"),
)


@check(FP8_ELIGIBLE, phases=("warmup",))
def fp8_eligible(ctx: RunContext) -> Hint | None:
    profile = ctx.profile
    if profile.supports("fp8") != FAST or not ctx.judged_on_accelerator or not ctx.facts.model.present \
            or _uses_fp8(ctx):
        return None
    layers = ctx.facts.model.layers
    eligible = [l for l in layers if l.kind == "linear"
                and min(l.in_dim, l.out_dim) >= FP8_BREAK_EVEN_DIM]
    share = sum(l.share for l in eligible)
    if share < FP8_MIN_SHARE:
        return None
    tokens = _tokens_per_step(ctx)
    if tokens is not None and tokens < FP8_BREAK_EVEN_TOKENS:
        return None  # too few rows per GEMM: the casts cost more than the faster GEMM
    impact = 1.0 / ((1.0 - share) + share / FP8_LARGE_SPEEDUP)
    filter_fn = (f"module_filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and "
                 f"min(m.in_features, m.out_features) >= {FP8_BREAK_EVEN_DIM}")
    fix = fix_text(ctx,
                   lightning=f"in LightningModule.configure_model: from torchao.float8 import "
                             f"convert_to_float8_training; convert_to_float8_training(self, {filter_fn}); "
                             f"Trainer(precision=\"bf16-mixed\")",
                   hf=f"from torchao.float8 import convert_to_float8_training; convert_to_float8_training(model, "
                      f"{filter_fn}) before Trainer(...); TrainingArguments(bf16=True)",
                   torch=f"from torchao.float8 import convert_to_float8_training; "
                         f"convert_to_float8_training(model, {filter_fn}); then torch.compile(model)")
    return FP8_ELIGIBLE.make(
        ctx.phase,
        f"{profile.name} has fast FP8 and {len(eligible)} Linear layers at or above the break-even size "
        f"({FP8_BREAK_EVEN_DIM}) carry {share:.0%} of the model's GEMM FLOPs.",
        fix,
        evidence={"device": profile.name, "eligible_layers": len(eligible), "eligible_flop_share": round(share, 4),
                  "break_even_dim": FP8_BREAK_EVEN_DIM, "break_even_tokens": FP8_BREAK_EVEN_TOKENS,
                  "tokens_per_step": tokens,
                  "layers": [{"name": l.name, "in": l.in_dim, "out": l.out_dim, "flop_share": round(l.share, 4)}
                             for l in eligible[:FP8_LAYERS_KEPT]]},
        impact=impact)
