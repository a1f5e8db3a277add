"""Model check ``attention-eager``: attention computed eagerly where ``scaled_dot_product_attention`` exists.

Two ways to find it (:func:`perfcallbacks.facts.capture_process_facts`): an HF model whose config says
``_attn_implementation == "eager"`` while its class supports SDPA (the speedup is measured at the end of
warm-up on a copy switched to SDPA), or a module whose own ``forward`` computes ``softmax(q @ k^T)`` by
hand (found in its source; not measurable, since it cannot be swapped).
"""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# Measured SDPA speedup that makes the hint worth it, and the one that makes it a warning.
MIN_SPEEDUP = 1.03
WARNING_SPEEDUP = 1.1


ATTENTION_EAGER = HintSpec(
    id="attention-eager", category="model", severity="warning",
    title="Attention computed eagerly where SDPA exists",
    what='Fires when an HF model runs with attn_implementation="eager" while its class supports SDPA, or a module computes softmax(q @ k^T) @ v by hand; the SDPA speedup is measured on a real batch where the model allows the switch.',
    why="torch.nn.functional.scaled_dot_product_attention fuses the score matrix, softmax and weighting into one kernel (flash / memory-efficient on GPUs): BERT-class training 12-35% faster with much less memory.",
    fix='HF: from_pretrained(..., attn_implementation="sdpa") (or model.set_attn_implementation("sdpa")); hand-written attention: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask). auto_apply=True measures and applies SDPA for validate/test/predict.',
    evidence=(),
    fix_id="sdpa",
)


@check(ATTENTION_EAGER, phases=("warmup",))
def attention_eager(ctx: RunContext) -> Hint | None:
    attn = ctx.attention
    if attn is None:
        return None
    if attn.implementation == "eager" and attn.supports_sdpa:
        return _hf_eager(ctx)
    if attn.eager_modules and attn.implementation is None:
        return _hand_written(ctx)
    return None


def _hf_eager(ctx: RunContext) -> Hint | None:
    attn = ctx.attention
    assert attn is not None
    probe = attn.probe
    speedup = probe.speedup
    cross_target = ctx.target is not None and ctx.target.kind != ctx.local.kind
    evidence = {"model_class": attn.model_class, "attn_implementation": "eager", "supports_sdpa": True}
    if speedup is not None and not cross_target:
        if speedup < MIN_SPEEDUP:
            return None  # measured: SDPA does not pay here
        evidence.update({"eager_step_ms": round(probe.baseline_s * 1e3, 3),  # type: ignore[operator]
                         "sdpa_step_ms": round(probe.variant_s * 1e3, 3),  # type: ignore[operator]
                         "measured_speedup": round(speedup, 3), "measured_on": ctx.local.name,
                         "measured": "forward+backward on a real batch"})
        measured = f"SDPA measured {speedup:.2f}x faster on a real batch (forward+backward)"
        impact, severity = speedup, ("warning" if speedup >= WARNING_SPEEDUP else "info")
    else:
        if probe.not_measured:
            evidence["not_measured"] = probe.not_measured
        measured = "not measured here; BERT-class training is 12-35% faster with SDPA on GPUs"
        impact, severity = None, "warning" if ctx.judged_on_accelerator else "info"
    fix = fix_text(ctx,
                   lightning=f"{attn.model_class}.from_pretrained(..., attn_implementation=\"sdpa\") in the "
                             f"LightningModule (or model.set_attn_implementation(\"sdpa\")); "
                             f"PerfHintCallback(auto_apply=True) measures and applies it for validate/test/predict",
                   hf=f"{attn.model_class}.from_pretrained(..., attn_implementation=\"sdpa\") before Trainer(...); "
                      f"HFPerfHints(auto_apply=True) measures and applies it for evaluate/predict",
                   torch=f"{attn.model_class}.from_pretrained(..., attn_implementation=\"sdpa\")")
    return ATTENTION_EAGER.make(
        ctx.phase, f"{attn.model_class} computes attention eagerly (attn_implementation=\"eager\") although it "
                   f"supports SDPA; {measured}.", fix, evidence=evidence, impact=impact, severity=severity)


def _hand_written(ctx: RunContext) -> Hint:
    attn = ctx.attention
    assert attn is not None
    modules = attn.eager_modules
    code = ("out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, "
            "dropout_p=p if self.training else 0.0)")
    fix = fix_text(ctx, lightning=f"in {modules[0]}.forward replace softmax(q @ k.transpose(-2, -1) * scale) @ v "
                                  f"with {code}",
                   hf=f"in {modules[0]}.forward: {code}", torch=f"in {modules[0]}.forward: {code}")
    return ATTENTION_EAGER.make(
        ctx.phase, f"{len(modules)} module(s) compute softmax attention by hand ({', '.join(modules[:3])}); "
                   f"scaled_dot_product_attention fuses it into one kernel (not measured: the module cannot be "
                   f"swapped automatically).",
        fix, evidence={"modules": modules, "detected_in": "forward source (softmax over a matmul, no SDPA call)"},
        impact=None, severity="info")
