"""Inference checks: grad-in-inference, int8-available, autocast-available, threads-untuned, repeated-inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perfcallbacks import Advisor
from perfcallbacks.context import InferenceInfo
from perfcallbacks.probes import run_inference_probes, thread_candidates


def _mlp(width: int = 1024) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 8))


def _run(model=None, *, suppress=(), measurements=None, inference=None, framework="torch", batches=None, **kw):
    adv = Advisor(model, warn=False, suppress=suppress, framework=framework, **kw)
    adv.context.measurements.update(measurements or {})
    if inference is not None:
        adv.context.inference = inference
    for batch in batches or []:
        adv.observe_batch(batch, inference=True)
    adv.run_checks("inference")
    return adv.hints


# -- grad-in-inference ------------------------------------------------------------

def test_grad_in_inference_fires_with_call_counts(cpu_profile):
    info = InferenceInfo(calls=10, grad_enabled_calls=10, train_mode_calls=4, stage="predict")
    hint = _run(inference=info, local=cpu_profile, measurements={"grad_overhead": 1.3})["grad-in-inference"]
    assert hint.evidence["grad_enabled_calls"] == 10 and hint.evidence["train_mode_calls"] == 4
    assert hint.impact == 1.3 and "torch.inference_mode()" in hint.fix


def test_grad_in_inference_observed_from_a_real_forward(cpu_profile):
    model = nn.Linear(4, 4).train()
    adv = Advisor(model, warn=False, local=cpu_profile)
    adv.observe_inference_call(model)  # grad on, train mode
    model.eval()
    with torch.inference_mode():
        adv.observe_inference_call(model)
    adv.run_checks("inference")
    assert adv.hints["grad-in-inference"].evidence["calls"] == 2
    assert adv.hints["grad-in-inference"].evidence["grad_enabled_calls"] == 1


def test_grad_in_inference_quiet_and_suppressed(cpu_profile):
    assert "grad-in-inference" not in _run(inference=InferenceInfo(calls=10), local=cpu_profile)
    assert "grad-in-inference" not in _run(inference=InferenceInfo(calls=10, grad_enabled_calls=3),
                                           local=cpu_profile, suppress=["grad-in-inference"])


# -- int8-available ---------------------------------------------------------------

def test_int8_available_estimated_for_linear_heavy_cpu_model(cpu_profile):
    hint = _run(_mlp(), local=cpu_profile)["int8-available"]
    assert hint.evidence["linear_flop_share"] == 1.0 and hint.evidence["measured_speedup"] is None
    assert hint.impact == pytest.approx(1.37)
    assert "optimize_inference" in hint.fix and "quantize_dynamic" not in hint.fix


def test_int8_estimate_follows_the_isa(cpu_profile):
    # benchmarks/impacts.md: VNNI (AVX-512) measured 2.9x on MiniLM, the AVX2 machine 1.37x.
    vnni = _run(_mlp(), local=cpu_profile, target="cpu-avx512")["int8-available"]
    assert vnni.impact == pytest.approx(2.5) and vnni.evidence["measured_speedup"] is None


def test_int8_available_uses_measured_result(cpu_profile):
    measured = {"int8": {"speedup": 1.8, "fidelity": {"cosine_min": 0.999}}}
    hint = _run(_mlp(), local=cpu_profile, measurements=measured)["int8-available"]
    assert hint.impact == 1.8 and hint.evidence["fidelity"] == {"cosine_min": 0.999}
    assert "int8-available" not in _run(_mlp(), local=cpu_profile, measurements={"int8": {"speedup": 0.9}})


def test_int8_available_not_rewarned_after_auto_apply_applied_it(cpu_profile):
    applied = {"int8": {"speedup": 1.6, "fidelity": {"cosine_min": 0.995}, "source": "fix", "status": "applied"}}
    assert "int8-available" not in _run(_mlp(), local=cpu_profile, measurements=applied)
    # A probe's guard verdict applies nothing: the opportunity is still open, with the measured number.
    probed = {"int8": {"speedup": 1.6, "fidelity": {"cosine_min": 0.995}, "source": "probe", "status": "applied"}}
    assert _run(_mlp(), local=cpu_profile, measurements=probed)["int8-available"].impact == 1.6
    # Measured faster but rejected by the guard (outputs beyond tolerance): not safe, not advised.
    unfaithful = {"int8": {"speedup": 1.6, "fidelity": {"cosine_min": 0.9}, "source": "fix", "status": "rejected"}}
    assert "int8-available" not in _run(_mlp(), local=cpu_profile, measurements=unfaithful)


def test_fix_texts_recommend_no_deprecated_api(cpu_profile):
    """No torch.ao.quantization / TorchScript in any fix string of these checks, on any framework."""
    import transformers

    from perfcallbacks.context import BatchStats

    config = transformers.BertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                     intermediate_size=64, vocab_size=1000, max_position_embeddings=32)
    models = [_mlp(), transformers.BertForMaskedLM(config), transformers.BertForSequenceClassification(config),
              nn.Sequential(nn.Linear(767, 767), nn.ReLU(), nn.Linear(767, 767), nn.ReLU(), nn.Linear(767, 2))]
    fixes = []
    for framework in ("torch", "lightning", "hf"):
        for model in models:
            for target in (None, "a100"):
                adv = Advisor(model, warn=False, framework=framework, local=cpu_profile, target=target,
                              latency_budget_ms=None)
                adv.context.batches = [BatchStats(batch_size=8, seq_len=128, lengths=(10,) * 8)] * 4
                adv.context.inference_batches = list(adv.context.batches)
                adv.context.inference = InferenceInfo(calls=4, grad_enabled_calls=4)
                adv.context.measurements.update({
                    "threads": {"current": 2, "latency_s": {"1": 0.010, "2": 0.016}},
                    "batch_scaling": {"batch_size": 8, "latency_s": {"8": 0.010, "16": 0.011}}})
                for phase in ("setup", "warmup", "inference"):
                    adv.run_checks(phase)
                fixes += [h.fix for h in adv.hints.values()]
    assert len(fixes) > 20
    for fix in fixes:
        for banned in ("torch.ao.quantization", "quantize_dynamic", "torch.jit", "TorchScript", "torchscript"):
            assert banned not in fix, fix


def test_int8_available_quiet_for_conv_tiny_quantized_gpu_or_suppressed(cpu_profile):
    conv = nn.Sequential(nn.Conv2d(64, 256, 3), nn.Conv2d(256, 256, 3), nn.Flatten(), nn.LazyLinear(10))
    conv[-1] = nn.Linear(10, 10)
    assert "int8-available" not in _run(conv, local=cpu_profile)
    assert "int8-available" not in _run(_mlp(64), local=cpu_profile)  # too small to gain, unmeasured
    quantized = torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8)
    assert "int8-available" not in _run(quantized, local=cpu_profile)
    assert "int8-available" not in _run(_mlp(), local=cpu_profile, target="a100")
    assert "int8-available" not in _run(_mlp(), local=cpu_profile, suppress=["int8-available"])


# -- autocast-available -----------------------------------------------------------

def test_autocast_available_on_a100_target(cpu_profile):
    hint = _run(_mlp(64), local=cpu_profile, target="a100", framework="hf")["autocast-available"]
    assert hint.evidence["autocast_dtype"] == "bfloat16" and hint.impact == 2.0
    assert "bf16=True" in hint.fix
    t4 = _run(_mlp(64), local=cpu_profile, target="t4")["autocast-available"]
    assert "torch.float16" in t4.fix


def test_autocast_available_quiet_on_cpu_with_amp_measured_loss_or_suppressed(cpu_profile):
    assert "autocast-available" not in _run(_mlp(64), local=cpu_profile)
    assert "autocast-available" not in _run(_mlp(64), local=cpu_profile, target="gtx-950m")
    assert "autocast-available" not in _run(_mlp(64), local=cpu_profile, target="a100",
                                            inference=InferenceInfo(calls=4, autocast_calls=4))
    assert "autocast-available" not in _run(_mlp(64), local=cpu_profile, target="a100",
                                            measurements={"autocast": {"speedup": 0.97}})
    assert "autocast-available" not in _run(_mlp(64), local=cpu_profile, target="a100",
                                            suppress=["autocast-available"])


# -- threads-untuned --------------------------------------------------------------

def test_threads_untuned_fires_on_measured_difference(cpu_profile):
    measure = {"threads": {"current": 2, "latency_s": {"1": 0.010, "2": 0.016}}}
    hint = _run(local=cpu_profile, measurements=measure, framework="lightning")["threads-untuned"]
    assert hint.evidence["best_threads"] == 1 and hint.impact == pytest.approx(1.6)
    assert "torch.set_num_threads(1)" in hint.fix and "auto_apply=True" in hint.fix


def test_threads_untuned_quiet_within_noise_or_suppressed(cpu_profile):
    close = {"threads": {"current": 2, "latency_s": {"1": 0.0100, "2": 0.0103}}}
    assert "threads-untuned" not in _run(local=cpu_profile, measurements=close)
    far = {"threads": {"current": 2, "latency_s": {"1": 0.010, "2": 0.016}}}
    assert "threads-untuned" not in _run(local=cpu_profile, measurements=far, suppress=["threads-untuned"])


def test_thread_candidates_bounded():
    assert thread_candidates(2, 2) == [1, 2]
    assert thread_candidates(64, 64) == [1, 2, 4, 8, 16, 32, 64]  # more cases in test_probes.py


# -- repeated-inputs --------------------------------------------------------------

def test_repeated_inputs_fires_from_row_hashes(cpu_profile):
    base = torch.randint(1, 100, (8, 12))
    batches = [{"input_ids": base}, {"input_ids": base.flip(0)}, {"input_ids": torch.randint(1, 100, (8, 12))}]
    hint = _run(local=cpu_profile, batches=batches)["repeated-inputs"]
    assert hint.evidence["rows_seen"] == 24 and hint.evidence["distinct_rows"] == 16
    assert hint.impact == pytest.approx(1.5)


def test_repeated_inputs_quiet_for_distinct_rows_and_suppressed(cpu_profile):
    batches = [{"input_ids": torch.arange(i * 96, (i + 1) * 96).reshape(8, 12)} for i in range(4)]
    assert "repeated-inputs" not in _run(local=cpu_profile, batches=batches)
    base = torch.randint(1, 100, (8, 12))
    assert "repeated-inputs" not in _run(local=cpu_profile, batches=[{"input_ids": base}] * 3,
                                         suppress=["repeated-inputs"])


# -- probes end to end ------------------------------------------------------------

def test_probe_inference_measures_threads_and_batch_scaling(cpu_profile):
    model = _mlp(128)
    adv = Advisor(model, warn=False, local=cpu_profile)
    threads = torch.get_num_threads()
    training = [m.training for m in model.modules()]
    adv.probe_inference(model, torch.randn(4, 128))
    m = adv.context.measurements
    assert m["forward_s"] > 0 and m["probe_s"] > 0
    # On a loaded machine a probe may legitimately be skipped or drop an implausible count: never silently.
    if "threads" in m:
        assert set(m["threads"]["latency_s"]) | set(m["threads"].get("dropped", {})) == {"1", "2"}
        assert m["threads"]["current"] == threads and str(threads) in m["threads"]["latency_s"]
    else:
        assert "threads" in m["probes_skipped"]
    assert m["batch_scaling"]["batch_size"] == 4 if "batch_scaling" in m else "batch_scaling" in m["probes_skipped"]
    assert torch.get_num_threads() == threads and [x.training for x in model.modules()] == training
    assert not adv.check_failures


def test_probes_never_raise_on_a_broken_model(cpu_profile):
    class Broken(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    adv = Advisor(warn=False, local=cpu_profile)
    assert run_inference_probes(adv.context, Broken(), torch.randn(2, 2)) == {}
