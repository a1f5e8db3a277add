"""The observed context of a run: the one input every check reads.

Adapters (Lightning, HF, a plain loop) only *collect* facts into a
:class:`RunContext`; checks are pure functions of it. Tests build contexts by
hand (with a preset ``DeviceProfile``) to exercise checks without hardware.
"""

from __future__ import annotations

import functools
import os
import statistics
from dataclasses import dataclass, field
from typing import Any

from perfcallbacks._lazy import lazy_module
from perfcallbacks.device import DeviceProfile
from perfcallbacks.run_facts import RunFacts

torch = lazy_module("torch")  # loads on first use: the checks import this module (see _lazy)
nn = lazy_module("torch.nn")


@dataclass
class ThreadPicture:
    """Processes, threads and loader workers competing for the cores."""

    intra_op: int
    inter_op: int
    local_processes: int = 1
    loader_workers: int = 0
    physical_cores: int = 1
    logical_cores: int = 1
    omp_num_threads: str | None = None
    mkl_num_threads: str | None = None

    @property
    def busy_threads(self) -> int:
        """Threads that want a core at once: every process's intra-op pool plus loader workers."""
        return self.local_processes * (self.intra_op + self.loader_workers)

    @property
    def oversubscription(self) -> float:
        return self.busy_threads / max(1, self.physical_cores)

    @classmethod
    def capture(cls, physical_cores: int, logical_cores: int, local_processes: int = 1,
                loader_workers: int = 0) -> ThreadPicture:
        return cls(
            intra_op=torch.get_num_threads(),
            inter_op=torch.get_num_interop_threads(),
            local_processes=max(1, int(local_processes)),
            loader_workers=max(0, int(loader_workers)),
            physical_cores=max(1, int(physical_cores)),
            logical_cores=max(1, int(logical_cores)),
            omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
            mkl_num_threads=os.environ.get("MKL_NUM_THREADS"),
        )


@dataclass
class LoaderInfo:
    """What a DataLoader is configured to do (read once, when the loader exists)."""

    batch_size: int | None = None
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = False
    has_len: bool = True
    iterable_dataset: bool = False
    collate_fn: str | None = None
    sampler: str | None = None
    drop_last: bool = False

    @classmethod
    def from_loader(cls, loader: Any) -> LoaderInfo | None:
        if loader is None or not hasattr(loader, "dataset"):
            return None
        dataset = getattr(loader, "dataset", None)
        try:
            len(dataset)  # type: ignore[arg-type]
            has_len = True
        except Exception:
            has_len = False
        collate = getattr(loader, "collate_fn", None)
        # Not `batch_sampler or sampler`: truthiness calls __len__, which raises for an IterableDataset.
        sampler = getattr(loader, "batch_sampler", None)
        if sampler is None:
            sampler = getattr(loader, "sampler", None)
        return cls(
            batch_size=getattr(loader, "batch_size", None),
            num_workers=int(getattr(loader, "num_workers", 0) or 0),
            pin_memory=bool(getattr(loader, "pin_memory", False)),
            persistent_workers=bool(getattr(loader, "persistent_workers", False)),
            has_len=has_len,
            iterable_dataset=isinstance(dataset, torch.utils.data.IterableDataset),
            collate_fn=qualified_name(collate),
            sampler=qualified_name(sampler),
            drop_last=bool(getattr(loader, "drop_last", False)),
        )


@dataclass
class BatchStats:
    """Shape facts of one observed batch (no tensors kept)."""

    batch_size: int | None = None
    seq_len: int | None = None  # padded length of token batches
    lengths: tuple[int, ...] = ()  # real (unpadded) length of each row, when known
    dtypes: tuple[str, ...] = ()
    device: str | None = None
    row_hashes: tuple[int, ...] = ()  # only for inference batches (repeated-inputs)

    @property
    def total_tokens(self) -> int | None:
        return None if self.seq_len is None or self.batch_size is None else self.seq_len * self.batch_size

    @property
    def real_tokens(self) -> int | None:
        return sum(self.lengths) if self.lengths else None

    @property
    def pad_fraction(self) -> float | None:
        total, real = self.total_tokens, self.real_tokens
        if not total or real is None:
            return None
        return max(0.0, 1.0 - real / total)


@dataclass
class ValidationLoaderTiming:
    """A fit's validation loader and how long each validation run waited for its first batch.

    ``first_waits``: the last training step's end to the first validation batch (the loader's
    iterator, and so its workers, start in between); ``steady_waits``: one validation batch's end to
    the next one's start; ``batch_times``: one validation batch's step. ``runs_per_epoch`` counts the
    validation runs a training epoch triggers (``0.5`` for every other epoch); ``runs_total`` those of
    the whole fit, when the fit's length is known. The timing is of the fit's first validation run:
    the restarts to come are ``runs_total - 1``.
    """

    loader: LoaderInfo | None = None
    first_waits: list[float] = field(default_factory=list)
    steady_waits: list[float] = field(default_factory=list)
    batch_times: list[float] = field(default_factory=list)
    batches_per_run: int | None = None
    runs_per_epoch: float | None = None
    runs_total: int | None = None


@dataclass
class InferenceInfo:
    """How inference forwards ran (validate / test / predict)."""

    calls: int = 0
    grad_enabled_calls: int = 0
    train_mode_calls: int = 0
    autocast_calls: int = 0
    stage: str | None = None


@dataclass(frozen=True)
class Comparison:
    """A warm-up probe's result, typed: median seconds per forward+backward of the run as it is
    (``baseline_s``) and with the change (``variant_s``), or why it was not measured."""

    speedup: float | None = None
    baseline_s: float | None = None
    variant_s: float | None = None
    not_measured: str | None = None  # the probe's "skipped" or "error" reason

    @classmethod
    def from_probe(cls, measured: dict[str, Any], baseline: str, variant: str) -> Comparison:
        """Read a probe's dict (``facts._probe_*`` writes it) once, here, so checks use no key strings."""
        def seconds(key: str) -> float | None:
            value = measured.get(key)
            return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

        speedup = measured.get("speedup")
        reason = measured.get("skipped") or measured.get("error")
        return cls(speedup=float(speedup) if isinstance(speedup, (int, float)) and not isinstance(speedup, bool)
                   else None, baseline_s=seconds(baseline), variant_s=seconds(variant),
                   not_measured=str(reason) if reason else None)


@dataclass
class DebugFacts:
    """Debugging modes that slow every step, read from the process (and the framework's own switches)."""

    anomaly: bool = False  # torch.autograd anomaly detection
    launch_blocking: bool = False  # CUDA_LAUNCH_BLOCKING=1
    sync_debug_mode: int | None = None  # torch.cuda sync-debug mode (0 off, 1 warn, 2 error); None = CUDA not in use
    profiler: str | None = None  # an active profiler ("torch.profiler", "cProfile", Lightning's class name)
    deterministic: bool = False  # torch.use_deterministic_algorithms(True)
    cudnn_benchmark: bool | None = None
    sources: dict[str, str] = field(default_factory=dict)  # setting -> where it came from (framework argument)
    measured: dict[str, Any] = field(default_factory=dict)  # setting -> {"with_s", "without_s", ...}

    @property
    def probe(self) -> Comparison:
        """The anomaly / determinism cost probe: ``baseline_s`` with the modes on, ``variant_s`` without."""
        return Comparison.from_probe(self.measured, "with_s", "without_s")

    @property
    def probed_modes(self) -> list[str]:
        """The modes the probe switched off to measure their cost (empty without a measurement)."""
        modes = self.measured.get("modes") if self.measured.get("with_s") is not None else None
        return list(modes) if isinstance(modes, (list, tuple)) else []


@dataclass
class DDPFacts:
    """How DistributedDataParallel wraps the model."""

    find_unused_parameters: bool | None = None
    static_graph: bool | None = None
    source: str | None = None  # why find_unused is on (strategy name, HF default, ...)


@dataclass
class GradientFacts:
    """Which trainable parameters received a gradient, over the observed optimizer steps."""

    steps: int = 0
    trainable: int = 0
    # parameter name -> observed steps in which its .grad was None
    missing: dict[str, int] = field(default_factory=dict)

    @property
    def missing_count(self) -> int:
        """Parameters without a gradient in at least one observed step."""
        return len(self.missing)

    @property
    def all_used(self) -> bool:
        return self.steps > 0 and self.trainable > 0 and not self.missing


@dataclass
class CompileFacts:
    """What dynamo did for a compiled model (read from its counters, never by compiling anything)."""

    compiled: bool = False
    modules: list[str] = field(default_factory=list)  # compiled (sub)modules, "" = the model itself
    recompiles: list[dict[str, Any]] = field(default_factory=list)  # {"compile_id", "frame", "reason", "compile_s"}
    graph_breaks: dict[str, int] = field(default_factory=dict)  # reason -> count
    unique_graphs: int | None = None
    baseline: dict[str, Any] = field(default_factory=dict)  # counters when observation began

    @property
    def recompile_reasons(self) -> list[str]:
        """Each recompilation's failed guard, in order."""
        return [str(r.get("reason", "")) for r in self.recompiles]

    @property
    def recompile_seconds(self) -> list[float]:
        """Compile time of the recompilations that recorded one."""
        return [float(r["compile_s"]) for r in self.recompiles
                if isinstance(r.get("compile_s"), (int, float)) and not isinstance(r.get("compile_s"), bool)]


@dataclass
class LayoutFacts:
    """Convolution layout facts: conv share, memory formats, image input shapes, measured channels_last."""

    conv2d_share: float = 0.0  # share of Linear+Conv FLOPs in Conv2d layers (FLOPs at the observed sizes)
    conv2d_layers: int = 0
    weights_channels_last: bool = False
    inputs_channels_last: bool | None = None
    input_shapes: list[tuple[int, ...]] = field(default_factory=list)  # 4-D inputs seen during warm-up
    measured: dict[str, Any] = field(default_factory=dict)  # channels_last probe

    @property
    def probe(self) -> Comparison:
        """channels_last measured against contiguous (baseline) on a real batch."""
        return Comparison.from_probe(self.measured, "contiguous_s", "channels_last_s")


@dataclass
class AttentionFacts:
    """How attention is computed: the HF implementation or hand-written softmax attention."""

    implementation: str | None = None  # HF config._attn_implementation
    supports_sdpa: bool | None = None
    model_class: str | None = None
    eager_modules: list[str] = field(default_factory=list)  # modules whose forward computes softmax(q k^T) v
    measured: dict[str, Any] = field(default_factory=dict)  # SDPA probe

    @property
    def probe(self) -> Comparison:
        """SDPA measured against eager attention (baseline) on a real batch."""
        return Comparison.from_probe(self.measured, "eager_s", "sdpa_s")


@dataclass
class ProbeInput:
    """One real input of the model's forward (captured by a one-shot pre-hook) for the warm-up probes."""

    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    handle: Any = None  # the pre-hook's RemovableHandle while it is attached
    depth: int = 0  # Python stack depth at the user's forward call (anomaly mode's cost grows with it)


@dataclass
class RunContext:
    """Every fact the checks reason on. Fields default to "unknown" so partial contexts work.

    ``profile`` is the device the run is judged on: the ``target`` when one is
    given ("what-if" planning), else the local device.
    """

    local: DeviceProfile
    target: DeviceProfile | None = None
    framework: str = "torch"  # "lightning" | "hf" | "torch"
    framework_version: str | None = None
    phase: str = "setup"
    model: nn.Module | None = None
    model_device: str = "cpu"
    param_dtype: str | None = None  # "fp32" / "fp16" / "bf16" (dominant dtype of parameters)
    autocast_dtype: str | None = None  # dtype used under autocast in training, if any
    precision: str | None = None  # framework precision string ("32-true", "bf16-mixed", "fp16", ...)
    matmul_precision: str = field(default_factory=lambda: torch.get_float32_matmul_precision())
    devices_used: int = 1
    world_size: int = 1
    local_world_size: int = 1
    strategy: str | None = None
    distributed: bool = False
    threads: ThreadPicture | None = None
    loader: LoaderInfo | None = None
    batches: list[BatchStats] = field(default_factory=list)
    inference_batches: list[BatchStats] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)  # seconds, first (warm-up) step excluded
    data_wait_times: list[float] = field(default_factory=list)
    epoch_first_waits: list[float] = field(default_factory=list)  # epoch start -> first batch, seconds
    validation: ValidationLoaderTiming | None = None  # the fit's validation loader (workers-restart)
    inference: InferenceInfo = field(default_factory=InferenceInfo)
    # Raw collection channels (adapters / probes write them); checks read their typed form in ``facts``.
    settings: dict[str, Any] = field(default_factory=dict)  # framework-specific (HF args, collator, ...)
    measurements: dict[str, Any] = field(default_factory=dict)  # probes run on the model
    facts: RunFacts = field(default_factory=RunFacts)  # run_facts.collect_run_facts, before each phase's checks
    latency_budget_ms: float | None = None
    pad_token_id: int | None = None
    # Second-round facts (debug / distributed / compile / layout / attention checks).
    debug: DebugFacts = field(default_factory=DebugFacts)
    ddp: DDPFacts | None = None
    gradients: GradientFacts = field(default_factory=GradientFacts)
    compile: CompileFacts | None = None
    layout: LayoutFacts | None = None
    attention: AttentionFacts | None = None
    # Timed training steps in one epoch, when the loader has a length: a Lightning batch, an HF optimizer step
    # (gradient_accumulation_steps batches): what step_times are the times of.
    batches_per_epoch: int | None = None
    epochs: int | None = None  # epochs the fit will run (from max_epochs / max_steps), when known
    probe_input: ProbeInput | None = None

    @property
    def profile(self) -> DeviceProfile:
        return self.target or self.local

    @property
    def judged_on_cpu(self) -> bool:
        """True when the run is (or is planned to be) on a CPU."""
        return self.profile.kind == "cpu" if self.target else self.model_device == "cpu"

    @property
    def judged_on_accelerator(self) -> bool:
        """True when the run is (or is planned to be) on an accelerator."""
        return self.profile.is_accelerator if self.target else self.model_device != "cpu"

    @property
    def median_step_s(self) -> float | None:
        return statistics.median(self.step_times) if self.step_times else None

    @property
    def median_data_wait_s(self) -> float | None:
        return statistics.median(self.data_wait_times) if self.data_wait_times else None


def dominant_param_dtype(model: nn.Module | None) -> str | None:
    """The dtype holding most parameters (``"fp32"``, ``"fp16"``, ...), or ``None`` without parameters."""
    if model is None:
        return None
    counts: dict[torch.dtype, int] = {}
    for param in model.parameters():
        if isinstance(param, nn.parameter.UninitializedParameter):
            continue  # lazy modules: no shape (numel() raises) until the first forward
        counts[param.dtype] = counts.get(param.dtype, 0) + param.numel()
    if not counts:
        return None
    dtype = max(counts, key=counts.__getitem__)
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(
        dtype, str(dtype).replace("torch.", ""))


def model_device_kind(model: nn.Module | None) -> str:
    """``"cpu"`` / ``"cuda"`` / ...: the kind of :func:`perfcallbacks.model_facts.model_device`."""
    from perfcallbacks.model_facts import model_device

    return model_device(model).type


def qualified_name(obj: Any) -> str | None:
    """``module.QualName`` of a class, an instance or a plain function; ``None`` for ``None``.

    A ``functools.partial`` is named after the function it wraps.

    Example::

        >>> import functools
        >>> qualified_name(functools.partial(dominant_param_dtype)), qualified_name(nn.Linear(1, 1))
        ('perfcallbacks.context.dominant_param_dtype', 'torch.nn.modules.linear.Linear')
    """
    if obj is None:
        return None
    if isinstance(obj, functools.partial):
        obj = obj.func
    if isinstance(obj, type) or getattr(type(obj), "__name__", "") == "function":
        return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
