"""Device checks: accelerators left idle, pointless distribution, oversubscribed cores."""

from __future__ import annotations

from perfcallbacks.checks.registry import check, fix_text
from perfcallbacks.context import RunContext
from perfcallbacks.hints import Hint, HintSpec

# Loader workers only compete for cores while they work: count them as busy
# when the measured data wait shows the loader is the bottleneck-ish.
BUSY_WORKERS_WAIT_SHARE = 0.10
# Measured here: 2 processes x 2 threads on 2 cores serve 23-26% less than 2 x 1.
OVERSUBSCRIBED_IMPACT = 1.25


GPU_UNUSED = HintSpec(
    id="gpu-unused", category="device", severity="critical",
    title="An accelerator is available but the run is on CPU",
    what="Fires when CUDA/MPS/XPU devices are visible to the process but the model and batches are on the CPU.",
    why="A GPU is typically 10-100x faster than a CPU for dense training; leaving it idle wastes the hardware.",
    fix='Lightning: Trainer(accelerator="auto"); HF: do not set use_cpu=True; plain PyTorch: model.to("cuda").',
    evidence=("accelerators", "accelerator_name", "model_device"),
)


@check(GPU_UNUSED, phases=("setup",))
def gpu_unused(ctx: RunContext) -> Hint | None:
    local = ctx.local
    if not local.is_accelerator or local.count < 1 or ctx.model_device != "cpu":
        return None
    fix = fix_text(ctx, lightning='Trainer(accelerator="auto", devices="auto")',
                   hf="TrainingArguments(...) without use_cpu=True (the Trainer then uses the GPU)",
                   torch=f'model.to("{local.kind}"); batch = batch.to("{local.kind}")')
    return GPU_UNUSED.make(
        ctx.phase,
        f"{local.count} {local.kind.upper()} device(s) ({local.name}) are available but the model runs on the CPU.",
        fix, evidence={"accelerators": local.count, "accelerator_name": local.name, "model_device": ctx.model_device},
        impact=None)


GPUS_IDLE = HintSpec(
    id="gpus-idle", category="device", severity="warning",
    title="More accelerators are visible than the run uses",
    what="Fires when the run uses fewer accelerators than the machine exposes.",
    why="Idle GPUs are throughput left on the table: data parallelism scales nearly linearly for most models.",
    fix='Lightning: Trainer(devices="auto", strategy="ddp"); HF: launch with torchrun --nproc_per_node N or accelerate launch.',
    evidence=("devices_used", "devices_visible"),
)


@check(GPUS_IDLE, phases=("setup",))
def gpus_idle(ctx: RunContext) -> Hint | None:
    local = ctx.local
    if not local.is_accelerator or ctx.model_device == "cpu" or ctx.devices_used >= local.count:
        return None
    fix = fix_text(ctx, lightning=f'Trainer(devices={local.count}, strategy="ddp")',
                   hf=f"torchrun --nproc_per_node {local.count} train.py (or accelerate launch --num_processes {local.count})",
                   torch=f"torchrun --nproc_per_node {local.count} train.py with DistributedDataParallel")
    return GPUS_IDLE.make(
        ctx.phase, f"The run uses {ctx.devices_used} of {local.count} visible {local.kind.upper()} devices.",
        fix, evidence={"devices_used": ctx.devices_used, "devices_visible": local.count},
        impact=round(local.count / max(1, ctx.devices_used) * 0.9, 2))


DISTRIBUTED_SINGLE_PROCESS = HintSpec(
    id="distributed-single-process", category="device", severity="warning",
    title="Distributed strategy with world size 1",
    what="Fires when a distributed strategy or launcher (DDP, FSDP, DeepSpeed, torchrun) runs a single process.",
    why="Distributed wrappers add synchronisation and copies that buy nothing with one process.",
    fix='Use a single-device strategy (Lightning: strategy="auto") or launch more processes.',
    evidence=("strategy", "world_size"),
)


@check(DISTRIBUTED_SINGLE_PROCESS, phases=("setup",))
def distributed_single_process(ctx: RunContext) -> Hint | None:
    if not ctx.distributed or ctx.world_size != 1:
        return None
    fix = fix_text(ctx, lightning='Trainer(strategy="auto", devices=1)',
                   hf="run `python train.py` directly (no torchrun/accelerate launch for one process)",
                   torch="skip DistributedDataParallel / init_process_group when WORLD_SIZE is 1")
    return DISTRIBUTED_SINGLE_PROCESS.make(
        ctx.phase, f"Distributed strategy {ctx.strategy or 'DDP'!s} runs with world size 1: it only adds overhead.",
        fix, evidence={"strategy": ctx.strategy, "world_size": ctx.world_size})


CPU_OVERSUBSCRIBED = HintSpec(
    id="cpu-oversubscribed", category="device", severity="warning",
    title="More busy threads than physical cores",
    what="Fires when processes x intra-op threads (plus busy DataLoader workers) exceed the physical cores in the affinity mask.",
    why="Oversubscribed threads thrash caches and spin-wait: measured here, 2 processes x 2 threads on 2 cores serve 23-26% less than 2 x 1.",
    fix="torch.set_num_threads(physical_cores // processes) in each process, or set OMP_NUM_THREADS before launch.",
    evidence=("processes", "intra_op_threads", "loader_workers", "workers_busy", "busy_threads", "physical_cores", "omp_num_threads"),
    fix_id="threads",
)


@check(CPU_OVERSUBSCRIBED, phases=("setup", "warmup"))
def cpu_oversubscribed(ctx: RunContext) -> Hint | None:
    pic = ctx.threads
    if pic is None:
        return None
    wait, step = ctx.median_data_wait_s, ctx.median_step_s
    workers_busy = bool(wait and step and wait / (wait + step) > BUSY_WORKERS_WAIT_SHARE)
    busy = pic.local_processes * (pic.intra_op + (pic.loader_workers if workers_busy else 0))
    if busy <= pic.physical_cores:
        return None
    best = max(1, pic.physical_cores // pic.local_processes)
    fix = (f"torch.set_num_threads({best}) in each of the {pic.local_processes} process(es) "
           f"(or OMP_NUM_THREADS={best} before launch)")
    if ctx.framework == "lightning":
        fix += "; PerfHintCallback(auto_apply=True) sets it for you"
    elif ctx.framework == "hf":
        fix += "; HFPerfHints(auto_apply=True) sets it for you"
    return CPU_OVERSUBSCRIBED.make(
        ctx.phase,
        f"{pic.local_processes} process(es) x {pic.intra_op} intra-op threads"
        + (f" + {pic.loader_workers} busy loader workers" if workers_busy else "")
        + f" = {busy} busy threads on {pic.physical_cores} physical cores.",
        fix,
        evidence={"processes": pic.local_processes, "intra_op_threads": pic.intra_op,
                  "loader_workers": pic.loader_workers, "workers_busy": workers_busy,
                  "busy_threads": busy, "physical_cores": pic.physical_cores,
                  "omp_num_threads": pic.omp_num_threads},
        impact=OVERSUBSCRIBED_IMPACT)


# cudnn-benchmark-off: a conv model (share of FLOPs in Conv2d) with at least this many observed inputs.
CUDNN_CONV_SHARE = 0.3
CUDNN_MIN_SHAPES = 3


def fixed_shapes(shapes: list[tuple[int, ...]]) -> bool:
    """All shapes equal, allowing a smaller last batch (``drop_last=False``)."""
    if len(shapes) < CUDNN_MIN_SHAPES:
        return False
    head = shapes[:-1]
    last = shapes[-1]
    return len(set(head)) == 1 and last[1:] == head[0][1:] and last[0] <= head[0][0]


CUDNN_BENCHMARK_OFF = HintSpec(
    id="cudnn-benchmark-off", category="device", severity="info",
    title="cuDNN autotuning off for fixed-shape convolutions",
    what="Fires on a CUDA run of a conv model whose observed input shapes are all the same while torch.backends.cudnn.benchmark is False (Lightning's default unless benchmark=True; HF never sets it).",
    why="With benchmark on, cuDNN times its convolution algorithms once per input shape and keeps the fastest; with fixed shapes that search is paid once and every later step gains.",
    fix="Lightning: Trainer(benchmark=True); HF / plain PyTorch: torch.backends.cudnn.benchmark = True before training.",
    evidence=("input_shape", "shapes_observed", "distinct_shapes", "conv2d_layers", "cudnn_benchmark", "device"),
)


@check(CUDNN_BENCHMARK_OFF, phases=("warmup",))
def cudnn_benchmark_off(ctx: RunContext) -> Hint | None:
    if ctx.profile.kind != "cuda" or not ctx.judged_on_accelerator:
        return None
    layout = ctx.layout
    if layout is None or not layout.conv2d_layers or layout.conv2d_share < CUDNN_CONV_SHARE:
        return None
    if ctx.debug.cudnn_benchmark or ctx.debug.deterministic:
        return None  # on already, or the run asked for determinism (benchmark would override it)
    if not fixed_shapes(layout.input_shapes):
        return None  # varying shapes: benchmark would search again for every new shape
    fix = fix_text(ctx, lightning="Trainer(benchmark=True)",
                   hf="torch.backends.cudnn.benchmark = True before trainer.train()",
                   torch="torch.backends.cudnn.benchmark = True before the training loop")
    shape = list(layout.input_shapes[0])
    return CUDNN_BENCHMARK_OFF.make(
        ctx.phase,
        f"A conv model ({layout.conv2d_layers} Conv2d layers) sees one fixed input shape {shape} in all "
        f"{len(layout.input_shapes)} observed steps, but torch.backends.cudnn.benchmark is off: cuDNN never "
        f"times its algorithms for it.",
        fix, evidence={"input_shape": shape, "shapes_observed": len(layout.input_shapes),
                       "distinct_shapes": len(set(layout.input_shapes)), "conv2d_layers": layout.conv2d_layers,
                       "cudnn_benchmark": False, "device": ctx.profile.name})
