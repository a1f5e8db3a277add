"""Hints: the result type, and the one registry of every hint id with its docs.

Ids are API (used in ``suppress``, tests and reports): never rename or remove
one. Each registry entry documents *what* fires it, *why* it costs time and the
*fix*, in the spirit of ``ruff rule`` and Hypothesis' ``HealthCheck``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

# Closed sets: the Literal is what a type checker sees, the tuple what runtime code iterates and
# validates against (tests/test_types.py keeps the two equal, in order: severity rank is the index).
Severity = Literal["info", "warning", "critical"]
Phase = Literal["setup", "warmup", "inference", "export"]
SEVERITIES: tuple[Severity, ...] = ("info", "warning", "critical")
PHASES: tuple[Phase, ...] = ("setup", "warmup", "inference", "export")
CATEGORIES = ("device", "precision", "alignment", "batch", "padding", "data", "inference", "model",
              "debug", "distributed", "compile", "layout")


class PerfHintWarning(UserWarning):
    """Category of every warning perfcallbacks emits for a hint.

    Example::

        >>> import warnings
        >>> from perfcallbacks import PerfHintWarning
        >>> warnings.filterwarnings("ignore", category=PerfHintWarning)
    """


class PerfCallbacksIOWarning(UserWarning):
    """perfcallbacks could not do its own I/O (e.g. write the report). Not a :class:`PerfHintWarning`,
    so a filter that silences hints never hides a lost report.

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import PerfCallbacksIOWarning, PerfHintWarning
        >>> issubclass(PerfCallbacksIOWarning, PerfHintWarning), issubclass(PerfCallbacksIOWarning, UserWarning)
        (False, True)
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
    severity: Severity
    phase: Phase
    message: str
    fix: str
    evidence: dict[str, Any] = field(default_factory=dict)
    impact: float | None = None
    # Kept in the report but left out of tables and warnings (``suppress=`` or a warnings filter).
    suppressed: bool = False
    # Id of the applied fix that made this finding moot (e.g. int8-available after dynamic-quantization).
    resolved_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "category": self.category,
            "severity": self.severity,
            "phase": self.phase,
            "message": self.message,
            "fix": self.fix,
            "evidence": dict(self.evidence),
            "impact": self.impact,
        }
        if self.suppressed:  # written only when set: reports without them read as before
            data["suppressed"] = True
        if self.resolved_by:
            data["resolved_by"] = self.resolved_by
        return data

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
            suppressed=bool(data.get("suppressed", False)),
            resolved_by=data.get("resolved_by") or None,
        )

    @property
    def severity_rank(self) -> int:
        return SEVERITIES.index(self.severity)


@dataclass(frozen=True, kw_only=True)
class HintSpec:
    """Registry entry: metadata and documentation of one hint id."""

    id: str
    category: str
    severity: Severity
    title: str
    what: str
    why: str
    fix: str
    # Evidence keys every hint of this id carries (tests/test_hints_from_registry.py holds the check to it).
    evidence: tuple[str, ...] = ()
    # The guarded fix (``FixResult.id``) that answers this hint, if any; ``report.FIX_RESOLVES`` says when.
    fix_id: str | None = None

    def make(
        self,
        phase: Phase,
        message: str,
        fix: str,
        evidence: dict[str, Any] | None = None,
        impact: float | None = None,
        severity: Severity | None = None,
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
    HintSpec(id='gpu-unused', category='device', severity='critical',
             title='An accelerator is available but the run is on CPU',
             what='Fires when CUDA/MPS/XPU devices are visible to the process but the model and batches are on the CPU.',
             why='A GPU is typically 10-100x faster than a CPU for dense training; leaving it idle wastes the hardware.',
             fix='Lightning: Trainer(accelerator="auto"); HF: do not set use_cpu=True; plain PyTorch: model.to("cuda").',
             evidence=('accelerators', 'accelerator_name', 'model_device')),
    HintSpec(id='gpus-idle', category='device', severity='warning',
             title='More accelerators are visible than the run uses',
             what='Fires when the run uses fewer accelerators than the machine exposes.',
             why='Idle GPUs are throughput left on the table: data parallelism scales nearly linearly for most models.',
             fix='Lightning: Trainer(devices="auto", strategy="ddp"); HF: launch with torchrun --nproc_per_node N or accelerate launch.',
             evidence=('devices_used', 'devices_visible')),
    HintSpec(id='distributed-single-process', category='device', severity='warning',
             title='Distributed strategy with world size 1',
             what='Fires when a distributed strategy or launcher (DDP, FSDP, DeepSpeed, torchrun) runs a single process.',
             why='Distributed wrappers add synchronisation and copies that buy nothing with one process.',
             fix='Use a single-device strategy (Lightning: strategy="auto") or launch more processes.',
             evidence=('strategy', 'world_size')),
    HintSpec(id='cpu-oversubscribed', category='device', severity='warning',
             title='More busy threads than physical cores',
             what='Fires when processes x intra-op threads (plus busy DataLoader workers) exceed the physical cores in the affinity mask.',
             why='Oversubscribed threads thrash caches and spin-wait: measured here, 2 processes x 2 threads on 2 cores serve 23-26% less than 2 x 1.',
             fix='torch.set_num_threads(physical_cores // processes) in each process, or set OMP_NUM_THREADS before launch.',
             evidence=('processes', 'intra_op_threads', 'loader_workers', 'workers_busy', 'busy_threads', 'physical_cores', 'omp_num_threads'), fix_id='threads'),
    HintSpec(id='tensor-cores-idle', category='precision', severity='warning',
             title='Tensor Cores idle: training in plain fp32',
             what="Fires on a device with Tensor Cores when the run is in fp32 without autocast and matmul precision is 'highest'.",
             why='Tensor Cores deliver 8-16x the fp32 matmul throughput in bf16/fp16 and ~8x in TF32.',
             fix='Lightning: Trainer(precision="bf16-mixed") ("16-mixed" before Ampere) and torch.set_float32_matmul_precision("high"); HF: TrainingArguments(bf16=True, tf32=True).',
             evidence=('param_dtype', 'precision', 'matmul_precision', 'device')),
    HintSpec(id='half-on-cpu', category='precision', severity='warning',
             title='fp16 on a CPU',
             what='Fires when the model holds fp16 weights or runs under fp16 autocast on a CPU.',
             why='CPUs without AMX-FP16 have no fp16 arithmetic: every op converts to fp32 and back, usually slower than fp32.',
             fix='Keep fp32 on CPU (Lightning precision="32-true"); use bf16 only on AMX / AVX512-BF16 CPUs; for inference try int8 dynamic quantization.',
             evidence=('param_dtype', 'autocast_dtype', 'precision', 'fp16_support')),
    HintSpec(id='bf16-emulated', category='precision', severity='warning',
             title='bf16 requested on a device without fast bf16',
             what='Fires when bf16 weights or bf16 autocast run on a device whose bf16 is emulated (AVX2 CPUs, pre-Ampere GPUs).',
             why='Emulated bf16 converts through fp32 on every op: measured here, bf16 autocast on AVX2 is 6.1x slower than fp32.',
             fix='Use fp32 (CPU) or fp16 mixed precision (pre-Ampere GPUs: precision="16-mixed" / fp16=True).',
             evidence=('precision', 'param_dtype', 'autocast_dtype', 'bf16_support', 'isa')),
    HintSpec(id='dim-unaligned', category='alignment', severity='warning',
             title="Layer widths not multiples of the device's alignment",
             what="Fires when Linear/Conv dims that carry a real share of the FLOPs, other than widths fixed by the task or data (output classes, num_labels, input features), are not multiples of the device's alignment and the predicted gain is at least 10%.",
             why='Unaligned GEMMs fall back to masked kernels: fp32 width 767 measured 1.35-1.53x slower than 768 on AVX2, 1.01-1.11x on AVX-512 (benchmarks/impacts.md); Tensor Cores need multiples of 8 (fp16/bf16).',
             fix='Round the listed widths up to the one suggested multiple (the message names the layers).',
             evidence=('alignment', 'dtype', 'unaligned_flop_share', 'widths', 'layers', 'suggested', 'task_fixed')),
    HintSpec(id='vocab-unaligned', category='alignment', severity='info',
             title='Vocabulary projection not a multiple of 64',
             what='Fires when an output projection onto the vocabulary (LM head, tied embeddings) has a size that is not a multiple of 64.',
             why="The LM head is often the largest GEMM of a language model; padding the vocabulary to a multiple of 64 gives aligned tiles (nanoGPT's 50257 -> 50304 gave ~25%).",
             fix='model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64).',
             evidence=('vocab_size', 'layer', 'flop_share', 'suggested')),
    HintSpec(id='batch-size-unaligned', category='alignment', severity='info',
             title='Batch size not a multiple of 8',
             what='Fires on an accelerator with matrix units when the batch size is not a multiple of 8.',
             why='The batch dimension becomes a GEMM dimension; Tensor Core tiles want multiples of 8.',
             fix='Use a batch size that is a multiple of 8 (the message gives the nearest).',
             evidence=('batch_size', 'multiple', 'suggested', 'batches_seen')),
    HintSpec(id='seq-len-unaligned', category='alignment', severity='info',
             title='Padded sequence lengths not multiples of 8',
             what='Fires on an accelerator with matrix units when padded sequence lengths are not multiples of 8.',
             why='Sequence length is a GEMM dimension in attention and every projection.',
             fix='DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8) or tokenizer(..., pad_to_multiple_of=8).',
             evidence=('unaligned_share', 'seq_lens', 'multiple', 'pad_to_multiple_of')),
    HintSpec(id='batch-size-small', category='batch', severity='info',
             title='Batch size leaves throughput on the table',
             what='Fires when measured throughput still grows with the batch size (step time nearly flat when doubling it) and memory / latency budget allow more.',
             why='Small batches leave the device underused: fixed per-step costs dominate.',
             fix='Increase the batch size (Lightning: Tuner(trainer).scale_batch_size(model); HF: auto_find_batch_size=True), within latency_budget_ms.',
             evidence=('batch_size', 'suggested_batch_size', 'latency_ms', 'throughput_gain', 'latency_budget_ms')),
    HintSpec(id='padding-waste', category='padding', severity='warning',
             title='Most of the batch is padding',
             what='Fires when the measured share of pad tokens in observed batches exceeds the threshold (default 25%).',
             why='Pad tokens cost the same compute as real ones: measured on MiniLM here, length-grouped dynamic padding gives 3.3-5x the throughput of max_length=128 padding (benchmarks/padding.md).',
             fix='Dynamic padding (DataCollatorWithPadding) plus length-grouped batches (HF: train_sampling_strategy="group_by_length"; predict: perfcallbacks.padding.length_grouped_batches).',
             evidence=('pad_fraction', 'batches_seen', 'padded_len_max', 'real_len_median', 'real_len_max', 'real_len_mean', 'grouped_pad_fraction', 'batch_size', 'collator', 'sampling_strategy')),
    HintSpec(id='static-padding', category='padding', severity='warning',
             title='Every batch padded to one fixed length',
             what='Fires when every observed batch is padded to the same length, far above the real lengths.',
             why='padding="max_length" pays for the longest possible input on every batch.',
             fix='Tokenize without padding and pad per batch: DataCollatorWithPadding(tokenizer).',
             evidence=('padded_len', 'batches_seen', 'batch_longest_mean', 'batch_longest_max', 'pad_fraction', 'tokenizer_padding')),
    HintSpec(id='dataloader-bottleneck', category='data', severity='warning',
             title='The model waits for data',
             what='Fires when measured time waiting for the next batch is a large share (default > 20%) of the step time. Never fires on num_workers alone.',
             why='Every second waiting for data is a second the device idles.',
             fix='DataLoader(num_workers=N, persistent_workers=True) (pin_memory=True on CUDA); move tokenisation out of __getitem__.',
             evidence=('data_wait_ms', 'step_ms', 'wait_share_of_step', 'steps_timed', 'num_workers', 'suggested_workers', 'physical_cores')),
    HintSpec(id='pin-memory-off', category='data', severity='info',
             title='Loader does not pin memory on a CUDA run',
             what='Fires on CUDA runs whose DataLoader does not pin memory while host-to-device copies are significant.',
             why='Pinned memory makes host-to-device copies faster and lets them overlap with compute (non_blocking=True).',
             fix='DataLoader(pin_memory=True) / TrainingArguments(dataloader_pin_memory=True).',
             evidence=('pin_memory', 'num_workers')),
    HintSpec(id='grad-in-inference', category='inference', severity='warning',
             title='Inference with autograd on or in train mode',
             what='Fires when a validation/predict forward runs with autograd enabled or the model in train mode.',
             why='Autograd keeps activations alive for a backward that never comes; train mode keeps dropout on.',
             fix='Wrap inference in torch.inference_mode() and call model.eval().',
             evidence=('calls', 'grad_enabled_calls', 'train_mode_calls', 'stage', 'grad_overhead_measured')),
    HintSpec(id='int8-available', category='inference', severity='info',
             title='int8 dynamic quantization would speed up CPU inference',
             what='Fires for CPU inference of a Linear-heavy fp32 model. Not after auto_apply applied int8 (the fix entry carries the numbers).',
             why='int8 GEMMs do ~2-4x the work per cycle of fp32 on x86: measured on MiniLM, 1.25-1.37x end to end on AVX2, 2.3-3.0x with AVX-512 VNNI (benchmarks/impacts.md).',
             fix='PerfHintCallback(auto_apply=True) / HFPerfHints(auto_apply=True) / Advisor(auto_apply=True).optimize_inference(model, batch) measure and apply guarded int8 on the job; perfcallbacks.quantize_for_export(model, path, example_inputs=batch) writes an int8 artifact.',
             evidence=('linear_flop_share', 'linear_params', 'int8_support', 'measured_speedup', 'fidelity'), fix_id='dynamic-quantization'),
    HintSpec(id='autocast-available', category='inference', severity='info',
             title='Accelerator inference in fp32',
             what='Fires for accelerator inference in fp32 where fp16/bf16 autocast is supported.',
             why='Low-precision inference uses Tensor Cores and halves memory traffic.',
             fix='with torch.autocast("cuda", dtype=torch.bfloat16): ... (or auto_apply=True to measure it).',
             evidence=('device', 'param_dtype', 'autocast_dtype', 'autocast_calls', 'measured_speedup'), fix_id='autocast'),
    HintSpec(id='threads-untuned', category='inference', severity='info',
             title='Intra-op thread count is not the measured best',
             what='Fires when the measured best intra-op thread count for inference differs from the current one.',
             why='Too many threads per worker oversubscribe cores; too few leave them idle.',
             fix='torch.set_num_threads(N) with the measured N (auto_apply=True does it).',
             evidence=('current_threads', 'best_threads', 'latency_ms', 'dropped_as_implausible'), fix_id='threads'),
    HintSpec(id='repeated-inputs', category='inference', severity='info',
             title='Identical inputs seen repeatedly in predict',
             what='Fires when identical inputs are seen repeatedly across predict batches.',
             why='Recomputing the same outputs wastes the whole forward pass; a cache returns them for free.',
             fix='Deduplicate inputs before predict or cache outputs by input hash (functools.lru_cache on a tuple of token ids).',
             evidence=('rows_seen', 'distinct_rows', 'duplicate_share', 'batches_seen')),
    HintSpec(id='smaller-model-available', category='model', severity='info',
             title='A BERT-base-sized encoder used for classification',
             what='Fires when an encoder of 12 layers x 768 hidden or larger is used for sequence classification.',
             why="DistilBERT (6 layers) keeps ~97% of BERT-base's GLUE score at 2x the speed; MiniLM-class models are faster still.",
             fix='Try distilbert-base-uncased or a MiniLM checkpoint and compare validation metrics.',
             evidence=('num_layers', 'hidden_size', 'model_type', 'model_class')),
    HintSpec(id='debug-mode-on', category='debug', severity='warning',
             title='A debugging mode is left on during training',
             what='Fires when anomaly detection (torch.autograd.set_detect_anomaly / Trainer(detect_anomaly=True)), CUDA_LAUNCH_BLOCKING=1, CUDA sync-debug mode, a profiler recording every step, or deterministic algorithms are on while training. Where it can be toggled safely (anomaly detection, deterministic algorithms) its cost is measured on one real batch (forward + backward with and without, no optimizer step); a measured cost under 5% of the step does not fire.',
             why='Anomaly detection records a Python stack trace for every op and checks every gradient for NaN: measured here 1.3x to tens of x slower steps on small MLPs and a small CNN (benchmarks/debug_mode.md; more for many small ops and deep stacks). CUDA_LAUNCH_BLOCKING=1 (set by HF full_determinism=True) waits for every kernel, removing all CPU/GPU overlap; sync-debug mode and profilers add work to every op.',
             fix='Lightning: Trainer(detect_anomaly=False, profiler=None, deterministic=False); HF: TrainingArguments(full_determinism=False) and do not export CUDA_LAUNCH_BLOCKING; plain PyTorch: torch.autograd.set_detect_anomaly(False), torch.cuda.set_sync_debug_mode(0), torch.use_deterministic_algorithms(False). Keep them for the debugging session only.',
             evidence=('modes', 'sources')),
    HintSpec(id='ddp-find-unused', category='distributed', severity='warning',
             title='DDP searches for unused parameters that do not exist',
             what='Fires when DistributedDataParallel runs with find_unused_parameters=True and every trainable parameter received a gradient in every observed step. The HF Trainer turns it on by itself for every model without gradient checkpointing when ddp_find_unused_parameters is unset.',
             why='With find_unused_parameters=True DDP walks the whole autograd graph after every forward to find parameters that will get no gradient, and it cannot overlap that search with the backward; reported costs range from a few percent to hours per epoch.',
             fix='Lightning: Trainer(strategy="ddp") (not "ddp_find_unused_parameters_true"), or DDPStrategy(static_graph=True); HF: TrainingArguments(ddp_find_unused_parameters=False); plain PyTorch: DistributedDataParallel(model, find_unused_parameters=False) or static_graph=True.',
             evidence=('world_size', 'find_unused_parameters', 'static_graph', 'source', 'steps_observed', 'parameters_with_grad_every_step', 'accumulate_grad_batches')),
    HintSpec(id='workers-restart', category='data', severity='warning',
             title='Loader workers are started again every epoch',
             what='Fires when a DataLoader with num_workers > 0 and persistent_workers=False spends a real share of the epoch (default > 5%) starting its workers: the wait for the first batch of an epoch, minus the steady-state wait, times the epochs to come.',
             why='Without persistent_workers every epoch (and every validation run) forks the workers again and re-imports the dataset in each: users report minutes of start-up per epoch and +25% wall time.',
             fix='Lightning / plain PyTorch: DataLoader(..., num_workers=N, persistent_workers=True); HF: TrainingArguments(dataloader_persistent_workers=True).',
             evidence=('num_workers', 'persistent_workers', 'first_batch_wait_s', 'steady_wait_ms', 'startup_s_per_epoch', 'epoch_s_estimate', 'startup_share_of_epoch', 'epochs', 'batches_per_epoch', 'restarts_to_come', 'seconds_saved_estimate')),
    HintSpec(id='compile-recompiles', category='compile', severity='warning',
             title='A compiled model recompiled during the observed steps',
             what="Fires when torch.compile recompiled the model during warm-up, read from dynamo's own compilation records (the guard that failed, e.g. a new sequence length).",
             why='Each recompilation costs seconds to minutes and, once torch._dynamo.config.cache_size_limit is reached, the model silently falls back to eager: one graph per padded length turns the compile win into a loss.',
             fix='torch.compile(model, dynamic=True) or torch._dynamo.mark_dynamic(input_ids, 1); pad to a multiple (pad_to_multiple_of=64) or bucket lengths so few shapes occur.',
             evidence=('recompiles', 'reasons', 'sizes_in_guards', 'seq_lens_seen', 'recompile_seconds', 'compiled_modules')),
    HintSpec(id='compile-graph-breaks', category='compile', severity='warning',
             title="A compiled model's forward has graph breaks",
             what="Fires when dynamo reports graph breaks while compiling the model (counts and reasons from dynamo's counters).",
             why='Every graph break splits the model into separately compiled pieces with eager Python in between: fusion stops at each break and the pieces pay their own launch and guard costs.',
             fix='Remove the listed constructs from forward (print, .item(), data-dependent Python control flow, unsupported calls); find them with torch._dynamo.explain(model)(*inputs) or TORCH_LOGS=graph_breaks.',
             evidence=('graph_breaks', 'distinct_reasons', 'reasons', 'unique_graphs', 'compiled_modules')),
    HintSpec(id='attention-eager', category='model', severity='warning',
             title='Attention computed eagerly where SDPA exists',
             what='Fires when an HF model runs with attn_implementation="eager" while its class supports SDPA, or a module computes softmax(q @ k^T) @ v by hand; the SDPA speedup is measured on a real batch where the model allows the switch.',
             why='torch.nn.functional.scaled_dot_product_attention fuses the score matrix, softmax and weighting into one kernel (flash / memory-efficient on GPUs): BERT-class training 12-35% faster with much less memory.',
             fix='HF: from_pretrained(..., attn_implementation="sdpa") (or model.set_attn_implementation("sdpa")); hand-written attention: torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask). auto_apply=True measures and applies SDPA for validate/test/predict.',
             evidence=(), fix_id='sdpa'),
    HintSpec(id='channels-last-off', category='layout', severity='info',
             title='A conv model runs in contiguous (NCHW) memory format',
             what="Fires when most of a model's FLOPs are in Conv2d layers, it runs in the default contiguous format, and channels_last measured faster on a real batch (CPU oneDNN or cuDNN).",
             why='Convolution kernels (cuDNN on Tensor Cores, oneDNN on CPUs) work in NHWC: contiguous inputs are converted on every layer. ResNet-50 trains ~22% faster in channels_last on GPUs.',
             fix='model = model.to(memory_format=torch.channels_last) and images = images.to(memory_format=torch.channels_last); auto_apply=True measures and applies it for validate/test/predict.',
             evidence=('conv2d_layers', 'conv2d_flop_share', 'input_shape', 'inputs_channels_last'), fix_id='channels-last'),
    HintSpec(id='cudnn-benchmark-off', category='device', severity='info',
             title='cuDNN autotuning off for fixed-shape convolutions',
             what="Fires on a CUDA run of a conv model whose observed input shapes are all the same while torch.backends.cudnn.benchmark is False (Lightning's default unless benchmark=True; HF never sets it).",
             why='With benchmark on, cuDNN times its convolution algorithms once per input shape and keeps the fastest; with fixed shapes that search is paid once and every later step gains.',
             fix='Lightning: Trainer(benchmark=True); HF / plain PyTorch: torch.backends.cudnn.benchmark = True before training.',
             evidence=('input_shape', 'shapes_observed', 'distinct_shapes', 'conv2d_layers', 'cudnn_benchmark', 'device')),
    HintSpec(id='fp8-eligible', category='precision', severity='info',
             title='Linear layers large enough to gain from FP8',
             what='Fires on an FP8-capable device (H100/H200/B200 or real) when Linear layers at or above the break-even size (both dims >= 2048, and >= 2048 tokens per step where tokens are known) carry most of the Linear FLOPs and the run is not in FP8.',
             why='FP8 GEMMs double the Tensor Core throughput of bf16, but the casts cost a fixed share per layer: torchao measures 1.39x on large layers and 0.80x on small ones.',
             fix='from torchao.float8 import convert_to_float8_training; convert_to_float8_training(model, module_filter_fn=lambda m, name: isinstance(m, torch.nn.Linear) and min(m.in_features, m.out_features) >= 2048) with bf16 mixed precision.',
             evidence=('device', 'eligible_layers', 'eligible_flop_share', 'break_even_dim', 'break_even_tokens', 'tokens_per_step', 'layers')),
]

REGISTRY: dict[str, HintSpec] = {spec.id: spec for spec in _SPECS}


def spec(hint_id: str) -> HintSpec:
    """Registry entry for ``hint_id``; unknown ids raise with close matches."""
    try:
        return REGISTRY[hint_id]
    except KeyError:
        raise ValueError(unknown_id_message("hint id", hint_id)) from None


def unknown_id_message(argument: str, hint_id: Any) -> str:
    from perfcallbacks.device import close_matches  # lazy: device imports torch, the CLI parent must not

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


# -- warnings at the user's code -----------------------------------------------------------------
# Frames in these packages (and the standard library) are never "the user's code".
LIBRARY_PACKAGES = ("perfcallbacks", "lightning", "pytorch_lightning", "lightning_fabric", "lightning_utilities",
                    "transformers", "accelerate", "torch", "_perfhints_hook")


def _library_dirs() -> tuple[str, ...]:
    import os
    import sys
    import sysconfig

    dirs = []
    for name in LIBRARY_PACKAGES:
        module = sys.modules.get(name)  # never import a framework just to skip its frames
        path = getattr(module, "__file__", None)
        if path:
            dirs.append(os.path.dirname(os.path.abspath(path)) + (os.sep if name != "_perfhints_hook" else ""))
    for key in ("stdlib", "platstdlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.append(os.path.abspath(path) + os.sep)
    # perfcallbacks itself, even when imported under another name in tests
    dirs.append(os.path.dirname(os.path.abspath(__file__)) + os.sep)
    return tuple(dirs)


def _is_library_file(filename: str, dirs: tuple[str, ...]) -> bool:
    import os

    if filename.startswith("<frozen") or filename.startswith("<__array_function__"):
        return True
    if filename.startswith("<"):
        return False  # <stdin>, <string>, notebook cells: code the user typed
    path = os.path.abspath(filename)
    return path.startswith(dirs) or os.sep + "site-packages" + os.sep + "_pytest" + os.sep in path


def user_code_location(obj: Any = None) -> tuple[str, int] | None:
    """``(filename, line)`` of the user's code a hint should point at, or ``None``.

    With ``obj`` (a class or an instance, e.g. the ``LightningModule`` or ``nn.Module``): the
    line that defines its class, when that class is the user's own (not a library class such as
    ``BertForSequenceClassification``). Otherwise (or as fallback): the innermost stack frame
    outside perfcallbacks, Lightning, transformers, accelerate, torch and the standard library:
    in a callback hook that is the user's ``trainer.fit(...)`` / ``trainer.train()`` line.

    Example::

        >>> from perfcallbacks.hints import user_code_location
        >>> class MyNet: ...
        >>> user_code_location(MyNet) is None or isinstance(user_code_location(MyNet)[1], int)
        True
    """
    import inspect
    import sys

    dirs = _library_dirs()
    if obj is not None:
        cls = obj if isinstance(obj, type) else type(obj)
        try:
            filename = inspect.getsourcefile(cls)
            if filename and not _is_library_file(filename, dirs):
                return filename, inspect.getsourcelines(cls)[1]
        except (TypeError, OSError):
            pass  # built in, defined in a REPL without source, or the file is gone: use the stack
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not _is_library_file(filename, dirs):
            return filename, frame.f_lineno
        frame = frame.f_back
    return None


def _stacklevel_leaving_library() -> int:
    """``stacklevel`` for a ``warnings.warn`` made in :func:`warn_hint` that lands outside the libraries."""
    import sys

    dirs = _library_dirs()
    level, frame = 1, sys._getframe(1)  # level 1 = warn_hint's own frame as warnings.warn counts
    while frame is not None and _is_library_file(frame.f_code.co_filename, dirs):
        frame = frame.f_back
        level += 1
    return level if frame is not None else 2


def format_hint_warning(hint: Hint) -> str:
    """The warning text: evidence -> why -> fix -> how to silence this one -> where to read more.

    Starts with ``[id]`` so ``warnings.filterwarnings("ignore", message=r"\\[padding-waste\\]")`` works.

    Example::

        >>> from perfcallbacks.hints import REGISTRY, format_hint_warning
        >>> h = REGISTRY["padding-waste"].make("warmup", "61% padding.", "DataCollatorWithPadding(tok)")
        >>> print("\\n".join(format_hint_warning(h).splitlines()[:2]))
        [padding-waste] Most of the batch is padding
          61% padding.
    """
    import shutil
    import textwrap

    # Prose is wrapped at word boundaries for the terminal; code lines never are (paste-able).
    width = max(60, shutil.get_terminal_size((100, 24)).columns - 1)
    entry = REGISTRY.get(hint.id)
    # Line 1 is short: it shares the terminal line with "file.py:LINE: PerfHintWarning: ".
    lines = [f"[{hint.id}] {entry.title}" if entry is not None and entry.title else f"[{hint.id}]"]
    body = hint.message + ("" if hint.impact is None else f" (estimated {hint.impact:.2f}x)")
    wrap = {"width": width, "break_long_words": False, "break_on_hyphens": False}
    lines += textwrap.wrap(body, initial_indent="  ", subsequent_indent="  ", **wrap)
    if entry is not None and entry.why:
        lines += textwrap.wrap(f"why: {entry.why}", initial_indent="  ", subsequent_indent="    ", **wrap)
    lines.append("  fix:")
    lines.extend(f"    {line}" for line in hint.fix.splitlines() or [""])
    lines.append(f'  silence this one: suppress=["{hint.id}"] (or PERFHINTS_SUPPRESS={hint.id})')
    lines.append(f"  more: perfhints explain {hint.id}")
    return "\n".join(lines)


def warn_hint(hint: Hint, stacklevel: int | None = None, *, user_frame: Any = None) -> None:
    """Emit ``hint`` as a :class:`PerfHintWarning` (the caller guarantees once and rank zero).

    ``user_frame`` is where the warning points: a ``(filename, line)`` pair (see
    :func:`user_code_location`) or a frame object; it is emitted there with
    ``warnings.warn_explicit``, so ``filterwarnings(..., module=...)`` and the printed location
    are the user's. Without it, ``stacklevel`` (default: the first frame outside the libraries).
    A filter that turns the warning into an error makes this raise: use
    :func:`emit_hint_warning` where that must not stop the caller.
    """
    message = format_hint_warning(hint)
    location = user_frame
    if location is not None and hasattr(location, "f_code"):
        location = (location.f_code.co_filename, location.f_lineno)
    if location is not None:
        import sys

        filename, lineno = str(location[0]), int(location[1])
        module = next((name for name, mod in list(sys.modules.items())
                       if getattr(mod, "__file__", None) == filename), None)
        if module is None:
            module = filename[:-3] if filename.endswith(".py") else filename
        with _bars_cleared():
            warnings.warn_explicit(message, PerfHintWarning, filename, lineno, module=module,
                                   registry=_WARN_REGISTRY.setdefault(filename, {}))
        return
    level = stacklevel if stacklevel is not None else _stacklevel_leaving_library()
    with _bars_cleared():
        warnings.warn(message, PerfHintWarning, stacklevel=level)


def _bars_cleared() -> Any:
    """A context in which a printed warning does not land on a tqdm progress bar's line."""
    from perfcallbacks.output import progress_safe

    return progress_safe()


# Per-file registries for warn_explicit: "default"/"once" actions then deduplicate as for warnings.warn.
_WARN_REGISTRY: dict[str, dict] = {}


def emit_hint_warning(hint: Hint, *, user_frame: Any = None, stacklevel: int | None = None) -> BaseException | None:
    """Warn about ``hint`` without ever stopping the caller; returns the error a filter made of it.

    With ``warnings.simplefilter("error", PerfHintWarning)`` (or ``-W error``) the warning is
    raised; here it is caught and returned, so observation goes on and the hint is still recorded.
    The caller keeps the first returned error and re-raises it at the documented point: **at the
    end of the warm-up** for training hints (after the table is shown and the report written) and
    **at the end of the stage** for inference hints. Any other failure of the warnings machinery
    (a broken ``showwarning``) is logged at DEBUG and returns ``None``.

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import REGISTRY, emit_hint_warning
        >>> h = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("error", PerfHintWarning)
        ...     err = emit_hint_warning(h)
        >>> type(err).__name__
        'PerfHintWarning'
    """
    try:
        warn_hint(hint, stacklevel, user_frame=user_frame)
    except Warning as err:  # a filter turned it into an exception: the caller decides when to raise
        return err
    except Exception:  # noqa: BLE001 - principle 1: our warning never breaks the run
        import logging

        logging.getLogger("perfcallbacks").debug("perfcallbacks: could not emit a warning", exc_info=True)
    return None


def hint_silenced_by_filters(hint: Hint, location: tuple[str, int] | None = None) -> bool:
    """True when the active warnings filters would ignore this hint's warning.

    Lets tables drop what the user silenced with ``warnings.filterwarnings("ignore", ...)``
    (one way to silence: a filtered hint is marked ``suppressed`` like ``suppress=``).

    Example::

        >>> import warnings
        >>> from perfcallbacks.hints import REGISTRY, hint_silenced_by_filters
        >>> h = REGISTRY["gpu-unused"].make("setup", "GPU idle.", "use it")
        >>> with warnings.catch_warnings():
        ...     warnings.filterwarnings("ignore", message=r"\\[gpu-unused\\]")
        ...     hint_silenced_by_filters(h)
        True
    """
    import re

    text = format_hint_warning(hint)
    filename, lineno = location or ("", 0)
    module = filename[:-3] if filename.endswith(".py") else filename
    for action, msg, category, mod, line in warnings.filters:
        if msg is not None and not (msg.match(text) if hasattr(msg, "match") else re.match(msg, text, re.I)):
            continue
        if not issubclass(PerfHintWarning, category):
            continue
        if mod is not None and location is not None and not (mod.match(module) if hasattr(mod, "match") else
                                                             re.match(mod, module)):
            continue
        if mod is not None and location is None and getattr(mod, "pattern", mod) not in ("", ".*"):
            continue  # a module-scoped filter cannot be judged without a location
        if line and location is not None and line != lineno:
            continue
        return action == "ignore"
    return False
