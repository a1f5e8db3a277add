"""Layout checks: a conv model in contiguous (NCHW) memory format where channels_last measured faster."""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# "Conv2d-heavy": most of the Linear+Conv FLOPs in Conv2d layers.
MIN_CONV_SHARE = 0.5
# Measured speedup of channels_last that makes the hint worth it, and the one that makes it a warning.
MIN_SPEEDUP = 1.05
WARNING_SPEEDUP = 1.2


CHANNELS_LAST_OFF = HintSpec(
    id="channels-last-off", category="layout", severity="info",
    title="A conv model runs in contiguous (NCHW) memory format",
    what="Fires when most of a model's FLOPs are in Conv2d layers, it runs in the default contiguous format, and channels_last measured faster on a real batch (CPU oneDNN or cuDNN).",
    why="Convolution kernels (cuDNN on Tensor Cores, oneDNN on CPUs) work in NHWC: contiguous inputs are converted on every layer. ResNet-50 trains ~22% faster in channels_last on GPUs.",
    fix="model = model.to(memory_format=torch.channels_last) and images = images.to(memory_format=torch.channels_last); auto_apply=True measures and applies it for validate/test/predict.",
    evidence=("conv2d_layers", "conv2d_flop_share", "input_shape", "inputs_channels_last"),
    fix_id="channels-last",
)


@check(CHANNELS_LAST_OFF, phases=("warmup",))
def channels_last_off(ctx: RunContext) -> Hint | None:
    layout = ctx.layout
    if layout is None or not layout.conv2d_layers or layout.conv2d_share < MIN_CONV_SHARE:
        return None
    if layout.weights_channels_last:
        return None
    probe = layout.probe
    speedup = probe.speedup
    cross_target = ctx.target is not None and ctx.target.kind != ctx.local.kind
    evidence = {"conv2d_layers": layout.conv2d_layers, "conv2d_flop_share": round(layout.conv2d_share, 4),
                "input_shape": list(layout.input_shapes[0]) if layout.input_shapes else None,
                "inputs_channels_last": layout.inputs_channels_last}
    if speedup is not None and not cross_target:
        if speedup < MIN_SPEEDUP:
            return None  # measured: channels_last does not pay on this device
        evidence.update({"contiguous_step_ms": round(probe.baseline_s * 1e3, 3),  # type: ignore[operator]
                         "channels_last_step_ms": round(probe.variant_s * 1e3, 3),  # type: ignore[operator]
                         "measured_speedup": round(speedup, 3), "measured_on": ctx.local.name,
                         "measured": "forward+backward on a real batch"})
        measured = f"channels_last measured {speedup:.2f}x faster on a real batch (forward+backward)"
        impact, severity = speedup, ("warning" if speedup >= WARNING_SPEEDUP else "info")
    elif ctx.profile.kind == "cuda" and ctx.profile.is_fast("tensor_cores") and ctx.judged_on_accelerator:
        measured = "not measured on the target; cuDNN's NHWC kernels are the fast path on Tensor Cores"
        impact, severity = None, "info"
    else:
        return None  # no measurement on this device: no guess
    fix = fix_text(ctx,
                   lightning="in the LightningModule: def configure_model(self): self.to(memory_format="
                             "torch.channels_last); in training_step: x = x.contiguous(memory_format="
                             "torch.channels_last); PerfHintCallback(auto_apply=True) measures and applies it "
                             "for validate/test/predict",
                   hf="model.to(memory_format=torch.channels_last) before Trainer(...), and convert pixel_values "
                      "in the collator: batch[\"pixel_values\"] = batch[\"pixel_values\"].contiguous("
                      "memory_format=torch.channels_last)",
                   torch="model = model.to(memory_format=torch.channels_last); x = x.contiguous("
                         "memory_format=torch.channels_last) for every 4-D input")
    return CHANNELS_LAST_OFF.make(
        ctx.phase,
        f"{layout.conv2d_share:.0%} of the model's FLOPs are in {layout.conv2d_layers} Conv2d layers running in "
        f"contiguous (NCHW) format; {measured}.",
        fix, evidence=evidence, impact=impact, severity=severity)
