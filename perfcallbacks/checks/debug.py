"""Debug checks: debugging modes (anomaly detection, launch blocking, sync debug, profilers, determinism)
left on while training.

Facts come from :func:`perfcallbacks.facts.capture_process_facts` (process state) and the adapters
(which framework argument turned a mode on); the cost of the modes that can be toggled safely is
measured there on one real batch at the end of warm-up.
"""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# A measured cost below this share of the step does not fire (principle 2: measured, not guessed).
MIN_MEASURED_SHARE = 0.05
# Above this measured share the hint is a warning; below, info.
WARNING_SHARE = 0.10


def modes_on(ctx: RunContext) -> list[str]:
    """The debugging modes that are on and matter on the device the run is judged on."""
    debug = ctx.debug
    on_cuda = ctx.profile.kind == "cuda" and ctx.judged_on_accelerator
    modes = []
    if debug.anomaly:
        modes.append("anomaly")
    if debug.launch_blocking and on_cuda:
        modes.append("launch_blocking")
    if debug.sync_debug_mode:
        modes.append("sync_debug_mode")
    if debug.profiler:
        modes.append("profiler")
    if debug.deterministic:
        modes.append("deterministic")
    return modes


_LABELS = {"anomaly": "anomaly detection", "launch_blocking": "CUDA_LAUNCH_BLOCKING=1",
           "sync_debug_mode": "CUDA sync-debug mode", "profiler": "a profiler",
           "deterministic": "deterministic algorithms"}


def _fix(ctx: RunContext, modes: list[str]) -> str:
    lightning, hf, torch_ = [], [], []
    if "anomaly" in modes:
        lightning.append("Trainer(detect_anomaly=False)")
        hf.append("remove torch.autograd.set_detect_anomaly(True) from the script")
        torch_.append("torch.autograd.set_detect_anomaly(False)")
    if "profiler" in modes:
        lightning.append("Trainer(profiler=None) (profile a few steps only: PyTorchProfiler(schedule=...))")
        hf.append("stop the profiler after a few steps (torch.profiler.schedule(wait=1, warmup=1, active=3))")
        torch_.append("profile a few steps only: torch.profiler.profile(schedule=torch.profiler.schedule("
                      "wait=1, warmup=1, active=3))")
    if "deterministic" in modes or "launch_blocking" in modes:
        lightning.append("Trainer(deterministic=False)")
        hf.append("TrainingArguments(full_determinism=False) (set_seed alone keeps runs repeatable enough)")
        torch_.append("torch.use_deterministic_algorithms(False)")
    if "launch_blocking" in modes:
        for parts in (lightning, hf, torch_):
            parts.append("unset CUDA_LAUNCH_BLOCKING in the environment")
    if "sync_debug_mode" in modes:
        for parts in (lightning, hf, torch_):
            parts.append("torch.cuda.set_sync_debug_mode(0)")
    return fix_text(ctx, lightning="; ".join(lightning), hf="; ".join(hf), torch="; ".join(torch_))


DEBUG_MODE_ON = HintSpec(
    id="debug-mode-on", category="debug", severity="warning",
    title="A debugging mode is left on during training",
    what="Fires when anomaly detection (torch.autograd.set_detect_anomaly / Trainer(detect_anomaly=True)), CUDA_LAUNCH_BLOCKING=1, CUDA sync-debug mode, a profiler recording every step, or deterministic algorithms are on while training. Where it can be toggled safely (anomaly detection, deterministic algorithms) its cost is measured on one real batch (forward + backward with and without, no optimizer step); a measured cost under 5% of the step does not fire.",
    why="Anomaly detection records a Python stack trace for every op and checks every gradient for NaN: measured here 1.3x to tens of x slower steps on small MLPs and a small CNN (benchmarks/debug_mode.md; more for many small ops and deep stacks). CUDA_LAUNCH_BLOCKING=1 (set by HF full_determinism=True) waits for every kernel, removing all CPU/GPU overlap; sync-debug mode and profilers add work to every op.",
    fix="Lightning: Trainer(detect_anomaly=False, profiler=None, deterministic=False); HF: TrainingArguments(full_determinism=False) and do not export CUDA_LAUNCH_BLOCKING; plain PyTorch: torch.autograd.set_detect_anomaly(False), torch.cuda.set_sync_debug_mode(0), torch.use_deterministic_algorithms(False). Keep them for the debugging session only.",
    evidence=("modes", "sources"),
)


def step_time_saved(step_s: float, with_s: float, without_s: float) -> float:
    """Seconds a training step saves with the mode off, from the warm-up step and the probe's forward + backward.

    The probe is forward + backward only; the rest of the step (loss, optimizer, the loop) is what the
    measured step holds beyond it. The step's own forward + backward cannot take longer than the step: a
    probe slower than the whole step (it ran deeper on the stack, where anomaly detection costs more) counts
    as the step. Its time without the mode is kept as measured: without anomaly detection the stack depth
    costs nothing, so that time holds wherever the forward runs (scaling it by the deeper probe's on/off
    ratio carried the depth's error into the estimate: benchmarks/debug_mode.md). A step shorter than the
    probe's time without the mode means the machine ran the warm-up and the probe at different speeds:
    then only the probe's own ratio is comparable.

    Example:
        >>> round(step_time_saved(0.010, 0.006, 0.002), 6)  # probe inside the step: its 4 ms are saved
        0.004
        >>> round(step_time_saved(0.004, 0.006, 0.001), 6)  # probe slower than the step: step less 1 ms
        0.003
    """
    covered = min(with_s, step_s)
    if without_s < covered:
        return covered - without_s
    return max(0.0, covered * (1.0 - without_s / with_s)) if with_s > 0 else 0.0


@check(DEBUG_MODE_ON, phases=("warmup",))
def debug_mode_on(ctx: RunContext) -> Hint | None:
    modes = modes_on(ctx)
    if not modes:
        return None
    debug = ctx.debug
    probe = debug.probe
    measured, probed = probe.baseline_s is not None, debug.probed_modes
    step = ctx.median_step_s
    evidence: dict = {"modes": modes, "sources": {m: debug.sources[m] for m in modes if m in debug.sources}}
    if debug.profiler:
        evidence["profiler"] = debug.profiler
    if debug.sync_debug_mode:
        evidence["sync_debug_mode"] = debug.sync_debug_mode
    impact = share = None
    # Measured on this machine: meaningful for the run's own device, not for a different target.
    local_measure = measured and (ctx.target is None or ctx.target.kind == ctx.local.kind)
    if measured:
        with_s, without_s = float(probe.baseline_s), float(probe.variant_s)  # type: ignore[arg-type]
        extra = max(0.0, with_s - without_s)
        evidence.update({"measured_modes": probed, "probe_with_ms": round(with_s * 1e3, 3),
                         "probe_without_ms": round(without_s * 1e3, 3), "extra_ms_per_step": round(extra * 1e3, 3)})
        if step:
            saved = step_time_saved(step, with_s, without_s)
            share = saved / step
            impact = step / max(step - saved, 1e-12)
            evidence.update({"step_ms": round(step * 1e3, 3), "cost_share_of_step": round(share, 4),
                             "estimated_step_slowdown": round(impact, 3)})
        else:
            impact = with_s / max(without_s, 1e-12)
    unmeasured = [m for m in modes if m not in probed]
    if local_measure and share is not None and share < MIN_MEASURED_SHARE and not unmeasured:
        return None  # the run shows the mode costs nothing here
    loud = {"anomaly", "launch_blocking", "sync_debug_mode", "profiler"}
    if local_measure and share is not None:
        severity = "warning" if share >= WARNING_SHARE or set(unmeasured) & loud else "info"
    else:
        severity = "warning" if set(modes) & loud else "info"
    labels = ", ".join(_LABELS[m] + (f" ({debug.sources[m]})" if m in debug.sources else "") for m in modes)
    if local_measure and share is not None and impact is not None:
        cost = (f" Measured on a real batch: forward+backward {evidence['probe_with_ms']:.1f} ms with it vs "
                f"{evidence['probe_without_ms']:.1f} ms without, about {impact:.2f}x slower steps.")
    elif measured:
        cost = " Its cost was measured on this machine only; on the target device it is not known."
        impact = None
    elif probe.not_measured:
        reason = probe.not_measured
        evidence["not_measured"] = reason
        cost = f" Not measured: {reason}."
    else:
        cost = " Its cost cannot be measured inside the run (it cannot be switched off safely here)."
    return DEBUG_MODE_ON.make(
        ctx.phase, f"Debugging mode left on during training: {labels}.{cost}", _fix(ctx, modes),
        evidence=evidence, impact=impact if local_measure else None, severity=severity)
