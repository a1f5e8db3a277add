"""Precision checks: tensor-cores-idle, half-on-cpu, bf16-emulated."""

from __future__ import annotations

import torch

from perfcallbacks import Advisor, DeviceProfile


def _run(model, *, target=None, local=None, suppress=(), phase="setup", **fields):
    adv = Advisor(model, target=target, local=local, suppress=suppress, warn=False)
    for key, value in fields.items():
        setattr(adv.context, key, value)
    adv.run_checks(phase)
    return adv.hints


def test_tensor_cores_idle_fires_for_fp32_on_a100(cpu_profile):
    torch.set_float32_matmul_precision("highest")
    hints = _run(torch.nn.Linear(64, 64), target="a100", local=cpu_profile)
    hint = hints["tensor-cores-idle"]
    assert hint.evidence["matmul_precision"] == "highest" and hint.evidence["param_dtype"] == "fp32"
    assert "bfloat16" in hint.fix and hint.impact == 2.0


def test_tensor_cores_idle_names_16_mixed_on_t4_for_lightning(cpu_profile):
    torch.set_float32_matmul_precision("highest")
    adv = Advisor(torch.nn.Linear(64, 64), target="t4", local=cpu_profile, warn=False, framework="lightning")
    adv.run_checks("setup")
    assert 'precision="16-mixed"' in adv.hints["tensor-cores-idle"].fix


def test_tensor_cores_idle_quiet_with_amp_tf32_or_cpu(cpu_profile):
    torch.set_float32_matmul_precision("highest")
    assert "tensor-cores-idle" not in _run(torch.nn.Linear(8, 8), target="a100", local=cpu_profile,
                                           precision="bf16-mixed")
    torch.set_float32_matmul_precision("high")
    assert "tensor-cores-idle" not in _run(torch.nn.Linear(8, 8), target="a100", local=cpu_profile)
    torch.set_float32_matmul_precision("highest")
    assert "tensor-cores-idle" not in _run(torch.nn.Linear(8, 8), local=cpu_profile)
    assert "tensor-cores-idle" not in _run(torch.nn.Linear(8, 8), target="a100", local=cpu_profile,
                                           suppress=["tensor-cores-idle"])


def test_half_on_cpu_fires_for_fp16_weights(cpu_profile):
    hint = _run(torch.nn.Linear(8, 8).half(), local=cpu_profile)["half-on-cpu"]
    assert hint.evidence["param_dtype"] == "fp16" and hint.evidence["fp16_support"] == "emulated"


def test_half_on_cpu_quiet_for_fp32_on_gpu_target_and_suppressed(cpu_profile):
    assert "half-on-cpu" not in _run(torch.nn.Linear(8, 8), local=cpu_profile)
    assert "half-on-cpu" not in _run(torch.nn.Linear(8, 8), target="a100", local=cpu_profile, precision="16-mixed")
    assert "half-on-cpu" not in _run(torch.nn.Linear(8, 8).half(), local=cpu_profile, suppress=["half-on-cpu"])


def test_bf16_emulated_on_avx2_and_t4(cpu_profile):
    hint = _run(torch.nn.Linear(8, 8), local=cpu_profile, precision="bf16-mixed")["bf16-emulated"]
    assert hint.evidence["bf16_support"] == "emulated" and hint.impact == 6.1
    t4 = _run(torch.nn.Linear(8, 8), target="t4", local=cpu_profile, precision="bf16-mixed")["bf16-emulated"]
    assert "float16" in t4.fix


def test_bf16_emulated_quiet_on_amx_and_a100_and_suppressed(cpu_profile):
    amx = DeviceProfile.preset("cpu-amx")
    assert "bf16-emulated" not in _run(torch.nn.Linear(8, 8), local=amx, precision="bf16-mixed")
    assert "bf16-emulated" not in _run(torch.nn.Linear(8, 8), target="a100", local=cpu_profile,
                                       precision="bf16-mixed")
    assert "bf16-emulated" not in _run(torch.nn.Linear(8, 8), local=cpu_profile, precision="bf16-mixed",
                                       suppress=["bf16-emulated"])
