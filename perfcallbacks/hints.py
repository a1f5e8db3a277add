"""Hints: the result type, and the one registry of every hint id with its docs.

Ids are API (used in ``suppress``, tests and reports): never rename or remove
one. Each registry entry documents *what* fires it, *why* it costs time and the
*fix*, in the spirit of ``ruff rule`` and Hypothesis' ``HealthCheck``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from perfcallbacks.device import close_matches

SEVERITIES = ("info", "warning", "critical")
PHASES = ("setup", "warmup", "inference", "export")
CATEGORIES = ("device", "precision", "alignment", "batch", "padding", "data", "inference", "model",
              "debug", "distributed", "compile", "layout")
DOCS_URL = "perfhints explain {id}"


class PerfHintWarning(UserWarning):
    """Category of every warning perfcallbacks emits for a hint.

    Example::

        >>> import warnings
        >>> from perfcallbacks import PerfHintWarning
        >>> warnings.filterwarnings("ignore", category=PerfHintWarning)
    """


class PerfHintError(RuntimeError):
    """Raised at the end of a stage when ``fail_on`` is set and a hint at or above that severity was found.

    ``hints`` holds the hints that triggered it.

    Example::

        >>> from perfcallbacks.hints import PerfHintError
        >>> str(PerfHintError("1 hint at or above 'warning'", hints=[]))
        "1 hint at or above 'warning'"
    """

    def __init__(self, message: str, hints: list[Hint] | None = None) -> None:
        super().__init__(message)
        self.hints = list(hints or [])


@dataclass
class Hint:
    """One measured finding, exactly as it appears in the report JSON."""

    id: str
    category: str
    severity: str
    phase: str
    message: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)
    impact: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "category": self.category,
            "severity": self.severity,
            "phase": self.phase,
            "message": self.message,
            "fix": self.fix,
            "evidence": dict(self.evidence),
            "impact": self.impact,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Hint:
        return cls(
            id=data["id"],
            category=data["category"],
            severity=data["severity"],
            phase=data["phase"],
            message=data["message"],
            fix=data["fix"],
            evidence=dict(data.get("evidence") or {}),
            impact=data.get("impact"),
        )

    @property
    def severity_rank(self) -> int:
        return SEVERITIES.index(self.severity)


@dataclass(frozen=True)
class HintSpec:
    """Registry entry: metadata and documentation of one hint id."""

    id: str
    category: str
    severity: str
    title: str
    what: str
    why: str
    fix: str

    def make(
        self,
        phase: str,
        message: str,
        fix: str,
        evidence: dict[str, Any] | None = None,
        impact: float | None = None,
        severity: str | None = None,
    ) -> Hint:
        """Build a :class:`Hint` of this id; checks call this so metadata stays in one place."""
        return Hint(
            id=self.id,
            category=self.category,
            severity=severity or self.severity,
            phase=phase,
            message=message,
            fix=fix,
            evidence=dict(evidence or {}),
            impact=None if impact is None else round(float(impact), 2),
        )

    def explain(self) -> str:
        return (
            f"{self.id}  ({self.category}, default severity {self.severity})\n"
            f"{self.title}\n\n"
            f"What it does\n  {self.what}\n\n"
            f"Why it matters\n  {self.why}\n\n"
            f"Fix\n  {self.fix}\n\n"
            f"Silence it\n"
            f"  PerfHintCallback(suppress=[\"{self.id}\"])  /  HFPerfHints(suppress=[\"{self.id}\"])\n"
            f"  or: warnings.filterwarnings(\"ignore\", message=r\"\\[{self.id}\\]\", category=PerfHintWarning)\n"
        )


_SPECS = [
    HintSpec("gpu-unused", "device", "critical", "An accelerator is available but the run is on CPU",
             "Fires when CUDA/MPS/XPU devices are visible to the process but the model and batches are on the CPU.",
             "A GPU is typically 10-100x faster than a CPU for dense training; leaving it idle wastes the hardware.",
             "Lightning: Trainer(accelerator=\"auto\"); HF: do not set use_cpu=True; plain PyTorch: model.to(\"cuda\")."),
    HintSpec("gpus-idle", "device", "warning", "More accelerators are visible than the run uses",
             "Fires when the run uses fewer accelerators than the machine exposes.",
             "Idle GPUs are throughput left on the table: data parallelism scales nearly linearly for most models.",
             "Lightning: Trainer(devices=\"auto\", strategy=\"ddp\"); HF: launch with torchrun --nproc_per_node N or accelerate launch."),
    HintSpec("distributed-single-process", "device", "warning", "Distributed strategy with world size 1",
             "Fires when a distributed strategy or launcher (DDP, FSDP, DeepSpeed, torchrun) runs a single process.",
             "Distributed wrappers add synchronisation and copies that buy nothing with one process.",
             "Use a single-device strategy (Lightning: strategy=\"auto\") or launch more processes."),
    HintSpec("cpu-oversubscribed", "device", "warning", "More busy threads than physical cores",
             "Fires when processes x intra-op threads (plus busy DataLoader workers) exceed the physical cores in the affinity mask.",
             "Oversubscribed threads thrash caches and spin-wait: measured here, 2 processes x 2 threads on 2 cores serve 23-26% less than 2 x 1.",
             "torch.set_num_threads(physical_cores // processes) in each process, or set OMP_NUM_THREADS before launch."),
    HintSpec("tensor-cores-idle", "precision", "warning", "Tensor Cores idle: training in plain fp32",
             "Fires on a device with Tensor Cores when the run is in fp32 without autocast and matmul precision is 'highest'.",
             "Tensor Cores deliver 8-16x the fp32 matmul throughput in bf16/fp16 and ~8x in TF32.",
             "Lightning: Trainer(precision=\"bf16-mixed\") (\"16-mixed\" before Ampere) and torch.set_float32_matmul_precision(\"high\"); HF: TrainingArguments(bf16=True, tf32=True)."),
    HintSpec("half-on-cpu", "precision", "warning", "fp16 on a CPU",
             "Fires when the model holds fp16 weights or runs under fp16 autocast on a CPU.",
             "CPUs without AMX-FP16 have no fp16 arithmetic: every op converts to fp32 and back, usually slower than fp32.",
             "Keep fp32 on CPU (Lightning precision=\"32-true\"); use bf16 only on AMX / AVX512-BF16 CPUs; for inference try int8 dynamic quantization."),
    HintSpec("bf16-emulated", "precision", "warning", "bf16 requested on a device without fast bf16",
             "Fires when bf16 weights or bf16 autocast run on a device whose bf16 is emulated (AVX2 CPUs, pre-Ampere GPUs).",
             "Emulated bf16 converts through fp32 on every op: measured here, bf16 autocast on AVX2 is 6.1x slower than fp32.",
             "Use fp32 (CPU) or fp16 mixed precision (pre-Ampere GPUs: precision=\"16-mixed\" / fp16=True)."),
    HintSpec("dim-unaligned", "alignment", "warning", "Layer widths not multiples of the device's alignment",
             "Fires when Linear/Conv/Embedding dims that carry a real share of the FLOPs are not multiples of the alignment the device's matrix or vector units want.",
             "Unaligned GEMMs fall back to padded or masked kernels: measured here (AVX2, fp32), width 767 is 1.35-1.53x slower than 768; Tensor Cores need multiples of 8 (fp16/bf16).",
             "Round the listed widths to the suggested multiples (the message gives the nearest aligned sizes)."),
    HintSpec("vocab-unaligned", "alignment", "info", "Vocabulary projection not a multiple of 64",
             "Fires when an output projection onto the vocabulary (LM head, tied embeddings) has a size that is not a multiple of 64.",
             "The LM head is often the largest GEMM of a language model; padding the vocabulary to a multiple of 64 gives aligned tiles (nanoGPT's 50257 -> 50304 gave ~25%).",
             "model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)."),
    HintSpec("batch-size-unaligned", "alignment", "info", "Batch size not a multiple of 8",
             "Fires on an accelerator with matrix units when the batch size is not a multiple of 8.",
             "The batch dimension becomes a GEMM dimension; Tensor Core tiles want multiples of 8.",
             "Use a batch size that is a multiple of 8 (the message gives the nearest)."),
    HintSpec("seq-len-unaligned", "alignment", "info", "Padded sequence lengths not multiples of 8",
             "Fires on an accelerator with matrix units when padded sequence lengths are not multiples of 8.",
             "Sequence length is a GEMM dimension in attention and every projection.",
             "DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8) or tokenizer(..., pad_to_multiple_of=8)."),
    HintSpec("batch-size-small", "batch", "info", "Batch size leaves throughput on the table",
             "Fires when measured throughput still grows with the batch size (step time nearly flat when doubling it) and memory / latency budget allow more.",
             "Small batches leave the device underused: fixed per-step costs dominate.",
             "Increase the batch size (Lightning: Tuner(trainer).scale_batch_size(model); HF: auto_find_batch_size=True), within latency_budget_ms."),
    HintSpec("padding-waste", "padding", "warning", "Most of the batch is padding",
             "Fires when the measured share of pad tokens in observed batches exceeds the threshold (default 25%).",
             "Pad tokens cost the same compute as real ones: measured on MiniLM here, length-grouped dynamic padding gives 3.3-5x the throughput of max_length=128 padding (benchmarks/padding.md).",
             "Dynamic padding (DataCollatorWithPadding) plus length-grouped batches (HF: train_sampling_strategy=\"group_by_length\"; predict: perfcallbacks.padding.length_grouped_batches)."),
    HintSpec("static-padding", "padding", "warning", "Every batch padded to one fixed length",
             "Fires when every observed batch is padded to the same length, far above the real lengths.",
             "padding=\"max_length\" pays for the longest possible input on every batch.",
             "Tokenize without padding and pad per batch: DataCollatorWithPadding(tokenizer)."),
    HintSpec("dataloader-bottleneck", "data", "warning", "The model waits for data",
             "Fires when measured time waiting for the next batch is a large share (default > 20%) of the step time. Never fires on num_workers alone.",
             "Every second waiting for data is a second the device idles.",
             "DataLoader(num_workers=N, persistent_workers=True) (pin_memory=True on CUDA); move tokenisation out of __getitem__."),
    HintSpec("pin-memory-off", "data", "info", "Loader does not pin memory on a CUDA run",
             "Fires on CUDA runs whose DataLoader does not pin memory while host-to-device copies are significant.",
             "Pinned memory makes host-to-device copies faster and lets them overlap with compute (non_blocking=True).",
             "DataLoader(pin_memory=True) / TrainingArguments(dataloader_pin_memory=True)."),
    HintSpec("grad-in-inference", "inference", "warning", "Inference with autograd on or in train mode",
             "Fires when a validation/predict forward runs with autograd enabled or the model in train mode.",
             "Autograd keeps activations alive for a backward that never comes; train mode keeps dropout on.",
             "Wrap inference in torch.inference_mode() and call model.eval()."),
    HintSpec("int8-available", "inference", "info", "int8 dynamic quantization would speed up CPU inference",
             "Fires for CPU inference of a Linear-heavy fp32 model.",
             "int8 GEMMs do ~2-4x the work per cycle of fp32 on x86: measured here on MiniLM, 1.25-1.37x end to end.",
             "PerfHintCallback(auto_apply=True) measures and applies guarded int8 quantization, or perfcallbacks.quantize_for_export(model, path, example_inputs=batch)."),
    HintSpec("autocast-available", "inference", "info", "Accelerator inference in fp32",
             "Fires for accelerator inference in fp32 where fp16/bf16 autocast is supported.",
             "Low-precision inference uses Tensor Cores and halves memory traffic.",
             "with torch.autocast(\"cuda\", dtype=torch.bfloat16): ... (or auto_apply=True to measure it)."),
    HintSpec("threads-untuned", "inference", "info", "Intra-op thread count is not the measured best",
             "Fires when the measured best intra-op thread count for inference differs from the current one.",
             "Too many threads per worker oversubscribe cores; too few leave them idle.",
             "torch.set_num_threads(N) with the measured N (auto_apply=True does it)."),
    HintSpec("repeated-inputs", "inference", "info", "Identical inputs seen repeatedly in predict",
             "Fires when identical inputs are seen repeatedly across predict batches.",
             "Recomputing the same outputs wastes the whole forward pass; a cache returns them for free.",
             "Deduplicate inputs before predict or cache outputs by input hash (functools.lru_cache on a tuple of token ids)."),
    HintSpec("smaller-model-available", "model", "info", "A BERT-base-sized encoder used for classification",
             "Fires when an encoder of 12 layers x 768 hidden or larger is used for sequence classification.",
             "DistilBERT (6 layers) keeps ~97% of BERT-base's GLUE score at 2x the speed; MiniLM-class models are faster still.",
             "Try distilbert-base-uncased or a MiniLM checkpoint and compare validation metrics."),
    HintSpec("debug-mode-on", "debug", "warning", "A debugging mode is left on during training",
             "Fires when anomaly detection (torch.autograd.set_detect_anomaly / Trainer(detect_anomaly=True)), CUDA_LAUNCH_BLOCKING=1, CUDA sync-debug mode, a profiler recording every step, or deterministic algorithms are on while training. Where it can be toggled safely (anomaly detection, deterministic algorithms) its cost is measured on one real batch (forward + backward with and without, no optimizer step); a measured cost under 5% of the step does not fire.",
             "Anomaly detection records a Python stack trace for every op and checks every gradient for NaN: measured here 1.7-3.5x slower steps on small MLPs (benchmarks/debug_mode.md). CUDA_LAUNCH_BLOCKING=1 (set by HF full_determinism=True) waits for every kernel, removing all CPU/GPU overlap; sync-debug mode and profilers add work to every op.",
             "Lightning: Trainer(detect_anomaly=False, profiler=None, deterministic=False); HF: TrainingArguments(full_determinism=False) and do not export CUDA_LAUNCH_BLOCKING; plain PyTorch: torch.autograd.set_detect_anomaly(False), torch.cuda.set_sync_debug_mode(0), torch.use_deterministic_algorithms(False). Keep them for the debugging session only."),
    HintSpec("ddp-find-unused", "distributed", "warning", "DDP searches for unused parameters that do not exist",
             "Fires when DistributedDataParallel runs with find_unused_parameters=True and every trainable parameter received a gradient in every observed step. The HF Trainer turns it on by itself for every model without gradient checkpointing when ddp_find_unused_parameters is unset.",
             "With find_unused_parameters=True DDP walks the whole autograd graph after every forward to find parameters that will get no gradient, and it cannot overlap that search with the backward; reported costs range from a few percent to hours per epoch.",
             "Lightning: Trainer(strategy=\"ddp\") (not \"ddp_find_unused_parameters_true\"), or DDPStrategy(static_graph=True); HF: TrainingArguments(ddp_find_unused_parameters=False); plain PyTorch: DistributedDataParallel(model, find_unused_parameters=False) or static_graph=True."),
    HintSpec("workers-restart", "data", "warning", "Loader workers are started again every epoch",
             "Fires when a DataLoader with num_workers > 0 and persistent_workers=False spends a real share of the epoch (default > 5%) starting its workers: the wait for the first batch of an epoch, minus the steady-state wait, times the epochs to come.",
             "Without persistent_workers every epoch (and every validation run) forks the workers again and re-imports the dataset in each: users report minutes of start-up per epoch and +25% wall time.",
             "Lightning / plain PyTorch: DataLoader(..., num_workers=N, persistent_workers=True); HF: TrainingArguments(dataloader_persistent_workers=True)."),
    HintSpec("compile-recompiles", "compile", "warning", "A compiled model recompiled during the observed steps",
             "Fires when torch.compile recompiled the model during warm-up, read from dynamo's own compilation records (the guard that failed, e.g. a new sequence length).",
             "Each recompilation costs seconds to minutes and, once torch._dynamo.config.cache_size_limit is reached, the model silently falls back to eager: one graph per padded length turns the compile win into a loss.",
             "torch.compile(model, dynamic=True) or torch._dynamo.mark_dynamic(input_ids, 1); pad to a multiple (pad_to_multiple_of=64) or bucket lengths so few shapes occur."),
    HintSpec("compile-graph-breaks", "compile", "warning", "A compiled model's forward has graph breaks",
             "Fires when dynamo reports graph breaks while compiling the model (counts and reasons from dynamo's counters).",
             "Every graph break splits the model into separately compiled pieces with eager Python in between: fusion stops at each break and the pieces pay their own launch and guard costs.",
             "Remove the listed constructs from forward (print, .item(), data-dependent Python control flow, unsupported calls); find them with torch._dynamo.explain(model)(*inputs) or TORCH_LOGS=graph_breaks."),
    HintSpec("attention-eager", "model", "warning", "Attention computed eagerly where SDPA exists",
             "Fires when an HF model runs with attn_implementation=\"eager\" while its class supports SDPA, or a module computes softmax(q @ k^T) @ v by hand; the SDPA speedup is measured on a real batch where the model allows the switch.",
             "torch.nn.functional.scaled_dot_product_attention fuses the score matrix, softmax and weighting into one kernel (flash / memory-efficient on GPUs): BERT-class training 12-35% faster with much less memory.",
             "HF: from_pretrained(..., attn_implementation=\"sdpa\") (or model.set_attn_implementation(\"sdpa\")); hand-written attention: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask). auto_apply=True measures and applies SDPA for validate/test/predict."),
    HintSpec("channels-last-off", "layout", "info", "A conv model runs in contiguous (NCHW) memory format",
             "Fires when most of a model's FLOPs are in Conv2d layers, it runs in the default contiguous format, and channels_last measured faster on a real batch (CPU oneDNN or cuDNN).",
             "Convolution kernels (cuDNN on Tensor Cores, oneDNN on CPUs) work in NHWC: contiguous inputs are converted on every layer. ResNet-50 trains ~22% faster in channels_last on GPUs.",
             "model = model.to(memory_format=torch.channels_last) and images = images.to(memory_format=torch.channels_last); auto_apply=True measures and applies it for validate/test/predict."),
    HintSpec("cudnn-benchmark-off", "device", "info", "cuDNN autotuning off for fixed-shape convolutions",
             "Fires on a CUDA run of a conv model whose observed input shapes are all the same while torch.backends.cudnn.benchmark is False (Lightning's default unless benchmark=True; HF never sets it).",
             "With benchmark on, cuDNN times its convolution algorithms once per input shape and keeps the fastest; with fixed shapes that search is paid once and every later step gains.",
             "Lightning: Trainer(benchmark=True); HF / plain PyTorch: torch.backends.cudnn.benchmark = True before training."),
    HintSpec("fp8-eligible", "precision", "info", "Linear layers large enough to gain from FP8",
             "Fires on an FP8-capable device (H100/H200/B200 or real) when Linear layers at or above the break-even size (both dims >= 2048, and >= 2048 tokens per step where tokens are known) carry most of the Linear FLOPs and the run is not in FP8.",
             "FP8 GEMMs double the Tensor Core throughput of bf16, but the casts cost a fixed share per layer: torchao measures 1.39x on large layers and 0.80x on small ones.",
             "from torchao.float8 import convert_to_float8_training; convert_to_float8_training(model, module_filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= 2048) with bf16 mixed precision."),
]

REGISTRY: dict[str, HintSpec] = {spec.id: spec for spec in _SPECS}


def spec(hint_id: str) -> HintSpec:
    """Registry entry for ``hint_id``; unknown ids raise with close matches."""
    try:
        return REGISTRY[hint_id]
    except KeyError:
        raise ValueError(unknown_id_message("hint id", hint_id)) from None


def unknown_id_message(argument: str, hint_id: Any) -> str:
    matches = close_matches(str(hint_id), list(REGISTRY))
    maybe = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
    return f"{argument}: unknown hint id {hint_id!r}.{maybe} Known ids: {', '.join(sorted(REGISTRY))}"


def validate_suppress(suppress: Iterable[str] | str | None, argument: str = "suppress") -> frozenset[str]:
    """Validate a ``suppress`` argument: every id must exist (a typo must not silence nothing)."""
    if suppress is None:
        return frozenset()
    if isinstance(suppress, str):
        raise TypeError(f"{argument} must be a list of hint ids, not a single string; got {suppress!r} "
                        f"(write [{suppress!r}])")
    try:
        ids = list(suppress)
    except TypeError:
        raise TypeError(f"{argument} must be an iterable of hint ids, got {type(suppress).__name__}") from None
    for hint_id in ids:
        if hint_id not in REGISTRY:
            raise ValueError(unknown_id_message(argument, hint_id))
    return frozenset(ids)


def warn_hint(hint: Hint, stacklevel: int = 2) -> None:
    """Emit ``hint`` as a :class:`PerfHintWarning` (the caller guarantees once and rank zero)."""
    warnings.warn(f"[{hint.id}] {hint.message} Fix: {hint.fix}", PerfHintWarning, stacklevel=stacklevel)
