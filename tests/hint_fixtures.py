"""One fixture per registered hint: the facts that make its check fire, and the nearest facts that keep it quiet.

``tests/test_hints_from_registry.py`` runs every entry three ways (fire, quiet, suppress) by calling the
check function directly, and fails for a registered hint without an entry here. A new hint adds its
entry next to the others: a context built in a line or two from typed facts, and the evidence the
firing context must produce.

Each ``quiet`` context changes as little as possible from ``fire``, so the pair pins the condition.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

from perfcallbacks import DeviceProfile
from perfcallbacks.context import (
    AttentionFacts,
    BatchStats,
    CompileFacts,
    DDPFacts,
    DebugFacts,
    GradientFacts,
    InferenceInfo,
    LayoutFacts,
    LoaderInfo,
    RunContext,
    ThreadPicture,
)
from perfcallbacks.model_facts import GemmLayer, ModelFacts
from perfcallbacks.run_facts import BatchScaling, Int8Measure, Measurements, RunFacts, ThreadsMeasure

CPU = DeviceProfile.preset("cpu-avx2").replace(physical_cores=2, logical_cores=2)
A100 = DeviceProfile.preset("a100")
H100 = DeviceProfile.preset("h100")


@dataclass(frozen=True)
class HintFixture:
    phase: str
    fire: Callable[[], RunContext]
    quiet: Callable[[], RunContext]
    evidence: dict[str, Any] = field(default_factory=dict)  # must be in the fired hint's evidence


def ctx(local: DeviceProfile = CPU, *, model: ModelFacts | None = None, measured: Measurements | None = None,
        **kw: Any) -> RunContext:
    """A context on ``local`` (the 2-core AVX2 preset by default) with typed facts."""
    facts = RunFacts(model=model or ModelFacts(), measured=measured or Measurements())
    return RunContext(local=local, facts=facts, **kw)


def on_gpu(local: DeviceProfile = A100, **kw: Any) -> RunContext:
    return ctx(local, model_device="cuda", **kw)


def _mlp(*widths: int) -> ModelFacts:
    layers: list[nn.Module] = []
    for n_in, n_out in zip(widths, widths[1:]):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return ModelFacts.of(nn.Sequential(*layers[:-1]))


def _lm(vocab: int) -> ModelFacts:
    return ModelFacts.of(nn.ModuleDict({"emb": nn.Embedding(vocab, 64), "body": nn.Linear(64, 64),
                                        "lm_head": nn.Linear(64, vocab)}))


def _bert(layers: int) -> ModelFacts:
    return ModelFacts(present=True, class_name="BertForSequenceClassification", has_config=True, hidden_size=768,
                      num_layers=layers, model_type="bert")


def _padded(real: list[int], padded: int | None = None, size: int = 8) -> list[BatchStats]:
    """Batches of ``size`` rows with these real lengths, padded to ``padded`` (else each to its longest)."""
    rows = [real[i:i + size] for i in range(0, len(real), size)]
    return [BatchStats(batch_size=len(r), seq_len=padded or max(r), lengths=tuple(r)) for r in rows]


_LENGTHS = [10 + (i * 7) % 40 for i in range(64)]  # 10..49 tokens, shuffled
_BIG = GemmLayer("fc", "linear", 4096, 4096, 4096 * 4096, 1.0)
_TIMED = {"step_times": [0.05] * 5, "data_wait_times": [0.05] * 5}
_RESTARTS = {"epoch_first_waits": [0.5, 0.5], "epochs": 3, "batches_per_epoch": 10,
             "step_times": [0.01] * 5, "data_wait_times": [0.001] * 5}
_RECOMPILE = {"compile_id": "0/1", "frame": "forward", "reason": "tensor 'x' size mismatch at index 1. "
              "expected 13, actual 17", "compile_s": 0.5}
_CONV = {"conv2d_share": 0.9, "conv2d_layers": 5, "input_shapes": [(32, 3, 32, 32)] * 5}
_CL_MEASURED = {"speedup": 1.3, "contiguous_s": 0.013, "channels_last_s": 0.010}


def _threads(current: int, latency: dict[int, float]) -> Measurements:
    return Measurements(threads=ThreadsMeasure(current=current, latency_s=latency))


FIXTURES: dict[str, HintFixture] = {
    # -- device --
    "gpu-unused": HintFixture("setup", lambda: ctx(A100), lambda: on_gpu(), {"model_device": "cpu"}),
    "gpus-idle": HintFixture("setup", lambda: on_gpu(A100.replace(count=4)),
                             lambda: on_gpu(A100.replace(count=4), devices_used=4),
                             {"devices_used": 1, "devices_visible": 4}),
    "distributed-single-process": HintFixture("setup", lambda: ctx(distributed=True, strategy="ddp"),
                                              lambda: ctx(distributed=True, strategy="ddp", world_size=2),
                                              {"world_size": 1, "strategy": "ddp"}),
    "cpu-oversubscribed": HintFixture(
        "setup", lambda: ctx(threads=ThreadPicture(intra_op=2, inter_op=1, local_processes=2, physical_cores=2)),
        lambda: ctx(threads=ThreadPicture(intra_op=1, inter_op=1, local_processes=2, physical_cores=2)),
        {"busy_threads": 4, "physical_cores": 2}),
    "cudnn-benchmark-off": HintFixture("warmup", lambda: on_gpu(layout=LayoutFacts(**_CONV)),
                                       lambda: on_gpu(layout=LayoutFacts(**_CONV), debug=DebugFacts(cudnn_benchmark=True)),
                                       {"input_shape": [32, 3, 32, 32], "shapes_observed": 5}),
    # -- precision --
    "tensor-cores-idle": HintFixture("setup", lambda: on_gpu(model=_mlp(64, 64), matmul_precision="highest"),
                                     lambda: on_gpu(model=_mlp(64, 64), matmul_precision="high"),
                                     {"matmul_precision": "highest", "device": A100.name}),
    "half-on-cpu": HintFixture("setup", lambda: ctx(param_dtype="fp16"), lambda: ctx(param_dtype="fp32"),
                               {"param_dtype": "fp16"}),
    "bf16-emulated": HintFixture("setup", lambda: ctx(precision="bf16-mixed"),
                                 lambda: ctx(DeviceProfile.preset("cpu-amx"), precision="bf16-mixed"),
                                 {"precision": "bf16-mixed", "bf16_support": "emulated"}),
    "fp8-eligible": HintFixture("warmup", lambda: on_gpu(H100, model=ModelFacts(present=True, layers=(_BIG,))),
                                lambda: on_gpu(H100, model=ModelFacts(present=True, layers=(replace(_BIG, in_dim=1024),))),
                                {"eligible_layers": 1, "eligible_flop_share": 1.0}),
    # -- alignment --
    "dim-unaligned": HintFixture("setup", lambda: ctx(model=_mlp(64, 767, 767, 2)),
                                 lambda: ctx(model=_mlp(64, 768, 768, 2)),
                                 {"alignment": 8, "suggested": {"767": 768}}),
    "vocab-unaligned": HintFixture("setup", lambda: ctx(model=_lm(1000)), lambda: ctx(model=_lm(1024)),
                                   {"vocab_size": 1000, "layer": "lm_head", "suggested": 1024}),
    "batch-size-unaligned": HintFixture("warmup", lambda: on_gpu(batches=[BatchStats(batch_size=12)] * 3),
                                        lambda: on_gpu(batches=[BatchStats(batch_size=16)] * 3),
                                        {"batch_size": 12, "suggested": [8, 16]}),
    "seq-len-unaligned": HintFixture("warmup", lambda: on_gpu(batches=[BatchStats(seq_len=n) for n in (13, 15, 17)]),
                                     lambda: on_gpu(batches=[BatchStats(seq_len=n) for n in (16, 24, 32)]),
                                     {"seq_lens": [13, 15, 17], "multiple": 8}),
    # -- batch --
    "batch-size-small": HintFixture(
        "inference", lambda: ctx(measured=Measurements(batch_scaling=BatchScaling(8, {8: 0.010, 16: 0.012, 32: 0.020}))),
        lambda: ctx(measured=Measurements(batch_scaling=BatchScaling(8, {8: 0.010, 16: 0.020, 32: 0.040}))),
        {"batch_size": 8, "suggested_batch_size": 32}),
    # -- padding --
    "padding-waste": HintFixture("warmup", lambda: ctx(batches=_padded(_LENGTHS, padded=128)),
                                 lambda: ctx(batches=_padded(sorted(_LENGTHS))),
                                 {"padded_len_max": 128, "batches_seen": 8}),
    "static-padding": HintFixture("warmup", lambda: ctx(batches=_padded(_LENGTHS, padded=128)),
                                  lambda: ctx(batches=_padded(_LENGTHS)),
                                  {"padded_len": 128, "batches_seen": 8}),
    # -- data --
    "dataloader-bottleneck": HintFixture("warmup", lambda: ctx(**_TIMED),
                                         lambda: ctx(step_times=[0.05] * 5, data_wait_times=[0.001] * 5),
                                         {"num_workers": 0, "wait_share_of_step": 0.5}),
    "pin-memory-off": HintFixture("warmup", lambda: on_gpu(loader=LoaderInfo(), step_times=[0.1] * 5,
                                                           measured=Measurements(h2d_copy_s=0.02)),
                                  lambda: on_gpu(loader=LoaderInfo(pin_memory=True), step_times=[0.1] * 5,
                                                 measured=Measurements(h2d_copy_s=0.02)),
                                  {"h2d_copy_share": 0.2, "pin_memory": False}),
    "workers-restart": HintFixture("warmup", lambda: ctx(loader=LoaderInfo(num_workers=2), **_RESTARTS),
                                   lambda: ctx(loader=LoaderInfo(num_workers=2, persistent_workers=True), **_RESTARTS),
                                   {"loader": "train", "num_workers": 2, "epochs": 3, "restarts_to_come": 2}),
    # -- inference --
    "grad-in-inference": HintFixture("inference", lambda: ctx(inference=InferenceInfo(calls=4, grad_enabled_calls=4),
                                                              measured=Measurements(grad_overhead=1.3)),
                                     lambda: ctx(inference=InferenceInfo(calls=4),
                                                 measured=Measurements(grad_overhead=1.3)),
                                     {"grad_enabled_calls": 4, "grad_overhead_measured": 1.3}),
    "int8-available": HintFixture("inference", lambda: ctx(model=_mlp(1024, 1024, 8)),
                                  lambda: ctx(model=_mlp(1024, 1024, 8),
                                              measured=Measurements(int8=Int8Measure(speedup=0.9, source="probe"))),
                                  {"linear_params": 1024 * 1024 + 1024 * 8, "measured_speedup": None}),
    "autocast-available": HintFixture("inference", lambda: on_gpu(model=_mlp(64, 64)),
                                      lambda: on_gpu(model=_mlp(64, 64), measured=Measurements(autocast_speedup=0.97)),
                                      {"autocast_dtype": "bfloat16", "measured_speedup": None}),
    "threads-untuned": HintFixture("inference", lambda: ctx(measured=_threads(2, {1: 0.010, 2: 0.016})),
                                   lambda: ctx(measured=_threads(2, {1: 0.0100, 2: 0.0103})),
                                   {"current_threads": 2, "best_threads": 1}),
    "repeated-inputs": HintFixture("inference", lambda: ctx(inference_batches=[BatchStats(row_hashes=(7,) * 20)]),
                                   lambda: ctx(inference_batches=[BatchStats(row_hashes=tuple(range(20)))]),
                                   {"rows_seen": 20, "distinct_rows": 1}),
    # -- model --
    "smaller-model-available": HintFixture("setup", lambda: ctx(model=_bert(12), framework="hf"),
                                           lambda: ctx(model=_bert(6), framework="hf"),
                                           {"num_layers": 12, "hidden_size": 768, "model_type": "bert"}),
    "attention-eager": HintFixture("warmup", lambda: ctx(attention=AttentionFacts(eager_modules=["model.attn"])),
                                   lambda: ctx(attention=AttentionFacts(eager_modules=[])),
                                   {"modules": ["model.attn"]}),
    # -- debug / distributed / compile / layout --
    "debug-mode-on": HintFixture("warmup", lambda: ctx(debug=DebugFacts(anomaly=True)), lambda: ctx(debug=DebugFacts()),
                                 {"modes": ["anomaly"]}),
    "ddp-find-unused": HintFixture("warmup", lambda: ctx(ddp=DDPFacts(find_unused_parameters=True),
                                                         gradients=GradientFacts(steps=3, trainable=10), world_size=2),
                                   lambda: ctx(ddp=DDPFacts(find_unused_parameters=True),
                                               gradients=GradientFacts(steps=3, trainable=10, missing={"w": 1}),
                                               world_size=2),
                                   {"steps_observed": 3, "parameters_with_grad_every_step": 10}),
    "compile-recompiles": HintFixture("warmup", lambda: ctx(compile=CompileFacts(compiled=True, recompiles=[_RECOMPILE] * 2)),
                                      lambda: ctx(compile=CompileFacts(compiled=True, recompiles=[_RECOMPILE])),
                                      {"recompiles": 2, "sizes_in_guards": [13, 17], "recompile_seconds": 1.0}),
    "compile-graph-breaks": HintFixture("warmup", lambda: ctx(compile=CompileFacts(compiled=True, graph_breaks={"print": 2})),
                                        lambda: ctx(compile=CompileFacts(compiled=True)),
                                        {"graph_breaks": 2, "distinct_reasons": 1}),
    "channels-last-off": HintFixture("warmup", lambda: ctx(layout=LayoutFacts(**_CONV, measured=_CL_MEASURED)),
                                     lambda: ctx(layout=LayoutFacts(**_CONV, measured=_CL_MEASURED,
                                                                    weights_channels_last=True)),
                                     {"conv2d_layers": 5, "measured_speedup": 1.3}),
}
